// The admin REST API, on the page's own origin. Every call goes through `call`, which turns a
// failed response into an ApiError carrying the API's `error` and `reason`.

export class ApiError extends Error {
  constructor(status, error, reason, what) {
    super(reason);
    this.status = status;
    this.error = error;
    this.reason = reason;
    this.what = what;
  }
}

/** A path from segments: each one percent-encoded (a `/` inside a doc id stays one segment). */
export function path(...segments) {
  return '/' + segments.map(encodeURIComponent).join('/');
}

/** The path of a document: `_design/x` keeps its slash (the server routes it that way). */
export function docPath(db, id, ...rest) {
  const idPart = id.startsWith('_design/')
    ? '_design/' + encodeURIComponent(id.slice(8))
    : encodeURIComponent(id);
  return `/${encodeURIComponent(db)}/${idPart}` + rest.map((r) => '/' + encodeURIComponent(r)).join('');
}

function withQuery(p, query) {
  if (!query) return p;
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) {
    if (v !== undefined && v !== null) q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `${p}?${s}` : p;
}

/**
 * One API call. Returns { status, text, headers } and, unless `raw`, `json` (parsed).
 * Throws ApiError for a non-2xx answer or a network failure.
 */
export async function call(method, p, { body, query, signal, accept = 'application/json', raw = false } = {}) {
  const url = withQuery(p, query);
  const headers = { accept };
  const init = { method, headers, signal, cache: 'no-store', credentials: 'omit' };
  if (body !== undefined) {
    headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const what = `${method} ${decodeURI(url)}`;
  let resp;
  try {
    resp = await fetch(url, init);
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, 'network_error', `The server did not answer (${e.message})`, what);
  }
  const text = await resp.text();
  if (!resp.ok) {
    let error = `http_${resp.status}`;
    let reason = text.slice(0, 300) || resp.statusText;
    try {
      const j = JSON.parse(text);
      if (j && typeof j === 'object') {
        error = j.error ?? error;
        reason = j.reason ?? reason;
      }
    } catch { /* not JSON: keep the text */ }
    throw new ApiError(resp.status, error, reason, what);
  }
  const out = { status: resp.status, text, headers: resp.headers };
  if (!raw) out.json = text ? JSON.parse(text) : null;
  return out;
}

export const get = async (p, query, opts) => (await call('GET', p, { query, ...opts })).json;
export const getText = async (p, query, opts) => (await call('GET', p, { query, raw: true, ...opts })).text;
export const put = async (p, body, query) => (await call('PUT', p, { body, query })).json;
export const post = async (p, body, query) => (await call('POST', p, { body, query })).json;
export const del = async (p, query) => (await call('DELETE', p, { query })).json;
