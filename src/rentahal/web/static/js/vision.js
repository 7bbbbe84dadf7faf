// Vision input: file picker, drag and drop, webcam capture, chunked upload.

import { randomId } from './dom.js';

export const CHUNK_CHARS = 1024 * 1024;

export function splitChunks(base64, size = CHUNK_CHARS) {
  const chunks = [];
  for (let at = 0; at < base64.length; at += size) chunks.push(base64.slice(at, at + size));
  return chunks.length ? chunks : [''];
}

export function readAsDataUrl(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result));
    reader.onerror = () => reject(reader.error || new Error('could not read the file'));
    reader.readAsDataURL(blob);
  });
}

/** Send the image as `vision_chunk` messages; returns {imageId, totalChunks}. */
export function sendVisionChunks(conn, { base64, prompt, modelType, modelName }) {
  const imageId = randomId();
  const chunks = splitChunks(base64);
  chunks.forEach((chunkData, index) => {
    const sent = conn.send({
      type: 'vision_chunk',
      chunk_id: index,
      total_chunks: chunks.length,
      chunk_data: chunkData,
      image_id: imageId,
      prompt,
      model_type: modelType,
      model_name: modelName,
      query_type: 'vision',
    });
    if (!sent) throw new Error('Not connected: the image was not sent.');
  });
  return { imageId, totalChunks: chunks.length };
}

export class VisionInput {
  constructor(els, { onError } = {}) {
    this.els = els;
    this.onError = onError || (() => {});
    this.image = null; // {base64, dataUrl, name}
    this.stream = null;
    this.upload = null; // {total, received}
    this.bind();
  }

  bind() {
    const { fileInput, drop, clearBtn, webcamStart, webcamCapture, webcamStop } = this.els;
    fileInput.addEventListener('change', () => {
      if (fileInput.files?.[0]) this.setFile(fileInput.files[0]);
    });
    for (const name of ['dragenter', 'dragover']) {
      drop.addEventListener(name, (event) => {
        event.preventDefault();
        drop.classList.add('dragging');
      });
    }
    for (const name of ['dragleave', 'drop']) {
      drop.addEventListener(name, () => drop.classList.remove('dragging'));
    }
    drop.addEventListener('drop', (event) => {
      event.preventDefault();
      const file = event.dataTransfer?.files?.[0];
      if (file) this.setFile(file);
    });
    drop.addEventListener('keydown', (event) => {
      if (event.key === 'Enter' || event.key === ' ') {
        event.preventDefault();
        fileInput.click();
      }
    });
    clearBtn.addEventListener('click', () => this.clear());

    if (navigator.mediaDevices?.getUserMedia) {
      webcamStart.hidden = false;
      webcamStart.addEventListener('click', () => this.startWebcam());
      webcamCapture.addEventListener('click', () => this.capture());
      webcamStop.addEventListener('click', () => this.stopWebcam());
    }
  }

  async setFile(file) {
    if (!file.type.startsWith('image/')) {
      this.onError('Please choose an image file.');
      return;
    }
    try {
      const dataUrl = await readAsDataUrl(file);
      this.setDataUrl(dataUrl, file.name);
    } catch (err) {
      this.onError(`Could not read the image: ${err.message}`);
    }
  }

  setDataUrl(dataUrl, name) {
    const comma = dataUrl.indexOf(',');
    this.image = { dataUrl, base64: dataUrl.slice(comma + 1), name };
    this.els.preview.src = dataUrl;
    this.els.preview.hidden = false;
    this.els.nameEl.textContent = name;
    this.setProgress(0, 1);
  }

  clear() {
    this.image = null;
    this.els.fileInput.value = '';
    this.els.preview.hidden = true;
    this.els.preview.removeAttribute('src');
    this.els.nameEl.textContent = '';
  }

  async startWebcam() {
    try {
      this.stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
    } catch (err) {
      this.onError(`Webcam unavailable: ${err.message}`);
      return;
    }
    const { video, webcamStart, webcamCapture, webcamStop } = this.els;
    video.srcObject = this.stream;
    video.hidden = false;
    webcamStart.hidden = true;
    webcamCapture.hidden = false;
    webcamStop.hidden = false;
  }

  capture() {
    const { video } = this.els;
    if (!this.stream || !video.videoWidth) return;
    const canvas = document.createElement('canvas');
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
    canvas.getContext('2d').drawImage(video, 0, 0);
    this.setDataUrl(canvas.toDataURL('image/png'), 'webcam.png');
  }

  stopWebcam() {
    this.stream?.getTracks().forEach((t) => t.stop());
    this.stream = null;
    const { video, webcamStart, webcamCapture, webcamStop } = this.els;
    video.srcObject = null;
    video.hidden = true;
    webcamStart.hidden = false;
    webcamCapture.hidden = true;
    webcamStop.hidden = true;
  }

  beginUpload(totalChunks) {
    this.upload = { total: totalChunks, received: 0 };
    this.setProgress(0, totalChunks);
  }

  /** A `vision_chunk_received` arrived. */
  chunkReceived() {
    if (!this.upload) return;
    this.upload.received = Math.min(this.upload.total, this.upload.received + 1);
    this.setProgress(this.upload.received, this.upload.total);
  }

  /** `vision_upload_complete` arrived. */
  uploadComplete() {
    if (this.upload) this.setProgress(this.upload.total, this.upload.total);
    this.upload = null;
  }

  setProgress(value, max) {
    const bar = this.els.progress;
    bar.max = Math.max(1, max);
    bar.value = value;
    bar.dataset.received = String(value);
    bar.dataset.total = String(max);
    bar.setAttribute('aria-valuetext', `${value} of ${max} chunks`);
  }
}
