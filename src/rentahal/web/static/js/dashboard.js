// Realm dashboard: polls /api/realms/summary and draws small live charts.

import { $, clear, h } from './dom.js';

const POLL_MS = 2_000;
const RETRY_MISSING_MS = 30_000;
const WINDOW_MS = 10 * 60_000; // charts show the last ten minutes

/** Per-minute rate between two cumulative counter samples. */
export function ratePerMinute(prev, next, key) {
  const dt = (next.t - prev.t) / 60_000;
  if (dt <= 0) return 0;
  return Math.max(0, (Number(next[key]) - Number(prev[key])) / dt);
}

/** Answers counted in the last minute of `samples` (fewer when the page is younger). */
export function answersInLastMinute(samples) {
  if (samples.length < 2) return 0;
  const last = samples[samples.length - 1];
  const first = samples.find((s) => s.t >= last.t - 60_000) || last;
  return Math.max(0, last.processed - first.processed);
}

function cssVar(name, fallback) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || fallback;
}

/** Draw a sparkline of `values` on `canvas`. */
export function drawSparkline(canvas, values, { color = '#3b82f6', fill = true } = {}) {
  const ratio = globalThis.devicePixelRatio || 1;
  const width = canvas.clientWidth || 160;
  const height = canvas.clientHeight || 40;
  if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const ctx = canvas.getContext('2d');
  if (!ctx) return;
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  ctx.strokeStyle = cssVar('--border', '#ccc');
  ctx.lineWidth = 1;
  ctx.beginPath();
  ctx.moveTo(0, height - 0.5);
  ctx.lineTo(width, height - 0.5);
  ctx.stroke();
  if (values.length < 2) return;
  const max = Math.max(1, ...values);
  const step = width / (values.length - 1);
  const y = (v) => height - 2 - (v / max) * (height - 6);
  ctx.beginPath();
  values.forEach((v, i) => (i ? ctx.lineTo(i * step, y(v)) : ctx.moveTo(0, y(v))));
  ctx.strokeStyle = color;
  ctx.lineWidth = 1.5;
  ctx.stroke();
  if (fill) {
    ctx.lineTo(width, height);
    ctx.lineTo(0, height);
    ctx.closePath();
    ctx.globalAlpha = 0.15;
    ctx.fillStyle = color;
    ctx.fill();
    ctx.globalAlpha = 1;
  }
  ctx.fillStyle = cssVar('--muted', '#888');
  ctx.font = '10px system-ui, sans-serif';
  ctx.textAlign = 'right';
  ctx.fillText(String(Math.round(max * 10) / 10), width - 2, 10);
}

export class Dashboard {
  constructor(section, { url = '/api/realms/summary' } = {}) {
    this.section = section;
    this.cards = $('#realm-cards', section);
    this.url = url;
    this.history = new Map(); // realm name -> samples [{t, queue_depth, processed, errors, in_flight}]
    this.cardsByName = new Map();
    this.timer = null;
  }

  start() {
    this.poll();
  }

  stop() {
    clearTimeout(this.timer);
    this.timer = null;
  }

