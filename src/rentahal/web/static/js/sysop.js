// Sysop console: workers, users, broadcast, stats, realms and pools.
// Nicknames, GUIDs and worker fields are attacker-controlled: text only.

import { $, clear, fillKv, h, money, seconds } from './dom.js';

export function healthClass(worker) {
  if (worker.is_blacklisted) return 'health-bad';
  const score = Number(worker.health_score);
  if (score >= 70) return 'health-good';
  if (score >= 30) return 'health-warn';
  return 'health-bad';
}

/** The readable message of a FastAPI error body. */
export function detailMessage(body, status) {
  const detail = body?.detail;
  if (typeof detail === 'string') return detail;
  if (Array.isArray(detail)) {
    return detail.map((d) => [Array.isArray(d?.loc) ? d.loc.join('.') : '', d?.msg ?? JSON.stringify(d)]
      .filter(Boolean).join(': ')).join('; ');
  }
  if (detail) return JSON.stringify(detail);
  return `HTTP ${status}`;
}

async function api(method, url, body) {
  const response = await fetch(url, {
    method,
    credentials: 'same-origin',
    headers: body !== undefined ? { 'Content-Type': 'application/json' } : {},
    body: body !== undefined ? JSON.stringify(body) : undefined,
  });
  let data = null;
  const text = await response.text();
  if (text) {
    try { data = JSON.parse(text); } catch { data = { detail: text.slice(0, 300) }; }
  }
  if (!response.ok) throw new Error(detailMessage(data, response.status));
  return data;
}

/** Normalise a list response: an array, {realms|pools|items: [...]}, or {name: config}. */
export function asItems(data, kind) {
  if (Array.isArray(data)) return data.map((x) => (typeof x === 'string' ? { name: x } : x));
  if (data && typeof data === 'object') {
    for (const key of [kind, 'items', 'data']) if (Array.isArray(data[key])) return asItems(data[key], kind);
    return Object.entries(data).map(([name, value]) => ({ name, ...(value && typeof value === 'object' ? value : { value }) }));
  }
  return [];
}

export class SysopConsole {
  constructor(root, conn, { notify } = {}) {
    this.root = root;
    this.conn = conn;
    this.notify = notify || (() => {});
    this.visible = false;
    this.workers = [];
    this.users = [];
    this.admin = { realms: [], pools: [] };
    this.bind();
  }

  send(message) {
    if (!this.conn.send(message)) this.notify('Not connected.');
  }

  bind() {
    const root = this.root;
    $('#reset-health-all', root).addEventListener('click', () => this.send({ type: 'reset_worker_health' }));
    $('#refresh-stats', root).addEventListener('click', () => {
      this.send({ type: 'get_stats' });
      this.loadAdmin('realms');
      this.loadAdmin('pools');
    });

    $('#add-worker-form', root).addEventListener('submit', (event) => {
      event.preventDefault();
      const form = event.currentTarget;
      const f = new FormData(form);
      const worker = {
        name: String(f.get('name')).trim(),
        address: String(f.get('address')).trim(),
        type: String(f.get('type')),
        max_concurrency: Math.max(1, parseInt(f.get('max_concurrency'), 10) || 1),
        models: String(f.get('models') || '').split(',').map((s) => s.trim()).filter(Boolean),
      };
      if (f.get('protocol')) worker.protocol = String(f.get('protocol'));
      if (f.get('api_key')) worker.api_key = String(f.get('api_key'));
      this.send({ type: 'add_worker', worker });
      form.reset();
    });

    $('#broadcast-form', root).addEventListener('submit', (event) => {
      event.preventDefault();
      const input = $('#broadcast-message', root);
      const message = input.value.trim();
      if (!message) return;
      this.send({ type: 'sysop_message', message });
      input.value = '';
    });

    for (const form of [$('#realm-form', root), $('#pool-form', root)]) {
      form.addEventListener('submit', (event) => {
        event.preventDefault();
        this.saveAdmin(form.dataset.kind, form);
      });
    }
  }

  setVisible(visible) {
    const was = this.visible;
    this.visible = Boolean(visible);
    this.root.hidden = !this.visible;
    if (this.visible && !was) {
      this.send({ type: 'get_stats' });
      this.loadAdmin('realms');
      this.loadAdmin('pools');
    }
  }

  // ---- workers ---------------------------------------------------------

  setWorkers(workers) {
    this.workers = Array.isArray(workers) ? workers : [];
    this.renderWorkers();
  }

  mergeWorkerHealth(list) {
    if (!Array.isArray(list)) return;
    for (const item of list) {
      const known = this.workers.find((w) => w.name === item.name);
      if (known) Object.assign(known, item);
      else this.workers.push(item);
    }
    this.renderWorkers();
  }

  renderWorkers() {
    const body = clear($('#workers-table tbody', this.root));
    for (const w of this.workers) {
      const score = Number(w.health_score);
      const health = h('span', { class: `health ${healthClass(w)}` },
        Number.isFinite(score) ? score.toFixed(0) : '?', w.is_blacklisted ? ' (blacklisted)' : '');
      const circuit = w.circuit ? h('span', { class: `circuit circuit-${String(w.circuit).replace(/\W/g, '')}`, text: w.circuit }) : '–';
      const load = `${w.in_flight ?? 0}/${w.max_concurrency ?? 1}`;
      const name = String(w.name ?? '');
      body.append(h('tr', { dataset: { worker: name } },
        h('td', { text: name }),
        h('td', { text: w.type ?? '' }),
        h('td', { text: w.protocol ?? '' }),
        h('td', { text: w.address ?? '' }),
        h('td', { text: Array.isArray(w.models) ? w.models.join(', ') : '' }),
        h('td', { text: w.realm ?? '' }),
        h('td', {}, health),
        h('td', {}, circuit),
        h('td', { text: load }),
        h('td', { class: 'actions' },
          h('button', {
            type: 'button', class: 'btn-small reset-worker',
            onclick: () => this.send({ type: 'reset_worker_health', worker_name: name }),
          }, 'Reset'),
          h('button', {
            type: 'button', class: 'btn-small btn-danger remove-worker',
            onclick: () => this.send({ type: 'remove_worker', worker_name: name }),
          }, 'Remove')),
      ));
    }
    if (!this.workers.length) body.append(h('tr', {}, h('td', { colspan: '10', class: 'muted', text: 'No workers.' })));
  }

