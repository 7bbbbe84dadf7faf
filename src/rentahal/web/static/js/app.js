// RENT-A-HAL browser client: wires the connection to the page.

import { $, clear, fillKv, h, money, seconds } from './dom.js';
import { Connection, showConnectionState } from './ws.js';
import { Conversation } from './render.js';
import { PendingQueries } from './queue.js';
import { renderHistory } from './history.js';
import { VisionInput, sendVisionChunks } from './vision.js';
import { Recorder, bindRecorder } from './speech.js';
import { SysopConsole } from './sysop.js';
import { Dashboard } from './dashboard.js';
import { initTheme } from './theme.js';

const BANNED_MESSAGE = 'You are banned from using this service.';
const MAX_MESSAGES = 200;

const state = {
  user: null,
  workers: [],
  hfModels: [],
  totalCost: 0,
  recorded: null, // {base64, url}
  banned: false,
  activeUsers: [],
};

const els = {
  prompt: $('#prompt'),
  queryType: $('#query-type'),
  modelType: $('#model-type'),
  modelSelect: $('#model-select'),
  form: $('#query-form'),
  send: $('#send'),
  sendHint: $('#send-hint'),
  connection: $('#connection-state'),
  reconnectInfo: $('#reconnect-info'),
  totalCost: $('#total-cost'),
  userNick: $('#user-nick'),
  userInfo: $('#user-info'),
  nickname: $('#nickname'),
  nicknameForm: $('#nickname-form'),
  nicknameError: $('#nickname-error'),
  notice: $('#notice'),
  banned: $('#banned-banner'),
  history: $('#history'),
  messages: $('#messages'),
  activeUsersBox: $('#active-users-box'),
  activeUsers: $('#active-users'),
  visionBox: $('#vision-box'),
  mic: $('#mic'),
  transcribe: $('#transcribe'),
  tts: $('#tts'),
  speakAnswers: $('#speak-answers'),
  recordedAudio: $('#recorded-audio'),
  transcription: $('#transcription'),
  ttsAudio: $('#tts-audio'),
};

const conn = new Connection();
const conversation = new Conversation($('#conversation'), { onSpeak: speak });
const pending = new PendingQueries($('#pending-list'), $('#queue-depth'), {
  onCancel: (entry) => send({ type: 'cancel_query', job_id: entry.jobId }),
});
const vision = new VisionInput({
  fileInput: $('#vision-file'),
  drop: $('#vision-drop'),
  preview: $('#vision-preview'),
  nameEl: $('#vision-file-name'),
  progress: $('#vision-progress'),
  clearBtn: $('#vision-clear'),
  webcamStart: $('#webcam-start'),
  webcamCapture: $('#webcam-capture'),
  webcamStop: $('#webcam-stop'),
  video: $('#webcam-video'),
}, { onError: notify });
const sysop = new SysopConsole($('#sysop-panel'), conn, { notify });
const dashboard = new Dashboard($('#dashboard'));
const recorder = new Recorder();

// ---- small helpers ---------------------------------------------------------

let noticeTimer = null;
function notify(message) {
  els.notice.textContent = String(message);
  els.notice.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => { els.notice.hidden = true; }, 8000);
}

function send(message) {
  if (state.banned) return false;
  const sent = conn.send(message);
  if (!sent) notify('Not connected; waiting to reconnect.');
  return sent;
}

function showCost() {
  els.totalCost.textContent = money(state.totalCost);
  els.totalCost.dataset.value = String(state.totalCost);
}

function speak(text) {
  if (!text.trim()) {
    notify('Nothing to speak.');
    return;
  }
  send({ type: 'text_to_speech', text });
}

// ---- models ----------------------------------------------------------------

function workerTypeFor(queryType) {
  return queryType === 'speech' ? 'chat' : queryType;
}

