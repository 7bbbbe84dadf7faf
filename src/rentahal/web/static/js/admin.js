// Sysop console: realms and pools through the admin HTTP API (/api/admin/...).
// Every name, description and worker field is shown as text, never parsed as HTML.

import { $, clear, h } from './dom.js';

export const QUERY_TYPES = ['chat', 'vision', 'imagine', 'speech'];
export const STRATEGIES = ['health', 'round_robin', 'least_busy', 'random'];
const PRIMARY_TITLE = 'A primary realm serves its query type and cannot be deleted.';

/** The readable message of a FastAPI error body. */
/** Show ``text`` in an error line, noting whether a load or an action put it there. */
function showError(el, text, from) {
  el.textContent = text;
  el.dataset.from = from;
}

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

/** Call the admin API; resolves to the parsed JSON (or null), rejects with the server's detail. */
export async function api(method, url, body) {
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

const list = (value) => (Array.isArray(value) ? value.map((v) => String(v ?? '')) : []);
const str = (value) => String(value ?? '');

/** Replace a select's options with `choices` ([value, label] or value), keeping `selected`. */
export function fillSelect(select, choices, selected = []) {
  const wanted = new Set(list(Array.isArray(selected) ? selected : [selected]));
  clear(select);
  for (const choice of choices) {
    const [value, label] = Array.isArray(choice) ? choice : [choice, choice];
    const option = h('option', { value: str(value) }, str(label));
    option.selected = wanted.has(str(value));
    select.append(option);
  }
  return select;
}

function selectedValues(select) {
  return Array.from(select.selectedOptions, (o) => o.value);
}

/** An integer from a number input, or undefined when it is empty. */
function intValue(input) {
  const raw = input.value.trim();
  if (!raw) return undefined;
  const n = Number(raw);
  return Number.isInteger(n) ? n : raw; // a non-integer goes to the server, which says what is wrong
}

function actionButton(text, className, onclick, extra = {}) {
  return h('button', { type: 'button', class: `btn-small ${className}`, onclick, ...extra }, text);
}

function emptyRow(table, text) {
  const columns = table.tHead?.rows[0]?.cells.length || 1;
  return h('tr', {}, h('td', { colspan: String(columns), class: 'muted', text }));
}

export class AdminPanel {
  /**
   * root: the sysop panel; getWorkers: () => the live AIWorker list (from `worker_update`).
   */
  constructor(root, { getWorkers = () => [] } = {}) {
    this.root = root;
    this.getWorkers = getWorkers;
    this.realms = [];
    this.routingTable = {};
    this.pools = [];
    this.els = {
      realmsTable: $('#realms-table', root),
      realmsError: $('#realms-admin-error', root),
      routing: $('#routing-table', root),
      realmForm: $('#realm-form', root),
      poolsTable: $('#pools-table', root),
      poolsError: $('#pools-admin-error', root),
      poolForm: $('#pool-form', root),
    };
    this.bind();
  }

  bind() {
    const { realmForm, poolForm } = this.els;
    fillSelect(realmForm.elements.primary_query_type, QUERY_TYPES, 'chat');
    fillSelect(realmForm.elements.strategy, STRATEGIES, 'health');
    fillSelect(poolForm.elements.query_type, QUERY_TYPES, 'chat');
    fillSelect(poolForm.elements.strategy, STRATEGIES, 'health');
    realmForm.addEventListener('submit', (event) => {
      event.preventDefault();
      this.saveRealm();
    });
    realmForm.addEventListener('reset', () => setTimeout(() => this.editRealm(null)));
    poolForm.addEventListener('submit', (event) => {
      event.preventDefault();
      this.savePool();
    });
    poolForm.addEventListener('reset', () => setTimeout(() => this.editPool(null)));
    poolForm.elements.query_type.addEventListener('change', () => this.renderPoolChoices());
    this.editRealm(null);
    this.editPool(null);
  }

  async load() {
    await this.loadRealms();
    await this.loadPools();
  }

  // ---- realms ----------------------------------------------------------

  async loadRealms({ keepError = false } = {}) {
    const errorEl = this.els.realmsError;
    try {
      const data = await api('GET', '/api/admin/realms');
      this.realms = Array.isArray(data?.realms) ? data.realms : [];
      this.routingTable = data?.routing_table && typeof data.routing_table === 'object' ? data.routing_table : {};
      // A load that ends late must not hide what an action just showed.
      if (!keepError && errorEl.dataset.from !== 'action') showError(errorEl, '', 'load');
    } catch (err) {
      this.realms = [];
      this.routingTable = {};
      showError(errorEl, `Could not load realms: ${err.message}`, 'load');
    }
    this.renderRealms();
    this.renderRealmChoices();
    this.renderPoolChoices();
  }

  renderRealms() {
    const table = this.els.realmsTable;
    const body = clear(table.tBodies[0]);
    for (const realm of this.realms) {
      const name = str(realm.name);
      const stopped = Boolean(realm.stopped);
      const primary = Boolean(realm.is_primary);
      const workers = Array.isArray(realm.workers) ? realm.workers.map((w) => str(w?.name)) : [];
      body.append(h('tr', { dataset: { name }, class: stopped ? 'realm-stopped' : null },
        h('td', { class: 'realm-col-name' },
          h('span', { class: 'admin-name', text: name }),
          primary ? h('span', { class: 'badge badge-primary', title: 'Primary realm of its query type' }, 'primary') : null,
          realm.description ? h('div', { class: 'muted admin-description', text: str(realm.description) }) : null),
        h('td', { class: 'realm-type', text: str(realm.primary_query_type) }),
        h('td', { class: 'realm-bounds', text: `${str(realm.min_workers)}–${str(realm.max_workers)}` }),
        h('td', { class: 'realm-strategy', text: str(realm.strategy) }),
        h('td', { class: 'realm-backups', text: list(realm.backup_realms).join(', ') || '–' }),
        h('td', { class: 'realm-threshold', text: str(realm.queue_threshold) }),
        h('td', { class: 'realm-worker-names', text: workers.join(', ') || '–' }),
        h('td', { class: `realm-state state-${stopped ? 'stopped' : 'running'}`, text: stopped ? 'stopped' : 'running' }),
        h('td', { class: 'actions' },
          actionButton('Edit', 'edit-realm', () => this.editRealm(name)),
          stopped
            ? actionButton('Resume', 'resume-realm', () => this.setStopped(name, false))
            : actionButton('Stop', 'stop-realm', () => this.setStopped(name, true)),
          actionButton('Delete', 'btn-danger delete-realm', () => this.deleteRealm(name),
            primary ? { disabled: true, title: PRIMARY_TITLE, 'aria-label': `Delete ${name} (not possible: primary realm)` }
              : { title: `Delete ${name}; its waiting queries are re-routed` })),
      ));
    }
    if (!this.realms.length) body.append(emptyRow(table, 'No realms.'));
    const routes = Object.entries(this.routingTable)
      .map(([type, realms]) => `${type} → ${list(realms).join(', ') || 'none'}`);
    this.els.routing.textContent = routes.length ? `Routing: ${routes.join('; ')}` : '';
  }

  /** The backup-realm choices of the realm form (every realm but the one edited). */
  renderRealmChoices() {
    const form = this.els.realmForm;
    const editing = form.dataset.editing || '';
    const select = form.elements.backup_realms;
    const keep = selectedValues(select);
    const names = this.realms.map((r) => str(r.name)).filter((n) => n !== editing);
    fillSelect(select, names, keep);
  }

  /** Load realm `name` into the form for editing, or reset it for a new realm (null). */
  editRealm(name) {
    const form = this.els.realmForm;
    const realm = name ? this.realms.find((r) => r.name === name) : null;
    const f = form.elements;
    form.dataset.editing = realm ? str(realm.name) : '';
    f.name.value = realm ? str(realm.name) : '';
    f.name.readOnly = Boolean(realm);
    f.primary_query_type.value = realm ? str(realm.primary_query_type) : 'chat';
    f.min_workers.value = realm ? str(realm.min_workers) : '1';
    f.max_workers.value = realm ? str(realm.max_workers) : '10';
    f.strategy.value = realm ? str(realm.strategy) : 'health';
    f.queue_threshold.value = realm ? str(realm.queue_threshold) : '50';
    f.description.value = realm ? str(realm.description) : '';
    this.renderRealmChoices();
    const backups = new Set(realm ? list(realm.backup_realms) : []);
    for (const option of f.backup_realms.options) option.selected = backups.has(option.value);
    $('.form-title', form).textContent = realm ? `Edit realm ${realm.name}` : 'New realm';
    $('button[type="submit"]', form).textContent = realm ? 'Save realm' : 'Create realm';
    if (realm) f.primary_query_type.focus();
  }

  realmBody() {
    const f = this.els.realmForm.elements;
    const body = {
      name: f.name.value.trim(),
      primary_query_type: f.primary_query_type.value,
      strategy: f.strategy.value,
      backup_realms: selectedValues(f.backup_realms),
      description: f.description.value.trim(),
    };
    for (const key of ['min_workers', 'max_workers', 'queue_threshold']) {
      const value = intValue(f[key]);
      if (value !== undefined) body[key] = value;
    }
    return body;
  }

  async saveRealm() {
    const form = this.els.realmForm;
    const errorEl = this.els.realmsError;
    const editing = form.dataset.editing || '';
    const body = this.realmBody();
    let saved = false;
    try {
      if (editing) {
        const { name: _name, ...changes } = body;
        await api('PUT', `/api/admin/realms/${encodeURIComponent(editing)}`, changes);
      } else {
        await api('POST', '/api/admin/realms', body);
      }
      showError(errorEl, '', 'action');
      saved = true;
    } catch (err) {
      showError(errorEl, err.message, 'action');
    }
    await this.loadRealms({ keepError: true });
    if (saved) this.editRealm(null);
  }

  async setStopped(name, stopped) {
    const errorEl = this.els.realmsError;
    try {
      await api('PUT', `/api/admin/realms/${encodeURIComponent(name)}`, { stopped });
      showError(errorEl, '', 'action');
    } catch (err) {
      showError(errorEl, err.message, 'action');
    }
    await this.loadRealms({ keepError: true });
  }

  async deleteRealm(name) {
    const errorEl = this.els.realmsError;
    try {
      await api('DELETE', `/api/admin/realms/${encodeURIComponent(name)}`);
      showError(errorEl, '', 'action');
      if (this.els.realmForm.dataset.editing === name) this.editRealm(null);
    } catch (err) {
      showError(errorEl, err.message, 'action');
    }
    await this.loadRealms({ keepError: true });
  }

  // ---- pools -----------------------------------------------------------

  async loadPools({ keepError = false } = {}) {
    const errorEl = this.els.poolsError;
    try {
      const data = await api('GET', '/api/admin/pools');
      this.pools = Array.isArray(data?.pools) ? data.pools : [];
      // A load that ends late must not hide what an action just showed.
      if (!keepError && errorEl.dataset.from !== 'action') showError(errorEl, '', 'load');
    } catch (err) {
      this.pools = [];
      showError(errorEl, `Could not load pools: ${err.message}`, 'load');
    }
    this.renderPools();
  }

  renderPools() {
    const table = this.els.poolsTable;
    const body = clear(table.tBodies[0]);
    for (const pool of this.pools) {
      const name = str(pool.name);
      body.append(h('tr', { dataset: { name } },
        h('td', { class: 'pool-name', text: name }),
        h('td', { class: 'pool-type', text: str(pool.query_type) }),
        h('td', { class: 'pool-realm', text: pool.realm ? str(pool.realm) : '–' }),
        h('td', { class: 'pool-members', text: list(pool.members).join(', ') || '–' }),
        h('td', { class: 'pool-strategy', text: str(pool.strategy) }),
        h('td', { class: 'pool-blacklisted', text: pool.blacklisted ? 'yes' : 'no' }),
        h('td', { class: 'actions' },
          actionButton('Edit', 'edit-pool', () => this.editPool(name)),
          actionButton('Delete', 'btn-danger delete-pool', () => this.deletePool(name))),
      ));
    }
    if (!this.pools.length) body.append(emptyRow(table, 'No pools.'));
  }

  /** Member choices (live workers of the pool's type) and realm choices of the pool form. */
  renderPoolChoices(selectedMembers = null, selectedRealm = null) {
    const f = this.els.poolForm.elements;
    const type = f.query_type.value;
    const members = selectedMembers ?? selectedValues(f.members);
    const workers = (this.getWorkers() || []).filter((w) => w && w.type === type);
    const names = [...new Set(workers.map((w) => str(w.name)))].sort();
    // members that are not live (any more) stay listed, so editing keeps them
    const choices = names.map((n) => {
      const worker = workers.find((w) => str(w.name) === n);
      return [n, worker?.is_blacklisted ? `${n} (blacklisted)` : n];
    });
    for (const m of members) if (!names.includes(m)) choices.push([m, `${m} (not live)`]);
    fillSelect(f.members, choices, members);
    const realm = selectedRealm ?? f.realm.value;
    const realms = this.realms.filter((r) => !type || r.primary_query_type === type || r.name === realm);
    const realmChoices = [['', '(any)'], ...realms.map((r) => [str(r.name), str(r.name)])];
    if (realm && !realmChoices.some(([v]) => v === realm)) realmChoices.push([realm, realm]);
    fillSelect(f.realm, realmChoices, realm);
  }

  /** Load pool `name` into the form for editing, or reset it for a new pool (null). */
  editPool(name) {
    const form = this.els.poolForm;
    const pool = name ? this.pools.find((p) => p.name === name) : null;
    const f = form.elements;
    form.dataset.editing = pool ? str(pool.name) : '';
    f.name.value = pool ? str(pool.name) : '';
    f.name.readOnly = Boolean(pool);
    f.query_type.value = pool ? str(pool.query_type) : 'chat';
    f.strategy.value = pool ? str(pool.strategy) : 'health';
    f.blacklisted.checked = Boolean(pool?.blacklisted);
    this.renderPoolChoices(pool ? list(pool.members) : [], pool?.realm ? str(pool.realm) : '');
    $('.form-title', form).textContent = pool ? `Edit pool ${pool.name}` : 'New pool';
    $('button[type="submit"]', form).textContent = pool ? 'Save pool' : 'Create pool';
    if (pool) f.query_type.focus();
  }

  poolBody() {
    const f = this.els.poolForm.elements;
    return {
      name: f.name.value.trim(),
      query_type: f.query_type.value,
      members: selectedValues(f.members),
      strategy: f.strategy.value,
      blacklisted: f.blacklisted.checked,
      realm: f.realm.value || null,
    };
  }

  async savePool() {
    const form = this.els.poolForm;
    const errorEl = this.els.poolsError;
    const editing = form.dataset.editing || '';
    const body = this.poolBody();
    let saved = false;
    try {
      if (editing) {
        const { name: _name, ...changes } = body;
        await api('PUT', `/api/admin/pools/${encodeURIComponent(editing)}`, changes);
      } else {
        await api('POST', '/api/admin/pools', body);
      }
      showError(errorEl, '', 'action');
      saved = true;
    } catch (err) {
      showError(errorEl, err.message, 'action');
    }
    await this.loadPools({ keepError: true });
    if (saved) this.editPool(null);
  }

  async deletePool(name) {
    const errorEl = this.els.poolsError;
    try {
      await api('DELETE', `/api/admin/pools/${encodeURIComponent(name)}`);
      showError(errorEl, '', 'action');
      if (this.els.poolForm.dataset.editing === name) this.editPool(null);
    } catch (err) {
      showError(errorEl, err.message, 'action');
    }
    await this.loadPools({ keepError: true });
  }

  /** The live workers changed: refresh the pool member choices (selection kept). */
  workersChanged() {
    this.renderPoolChoices();
  }
}