  // ---- users and stats -------------------------------------------------

  setUsers(users) {
    this.users = Array.isArray(users) ? users : [];
    this.renderUsers();
  }

  /** A fresher copy of one user (e.g. our own `user_info` after a rename). */
  updateUser(user) {
    const known = this.users.find((u) => u.guid === user?.guid);
    if (!known) return;
    Object.assign(known, user);
    this.renderUsers();
  }

  userBanned(guid, banned) {
    const user = this.users.find((u) => u.guid === guid);
    if (user) {
      user.is_banned = banned;
      this.renderUsers();
    }
  }

  renderUsers() {
    const body = clear($('#users-table tbody', this.root));
    for (const u of this.users) {
      const guid = String(u.guid ?? '');
      const status = [u.is_sysop ? 'sysop' : '', u.is_banned ? 'banned' : ''].filter(Boolean).join(', ') || 'ok';
      body.append(h('tr', { dataset: { guid } },
        h('td', { text: u.nickname ?? '' }),
        h('td', { class: 'mono', text: guid }),
        h('td', { text: u.query_count ?? 0 }),
        h('td', { text: seconds(u.total_query_time) }),
        h('td', { text: money(u.total_cost) }),
        h('td', { class: 'user-status', text: status }),
        h('td', { class: 'actions' },
          u.is_banned
            ? h('button', { type: 'button', class: 'btn-small unban-user', onclick: () => this.send({ type: 'unban_user', user_guid: guid }) }, 'Unban')
            : h('button', { type: 'button', class: 'btn-small btn-danger ban-user', onclick: () => this.send({ type: 'ban_user', user_guid: guid }) }, 'Ban'),
          h('button', { type: 'button', class: 'btn-small terminate-user', onclick: () => this.send({ type: 'terminate_query', user_guid: guid }) }, 'Terminate queries')),
      ));
    }
  }

  setSystemStats(data) {
    const row = Array.isArray(data) ? data[0] : data;
    if (!row || typeof row !== 'object') return;
    fillKv($('#system-stats', this.root), Object.entries(row).map(([k, v]) => [k.replaceAll('_', ' '), String(v)]));
  }

  // ---- realms and pools (admin HTTP API) ------------------------------

  async loadAdmin(kind, { keepError = false } = {}) {
    const errorEl = $(`#${kind}-admin-error`, this.root);
    try {
      this.admin[kind] = asItems(await api('GET', `/api/admin/${kind}`), kind);
      if (!keepError) errorEl.textContent = '';
    } catch (err) {
      this.admin[kind] = [];
      errorEl.textContent = `Could not load ${kind}: ${err.message}`;
    }
    this.renderAdmin(kind);
  }

  renderAdmin(kind) {
    const list = clear($(`#${kind}-admin`, this.root));
    const form = $(kind === 'realms' ? '#realm-form' : '#pool-form', this.root);
    for (const item of this.admin[kind]) {
      const name = String(item.name ?? '');
      const { name: _omit, ...rest } = item;
      list.append(h('li', { class: 'admin-item', dataset: { name } },
        h('strong', { text: name }),
        h('code', { class: 'admin-json', text: JSON.stringify(rest) }),
        h('span', { class: 'actions' },
          h('button', {
            type: 'button', class: 'btn-small edit-item',
            onclick: () => {
              form.elements.name.value = name;
              form.elements.body.value = JSON.stringify(rest, null, 2);
              form.elements.body.focus();
            },
          }, 'Edit'),
          h('button', {
            type: 'button', class: 'btn-small btn-danger delete-item',
            onclick: () => this.deleteAdmin(kind, name),
          }, 'Delete')),
      ));
    }
    if (!this.admin[kind].length) list.append(h('li', { class: 'muted', text: `No ${kind}.` }));
  }

  async saveAdmin(kind, form) {
    const errorEl = $(`#${kind}-admin-error`, this.root);
    const name = form.elements.name.value.trim();
    let body = {};
    const raw = form.elements.body.value.trim();
    if (raw) {
      try {
        body = JSON.parse(raw);
      } catch (err) {
        errorEl.textContent = `Settings are not valid JSON: ${err.message}`;
        return;
      }
      if (!body || typeof body !== 'object' || Array.isArray(body)) {
        errorEl.textContent = 'Settings must be a JSON object.';
        return;
      }
    }
    const exists = this.admin[kind].some((item) => item.name === name);
    try {
      if (exists) await api('PUT', `/api/admin/${kind}/${encodeURIComponent(name)}`, { ...body, name });
      else await api('POST', `/api/admin/${kind}`, { ...body, name });
      errorEl.textContent = '';
      form.reset();
    } catch (err) {
      errorEl.textContent = err.message;
    }
    await this.loadAdmin(kind, { keepError: true });
  }

  async deleteAdmin(kind, name) {
    const errorEl = $(`#${kind}-admin-error`, this.root);
    try {
      await api('DELETE', `/api/admin/${kind}/${encodeURIComponent(name)}`);
      errorEl.textContent = '';
    } catch (err) {
      errorEl.textContent = err.message;
    }
    await this.loadAdmin(kind, { keepError: true });
  }
}
