// The console page: the key, the service's readiness and the Speak form; voices, new voices and jobs
// are wired by their own modules.

import {apiKey, duration, isSendableKey, setApiKey} from './api.js';
import {setupEnrolment} from './enrol.js';
import {setupJobs} from './jobs.js';
import {drawWaveform, EXTENSIONS, stopSpeech, streamSpeech} from './player.js';
import {$, explain, LANGUAGES, notify, say, timeoutOf} from './ui.js';
import {setupVoices} from './voices.js';

function fillLanguages(select, firstLabel) {
  select.append(new Option(firstLabel, ''));
  for (const [code, name] of Object.entries(LANGUAGES)) select.append(new Option(`${name} (${code})`, code));
}

// /readyz answers at once (it only looks); a server that has not answered in this long hangs.
const READINESS_TIMEOUT_MS = 5000;
let readinessChecks = 0; // the newest check: an older one that answers (or gives up) after it is stale

async function showReadiness() {
  const mine = ++readinessChecks;
  const element = $('readiness');
  const timeout = timeoutOf(element, READINESS_TIMEOUT_MS);
  try {
    const response = await fetch('readyz', {cache: 'no-store', signal: AbortSignal.timeout(timeout)});
    const body = await response.json();
    if (mine !== readinessChecks) return;
    showFineTuning(body.jobs);
    if (body.status === 'ready') {
      const model = body.model || {};
      say(element, `Ready: the model ${model.loaded ? `is loaded (${model.device})` : 'loads on first use'}.`, 'ok');
    } else {
      say(element, `Unavailable: ${unreadiness(body)}`, 'error');
    }
  } catch (error) {
    if (mine !== readinessChecks) return;
    say(element, error.name === 'TimeoutError'
      ? `The service did not answer within ${duration(timeout)}: press Refresh to check again.`
      : `The service could not be reached (${error.message}).`, 'error');
  }
}

/** Say under the fine-tuning choice when this server cannot fine-tune (no local model directory, no
 * dvae.pth…): before the user records minutes of takes for a job that would fail at once. */
function showFineTuning(jobs) {
  const element = $('finetune-problem');
  element.textContent = jobs?.problem ? `This server cannot fine-tune: ${jobs.problem}` : '';
  element.hidden = !element.textContent;
}

/** Every reason /readyz gives for not being ready, in words. */
function unreadiness(body) {
  const reasons = [];
  if (body.database !== 'ok') reasons.push(`The database is ${body.database}.`);
  if (body.storage === 'missing') {
    reasons.push("The voices' data directory is missing: is its volume mounted, and VOICEFORGE_DATA_DIR right?");
  }
  if (body.model?.problem) reasons.push(body.model.problem);
  return reasons.join(' ') || 'the service says it is not ready.';
}

function setupKey(reload) {
  const input = $('api-key');
  input.value = apiKey();
  $('key-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const key = input.value.trim();
    if (key && !isSendableKey(key)) {
      notify('An API key is printable ASCII without spaces.');
      return;
    }
    setApiKey(key);
    notify('');
    reload();
  });
  $('api-key-forget').addEventListener('click', () => {
    input.value = '';
    setApiKey('');
    reload();
  });
}

/** Wire the Speak form; `voices` is the voice list, refreshed when the chosen voice has gone. */
function setupSpeak(voices) {
  const form = $('speak-form');
  const status = $('speak-status');
  const audio = $('speak-audio');
  const canvas = $('speak-waveform');
  const download = $('speak-download');
  for (const name of ['speed', 'variability']) {
    const input = $(`speak-${name}`);
    const output = $(`speak-${name}-value`);
    const show = () => { output.textContent = Number(input.value).toFixed(2); };
    input.addEventListener('input', show);
    show();
  }
  // Stops what is sounding, and a speech still streaming: the server then stops synthesising it too,
  // and Speak is free again without waiting for the rest of a long text.
  $('speak-stop').addEventListener('click', stopSpeech);
  // A new speech empties the player, and the last one's waveform and file go with it: a Download left
  // after an error or a Stop would offer the old audio as if it were the new.
  const forgetLast = () => {
    if (download.href) URL.revokeObjectURL(download.href);
    download.removeAttribute('href');
    download.hidden = true;
    canvas.getContext('2d').clearRect(0, 0, canvas.width, canvas.height);
    canvas.setAttribute('aria-label', 'Waveform of the synthesised speech (none yet)');
    delete canvas.dataset.seconds;
  };
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const button = $('speak-button');
    const format = $('speak-format').value;
    const body = {text: $('speak-text').value, voiceId: $('speak-voice').value, format,
                  speed: Number($('speak-speed').value), variability: Number($('speak-variability').value)};
    if ($('speak-language').value) body.language = $('speak-language').value;
    button.disabled = true;
    form.setAttribute('aria-busy', 'true');
    say(status, 'Synthesising…');
    for (const key of ['how', 'playingAt', 'endAt']) delete audio.dataset[key];
    forgetLast();
    try {
      const result = await streamSpeech(body, audio);
      download.href = URL.createObjectURL(result.blob);
      download.download = `speech-${body.voiceId}.${EXTENSIONS[format] || 'audio'}`;
      download.hidden = false;
      // How it played, and milliseconds from the request to playback and to the last byte.
      audio.dataset.how = result.how;
      if (result.timings.playing !== null) audio.dataset.playingAt = String(result.timings.playing);
      audio.dataset.endAt = String(result.timings.end);
      const seconds = await drawWaveform(canvas, result.blob);
      canvas.setAttribute('aria-label', `Waveform of the synthesised speech, ${seconds.toFixed(1)} s`);
      canvas.dataset.seconds = seconds.toFixed(3);
      say(status, result.complete ? `Done: ${seconds.toFixed(1)} s of speech.`
        : `The stream broke off: only ${seconds.toFixed(1)} s arrived.`, result.complete ? 'ok' : 'error');
    } catch (error) {
      if (error.name === 'AbortError') say(status, 'Stopped.');
      else say(status, explain(error), 'error');
      // A voice deleted elsewhere (another tab, the API, the CLI): stop offering it.
      if (error.status === 404) voices.refresh();
    } finally {
      button.disabled = false;
      form.removeAttribute('aria-busy');
    }
  });
}

function start() {
  fillLanguages($('speak-language'), "The voice's language");
  fillLanguages($('voice-language'), "The server's default");
  let voices = null;
  const jobs = setupJobs({onFinished: () => voices.refresh()});
  voices = setupVoices({onChange: () => jobs.refresh()});
  jobs.useNames(voices.name);
  setupEnrolment({voices, jobs});
  setupSpeak(voices);
  const reload = async () => {
    notify('');
    showReadiness(); // again: the service may have gone down, or come back, since the page loaded
    await voices.refresh(); // first, so that jobs show their voice's name
    jobs.refresh();
  };
  setupKey(reload);
  // Refresh covers the jobs too: a voice made elsewhere may come with a fine-tuning job.
  $('voices-refresh').addEventListener('click', () => reload());
  reload();
}

start();
