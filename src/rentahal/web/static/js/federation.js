// Sysop console: other installations (federation peers) through /api/admin/federation.
// Peer ids, URLs and services are shown as text, never parsed as HTML.

import { $, clear, h } from './dom.js';
import { api } from './admin.js';

const str = (value) => String(value ?? '');

function ago(seconds) {
  if (!seconds) return 'never';
  const delta = Math.max(0, Date.now() / 1000 - Number(seconds));
  if (delta < 60) return `${Math.round(delta)} s ago`;
  if (delta < 3600) return `${Math.round(delta / 60)} min ago`;
  return `${Math.round(delta / 3600)} h ago`;
}

function servicesText(services) {
  if (!services || typeof services !== 'object') return '-';
  const parts = Object.entries(services).map(([type, s]) =>
    `${type}: ${str(s?.workers)} workers, ${str(s?.free_capacity)} free, wait ${str(s?.est_wait_s)} s`);
  return parts.length ? parts.join('; ') : '-';
}

export class FederationPanel {
  constructor(root) {
    this.root = root;
    this.table = $('#federation-table', root);
    this.error = $('#federation-error', root);
    this.summary = $('#federation-summary', root);
    this.form = $('#federation-join-form', root);
    this.form.addEventListener('submit', (event) => {
      event.preventDefault();
      this.join(this.form.elements.url.value.trim());
    });
  }

  async load() {
    try {
      const data = await api('GET', '/api/admin/federation');
      this.render(data);
      this.error.textContent = '';
    } catch (err) {
      this.error.textContent = `Could not load the federation: ${err.message}`;
    }
  }

  render(data) {
    const metrics = data?.federation_metrics?.cross_federation_queries || {};
    this.summary.textContent = `This installation: ${str(data?.federation_id)} at ${str(data?.callback_url)}`
      + ` (trust: ${str(data?.trust)}); queries out ${str(metrics.out ?? 0)}, in ${str(metrics.in ?? 0)}`;
    const body = this.table.tBodies[0];
    clear(body);
    const peers = Array.isArray(data?.peers) ? data.peers : [];
    if (!peers.length) {
      body.append(h('tr', {}, h('td', { colspan: '8', class: 'muted', text: 'No peers yet.' })));
      return;
    }
    for (const peer of peers) {
      const id = str(peer.federation_id);
      const actions = h('td', {});
      if (peer.state === 'pending' || peer.state === 'blocked') {
        actions.append(h('button', { type: 'button', class: 'btn-small', onclick: () => this.act('POST', id, 'approve') },
          peer.state === 'pending' ? 'Approve' : 'Unblock'));
      }
      if (peer.state !== 'blocked') {
        actions.append(h('button', { type: 'button', class: 'btn-small btn-danger', onclick: () => this.act('POST', id, 'block') }, 'Block'));
      }
      actions.append(h('button', { type: 'button', class: 'btn-small btn-ghost', onclick: () => this.act('DELETE', id) }, 'Remove'));
      body.append(h('tr', { dataset: { peer: id } },
        h('td', { text: id }),
        h('td', { text: str(peer.callback_url) }),
        h('td', { text: str(peer.state), class: `state-${str(peer.state)}` }),
        h('td', { text: ago(peer.last_seen) }),
        h('td', { text: peer.rtt_ms == null ? '-' : `${str(peer.rtt_ms)} ms` }),
        h('td', { text: servicesText(peer.services) }),
        h('td', { text: `${str(peer.queries_out ?? 0)} / ${str(peer.queries_in ?? 0)}` }),
        actions));
    }
  }

  async act(method, id, action) {
    const url = `/api/admin/federation/peers/${encodeURIComponent(id)}${action ? `/${action}` : ''}`;
    try {
      await api(method, url);
    } catch (err) {
      this.error.textContent = err.message;
    }
    await this.load();
  }

  async join(url) {
    if (!url) return;
    try {
      const answer = await api('POST', '/api/admin/federation/join', { url });
      this.error.textContent = answer?.status === 'pending' ? 'The other installation holds the join for its sysop.' : '';
    } catch (err) {
      this.error.textContent = err.message;
    }
    await this.load();
  }
}
