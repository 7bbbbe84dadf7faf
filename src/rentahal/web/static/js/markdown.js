// A tiny, safe Markdown subset rendered by building DOM nodes.
// No string from the input is ever parsed as HTML: text goes into text nodes,
// so escaping is total by construction. Supported: paragraphs, line breaks,
// headings, **bold**, *italic* / _italic_, `code`, fenced code blocks,
// unordered and ordered lists, block quotes, [links](http(s) only) and bare
// http(s) URLs.

const MAX_DEPTH = 6;
const FENCE = /^ {0,3}(`{3,}|~{3,})([^`]*)$/;
const HEADING = /^ {0,3}(#{1,6})[ \t]+(.*)$/;
const LIST_ITEM = /^ {0,3}([-*+]|\d{1,9}[.)])\s+(.*)$/;
const QUOTE = /^ {0,3}>\s?(.*)$/;
const BARE_URL = /^https?:\/\/[^\s<>"'`]+/i;

/** The URL if it is an absolute http(s) URL, otherwise null. */
export function safeUrl(raw) {
  try {
    const url = new URL(String(raw).trim());
    return url.protocol === 'http:' || url.protocol === 'https:' ? url.href : null;
  } catch {
    return null;
  }
}

/** Escape a string for HTML text or attribute contexts. */
export function escapeHtml(text) {
  return String(text)
    .replaceAll('&', '&amp;')
    .replaceAll('<', '&lt;')
    .replaceAll('>', '&gt;')
    .replaceAll('"', '&quot;')
    .replaceAll("'", '&#39;');
}

/** Render Markdown source into a DocumentFragment. */
export function renderMarkdown(source) {
  const fragment = document.createDocumentFragment();
  renderBlocks(String(source ?? '').replace(/\r\n?/g, '\n').split('\n'), fragment, 0);
  return fragment;
}

function isBlockStart(line) {
  return FENCE.test(line) || HEADING.test(line) || LIST_ITEM.test(line) || QUOTE.test(line);
}

function renderBlocks(lines, parent, depth) {
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (!line.trim()) { i += 1; continue; }

    const fence = FENCE.exec(line);
    if (fence) {
      const marker = fence[1];
      const body = [];
      i += 1;
      while (i < lines.length && !lines[i].trim().startsWith(marker)) { body.push(lines[i]); i += 1; }
      i += 1; // closing fence (or end of input)
      const code = document.createElement('code');
      const lang = fence[2].trim();
      if (/^[\w+#.-]{1,30}$/.test(lang)) code.dataset.lang = lang;
      code.textContent = body.join('\n');
      const pre = document.createElement('pre');
      pre.append(code);
      parent.append(pre);
      continue;
    }

    const heading = HEADING.exec(line);
    if (heading) {
      const level = Math.min(heading[1].length + 2, 6);
      const node = document.createElement(`h${level}`);
      renderInline(heading[2].replace(/[ \t]+#+[ \t]*$/, '').trim(), node, depth);
      parent.append(node);
      i += 1;
      continue;
    }

    if (QUOTE.test(line) && depth < MAX_DEPTH) {
      const inner = [];
      while (i < lines.length && QUOTE.test(lines[i])) { inner.push(QUOTE.exec(lines[i])[1]); i += 1; }
      const quote = document.createElement('blockquote');
      renderBlocks(inner, quote, depth + 1);
      parent.append(quote);
      continue;
    }

    const item = LIST_ITEM.exec(line);
    if (item) {
      const ordered = /\d/.test(item[1]);
      const list = document.createElement(ordered ? 'ol' : 'ul');
      if (ordered) {
        const start = parseInt(item[1], 10);
        if (start !== 1) list.start = start;
      }
      while (i < lines.length) {
        const m = LIST_ITEM.exec(lines[i]);
        if (!m || /\d/.test(m[1]) !== ordered) break;
        const text = [m[2]];
        i += 1;
        // continuation lines: indented, not blank, not a new item
        while (i < lines.length && lines[i].trim() && /^\s+/.test(lines[i]) && !LIST_ITEM.test(lines[i])) {
          text.push(lines[i].trim());
          i += 1;
        }
        const li = document.createElement('li');
        renderInline(text.join('\n'), li, depth);
        list.append(li);
        // allow a single blank line between items of a loose list
        if (i + 1 < lines.length && !lines[i]?.trim() && LIST_ITEM.test(lines[i + 1])) i += 1;
      }
      parent.append(list);
      continue;
    }

    const para = [];
    while (i < lines.length && lines[i].trim() && !(para.length && isBlockStart(lines[i]))) {
      para.push(lines[i].trim());
      i += 1;
    }
    const p = document.createElement('p');
    renderInline(para.join('\n'), p, depth);
    parent.append(p);
  }
}

// Searches from a later start reuse an earlier answer: when a search from
// `f0` found `at0` (or nothing), a search from `from >= f0` finds `at0` if
// `at0 > from` (resp. nothing), because candidates are checked independently
// of the start. This keeps hostile input ("*a *a *a ...", "[[[[...") linear-ish.
function cached(memo, key, from, search) {
  const hit = memo.get(key);
  if (hit && from >= hit.from && (hit.at === -1 || hit.at > from)) return hit.at;
  const at = search();
  memo.set(key, { from, at });
  return at;
}

function findClosing(text, marker, from, memo) {
  return cached(memo, `*${marker}`, from, () => {
    let at = text.indexOf(marker, from);
    while (at !== -1) {
      // the closing marker must follow a non-space character
      if (at > from && !/\s/.test(text[at - 1])) return at;
      at = text.indexOf(marker, at + 1);
    }
    return -1;
  });
}

function indexFrom(text, needle, from, memo) {
  return cached(memo, `#${needle}`, from, () => text.indexOf(needle, from));
}

function renderInline(text, parent, depth) {
  const memo = new Map();
  let buffer = '';
  const flush = () => {
    if (buffer) parent.append(document.createTextNode(buffer));
    buffer = '';
  };
  const nested = depth < MAX_DEPTH;
  let i = 0;
  while (i < text.length) {
    const c = text[i];
    const prev = i > 0 ? text[i - 1] : '';

    if (c === '\\' && i + 1 < text.length && /[\\`*_[\]()#+\-.!>~]/.test(text[i + 1])) {
      buffer += text[i + 1];
      i += 2;
      continue;
    }

    if (c === '\n') {
      flush();
      parent.append(document.createElement('br'));
      i += 1;
      continue;
    }

    if (c === '`') {
      let run = 1;
      while (text[i + run] === '`') run += 1;
      const marker = '`'.repeat(run);
      const end = indexFrom(text, marker, i + run, memo);
      if (end !== -1) {
        flush();
        const code = document.createElement('code');
        code.textContent = text.slice(i + run, end).replace(/^ (.+) $/, '$1');
        parent.append(code);
        i = end + run;
        continue;
      }
      buffer += marker;
      i += run;
      continue;
    }

    if (c === '[' && nested) {
      const close = indexFrom(text, '](', i + 1, memo);
      const newline = close === -1 ? -1 : indexFrom(text, '\n', i + 1, memo);
      if (close !== -1 && (newline === -1 || newline > close)) {
        const end = indexFrom(text, ')', close + 2, memo);
        const target = end === -1 ? '' : text.slice(close + 2, end).trim();
        const href = target && !/\s/.test(target) ? safeUrl(target) : null;
        if (href) {
          flush();
          const a = document.createElement('a');
          a.href = href;
          a.rel = 'noopener noreferrer nofollow';
          a.target = '_blank';
          renderInline(text.slice(i + 1, close), a, depth + 1);
          parent.append(a);
          i = end + 1;
          continue;
        }
      }
    }

    if ((c === 'h' || c === 'H') && !/[\w/]/.test(prev)) {
      const m = BARE_URL.exec(text.slice(i));
      if (m) {
        let url = m[0];
        while (/[.,;:!?)\]]$/.test(url)) url = url.slice(0, -1);
        const href = safeUrl(url);
        if (href) {
          flush();
          const a = document.createElement('a');
          a.href = href;
          a.rel = 'noopener noreferrer nofollow';
          a.target = '_blank';
          a.textContent = url;
          parent.append(a);
          i += url.length;
          continue;
        }
      }
    }

    if ((c === '*' || c === '_') && nested) {
      const double = text[i + 1] === c;
      const marker = double ? c + c : c;
      const start = i + marker.length;
      const wordy = c === '_' && /\w/.test(prev); // snake_case is not emphasis
      if (!wordy && start < text.length && !/\s/.test(text[start])) {
        const end = findClosing(text, marker, start, memo);
        const after = end === -1 ? '' : text[end + marker.length] || '';
        if (end !== -1 && !(c === '_' && /\w/.test(after))) {
          flush();
          const node = document.createElement(double ? 'strong' : 'em');
          renderInline(text.slice(start, end), node, depth + 1);
          parent.append(node);
          i = end + marker.length;
          continue;
        }
      }
    }

    buffer += c;
    i += 1;
  }
  flush();
}
