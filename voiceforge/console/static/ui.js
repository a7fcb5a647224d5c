// Small helpers every part of the console shares: status messages, the page notice, language names.

import {ApiError} from './api.js';

// XTTS-v2's languages (the server refuses others with 422).
export const LANGUAGES = {
  en: 'English', es: 'Spanish', fr: 'French', de: 'German', it: 'Italian', pt: 'Portuguese', pl: 'Polish',
  tr: 'Turkish', ru: 'Russian', nl: 'Dutch', cs: 'Czech', ar: 'Arabic', 'zh-cn': 'Chinese', hu: 'Hungarian',
  ko: 'Korean', ja: 'Japanese', hi: 'Hindi',
};

export const $ = (id) => document.getElementById(id);

/** How long to wait for the server: `fallback` ms, unless `element` has a data-timeout-ms attribute.
 * Only the tests set one (#readiness, #voice-form), so as not to wait minutes for a server that hangs. */
export function timeoutOf(element, fallback) {
  const override = Number(element.dataset.timeoutMs);
  return override > 0 ? override : fallback;
}

/** Show `text` in a status element (an aria-live region reads it out); 'error' and 'ok' style it. */
export function say(element, text, kind = '') {
  element.textContent = text;
  element.classList.toggle('error', kind === 'error');
  element.classList.toggle('ok', kind === 'ok');
}

/** The page's notice (role=alert), for what concerns the whole page, such as a missing key; '' hides it. */
export function notify(text) {
  const notice = $('notice');
  notice.textContent = text;
  notice.hidden = !text;
}

/** The words to show for a failed call: the server's own detail; a 401 also says where the key goes. */
export function explain(error) {
  if (error instanceof ApiError && error.status === 401) {
    notify('This server requires an API key: enter it at the top of the page.');
    return `${error.message} Enter the API key at the top of the page.`;
  }
  return error.message || String(error);
}

// A voice name's limit, counted as the server counts it (voices.clean_name): code points of the name after
// NFC and Python's str.strip(). The inputs' maxlength counted UTF-16 units and stopped at 50 emoji.
export const MAX_NAME_LENGTH = 100;
// What str.strip() removes (str.isspace()): String.prototype.trim() differs, keeping U+001C–U+001F and
// U+0085 and removing U+FEFF.
const PYTHON_SPACE = '[\\t-\\r\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]';
const PYTHON_STRIP = new RegExp(`^${PYTHON_SPACE}+|${PYTHON_SPACE}+$`, 'g');

/** Why the server would refuse `name` for its length, in words; '' when it would not. */
export function nameTooLong(name) {
  const length = [...name.normalize('NFC').replace(PYTHON_STRIP, '')].length; // code points, as len()
  return length > MAX_NAME_LENGTH
    ? `Voice name is ${length} characters long; at most ${MAX_NAME_LENGTH} are allowed.` : '';
}

/** An element with attributes and children: el('button', {type: 'button'}, 'Delete'). */
export function el(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith('on')) element.addEventListener(name.slice(2), value);
    else if (name === 'dataset') Object.assign(element.dataset, value);
    else element.setAttribute(name, value === true ? '' : String(value));
  }
  element.append(...children.filter((child) => child !== null && child !== undefined && child !== false));
  return element;
}

export function languageName(code) {
  return code ? `${LANGUAGES[code] || code} (${code})` : 'not set';
}

/** A <dl> row pair: term and description. */
export function facts(pairs) {
  return el('dl', {class: 'facts'}, ...pairs.flatMap(([term, value]) => [el('dt', {}, term), el('dd', {}, value)]));
}
