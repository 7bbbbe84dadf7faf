// The conversation: questions and their answers (text, image, audio).

import { h, money, seconds } from './dom.js';
import { renderMarkdown } from './markdown.js';

const BASE64 = /^[A-Za-z0-9+/=\s]*$/;

function dataUrl(mime, base64) {
  const clean = String(base64 ?? '').replace(/^data:[^,]*,/, '');
  return BASE64.test(clean) ? `data:${mime};base64,${clean.replace(/\s/g, '')}` : null;
}

export class Conversation {
  constructor(root, { onSpeak } = {}) {
    this.root = root;
    this.onSpeak = onSpeak;
  }

  scrollToEnd(node) {
    node.scrollIntoView?.({ block: 'nearest', behavior: 'smooth' });
  }

  /** Add the user's question; returns the turn element the answer goes into. */
  addQuestion({ prompt, queryType, modelName, imageUrl, hasAudio }) {
    const label = [queryType, modelName].filter(Boolean).join(' · ');
    const question = h('div', { class: 'question' },
      h('div', { class: 'question-meta muted', text: label }),
      prompt ? h('div', { class: 'question-text', text: prompt }) : null,
      imageUrl ? h('img', { class: 'question-image', src: imageUrl, alt: 'Image sent with the question' }) : null,
      hasAudio ? h('div', { class: 'muted', text: '🎤 recorded audio' }) : null,
    );
    const turn = h('div', { class: 'turn' }, question);
    this.root.append(turn);
    this.scrollToEnd(turn);
    return turn;
  }

  /** Add a `query_result` message as an `.answer`. */
  addAnswer(msg, turn = null) {
    const target = turn || this.root.appendChild(h('div', { class: 'turn' }));
    const resultType = msg.result_type || 'text';
    const answer = h('article', {
      class: `answer answer-${resultType}`,
      dataset: { resultType, ...(msg.job_id ? { jobId: String(msg.job_id) } : {}) },
      tabindex: '-1',
    });
    const name = `rentahal-${String(msg.job_id || Date.now()).replace(/[^\w-]/g, '')}`;

    if (resultType === 'image') {
      const src = dataUrl('image/png', msg.result);
      if (src) {
        answer.append(h('figure', { class: 'answer-figure' },
          h('img', { class: 'answer-image', src, alt: 'Generated image' }),
          h('figcaption', {}, h('a', { class: 'answer-download', href: src, download: `${name}.png` }, 'Download PNG')),
        ));
      } else {
        answer.append(h('div', { class: 'answer-text error-text', text: 'The image could not be decoded.' }));
      }
    } else if (resultType === 'audio') {
      const src = dataUrl('audio/wav', msg.result);
      if (src) {
        answer.append(
          h('audio', { class: 'answer-audio', controls: true, src, preload: 'auto' }),
          h('a', { class: 'answer-download', href: src, download: `${name}.wav` }, 'Download WAV'),
        );
      } else {
        answer.append(h('div', { class: 'answer-text error-text', text: 'The audio could not be decoded.' }));
      }
    } else {
      const text = h('div', { class: 'answer-text markdown' });
      text.append(renderMarkdown(msg.result));
      answer.append(text);
    }

    const meta = h('footer', { class: 'answer-meta muted' },
      h('span', { class: 'answer-time', title: 'Processing time' }, seconds(msg.processing_time)),
      h('span', { class: 'answer-cost', title: 'Cost' }, money(msg.cost)),
      msg.queue_wait != null ? h('span', { class: 'answer-wait', title: 'Time spent in the queue' }, `queued ${seconds(msg.queue_wait)}`) : null,
      msg.worker ? h('span', { class: 'answer-worker', title: 'Worker' }, String(msg.worker)) : null,
      msg.realm ? h('span', { class: 'answer-realm', title: 'Realm' }, String(msg.realm)) : null,
      Number(msg.attempts) > 1 ? h('span', { class: 'answer-attempts', title: 'Attempts' }, `${msg.attempts} attempts`) : null,
    );
    if (resultType === 'text' && this.onSpeak) {
      meta.append(h('button', {
        type: 'button', class: 'btn-small speak-answer', 'aria-label': 'Speak this answer',
        onclick: () => this.onSpeak(String(msg.result ?? '')),
      }, 'Speak'));
    }
    answer.append(meta);
    target.append(answer);
    this.scrollToEnd(answer);
    return answer;
  }

  /** An error that belongs to a query (or to the conversation at large). */
  addError(message, turn = null) {
    const target = turn || this.root.appendChild(h('div', { class: 'turn' }));
    const node = h('div', { class: 'answer-error', role: 'alert' }, String(message ?? 'Error'));
    target.append(node);
    this.scrollToEnd(node);
    return node;
  }

  addNote(text, turn = null) {
    const target = turn || this.root.appendChild(h('div', { class: 'turn' }));
    const node = h('div', { class: 'answer-note muted' }, String(text));
    target.append(node);
    return node;
  }
}
