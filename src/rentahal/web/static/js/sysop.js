// Sysop console: workers, users, broadcast and stats; realms and pools live in admin.js.
// Nicknames, GUIDs and worker fields are attacker-controlled: text only.

import { $, clear, fillKv, h, money, seconds } from './dom.js';
import { FederationPanel } from './federation.js';
import { AdminPanel, api } from './admin.js';
import { renderScalerEvents } from './dashboard.js';

export { detailMessage } from './admin.js';

export function healthClass(worker) {
  if (worker.is_blacklisted) return 'health-bad';
  const score = Number(worker.health_score);
  if (score >= 70) return 'health-good';
  if (score >= 30) return 'health-warn';
  return 'health-bad';
}

export class SysopConsole {
  constructor(root, conn, { notify } = {}) {
    this.root = root;
    this.conn = conn;
    this.notify = notify || (() => {});
    this.visible = false;
    this.workers = [];
    this.users = [];
    this.admin = new AdminPanel(root, { getWorkers: () => this.workers });
    this.federation = new FederationPanel(root);
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
      this.admin.load();
      this.federation.load();
      this.loadScaler();
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
  }

  setVisible(visible) {
    const was = this.visible;
    this.visible = Boolean(visible);
    this.root.hidden = !this.visible;
    if (this.visible && !was) {
      this.send({ type: 'get_stats' });
      this.admin.load();
      this.federation.load();
      this.loadScaler();
    }
  }

  async loadScaler() {
    const list = $('#sysop-scaler-events', this.root);
    try {
      renderScalerEvents(list, (await api('GET', '/api/admin/scaler'))?.events);
    } catch (err) {
      list.replaceChildren(document.createTextNode(`Could not load the scaler: ${err.message}`));
    }
  }

  // ---- workers ---------------------------------------------------------

  setWorkers(workers) {
    this.workers = Array.isArray(workers) ? workers : [];
    this.renderWorkers();
    this.admin.workersChanged();
  }

  mergeWorkerHealth(list) {
    if (!Array.isArray(list)) return;
    for (const item of list) {
      const known = this.workers.find((w) => w.name === item.name);
      if (known) Object.assign(known, item);
      else this.workers.push(item);
    }
    this.renderWorkers();
    this.admin.workersChanged();
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
}
