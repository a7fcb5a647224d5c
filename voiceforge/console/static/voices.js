// The voice list: status, kind and language of each; rename, delete, speak with it; the Speak form's choices.

import {api} from './api.js';
import {$, el, explain, facts, languageName, say} from './ui.js';

/** Wire the Voices section; `onChange` runs after a voice was renamed or deleted. */
export function setupVoices({onChange}) {
  const list = $('voice-list');
  const status = $('voices-status');
  const select = $('speak-voice');
  let voices = [];
  // The newest refresh: an older one answered after it (a slow 401 for a mistyped key) is stale.
  let latest = 0;
  let wanted = ''; // the voice to choose once the list comes, whichever refresh brings it

  async function refresh(selectId) {
    const mine = ++latest;
    if (selectId) wanted = selectId;
    if (!voices.length) say(status, 'Loading voices…');
    let answer;
    try {
      answer = (await api('api/voices')).voices;
    } catch (error) {
      if (mine === latest) say(status, explain(error), 'error');
      return;
    }
    if (mine !== latest) return;
    voices = answer;
    const own = voices.filter((voice) => voice.kind !== 'builtin');
    list.replaceChildren(...own.map(card));
    say(status, own.length ? '' : 'No voices of your own yet: create one under New voice.');
    fillSelect(wanted);
    wanted = '';
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

  function card(voice) {
    const item = el('li', {class: 'card', dataset: {voiceId: voice.id}});
    const heading = el('h3', {id: `voice-${voice.id}-name`}, voice.name);
    const actions = el('div', {class: 'actions'},
      el('button', {type: 'button', disabled: voice.status !== 'ready', 'aria-describedby': heading.id,
                    onclick: () => speakWith(voice)}, 'Speak with it'),
      el('button', {type: 'button', 'aria-describedby': heading.id, 'aria-expanded': 'false',
                    onclick: (event) => toggleRename(item, voice, event.currentTarget)}, 'Rename'),
      el('button', {type: 'button', class: 'danger', 'aria-describedby': heading.id,
                    onclick: () => remove(voice)}, 'Delete'));
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
    const input = el('input', {id: inputId, value: voice.name, required: true, maxlength: 100});
    const form = el('form', {class: 'rename'},
      el('label', {for: inputId}, `New name for ${voice.name}`), input,
      el('div', {class: 'actions'}, el('button', {type: 'submit'}, 'Save'),
         el('button', {type: 'button', onclick: () => toggleRename(item, voice, button)}, 'Cancel')),
      message);
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      try {
        await api(`api/voices/${encodeURIComponent(voice.id)}`, {method: 'PATCH', body: {name: input.value}});
        await refresh();
        say(status, `Renamed to ${input.value.trim()}.`, 'ok');
        onChange();
        list.querySelector(`[data-voice-id="${CSS.escape(voice.id)}"] button`)?.focus();
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
