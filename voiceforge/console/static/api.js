// The JSON API as the console calls it: the key header on every call, errors as the server words them.

const KEY_STORAGE = 'voiceforge.apiKey';

/** The API key the user gave in this tab (sessionStorage: gone when the tab closes), or ''. */
export function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || '';
}

/** Keep (or, given '', forget) the key for this tab's session. */
export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
}

/** A key fetch() can send in a header: printable ASCII without spaces (anything else makes it throw). */
export function isSendableKey(key) {
  return /^[\x21-\x7e]+$/.test(key);
}

/** An API answer that is not 2xx: `status` (0 when the server was not reached) and the server's `detail`. */
export class ApiError extends Error {
  constructor(status, detail, code = '') {
    super(detail);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
  }
}

/** Request headers: the key as `Authorization: Bearer` (never in the URL), JSON when there is a body. */
export function apiHeaders(json = false) {
  const headers = {};
  if (json) headers['Content-Type'] = 'application/json';
  const key = apiKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  return headers;
}

/** `milliseconds` in words: '1.5 s', '5 min'. */
export function duration(milliseconds) {
  const seconds = milliseconds / 1000;
  return seconds < 60 ? `${Number(seconds.toFixed(1))} s` : `${Number((seconds / 60).toFixed(1))} min`;
}

/** The signal to give fetch(): the caller's `signal` (a Stop button) and, when given, a `timeout` in ms. */
function signalFor(signal, timeout) {
  const signals = [signal, timeout && AbortSignal.timeout(timeout)].filter(Boolean);
  return signals.length > 1 ? AbortSignal.any(signals) : signals[0];
}

/** The ApiError for a request that ran past its `timeout` (AbortSignal.timeout() threw TimeoutError). */
function timedOut(timeout) {
  return new ApiError(0, `The server did not answer within ${duration(timeout)}.`, 'timeout');
}

/** fetch() an API path (relative, so the console works under a path prefix too) with the key.
 *
 * `timeout` (ms) gives up on a server that hangs (a stuck worker, a proxy that lost the request): without
 * it the page would wait for ever with its button busy. It covers the answer's body too, when read with
 * the response this returns. */
export async function apiFetch(path, {method = 'GET', body, signal, timeout} = {}) {
  const init = {method, headers: apiHeaders(body !== undefined), cache: 'no-store',
                signal: signalFor(signal, timeout)};
  if (body !== undefined) init.body = JSON.stringify(body);
  try {
    return await fetch(path, init);
  } catch (error) {
    if (error.name === 'AbortError') throw error;
    if (error.name === 'TimeoutError') throw timedOut(timeout);
    throw new ApiError(0, `The server could not be reached (${error.message}).`, 'unreachable');
  }
}

/** Call the API and return its JSON (null for 204); throws ApiError with the server's detail, or with
 * code 'timeout' when a `timeout` (ms) ran out first. */
export async function api(path, options = {}) {
  const response = await apiFetch(path, options);
  try {
    if (!response.ok) throw await errorFrom(response);
    return response.status === 204 ? null : await response.json();
  } catch (error) {
    // The headers came in time but the body did not.
    if (error.name === 'TimeoutError') throw timedOut(options.timeout);
    throw error;
  }
}

/** The ApiError for a failed response: the server's `detail` when it sent one. */
export async function errorFrom(response) {
  let detail = `The server answered ${response.status} ${response.statusText}.`;
  let code = '';
  try {
    const body = await response.json();
    if (body && typeof body.detail === 'string') detail = body.detail;
    if (body && typeof body.code === 'string') code = body.code;
  } catch {
    // Not JSON (a proxy's error page, say): the status line is all there is to show.
  }
  const retry = response.headers.get('Retry-After');
  if (response.status === 503 && retry) detail += ` Try again in ${retry} s.`;
  return new ApiError(response.status, detail, code);
}

/** Read a Blob (a recording, a chosen file) as the `data:<mime>;base64,…` URI the API takes. */
export function dataUri(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}