function refreshModels() {
  const queryType = els.queryType.value;
  const modelType = els.modelType.value;
  const wanted = workerTypeFor(queryType);
  const previous = els.modelSelect.value;
  const live = state.workers.filter((w) => w.type === wanted && !w.is_blacklisted);
  let names = [];
  if (modelType === 'huggingface') {
    names = state.hfModels.filter((m) => !m.type || m.type === wanted).map((m) => String(m.name));
  } else if (modelType === 'worker_node') {
    names = live.flatMap((w) => (Array.isArray(w.models) ? w.models.map(String) : []));
  }
  names = [...new Set(names)].sort();
  clear(els.modelSelect).append(h('option', { value: '' }, 'any'), ...names.map((n) => h('option', { value: n }, n)));
  if (names.includes(previous)) els.modelSelect.value = previous;
  els.visionBox.hidden = queryType !== 'vision';
  if (modelType === 'worker_node') {
    els.sendHint.textContent = live.length
      ? `${live.length} live ${wanted} worker${live.length === 1 ? '' : 's'}`
      : `no live ${wanted} worker`;
  } else {
    els.sendHint.textContent = '';
  }
}

function selectModel(name) {
  if (!name) {
    els.modelSelect.value = '';
    return;
  }
  if (![...els.modelSelect.options].some((o) => o.value === name)) {
    els.modelSelect.append(h('option', { value: name }, name));
  }
  els.modelSelect.value = name;
}

// ---- submitting ------------------------------------------------------------

function submit() {
  if (state.banned) return;
  const prompt = els.prompt.value.trim();
  const queryType = els.queryType.value;
  const modelType = els.speakAnswers.checked ? 'speech' : els.modelType.value;
  const modelName = els.modelSelect.value;

  if (queryType === 'vision') {
    if (!vision.image) {
      notify('Choose an image for a vision query.');
      return;
    }
    if (!conn.open) {
      notify('Not connected; waiting to reconnect.');
      return;
    }
    const turn = conversation.addQuestion({ prompt, queryType, modelName, imageUrl: vision.image.dataUrl });
    const entry = pending.add({ prompt: prompt || '(image)', queryType, turn, state: 'uploading' });
    try {
      const { totalChunks } = sendVisionChunks(conn, {
        base64: vision.image.base64, prompt, modelType, modelName,
      });
      vision.beginUpload(totalChunks);
    } catch (err) {
      pending.remove(entry);
      conversation.addError(err.message, turn);
      return;
    }
    els.prompt.value = '';
    return;
  }

  const query = { prompt, query_type: queryType, model_type: modelType, model_name: modelName };
  if (queryType === 'speech') {
    if (!state.recorded) {
      notify('Record a question first (Record button).');
      return;
    }
    query.audio = state.recorded.base64;
  } else if (!prompt) {
    notify('Type a prompt first.');
    els.prompt.focus();
    return;
  }
  if (!send({ type: 'submit_query', query })) return;
  const turn = conversation.addQuestion({ prompt, queryType, modelName, hasAudio: queryType === 'speech' });
  pending.add({ prompt: prompt || '(recording)', queryType, turn });
  els.prompt.value = '';
}

function rerun(row) {
  const queryType = ['chat', 'vision', 'imagine', 'speech'].includes(row.query_type) ? row.query_type : 'chat';
  els.speakAnswers.checked = row.model_type === 'speech';
  if (['worker_node', 'huggingface', 'claude'].includes(row.model_type)) els.modelType.value = row.model_type;
  els.prompt.value = String(row.prompt ?? '');
  if (queryType === 'vision') {
    els.queryType.value = 'vision';
    refreshModels();
    selectModel(String(row.model_name ?? ''));
    notify('Choose the image again to re-run a vision query.');
    $('#vision-file').focus();
    return;
  }
  // a speech query's audio is not stored: its transcribed prompt runs as chat
  els.queryType.value = queryType === 'speech' ? 'chat' : queryType;
  refreshModels();
  selectModel(String(row.model_name ?? ''));
  if (els.prompt.value.trim()) submit();
  else els.prompt.focus();
}

// ---- incoming messages -----------------------------------------------------

function showUser(user) {
  state.user = user;
  els.userNick.textContent = user.nickname ?? '';
  if (document.activeElement !== els.nickname) els.nickname.value = user.nickname ?? '';
  els.nicknameError.textContent = '';
  fillKv(els.userInfo, [
    ['Nickname', user.nickname],
    ['Queries', String(user.query_count ?? 0)],
    ['Query time', seconds(user.total_query_time)],
    ['Role', user.is_sysop ? 'sysop' : 'user'],
  ]);
  state.totalCost = Number(user.total_cost) || 0;
  showCost();
  sysop.setVisible(Boolean(user.is_sysop));
  els.activeUsersBox.hidden = !user.is_sysop;
  if (user.is_sysop) {
    sysop.updateUser(user);
    showActiveUsers();
  }
  if (user.is_banned) banned();
}

