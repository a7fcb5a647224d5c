// New voice: takes from the microphone or from files, each with an optional transcript; clone at once,
// or clone and queue fine-tuning on all of them.

import {api, dataUri} from './api.js';
import {Recorder, recordingUnavailable} from './recorder.js';
import {$, el, explain, nameTooLong, say, timeoutOf} from './ui.js';

// Cloning takes seconds on a GPU but can take a minute or more on a CPU (and the upload of long takes
// comes first): give up only on a server that has clearly hung, well inside gunicorn's own 10 minutes.
const CREATE_TIMEOUT_MS = 5 * 60 * 1000;

/** Wire the New voice form; created voices and jobs show in `voices` and `jobs`. */
export function setupEnrolment({voices, jobs}) {
  const form = $('voice-form');
  const takesList = $('takes');
  const recordButton = $('record-button');
  const timer = $('record-timer');
  const recordStatus = $('record-status');
  const createStatus = $('create-status');
  const recorder = new Recorder();
  const takes = []; // {blob, label, url, transcript}
  let ticking = null;
  let counter = 0;

  const unavailable = recordingUnavailable();
  if (unavailable) {
    recordButton.disabled = true;
    say(recordStatus, unavailable);
  }

  recordButton.addEventListener('click', async () => {
    if (recorder.recording) {
      clearInterval(ticking);
      try {
        const blob = await recorder.stop();
        addTake(blob, `Recording ${++counter}`);
        say(recordStatus, `Recorded ${timer.textContent}.`, 'ok');
      } catch (error) {
        say(recordStatus, explain(error), 'error');
      }
      recordButton.textContent = 'Record';
      recordButton.setAttribute('aria-pressed', 'false');
      return;
    }
    // A second click while the microphone opens (a double click) would open it twice, and Stop would
    // close only the second: the first would stay in use, the browser's recording light on.
    recordButton.disabled = true;
    try {
      await recorder.start();
    } catch (error) {
      // NotAllowedError: the user (or a policy) refused the microphone.
      say(recordStatus, error.name === 'NotAllowedError'
        ? 'The browser was not allowed to use the microphone.' : explain(error), 'error');
      return;
    } finally {
      recordButton.disabled = false;
    }
    recordButton.textContent = 'Stop';
    recordButton.setAttribute('aria-pressed', 'true');
    say(recordStatus, 'Recording… press Stop when done.');
    timer.textContent = '0.0 s';
    ticking = setInterval(() => { timer.textContent = `${recorder.seconds.toFixed(1)} s`; }, 100);
  });

  $('voice-files').addEventListener('change', (event) => {
    for (const file of event.target.files) addTake(file, file.name);
    say(recordStatus, `${event.target.files.length} file(s) added.`, 'ok');
    event.target.value = ''; // choosing the same file again adds it again
  });

  // Epochs only count when fine-tuning. Hidden, the field is disabled too: a hidden field whose value
  // is out of range would otherwise block the form without a word (the browser cannot point at it).
  const showEpochs = () => {
    $('epochs-row').hidden = !fineTuning();
    $('voice-epochs').disabled = !fineTuning();
  };
  showEpochs(); // a reloaded page may come back with Fine-tune chosen
  for (const radio of form.elements.mode) {
    radio.addEventListener('change', () => { showEpochs(); renderTakes(); });
  }

  function fineTuning() {
    return form.elements.mode.value === 'finetune';
  }

  function addTake(blob, label) {
    takes.push({blob, label, url: URL.createObjectURL(blob), transcript: ''});
    renderTakes();
  }

  function renderTakes() {
    takesList.replaceChildren(...takes.map((take, index) => {
      const id = `take-${index}`;
      const role = index === 0 ? ' (cloned from)' : '';
      return el('li', {class: 'take', dataset: {index}},
        el('span', {class: 'take-label', id: `${id}-label`}, `${take.label}${role}`),
        el('audio', {controls: true, src: take.url, preload: 'metadata', 'aria-labelledby': `${id}-label`}),
        el('label', {for: `${id}-text`}, `What ${take.label} says${fineTuning() ? '' : ' (optional)'}`),
        el('input', {id: `${id}-text`, class: 'transcript', value: take.transcript, maxlength: 2000,
                     oninput: (event) => { take.transcript = event.target.value; }}),
        el('button', {type: 'button', 'aria-describedby': `${id}-label`, onclick: () => removeTake(index)},
           'Remove'));
    }));
  }

  function removeTake(index) {
    URL.revokeObjectURL(takes[index].url);
    takes.splice(index, 1);
    renderTakes();
    (takesList.querySelector('button') || recordButton).focus();
  }

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    if (recorder.recording) {
      say(createStatus, 'Stop the recording first.', 'error');
      recordButton.focus();
      return;
    }
    const tooLong = nameTooLong($('voice-name').value);
    if (tooLong) {
      say(createStatus, tooLong, 'error');
      $('voice-name').focus();
      return;
    }
    if (!takes.length) {
      say(createStatus, 'Record or choose at least one recording first.', 'error');
      recordButton.focus();
      return;
    }
    const button = $('create-button');
    button.disabled = true;
    form.setAttribute('aria-busy', 'true');
    say(createStatus, fineTuning() ? 'Uploading and cloning; fine-tuning will be queued…' : 'Cloning…');
    // The takes as they are now: the user may record or remove takes for the next voice meanwhile.
    const sent = [...takes];
    try {
      const uris = await Promise.all(sent.map((take) => dataUri(take.blob)));
      const body = {modelName: $('voice-name').value.trim(), audioDataUri: uris[0]};
      if ($('voice-language').value) body.language = $('voice-language').value;
      const text = (take) => take.transcript.trim() || undefined;
      if (fineTuning()) {
        Object.assign(body, {fineTune: true, epochs: Number($('voice-epochs').value), transcript: text(sent[0]),
                             samples: sent.slice(1).map((take, i) => ({audioDataUri: uris[i + 1], text: text(take)}))});
      }
      const answer = await api('api/train-voice', {method: 'POST', body,
                                                   timeout: timeoutOf(form, CREATE_TIMEOUT_MS)});
      // The list first: "choose it under Speak" said before the list held the voice was not yet true.
      await voices.refresh(answer.modelId);
      say(createStatus, answer.jobId
        ? `${body.modelName} is ready to speak now, and fine-tuning is queued (see Fine-tuning jobs).`
        : `${body.modelName} is ready: choose it under Speak.`, 'ok');
      if (answer.jobId) jobs.track(answer.jobId);
      clearForm(sent, body.modelName);
    } catch (error) {
      // The server may have made the voice all the same, only too late: look before making it twice.
      say(createStatus, error.code === 'timeout'
        ? `${error.message} It may still make the voice: press Refresh under Voices before trying again.`
        : explain(error), 'error');
    } finally {
      button.disabled = false;
      form.removeAttribute('aria-busy');
    }
  });

  /** Clear what made the voice `name`, keeping takes added (and a name typed) since it was sent. */
  function clearForm(sent, name) {
    for (const take of sent) URL.revokeObjectURL(take.url);
    takes.splice(0, takes.length, ...takes.filter((take) => !sent.includes(take)));
    if (!takes.length) counter = 0;
    if ($('voice-name').value.trim() === name) $('voice-name').value = '';
    renderTakes();
  }
}
