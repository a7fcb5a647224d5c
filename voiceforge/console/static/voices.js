// The voice list: status, kind and language of each; rename, delete, speak with it; the Speak form's choices.

import {api} from './api.js';
import {$, el, explain, facts, languageName, nameTooLong, say, timeoutOf} from './ui.js';

// The list is one database read: a server silent this long hangs (a stuck worker, a proxy that lost it).
const LIST_TIMEOUT_MS = 10000;

/** Wire the Voices section; `onChange` runs after a voice was renamed or deleted. */
export function setupVoices({onChange}) {
  const list = $('voice-list');
  const status = $('voices-status');
  const select = $('speak-voice');
  let voices = [];
  // The newest refresh: an older one answered after it (a slow 401 for a mistyped key) is stale.
  let latest = 0;
  let listSaid = ''; // what a refresh last said in the status line (see sayOfList)
  let wanted = ''; // the voice to choose once the list comes, whichever refresh brings it

  async function refresh(selectId) {
    const mine = ++latest;
    if (selectId) wanted = selectId;
    if (!voices.length) sayOfList('Loading voices…');
    let answer;
    try {
      answer = (await api('api/voices', {timeout: timeoutOf(list, LIST_TIMEOUT_MS)})).voices;
    } catch (error) {
      if (mine !== latest) return;
      // Without a timeout a hung server left "Loading voices…" (or the old list) for ever, and Refresh
      // never reached the jobs.
      sayOfList(error.code === 'timeout' ? `${explain(error)} Press Refresh to try again.` : explain(error),
                'error');
      return;
    }
    if (mine !== latest) return;
    voices = answer;
    const own = voices.filter((voice) => voice.kind !== 'builtin');
    showCards(own);
    // A refresh of its own (a job ended) replaces only what a refresh said, never an action's outcome
    // ("… is gone: it was deleted elsewhere."), which it wiped a moment after it was shown.
    if (!status.textContent || status.textContent === listSaid) {
      sayOfList(own.length ? '' : 'No voices of your own yet: create one under New voice.');
    }
    fillSelect(wanted);
    wanted = '';
  }

  /** Say something about the list itself (loading, unreachable, empty), which the next refresh replaces. */
  function sayOfList(text, kind) {
    say(status, text, kind);
    listSaid = status.textContent;
  }

  function fillSelect(selectId) {
    const chosen = selectId || select.value;
    const ready = voices.filter((voice) => voice.kind !== 'builtin' && voice.status === 'ready');
    const builtin = voices.filter((voice) => voice.kind === 'builtin');
    const group = (label, items) => el('optgroup', {label},
      ...items.map((voice) => new Option(voice.kind === 'finetuned' ? `${voice.name} (fine-tuned)` : voice.name,
                                         voice.id)));
    select.replaceChildren(...[ready.length && group('Your voices', ready), builtin.length && group('Built-in', builtin)]
      .filter(Boolean));
    if (chosen && voices.some((voice) => voice.id === chosen)) select.value = chosen;
  }

  /** Show `own` voices, newest first as the API lists them, without losing the keyboard's place.
   *
   * The list re-renders on its own (a fine-tuning job ended, a voice was renamed or deleted): rebuilding
   * every card dropped the focus of a keyboard user to <body>. A card whose voice looks the same stays as
   * it is (with a rename form left open, and what was typed in it); a rebuilt card gets the focus back on
   * the same control. */
  function showCards(own) {
    const place = focusedControl();
    const cards = own.map((voice) => {
      const shown = cardOf(voice.id);
      return shown?.dataset.looks === looks(voice) ? shown : card(voice);
    });
    for (const item of [...list.children]) if (!cards.includes(item)) item.remove();
    // Moved only where the order changed: moving an element out of the page takes its focus away.
    cards.forEach((item, index) => {
      if (list.children[index] !== item) list.insertBefore(item, list.children[index] || null);
    });
    restoreFocus(place);
  }

  /** What a card shows of its voice: a card is rebuilt only when this changes. */
  function looks(voice) {
    return JSON.stringify([voice.name, voice.status, voice.kind, voice.language, voice.error]);
  }

  function cardOf(voiceId) {
    return list.querySelector(`:scope > [data-voice-id="${CSS.escape(voiceId)}"]`);
  }

  /** The card control that has the keyboard, as {voiceId, control} (its data-control), or null. */
  function focusedControl() {
    const control = document.activeElement?.closest?.('#voice-list [data-control]');
    const item = control?.closest('[data-voice-id]');
    return item ? {voiceId: item.dataset.voiceId, control: control.dataset.control} : null;
  }

  /** Put the keyboard back where focusedControl() found it, if a rebuilt card took it away: on the same
   * control of the voice's new card, or on its Rename button for a control it no longer has (the
   * fields of a rename form). */
  function restoreFocus(place) {
    const lost = !document.activeElement || document.activeElement === document.body;
    const item = place && lost ? cardOf(place.voiceId) : null;
    if (!item) return; // still where it was, or the voice has gone
    (item.querySelector(`[data-control="${place.control}"]`) || item.querySelector('[data-control="rename"]'))
      ?.focus();
  }

  function card(voice) {
    const item = el('li', {class: 'card', dataset: {voiceId: voice.id, looks: looks(voice)}});
    const heading = el('h3', {id: `voice-${voice.id}-name`}, voice.name);
    const actions = el('div', {class: 'actions'},
      el('button', {type: 'button', disabled: voice.status !== 'ready', 'aria-describedby': heading.id,
                    dataset: {control: 'speak'}, onclick: () => speakWith(voice)}, 'Speak with it'),
      el('button', {type: 'button', 'aria-describedby': heading.id, 'aria-expanded': 'false',
                    dataset: {control: 'rename'},
                    onclick: (event) => toggleRename(item, voice, event.currentTarget)}, 'Rename'),
      el('button', {type: 'button', class: 'danger', 'aria-describedby': heading.id,
                    dataset: {control: 'delete'}, onclick: () => remove(voice)}, 'Delete'));
    item.append(...[heading,
      facts([['Status', el('span', {class: `badge ${voice.status}`}, voice.status)],
             ['Kind', el('span', {class: `badge ${voice.kind}`}, voice.kind)],
             ['Language', languageName(voice.language)], ['Id', el('code', {}, voice.id)]]),
      voice.error ? el('p', {class: 'error'}, `Failed: ${voice.error}`) : null,
      actions].filter(Boolean));
    return item;
  }

  function speakWith(voice) {
    fillSelect(voice.id);
    $('speak').scrollIntoView({behavior: 'smooth', block: 'start'});
    $('speak-text').focus();
  }

  function toggleRename(item, voice, button) {
    const existing = item.querySelector('form.rename');
    if (existing) {
      existing.remove();
      button.setAttribute('aria-expanded', 'false');
      button.focus(); // the form's Cancel went with it: keep the keyboard user on this card
      return;
    }
    const inputId = `rename-${voice.id}`;
    const message = el('p', {class: 'status', role: 'status', 'aria-live': 'polite'});
    // No maxlength: it counts UTF-16 units, not characters as the server does (nameTooLong() does).
    const input = el('input', {id: inputId, value: voice.name, required: true, dataset: {control: 'new-name'}});
    const form = el('form', {class: 'rename'},
      el('label', {for: inputId}, `New name for ${voice.name}`), input,
      el('div', {class: 'actions'}, el('button', {type: 'submit', dataset: {control: 'save'}}, 'Save'),
         el('button', {type: 'button', dataset: {control: 'cancel'},
                       onclick: () => toggleRename(item, voice, button)}, 'Cancel')),
      message);
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      const tooLong = nameTooLong(input.value);
      if (tooLong) {
        say(message, tooLong, 'error');
        return;
      }
      try {
        const renamed = await api(`api/voices/${encodeURIComponent(voice.id)}`,
                                  {method: 'PATCH', body: {name: input.value}});
        await refresh(); // the renamed card is rebuilt: the keyboard goes to its Rename button
        say(status, `Renamed to ${renamed.name}.`, 'ok'); // as stored (NFC, stripped), as the card shows it
        onChange();
      } catch (error) {
        if (error.status === 404) await gone(voice);
        else say(message, explain(error), 'error');
      }
    });
    button.setAttribute('aria-expanded', 'true');
    item.append(form);
    input.focus();
    input.select();
  }

  async function remove(voice) {
    // The browser's own dialog: keyboard and screen-reader friendly, and deleting cannot be undone.
    if (!window.confirm(`Delete the voice "${voice.name}" and its recordings? This cannot be undone.`)) return;
    try {
      await api(`api/voices/${encodeURIComponent(voice.id)}`, {method: 'DELETE'});
      await refresh();
      say(status, `Deleted ${voice.name}.`, 'ok');
      onChange();
      $('voices-heading').focus(); // the card and its button are gone: keep the keyboard user here
    } catch (error) {
      if (error.status === 404) await gone(voice);
      else say(status, explain(error), 'error');
    }
  }

  /** A 404: the voice was deleted elsewhere (another tab, the API, the CLI); drop it instead of offering it. */
  async function gone(voice) {
    await refresh();
    say(status, `${voice.name} is gone: it was deleted elsewhere.`, 'error');
    onChange(); // its jobs went with it
    $('voices-heading').focus(); // the card and its buttons are gone: keep the keyboard user here
  }

  return {
    refresh,
    /** The display name of a voice id (the id itself when unknown). */
    name: (id) => voices.find((voice) => voice.id === id)?.name || id,
  };
}
