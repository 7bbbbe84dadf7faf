// Small DOM helpers. Everything user-provided goes in as text nodes, never as HTML.

/**
 * Build an element. attrs: `class`, `text` (textContent), `dataset` (object),
 * `on<event>` (function listeners), anything else becomes an attribute.
 * Children may be nodes or strings (strings become text nodes).
 */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = String(value);
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else if (key.startsWith('on')) {
      if (typeof value === 'function') node.addEventListener(key.slice(2), value);
      // string event handlers are never set: they would be code injection
    } else if (value === true) node.setAttribute(key, '');
    else node.setAttribute(key, String(value));
  }
  appendAll(node, children);
  return node;
}

export function appendAll(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

export const $ = (selector, root = document) => root.querySelector(selector);
export const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));

export function clear(node) {
  node.replaceChildren();
  return node;
}

export function money(value, digits = 4) {
  const n = Number(value);
  return '$' + (Number.isFinite(n) ? n : 0).toFixed(digits);
}

export function seconds(value) {
  const n = Number(value);
  if (!Number.isFinite(n)) return '–';
  return n < 10 ? `${n.toFixed(2)}s` : `${n.toFixed(1)}s`;
}

export function randomId() {
  if (globalThis.crypto?.randomUUID) return crypto.randomUUID();
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** A `<dl>` filled from [label, value] pairs, values as text. */
export function fillKv(dl, pairs) {
  clear(dl);
  for (const [label, value] of pairs) {
    dl.append(h('dt', { text: label }), h('dd', { text: value ?? '' }));
  }
}
