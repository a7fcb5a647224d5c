// Fine-tuning jobs: a live progress bar each (progress, epoch, loss, time left), cancel, the failure reason.
// Polled once a second while a job is queued or running: the API has no push channel, and a job's row
// changes at most once per training step anyway. Otherwise polled slowly while the tab is visible, so
// that jobs started elsewhere (the API, the CLI, another tab) get a card too.

import {api} from './api.js';
import {$, el, explain, facts, say, timeoutOf} from './ui.js';

const POLL_MS = 1000;
// A poll unanswered this long failed: without a limit a hung server stopped the polling for good, the
// bars frozen with no word; as a failure it is said and retried with the others' back-off.
const POLL_TIMEOUT_MS = 10000;
const IDLE_POLL_MS = 15000; // no job active, or the server keeps failing
const SHOWN = 20; // newest jobs listed
const ACTIVE = new Set(['queued', 'running']);
// A job queued this long while none runs probably has no runner to take it (as `voices finetune --wait` asks).
const QUEUED_HINT_MS = 30000;
const QUEUED_HINT = 'Still queued, and no job is running: is a job runner running? gunicorn (make run) starts '
  + 'one unless VOICEFORGE_JOB_RUNNER=false; otherwise run `flask --app voiceforge jobs worker` (with the '
  + 'Celery backend, a Celery worker).';

