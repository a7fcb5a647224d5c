// Speech from /api/tts/stream: playback starts with the first bytes, and the whole file is kept for
// download and the waveform. MP3 and AAC stream into the <audio> element through MediaSource; WAV is
// 16-bit PCM, scheduled on Web Audio as it arrives; other formats (Ogg/Opus, FLAC, which MediaSource
// cannot take as they are) and browsers without MediaSource play once the file is complete.

import {apiHeaders, ApiError, errorFrom} from './api.js';

export const EXTENSIONS = {mp3: 'mp3', wav: 'wav', aac: 'aac', opus: 'ogg', flac: 'flac'};

let current = null; // the speech playing now: {controller, context, audio}

/** Silence the Web Audio playback of the current speech (a WAV), if any. */
function stopWebAudio() {
  if (current?.context) current.context.close().catch(() => {});
  if (current) current.context = null;
}

/** Stop the speech that is playing or streaming, if any: only one speech may sound at a time. */
export function stopSpeech() {
  if (!current) return;
  current.controller.abort();
  stopWebAudio();
  current.audio.pause();
  current = null;
}

/**
 * POST `body` to /api/tts/stream and play it in `audio` while it streams.
 * Resolves to {blob, mime, how, complete, timings}: `timings` are milliseconds since the request
 * (firstByte, playing, end), `complete` is false when the stream broke off (the server ends it without
 * its final chunk when synthesis fails). Rejects with ApiError when the server refuses the request.
 */
export async function streamSpeech(body, audio) {
  stopSpeech();
  if (audio.src.startsWith('blob:')) URL.revokeObjectURL(audio.src); // the last answer's MediaSource or file
  // Empty the player: while a WAV streams on Web Audio, its Play must not bring back the last answer.
  audio.removeAttribute('src');
  audio.load();
  const controller = new AbortController();
  current = {controller, context: null, audio};
  const started = performance.now();
  const since = () => Math.round(performance.now() - started);
  const timings = {firstByte: null, playing: null, end: null};
  audio.addEventListener('playing', () => { timings.playing ??= since(); }, {once: true});

  let response;
  try {
    response = await fetch('api/tts/stream', {method: 'POST', headers: apiHeaders(true), body: JSON.stringify(body),
                                              cache: 'no-store', signal: controller.signal});
  } catch (error) {
    if (error.name === 'AbortError') throw error;
    throw new ApiError(0, `The server could not be reached (${error.message}).`, 'unreachable');
  }
  if (!response.ok) throw await errorFrom(response);
  const mime = (response.headers.get('Content-Type') || 'application/octet-stream').split(';')[0].trim();
  const reader = response.body.getReader();
  const parts = [];
  const read = async () => {
    const {value, done} = await reader.read();
    if (!done) {
      timings.firstByte ??= since();
      parts.push(value);
    }
    return done ? null : value;
  };

  let how;
  let complete = true;
  try {
    if (body.format === 'wav' && window.AudioContext) {
      how = 'web-audio';
      await playPcm(read, () => { timings.playing ??= since(); });
    } else if (window.MediaSource && ['mp3', 'aac'].includes(body.format) && MediaSource.isTypeSupported(mime)) {
      how = 'media-source';
      await playMediaSource(read, mime, audio);
    } else {
      how = 'whole-file';
      while (await read() !== null) { /* collect everything first */ }
    }
  } catch (error) {
    if (error.name === 'AbortError') throw error;
    complete = false; // a broken stream: keep and offer what arrived
  }
  timings.end = since();
  const blob = new Blob(parts, {type: mime});
  if (how !== 'media-source') {
    audio.src = URL.createObjectURL(blob);
    // Web Audio has played it already; the element holds it for replay. Otherwise play it now.
    if (how === 'whole-file') audio.play().catch(() => {});
    // Web Audio may still be sounding: the player's Play takes over instead of starting a second copy.
    if (how === 'web-audio') audio.addEventListener('play', stopWebAudio, {once: true, signal: controller.signal});
  }
  return {blob, mime, how, complete, timings};
}

/** Feed the stream into a MediaSource on `audio`, which plays as soon as it has enough. */
async function playMediaSource(read, mime, audio) {
  const source = new MediaSource();
  audio.src = URL.createObjectURL(source);
  await new Promise((resolve) => source.addEventListener('sourceopen', resolve, {once: true}));
  const buffer = source.addSourceBuffer(mime);
  audio.play().catch(() => {}); // starts once the first data is appended; a blocked autoplay leaves the controls
  try {
    for (let chunk = await read(); chunk !== null; chunk = await read()) {
      await new Promise((resolve, reject) => {
        buffer.addEventListener('updateend', resolve, {once: true});
        buffer.addEventListener('error', () => reject(new Error('The browser could not decode the audio.')),
                                {once: true});
        buffer.appendBuffer(chunk);
      });
    }
  } finally {
    // Whatever arrived stays playable (and seekable): the element learns the duration here.
    if (source.readyState === 'open' && !buffer.updating) source.endOfStream();
  }
}

