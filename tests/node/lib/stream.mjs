// Reading streaming HTTP responses (live _changes feeds) chunk by chunk, with timestamps.

/**
 * Opens a streaming GET/POST and collects its body as it arrives.
 * Returns { status, headers, chunks: [{t, text}], text(), done (promise), abort() }.
 */
export async function openStream(url, { method = 'GET', body, headers = {} } = {}) {
  const controller = new AbortController();
  const t0 = Date.now();
  const opts = { method, headers: { accept: 'application/json', ...headers }, signal: controller.signal };
  if (body !== undefined) {
    opts.body = JSON.stringify(body);
    opts.headers['content-type'] = 'application/json';
  }
  const r = await fetch(url, opts);
  const chunks = [];
  const decoder = new TextDecoder();
  const reader = r.body.getReader();
  const waiters = [];
  let finished = false;
  const done = (async () => {
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        chunks.push({ t: Date.now() - t0, text: decoder.decode(value, { stream: true }) });
        for (const w of waiters.splice(0)) w();
      }
      return { aborted: false, ms: Date.now() - t0 };
    } catch (e) {
      return { aborted: true, error: e, ms: Date.now() - t0 };
    } finally {
      finished = true;
      for (const w of waiters.splice(0)) w();
    }
  })();
  const text = () => chunks.map((c) => c.text).join('');
  return {
    status: r.status,
    headers: r.headers,
    chunks,
    text,
    done,
    abort: () => controller.abort(),
    /** Resolves when the accumulated text satisfies `pred`, or rejects after `ms`. */
    async until(pred, ms = 5000) {
      const end = Date.now() + ms;
      while (!pred(text())) {
        const left = end - Date.now();
        if (left <= 0 || finished) {
          throw new Error(`stream ${finished ? 'ended' : `did not match within ${ms} ms`}; got ${JSON.stringify(text())}`);
        }
        await Promise.race([
          new Promise((res) => waiters.push(res)),
          new Promise((res) => setTimeout(res, Math.min(left, 100))),
        ]);
      }
      return text();
    },
  };
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
