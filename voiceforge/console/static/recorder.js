// Microphone recording with MediaRecorder: raw input (no noise suppression), in a format the server decodes.

// What Chromium, Firefox and Safari record; the server decodes each by its content.
const TYPES = ['audio/webm;codecs=opus', 'audio/ogg;codecs=opus', 'audio/mp4', 'audio/webm'];

/** Why this browser cannot record here, or '' when it can. */
export function recordingUnavailable() {
  if (!window.isSecureContext) {
    return 'Recording needs a secure page (HTTPS, or localhost): choose audio files instead.';
  }
  if (!navigator.mediaDevices?.getUserMedia || !window.MediaRecorder) {
    return 'This browser cannot record audio: choose audio files instead.';
  }
  return '';
}

/** One recording at a time: start() asks for the microphone, stop() resolves to the recorded Blob. */
export class Recorder {
  constructor() {
    this.recorder = null;
    this.stream = null;
    this.chunks = [];
    this.startedAt = 0;
  }

  get recording() {
    return this.recorder !== null && this.recorder.state === 'recording';
  }

  get seconds() {
    return this.recording ? (performance.now() - this.startedAt) / 1000 : 0;
  }

  async start() {
    const unavailable = recordingUnavailable();
    if (unavailable) throw new Error(unavailable);
    // Cloning wants the voice as it is: echo cancellation, noise suppression and gain control reshape it.
    this.stream = await navigator.mediaDevices.getUserMedia({
      audio: {echoCancellation: false, noiseSuppression: false, autoGainControl: false, channelCount: 1},
    });
    const mimeType = TYPES.find((type) => MediaRecorder.isTypeSupported(type));
    this.recorder = new MediaRecorder(this.stream, mimeType ? {mimeType} : {});
    this.chunks = [];
    this.recorder.ondataavailable = (event) => {
      if (event.data.size) this.chunks.push(event.data);
    };
    this.recorder.start(250); // small slices: a tab closed mid-take loses little, stop() is quick
    this.startedAt = performance.now();
  }

  /** Stop recording and release the microphone; resolves to the recording. */
  stop() {
    const recorder = this.recorder;
    if (!recorder) return Promise.reject(new Error('Not recording.'));
    return new Promise((resolve, reject) => {
      recorder.onstop = () => {
        this.stream.getTracks().forEach((track) => track.stop());
        this.recorder = null;
        resolve(new Blob(this.chunks, {type: recorder.mimeType || 'audio/webm'}));
      };
      recorder.onerror = (event) => reject(event.error || new Error('Recording failed.'));
      recorder.stop();
    });
  }
}