/** Wire the jobs section; `onFinished` runs when a job ends (the voice's kind may have changed). */
export function setupJobs({onFinished, voiceName = (id) => id}) {
  const list = $('job-list');
  const status = $('jobs-status');
  const seen = new Map(); // job id -> {state, firstAt, firstProgress}: for announcements and time left
  let timer = null;
  let names = voiceName;
  let active = false; // a job was queued or running at the last successful poll
  let failures = 0; // polls failed in a row (a restart, a network blip, a wrong key)
  let latest = 0; // the newest refresh: an older one answered after it is stale, and the newer one polls on
  let idle = false; // no job was running at the last poll

  async function refresh() {
    const mine = ++latest;
    clearTimeout(timer);
    timer = null;
    let jobs;
    try {
      jobs = (await api(`api/jobs?limit=${SHOWN}`, {timeout: timeoutOf(list, POLL_TIMEOUT_MS)})).jobs;
    } catch (error) {
      if (mine !== latest) return;
      say(status, explain(error), 'error');
      failures += 1;
      schedule();
      return;
    }
    if (mine !== latest) return;
    if (failures) say(status, ''); // the error is over; announce() may say something new
    failures = 0;
    active = jobs.some((job) => ACTIVE.has(job.state));
    announce(jobs);
    render(jobs);
    schedule();
  }

  function schedule() {
    clearTimeout(timer);
    timer = null;
    // A failed poll never ends the polling: it backs off (2, 4, 8, 15 s) and recovers on its own.
    const delay = failures ? Math.min(POLL_MS * 2 ** failures, IDLE_POLL_MS) : active ? POLL_MS : IDLE_POLL_MS;
    if (active || !document.hidden) timer = setTimeout(refresh, delay);
  }

  // A hidden tab skips the slow poll; catch up as soon as it is shown again.
  document.addEventListener('visibilitychange', () => { if (!document.hidden && !timer) refresh(); });

  function announce(jobs) {
    let finished = false;
    for (const job of jobs) {
      const before = seen.get(job.id);
      if (!before) {
        seen.set(job.id, {state: job.state, firstAt: performance.now(), firstProgress: job.progress});
        continue;
      }
      if (before.state !== job.state) {
        before.state = job.state;
        if (!ACTIVE.has(job.state)) finished = true;
        const what = `Fine-tuning of ${names(job.voiceId)}`;
        const words = {running: `${what} started.`, succeeded: `${what} succeeded: the voice now speaks with its own weights.`,
                       failed: `${what} failed: ${job.error || 'no reason given'}`, cancelled: `${what} was cancelled.`};
        say(status, words[job.state] || `${what}: ${job.state}.`, job.state === 'failed' ? 'error' : '');
      }
    }
    if (!jobs.length) say(status, 'No fine-tuning jobs yet.');
    if (finished) onFinished();
  }

  function render(jobs) {
    idle = !jobs.some((job) => job.state === 'running');
    // Keep the card that holds the focus (a Cancel button) instead of rebuilding it under the user.
    for (const job of jobs) {
      const existing = list.querySelector(`[data-job-id="${CSS.escape(job.id)}"]`);
      const fresh = card(job);
      if (existing) existing.replaceWith(fresh);
      else list.append(fresh);
    }
    const ids = new Set(jobs.map((job) => job.id));
    for (const item of [...list.children]) if (!ids.has(item.dataset.jobId)) item.remove();
    // Newest first, as the API lists them.
    for (const job of jobs) list.append(list.querySelector(`[data-job-id="${CSS.escape(job.id)}"]`));
  }

  function card(job) {
    const percent = Math.round(100 * (job.progress || 0));
    const epochText = job.epochs ? `epoch ${job.epoch || 0} of ${job.epochs}` : '';
    const headingId = `job-${job.id}-title`;
    const focused = document.activeElement?.closest?.(`[data-job-id="${CSS.escape(job.id)}"]`);
    const bar = el('div', {class: `progress ${job.state}`, role: 'progressbar', 'aria-valuemin': 0,
                           'aria-valuemax': 100, 'aria-valuenow': percent, 'aria-labelledby': headingId,
                           'aria-valuetext': [`${percent}%`, epochText].filter(Boolean).join(', ')},
                   el('div', {class: 'track'}, el('div', {class: 'fill'})),
                   el('span', {class: 'label', 'aria-hidden': 'true'}, `${percent}%`));
    const rows = [['State', el('span', {class: `badge ${job.state}`}, job.state)]];
    if (job.epochs) rows.push(['Epoch', `${job.epoch || 0} of ${job.epochs}`]);
    if (job.steps) rows.push(['Step', `${job.step || 0} of ${job.steps}`]);
    if (job.loss !== null && job.loss !== undefined) rows.push(['Loss', job.loss.toFixed(3)]);
    if (job.datasetSeconds) rows.push(['Speech', `${Math.round(job.datasetSeconds)} s`]);
    if (job.state === 'running') rows.push(['Time left', timeLeft(job)]);
    const item = el('li', {class: 'card', dataset: {jobId: job.id, state: job.state}},
      el('h3', {id: headingId}, `Fine-tuning ${names(job.voiceId)}`),
      bar,
      facts(rows),
      job.message && job.state !== 'failed' ? el('p', {class: 'message'}, job.message) : null,
      job.state === 'queued' && idle && performance.now() - seen.get(job.id).firstAt > QUEUED_HINT_MS
        ? el('p', {class: 'message'}, QUEUED_HINT) : null,
      job.state === 'failed' ? el('p', {class: 'error'}, `Failed: ${job.error || 'no reason given'}`) : null,
      ACTIVE.has(job.state)
        ? el('div', {class: 'actions'}, el('button', {type: 'button', class: 'danger', 'aria-describedby': headingId,
                                                      onclick: () => cancel(job)}, 'Cancel'))
        : null);
    // Through the CSSOM: the page's CSP refuses inline style attributes, not this.
    item.querySelector('.fill').style.width = `${percent}%`;
    if (focused) queueMicrotask(() => item.querySelector('button')?.focus());
    return item;
  }

  function timeLeft(job) {
    // From the progress this page has watched: the browser's and the server's clocks may disagree.
    const first = seen.get(job.id);
    const elapsed = (performance.now() - first.firstAt) / 1000;
    const gained = job.progress - first.firstProgress;
    if (elapsed < 2 || gained <= 0) return 'estimating…';
    const seconds = ((1 - job.progress) * elapsed) / gained;
    if (seconds < 60) return `about ${Math.max(1, Math.round(seconds))} s`;
    if (seconds < 3600) return `about ${Math.round(seconds / 60)} min`;
    return `about ${(seconds / 3600).toFixed(1)} h`;
  }

  async function cancel(job) {
    try {
      await api(`api/jobs/${encodeURIComponent(job.id)}/cancel`, {method: 'POST'});
      say(status, `Cancelling the fine-tuning of ${names(job.voiceId)}…`);
    } catch (error) {
      say(status, explain(error), 'error');
    }
    refresh();
  }

  return {
    refresh,
    /** Follow a job this page just queued: its end is announced even if it ends before the next poll. */
    track(jobId) {
      if (!seen.has(jobId)) seen.set(jobId, {state: 'queued', firstAt: performance.now(), firstProgress: 0});
      return refresh();
    },
    /** Name jobs by their voice's name (the voice list is loaded after the jobs module exists). */
    useNames(lookup) { names = lookup; },
  };
}