/** The `user_totals` a result carries: our totals after it. False when there are none. */
function applyTotals(totals) {
  if (!totals || typeof totals !== 'object' || !state.user) return false;
  const { query_count, total_query_time, total_cost } = totals;
  showUser({ ...state.user, query_count, total_query_time, total_cost });
  return true;
}

function banned() {
  if (state.banned) return;
  state.banned = true;
  els.banned.hidden = false;
  conn.stop();
  // nothing on the page can reach the server any more: say so by disabling its controls
  for (const form of [els.form, els.nicknameForm]) {
    for (const control of form.elements) control.disabled = true;
  }
  for (const entry of [...pending.entries]) pending.remove(entry);
}

function addMessage(text) {
  const item = h('li', { class: 'message' },
    h('time', { class: 'muted', text: new Date().toLocaleTimeString() }),
    h('span', { class: 'message-text', text: String(text ?? '') }));
  els.messages.append(item);
  while (els.messages.childElementCount > MAX_MESSAGES) els.messages.firstElementChild.remove();
  els.messages.scrollTop = els.messages.scrollHeight;
}

function showActiveUsers(users = state.activeUsers) {
  state.activeUsers = Array.isArray(users) ? users : [];
  clear(els.activeUsers);
  for (const guid of state.activeUsers) {
    const known = sysop.users.find((u) => u.guid === guid);
    els.activeUsers.append(h('li', {}, known ? `${known.nickname} (${guid})` : String(guid)));
  }
}

function handleError(msg) {
  applyTotals(msg.user_totals);
  const message = String(msg.message ?? 'Error');
  if (message === BANNED_MESSAGE) {
    banned();
    return;
  }
  if (msg.job_id != null) {
    const entry = pending.take(msg.job_id);
    conversation.addError(message, entry?.turn);
    return;
  }
  if (/nickname/i.test(message)) {
    els.nicknameError.textContent = message;
    notify(message);
    return;
  }
  // an error without a job id right after a submission rejects that submission
  // (e.g. "Queue is full, please try again later")
  const entry = pending.oldestUnassigned();
  if (entry && entry.state !== 'uploading' && !/unknown message type/i.test(message)) {
    pending.remove(entry);
    conversation.addError(message, entry.turn);
  } else if (entry && entry.state === 'uploading' && /image|vision|chunk|upload/i.test(message)) {
    pending.remove(entry);
    vision.uploadComplete();
    conversation.addError(message, entry.turn);
  }
  notify(message);
}

