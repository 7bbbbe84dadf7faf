// The user's previous queries, each with a re-run button.

import { clear, h, money, seconds } from './dom.js';

function when(timestamp) {
  if (!timestamp) return '';
  const text = String(timestamp);
  // the database stores naive UTC times
  const date = new Date(/[zZ]|[+-]\d\d:?\d\d$/.test(text) ? text : `${text.replace(' ', 'T')}Z`);
  return Number.isNaN(date.getTime()) ? text : date.toLocaleString();
}

export function renderHistory(list, rows, { onRerun } = {}) {
  clear(list);
  const items = Array.isArray(rows) ? rows : [];
  for (const row of items) {
    const prompt = String(row.prompt ?? '');
    list.append(h('li', { class: 'history-item', dataset: { queryId: String(row.id ?? '') } },
      h('div', { class: 'history-head' },
        h('span', { class: 'badge', text: row.query_type ?? '' }),
        row.model_name ? h('span', { class: 'muted', text: String(row.model_name) }) : null,
        h('button', {
          type: 'button',
          class: 'btn-small rerun',
          'aria-label': `Re-run: ${prompt.slice(0, 40)}`,
          onclick: () => onRerun?.(row),
        }, 'Re-run')),
      h('div', { class: 'history-prompt', title: prompt, text: prompt.length > 160 ? `${prompt.slice(0, 160)}…` : prompt || '(no prompt)' }),
      h('div', { class: 'history-meta muted', text: `${seconds(row.processing_time)} · ${money(row.cost)} · ${when(row.timestamp)}` }),
    ));
  }
  if (!items.length) list.append(h('li', { class: 'muted', text: 'No queries yet.' }));
}
