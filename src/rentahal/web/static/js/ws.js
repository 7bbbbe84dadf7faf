// The WebSocket connection: reconnect with exponential back-off, pong heartbeat.

const PONG_INTERVAL_MS = 25_000;
const BACKOFF_MIN_MS = 1_000;
const BACKOFF_MAX_MS = 30_000;

export function wsUrl(path = '/ws') {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}${path}`;
}

/** Delay before reconnect attempt `attempt` (0-based): 1 s, 2 s, 4 s ... 30 s. */
export function backoffDelay(attempt) {
  return Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** Math.max(0, attempt));
}

/**
 * Events (CustomEvent.detail):
 *  - `state`   {state: 'connected'|'reconnecting'|'disconnected', delayMs?, attempt?}
 *  - `message` the parsed JSON object
 */
export class Connection extends EventTarget {
  constructor(url = wsUrl()) {
    super();
    this.url = url;
    this.socket = null;
    this.attempt = 0;
    this.stopped = false;
    this.retryTimer = null;
    this.pongTimer = null;
    this.state = 'disconnected';
  }

  connect() {
    if (this.stopped) return;
    clearTimeout(this.retryTimer);
    let socket;
    try {
      socket = new WebSocket(this.url);
    } catch {
      this.scheduleReconnect();
      return;
    }
    this.socket = socket;
    socket.addEventListener('open', () => {
      if (socket !== this.socket) return;
      this.attempt = 0;
      this.setState('connected');
      this.startPong();
    });
    socket.addEventListener('message', (event) => {
      if (socket !== this.socket) return;
      let data;
      try {
        data = JSON.parse(event.data);
      } catch {
        return;
      }
      if (data && typeof data === 'object' && typeof data.type === 'string') {
        this.dispatchEvent(new CustomEvent('message', { detail: data }));
      }
    });
    socket.addEventListener('close', () => {
      if (socket !== this.socket) return;
      this.stopPong();
      this.socket = null;
      if (this.stopped) this.setState('disconnected');
      else this.scheduleReconnect();
    });
    // 'error' is always followed by 'close'; nothing to do here.
  }

  scheduleReconnect() {
    if (this.stopped) return;
    const delayMs = backoffDelay(this.attempt);
    this.attempt += 1;
    this.setState('reconnecting', { delayMs, attempt: this.attempt });
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.connect(), delayMs);
  }

  /** Stop for good (e.g. banned): no more reconnects. */
  stop() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    this.stopPong();
    const socket = this.socket;
    this.socket = null;
    if (socket && socket.readyState <= WebSocket.OPEN) socket.close();
    this.setState('disconnected');
  }

  get open() {
    return this.socket?.readyState === WebSocket.OPEN;
  }

  /** Send a message object; false when not connected. */
  send(message) {
    if (!this.open) return false;
    this.socket.send(JSON.stringify(message));
    return true;
  }

  startPong() {
    this.stopPong();
    this.pongTimer = setInterval(() => this.send({ type: 'pong' }), PONG_INTERVAL_MS);
  }

  stopPong() {
    clearInterval(this.pongTimer);
    this.pongTimer = null;
  }

  setState(state, extra = {}) {
    this.state = state;
    this.dispatchEvent(new CustomEvent('state', { detail: { state, ...extra } }));
  }
}

/** Keep the connection indicator and the reconnect countdown up to date. */
export function showConnectionState(conn, indicator, info, { onConnected, isBanned } = {}) {
  let countdown = null;
  conn.addEventListener('state', (event) => {
    const { state, delayMs, attempt } = event.detail;
    indicator.textContent = state;
    indicator.className = `conn conn-${state}`;
    indicator.dataset.state = state;
    clearInterval(countdown);
    info.textContent = '';
    if (state === 'connected') {
      onConnected?.();
    } else if (state === 'reconnecting') {
      const due = Date.now() + delayMs;
      const tick = () => {
        const left = Math.max(0, Math.ceil((due - Date.now()) / 1000));
        info.textContent = `retry ${attempt} in ${left}s`;
      };
      tick();
      countdown = setInterval(tick, 500);
    } else if (isBanned?.()) {
      info.textContent = 'banned';
    }
  });
}
