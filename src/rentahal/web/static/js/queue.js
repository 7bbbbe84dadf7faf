// Pending queries: their queue position, ETA and a cancel button each.

import { h, randomId } from './dom.js';

export class PendingQueries {
  constructor(list, depthEl, { onCancel } = {}) {
    this.list = list;
    this.depthEl = depthEl;
    this.onCancel = onCancel;
    this.entries = []; // oldest first
  }

  /** Register a query we just sent; it gets its job id from `query_queued`. */
  add({ prompt = '', queryType = 'chat', turn = null, state = 'sending' } = {}) {
    const entry = { localId: randomId(), jobId: null, prompt, queryType, turn, state, position: null, etaS: null };
    entry.el = h('li', { class: 'pending-query', dataset: { state, localId: entry.localId } });
    this.entries.push(entry);
    this.list.append(entry.el);
    this.draw(entry);
    return entry;
  }

  byJob(jobId) {
    return this.entries.find((e) => e.jobId !== null && String(e.jobId) === String(jobId)) || null;
  }

  oldestUnassigned() {
    return this.entries.find((e) => e.jobId === null) || null;
  }

  /** `query_queued`: bind the job id to the oldest query still waiting for one. */
  queued(msg) {
    let entry = this.byJob(msg.job_id);
    if (!entry) {
      entry = this.oldestUnassigned() || this.add({ prompt: '', queryType: msg.realm || '' });
      entry.jobId = msg.job_id;
    }
    entry.state = 'queued';
    entry.position = msg.position ?? null;
    entry.realm = msg.realm ?? null;
    this.draw(entry);
    return entry;
  }

  /** `queue_position`: position 0 means the query is running. */
  positionUpdate(msg) {
    const entry = this.byJob(msg.job_id);
    if (!entry) return null;
    entry.position = msg.position ?? entry.position;
    entry.etaS = msg.eta_s ?? null;
    entry.state = Number(entry.position) <= 0 ? 'running' : 'queued';
    this.draw(entry);
    return entry;
  }

  setState(entry, state) {
    entry.state = state;
    this.draw(entry);
  }

  /** Remove and return the entry of `jobId` (or, without one, the oldest). */
  take(jobId) {
    let entry = jobId != null ? this.byJob(jobId) : null;
    if (!entry && jobId == null) entry = this.entries[0] || null;
    if (!entry && jobId != null) entry = this.oldestUnassigned(); // a server that sent no query_queued
    if (entry) this.remove(entry);
    return entry;
  }

  remove(entry) {
    this.entries = this.entries.filter((e) => e !== entry);
    entry.el.remove();
  }

  setDepth(depth, total) {
    const t = Number(total) > 0 ? total : 1;
    this.depthEl.textContent = `${Number(depth) || 0}/${t}`;
    this.depthEl.dataset.depth = String(Number(depth) || 0);
  }

  draw(entry) {
    const { el } = entry;
    el.dataset.state = entry.state;
    if (entry.jobId !== null) el.dataset.jobId = String(entry.jobId);
    let status;
    if (entry.state === 'sending') status = 'sending…';
    else if (entry.state === 'uploading') status = 'uploading…';
    else if (entry.state === 'running') status = 'running';
    else if (entry.state === 'cancelling') status = 'cancelling…';
    else {
      status = entry.position != null ? `queued #${entry.position}` : 'queued';
      if (entry.etaS != null && Number.isFinite(Number(entry.etaS))) status += ` · ETA ~${Math.round(Number(entry.etaS))}s`;
    }
    const label = entry.prompt ? entry.prompt.slice(0, 60) + (entry.prompt.length > 60 ? '…' : '') : '(query)';
    const cancel = h('button', {
      type: 'button',
      class: 'btn-small cancel-query',
      'aria-label': `Cancel query ${label}`,
      disabled: entry.jobId === null || entry.state === 'cancelling',
      onclick: () => {
        if (entry.jobId === null) return;
        this.setState(entry, 'cancelling');
        this.onCancel?.(entry);
      },
    }, 'Cancel');
    el.replaceChildren(
      h('span', { class: 'pending-type badge', text: entry.queryType || '?' }),
      h('span', { class: 'pending-prompt', text: label }),
      h('span', { class: 'pending-status muted', text: status }),
      cancel,
    );
  }
}