  schedule(ms) {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.poll(), ms);
  }

  async poll() {
    if (document.hidden) {
      this.schedule(POLL_MS);
      return;
    }
    let response;
    try {
      response = await fetch(this.url, { credentials: 'same-origin', cache: 'no-store' });
    } catch {
      this.section.classList.add('stale');
      this.schedule(POLL_MS * 2);
      return;
    }
    if (response.status === 404) {
      // no realm support on this server: hide quietly, look again later
      this.section.hidden = true;
      this.schedule(RETRY_MISSING_MS);
      return;
    }
    if (!response.ok) {
      this.section.classList.add('stale');
      this.schedule(POLL_MS * 2);
      return;
    }
    try {
      this.update(await response.json());
      this.section.classList.remove('stale');
    } catch {
      this.section.classList.add('stale');
    }
    this.schedule(POLL_MS);
  }

  update(summary) {
    renderScalerEvents(this.section.querySelector('#scaler-events'), summary?.scaler_events);
    const realms = Array.isArray(summary?.realms) ? summary.realms : [];
    this.section.hidden = realms.length === 0;
    const now = Date.now();
    const seen = new Set();
    for (const realm of realms) {
      const name = String(realm.name ?? '');
      seen.add(name);
      const samples = this.history.get(name) || [];
      samples.push({
        t: now,
        queue_depth: Number(realm.queue_depth) || 0,
        in_flight: Number(realm.in_flight) || 0,
        processed: Number(realm.processed) || 0,
        errors: Number(realm.errors) || 0,
      });
      while (samples.length && samples[0].t < now - WINDOW_MS) samples.shift();
      this.history.set(name, samples);
      this.renderCard(realm, samples);
    }
    for (const [name, card] of this.cardsByName) {
      if (!seen.has(name)) {
        card.remove();
        this.cardsByName.delete(name);
        this.history.delete(name);
      }
    }
  }

  cardFor(name) {
    let card = this.cardsByName.get(name);
    if (card) return card;
    const stat = (cls, label) => h('div', { class: 'stat' },
      h('span', { class: 'stat-label', text: label }), h('span', { class: `stat-value ${cls}`, text: '0' }));
    const chart = (cls, label) => h('figure', { class: 'chart' },
      h('canvas', { class: cls, role: 'img', 'aria-label': label }),
      h('figcaption', { class: 'muted', text: label }));
    card = h('article', { class: 'realm-card', dataset: { realm: name } },
      h('h3', { class: 'realm-name', text: name }),
      h('p', { class: 'realm-types muted' }),
      h('div', { class: 'stats' },
        stat('realm-queue', 'queued'),
        stat('realm-inflight', 'in flight'),
        stat('realm-processed', 'processed'),
        stat('realm-errors', 'errors'),
        stat('realm-throughput', 'last min')),
      h('div', { class: 'charts' },
        chart('chart-queue', 'queue depth'),
        chart('chart-throughput', 'answers per minute'),
        chart('chart-errors', 'error rate %')),
      h('ul', { class: 'realm-workers' }));
    this.cardsByName.set(name, card);
    this.cards.append(card);
    return card;
  }

  renderCard(realm, samples) {
    const card = this.cardFor(String(realm.name ?? ''));
    const set = (cls, value) => { $(`.${cls}`, card).textContent = String(value); };
    const types = Array.isArray(realm.query_types) ? realm.query_types.join(', ') : '';
    $('.realm-types', card).textContent = types;
    set('realm-queue', Number(realm.queue_depth) || 0);
    set('realm-inflight', Number(realm.in_flight) || 0);
    set('realm-processed', Number(realm.processed) || 0);
    set('realm-errors', Number(realm.errors) || 0);

    const throughput = [];
    const errorRate = [];
    for (let i = 1; i < samples.length; i += 1) {
      const done = ratePerMinute(samples[i - 1], samples[i], 'processed');
      const failed = ratePerMinute(samples[i - 1], samples[i], 'errors');
      throughput.push(done);
      errorRate.push(done + failed > 0 ? (100 * failed) / (done + failed) : 0);
    }
    // the headline counts the answers of the last minute; extrapolating the rate of the
    // first few seconds a page is open would turn one answer into "30 per minute"
    set('realm-throughput', answersInLastMinute(samples));

    drawSparkline($('.chart-queue', card), samples.map((s) => s.queue_depth), { color: cssVar('--accent', '#3b82f6') });
    drawSparkline($('.chart-throughput', card), throughput, { color: cssVar('--good', '#16a34a') });
    drawSparkline($('.chart-errors', card), errorRate, { color: cssVar('--bad', '#dc2626') });

    const list = clear($('.realm-workers', card));
    for (const w of Array.isArray(realm.workers) ? realm.workers : []) {
      const max = Math.max(1, Number(w.max_concurrency) || 1);
      const load = Math.min(1, (Number(w.in_flight) || 0) / max);
      const score = Number(w.health_score);
      const bar = h('span', { class: 'load-bar', title: `${w.in_flight ?? 0}/${max} in flight` }, h('span', { class: 'load-fill' }));
      bar.firstChild.style.width = `${Math.round(load * 100)}%`;
      list.append(h('li', { class: 'realm-worker', dataset: { worker: String(w.name ?? '') } },
        h('span', { class: `health-dot ${score >= 70 ? 'health-good' : score >= 30 ? 'health-warn' : 'health-bad'}`, title: `health ${Number.isFinite(score) ? score.toFixed(0) : '?'}` }),
        h('span', { class: 'realm-worker-name', text: w.name ?? '' }),
        bar,
        h('span', { class: 'muted', text: `${w.in_flight ?? 0}/${max}` })));
    }
    if (!list.childElementCount) list.append(h('li', { class: 'muted', text: 'no workers' }));
  }
}


/** The scaler's decisions, newest first: time, realm, action, why and the figures. */
export function renderScalerEvents(list, events) {
  if (!list) return;
  list.replaceChildren();
  for (const event of Array.isArray(events) ? events.slice(0, 20) : []) {
    const f = event?.figures || {};
    const at = new Date(Number(event?.at || 0) * 1000).toLocaleTimeString();
    const figures = Object.keys(f).length
      ? ` (workers ${f.workers}, utilisation ${f.utilisation}, wait ${f.queue_wait_s} s, errors ${f.error_rate})`
      : '';
    list.append(h('li', {
      class: `scaler-${String(event?.action ?? '')}`,
      text: `${at} ${String(event?.realm ?? '')} ${String(event?.action ?? '')}: ${String(event?.reason ?? '')}${figures}`,
    }));
  }
}