/** Play a streamed WAV (a header, then 16-bit PCM) on Web Audio, each piece scheduled after the last. */
async function playPcm(read, onPlaying) {
  const context = new AudioContext();
  if (current) current.context = context;
  await context.resume();
  let pending = new Uint8Array(0);
  let format = null;
  let next = 0;
  for (let chunk = await read(); chunk !== null; chunk = await read()) {
    pending = concat(pending, chunk);
    if (!format) {
      format = wavFormat(pending);
      if (!format) continue; // the header has not all arrived yet
      pending = pending.subarray(format.dataOffset);
    }
    const frameBytes = 2 * format.channels;
    const usable = pending.length - (pending.length % frameBytes);
    if (!usable) continue;
    const audioBuffer = pcmBuffer(context, pending.subarray(0, usable), format);
    pending = pending.slice(usable);
    const node = context.createBufferSource();
    node.buffer = audioBuffer;
    node.connect(context.destination);
    // A little lead keeps the first piece whole; later pieces join the previous one without a gap.
    const at = Math.max(next, context.currentTime + 0.05);
    node.start(at);
    next = at + audioBuffer.duration;
    onPlaying();
  }
}

function concat(a, b) {
  if (!a.length) return b;
  const joined = new Uint8Array(a.length + b.length);
  joined.set(a);
  joined.set(b, a.length);
  return joined;
}

/** {rate, channels, dataOffset} of a 16-bit PCM WAV header, or null until all of it has arrived. */
export function wavFormat(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const text = (at) => String.fromCharCode(...bytes.subarray(at, at + 4));
  if (bytes.length < 12) return null;
  if (text(0) !== 'RIFF' || text(8) !== 'WAVE') throw new Error('The server did not send a WAV file.');
  let rate = 0;
  let channels = 0;
  for (let at = 12; at + 8 <= bytes.length;) {
    const id = text(at);
    const size = view.getUint32(at + 4, true);
    if (id === 'data') return rate ? {rate, channels, dataOffset: at + 8} : null;
    if (id === 'fmt ') {
      if (at + 24 > bytes.length) return null;
      channels = view.getUint16(at + 10, true);
      rate = view.getUint32(at + 12, true);
      if (view.getUint16(at + 22, true) !== 16) throw new Error('Only 16-bit WAV can play as it streams.');
    }
    at += 8 + size + (size % 2);
  }
  return null;
}

function pcmBuffer(context, bytes, {rate, channels}) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const frames = bytes.length / (2 * channels);
  const buffer = context.createBuffer(channels, frames, rate);
  for (let channel = 0; channel < channels; channel++) {
    const data = buffer.getChannelData(channel);
    for (let frame = 0; frame < frames; frame++) {
      data[frame] = view.getInt16(2 * (frame * channels + channel), true) / 32768;
    }
  }
  return buffer;
}

/** Decode `blob` and draw its waveform (the peaks of each pixel column) on `canvas`; resolves to seconds. */
export async function drawWaveform(canvas, blob) {
  const decoded = await new OfflineAudioContext(1, 1, 24000).decodeAudioData(await blob.arrayBuffer());
  const samples = decoded.getChannelData(0);
  const ratio = window.devicePixelRatio || 1;
  const width = Math.max(1, Math.round((canvas.clientWidth || 800) * ratio));
  const height = Math.max(1, Math.round((canvas.clientHeight || 120) * ratio));
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext('2d');
  context.clearRect(0, 0, width, height);
  context.fillStyle = getComputedStyle(canvas).color;
  // Scaled to the loudest sample, so quiet speech still shows its shape (as audio editors draw it).
  let peak = 0;
  for (const sample of samples) peak = Math.max(peak, Math.abs(sample));
  const middle = height / 2;
  const scale = middle / Math.max(peak, 1e-4);
  const perColumn = samples.length / width;
  for (let x = 0; x < width; x++) {
    let low = 0;
    let high = 0;
    const end = Math.min(samples.length, Math.ceil((x + 1) * perColumn));
    for (let i = Math.floor(x * perColumn); i < end; i++) {
      if (samples[i] < low) low = samples[i];
      if (samples[i] > high) high = samples[i];
    }
    // At least one pixel per column, so silence still shows as a line.
    context.fillRect(x, middle - high * scale, 1, Math.max(1, (high - low) * scale));
  }
  return decoded.duration;
}
