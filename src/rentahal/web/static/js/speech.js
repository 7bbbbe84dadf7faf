// Microphone recording (MediaRecorder, webm/opus) and base64 helpers.

export function blobToBase64(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => {
      const url = String(reader.result);
      resolve(url.slice(url.indexOf(',') + 1));
    };
    reader.onerror = () => reject(reader.error || new Error('could not read the recording'));
    reader.readAsDataURL(blob);
  });
}

function pickMime() {
  const candidates = ['audio/webm;codecs=opus', 'audio/webm', 'audio/ogg;codecs=opus'];
  return candidates.find((m) => globalThis.MediaRecorder?.isTypeSupported?.(m)) || '';
}

export class Recorder {
  constructor() {
    this.recorder = null;
    this.stream = null;
    this.chunks = [];
  }

  static get available() {
    return Boolean(navigator.mediaDevices?.getUserMedia && globalThis.MediaRecorder);
  }

  get recording() {
    return this.recorder?.state === 'recording';
  }

  async start() {
    this.stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    const mimeType = pickMime();
    this.recorder = new MediaRecorder(this.stream, mimeType ? { mimeType } : undefined);
    this.chunks = [];
    this.recorder.addEventListener('dataavailable', (e) => {
      if (e.data?.size) this.chunks.push(e.data);
    });
    this.recorder.start();
  }

  /** Stop and resolve to {blob, base64, url}. */
  stop() {
    return new Promise((resolve, reject) => {
      if (!this.recorder) {
        reject(new Error('not recording'));
        return;
      }
      this.recorder.addEventListener('stop', async () => {
        this.stream?.getTracks().forEach((t) => t.stop());
        const blob = new Blob(this.chunks, { type: this.recorder.mimeType || 'audio/webm' });
        this.recorder = null;
        this.stream = null;
        try {
          resolve({ blob, base64: await blobToBase64(blob), url: URL.createObjectURL(blob) });
        } catch (err) {
          reject(err);
        }
      }, { once: true });
      this.recorder.stop();
    });
  }
}

/** Wire the Record toggle button: start, stop, show the recording. */
export function bindRecorder(recorder, { mic, transcribe, audio }, { notify, onRecorded }) {
  if (!Recorder.available) {
    mic.disabled = true;
    mic.title = 'No microphone access in this browser';
    return;
  }
  const show = (recording) => {
    mic.textContent = recording ? 'Stop recording' : 'Record';
    mic.setAttribute('aria-pressed', String(recording));
    mic.classList.toggle('recording', recording);
  };
  mic.addEventListener('click', async () => {
    if (recorder.recording) {
      try {
        const recording = await recorder.stop();
        audio.src = recording.url;
        audio.hidden = false;
        transcribe.disabled = false;
        onRecorded(recording);
      } catch (err) {
        notify(`Recording failed: ${err.message}`);
      }
      show(false);
      return;
    }
    try {
      await recorder.start();
    } catch (err) {
      notify(`Microphone unavailable: ${err.message}`);
      return;
    }
    show(true);
  });
}