const handlers = {
  set_cookie(msg) {
    if (msg.name !== 'user_guid' || typeof msg.value !== 'string') return;
    document.cookie = `user_guid=${encodeURIComponent(msg.value)}; path=/; max-age=31536000; SameSite=Strict`;
  },
  user_info(msg) {
    if (msg.data && typeof msg.data === 'object') showUser(msg.data);
  },
  error: handleError,
  sysop_message(msg) { addMessage(msg.message); },
  previous_queries(msg) { renderHistory(els.history, msg.data, { onRerun: rerun }); },
  worker_update(msg) {
    state.workers = Array.isArray(msg.workers) ? msg.workers : [];
    refreshModels();
    sysop.setWorkers(state.workers);
  },
  huggingface_update(msg) {
    state.hfModels = Array.isArray(msg.models) ? msg.models : [];
    refreshModels();
  },
  active_users(msg) { showActiveUsers(msg.users); },
  queue_update(msg) { pending.setDepth(msg.depth, msg.total); },
  pending_jobs(msg) {
    const alive = new Set((Array.isArray(msg.job_ids) ? msg.job_ids : []).map(String));
    for (const entry of [...pending.entries]) {
      if (entry.jobId === null || alive.has(String(entry.jobId))) continue;
      pending.remove(entry);
      conversation.addNote(
        'This query was lost while the server restarted; please send it again.', entry.turn);
    }
  },
  query_queued(msg) {
    const entry = pending.queued(msg);
    if (entry.state === 'uploading') pending.setState(entry, 'queued');
  },
  queue_position(msg) { pending.positionUpdate(msg); },
  query_result(msg) {
    const entry = pending.take(msg.job_id ?? null);
    conversation.addAnswer(msg, entry?.turn);
    if (!applyTotals(msg.user_totals)) {
      state.totalCost += Number(msg.cost) || 0;
      showCost();
    }
    send({ type: 'get_previous_queries' });
  },
  query_cancelled(msg) {
    const entry = pending.take(msg.job_id);
    if (entry) conversation.addNote('Cancelled.', entry.turn);
  },
  query_terminated(msg) {
    if (state.user && msg.guid === state.user.guid) {
      for (const entry of [...pending.entries]) {
        pending.remove(entry);
        conversation.addNote('Terminated by the sysop.', entry.turn);
      }
    } else if (sysop.visible) {
      notify('Queries terminated.');
    }
  },
  user_banned(msg) {
    sysop.userBanned(msg.guid, true);
    if (state.user && msg.guid === state.user.guid) banned();
  },
  user_unbanned(msg) { sysop.userBanned(msg.guid, false); },
  system_stats(msg) { sysop.setSystemStats(msg.data); },
  user_stats(msg) {
    sysop.setUsers(msg.data);
    showActiveUsers();
  },
  worker_health(msg) { sysop.mergeWorkerHealth(msg.data); },
  transcription_result(msg) {
    const text = String(msg.text ?? '');
    els.transcription.textContent = text ? `Transcription: ${text}` : 'Nothing was recognised.';
    if (text) els.prompt.value = els.prompt.value.trim() ? `${els.prompt.value.trim()} ${text}` : text;
  },
  speech_result(msg) {
    const audio = String(msg.audio ?? '');
    if (!/^[A-Za-z0-9+/=\s]+$/.test(audio)) return;
    els.ttsAudio.src = `data:audio/wav;base64,${audio.replace(/\s/g, '')}`;
    els.ttsAudio.hidden = false;
    els.ttsAudio.play?.().catch(() => { /* autoplay blocked: the controls remain */ });
  },
  vision_chunk_received() { vision.chunkReceived(); },
  vision_upload_complete() {
    vision.uploadComplete();
    const entry = pending.entries.find((e) => e.state === 'uploading');
    if (entry) pending.setState(entry, 'sending');
  },
};

conn.addEventListener('message', (event) => {
  const msg = event.detail;
  const handler = Object.prototype.hasOwnProperty.call(handlers, msg.type) ? handlers[msg.type] : null;
  if (!handler) return; // unknown types are ignored, as the original client does
  try {
    handler(msg);
  } catch (err) {
    console.error('handling', msg.type, err);
  }
});

showConnectionState(conn, els.connection, els.reconnectInfo, {
  onConnected: () => {
    send({ type: 'get_previous_queries' });
    // after a reconnect, learn which of our queries the server still has
    if (pending.entries.some((e) => e.jobId !== null)) send({ type: 'get_pending_jobs' });
  },
  isBanned: () => state.banned,
});

// ---- page controls ---------------------------------------------------------

els.form.addEventListener('submit', (event) => {
  event.preventDefault();
  submit();
});
els.prompt.addEventListener('keydown', (event) => {
  if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    submit();
  }
});
els.queryType.addEventListener('change', refreshModels);
els.modelType.addEventListener('change', refreshModels);

els.nicknameForm.addEventListener('submit', (event) => {
  event.preventDefault();
  const nickname = els.nickname.value.trim();
  if (!nickname) {
    els.nicknameError.textContent = 'A nickname cannot be empty.';
    return;
  }
  els.nicknameError.textContent = '';
  send({ type: 'set_nickname', nickname });
});

bindRecorder(recorder, { mic: els.mic, transcribe: els.transcribe, audio: els.recordedAudio }, {
  notify,
  onRecorded: (recording) => { state.recorded = recording; },
});
els.transcribe.addEventListener('click', () => {
  if (!state.recorded) return;
  if (send({ type: 'speech_to_text', audio: state.recorded.base64 })) els.transcription.textContent = 'Transcribing…';
});
els.tts.addEventListener('click', () => speak(els.prompt.value));

initTheme($('#theme-toggle'));
refreshModels();
showCost();
conn.connect();
dashboard.start();

// handy for debugging and browser tests
globalThis.rentahal = { conn, state, pending };
