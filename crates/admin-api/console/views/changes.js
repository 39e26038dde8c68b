// Live changes: follows `GET /{db}/_changes?feed=continuous` through a streaming fetch (one
// JSON row per line, heartbeats as blank lines), optionally filtered by channel
// (`filter=sync_gateway/bychannel&channels=`). Pausing closes the feed and remembers the last
// sequence; resuming reopens it from there, so nothing written meanwhile is missed.

import { get, path } from '../api.js';
import { h, fill, errorSlot, showError, parseList, route } from '../ui.js';

const KEEP = 500;

export async function render(ctx) {
  const { main, db } = ctx;
  const err = errorSlot('feed');
  const state = h('span', { class: 'feed-state', id: 'feed-state' }, 'starting…');
  const channels = h('input', { type: 'text', id: 'feed-channels', autocomplete: 'off', placeholder: 'all channels', value: ctx.query.get('channels') ?? '' });
  const from = h('select', { id: 'feed-from' },
    h('option', { value: '20' }, 'the last 20 changes'), h('option', { value: '0' }, 'now'), h('option', { value: 'all' }, 'the beginning'));
  const toggle = h('button', { type: 'button', id: 'feed-toggle' }, 'Pause');
  const clear = h('button', { type: 'button', id: 'feed-clear' }, 'Clear');
  const tbody = h('tbody');
  const table = h('table', { id: 'changes-table' },
    h('thead', null, h('tr', null, ['Seq', 'Document', 'Revisions', 'Flags', 'Received'].map((t) => h('th', null, t)))), tbody);
  const filterForm = h('form', { class: 'inline', id: 'feed-filter' },
    h('label', { class: 'field', for: 'feed-channels' }, 'Only channels (comma-separated)', channels),
    h('label', { class: 'field', for: 'feed-from' }, 'Starting from', from),
    h('button', { type: 'submit', class: 'primary' }, 'Apply'));

  let since = null;
  let controller = null;
  let paused = false;
  let stopped = false;

  function setState(text, cls) {
    state.textContent = text;
    state.className = `feed-state ${cls}`;
  }

  function addRow(row) {
    const revs = (row.changes ?? []).map((c) => c.rev);
    const flags = [row.deleted && h('span', { class: 'tag tombstone' }, 'deleted'),
      row.removed && h('span', { class: 'tag bad' }, `removed from ${row.removed.join(', ')}`)].filter(Boolean);
    tbody.prepend(h('tr', { class: 'fresh', 'data-id': row.id, 'data-seq': JSON.stringify(row.seq) },
      h('td', { class: 'num' }, String(row.seq)),
      h('td', null, h('a', { href: route('db', db, 'doc', row.id) }, row.id)),
      h('td', null, revs.map((r) => h('code', { class: 'tag' }, r))),
      h('td', null, flags.length ? flags : '—'),
      h('td', null, new Date().toLocaleTimeString())));
    while (tbody.children.length > KEEP) tbody.lastChild.remove();
  }

  async function follow() {
    controller = new AbortController();
    const q = new URLSearchParams({ feed: 'continuous', since: String(since), heartbeat: '20000', style: 'all_docs' });
    const chans = parseList(channels.value);
    if (chans.length) {
      q.set('filter', 'sync_gateway/bychannel');
      q.set('channels', chans.join(','));
    }
    setState(`following from seq ${since}${chans.length ? ` (channels ${chans.join(', ')})` : ''}`, 'live');
    showError(err, null);
    try {
      const resp = await fetch(`${path(db, '_changes')}?${q}`, { signal: controller.signal, cache: 'no-store', credentials: 'omit', headers: { accept: 'application/json' } });
      if (!resp.ok) {
        const j = await resp.json().catch(() => ({}));
        throw Object.assign(new Error(j.reason ?? resp.statusText), { status: resp.status, error: j.error ?? `http_${resp.status}`, reason: j.reason ?? resp.statusText, what: `GET ${path(db, '_changes')}` });
      }
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let nl;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, nl).trim();
          buf = buf.slice(nl + 1);
          if (!line) continue; // heartbeat
          const row = JSON.parse(line);
          if (row.last_seq !== undefined) { since = row.last_seq; continue; }
          since = row.seq;
          addRow(row);
          setState(`following — last seq ${since}${chans.length ? ` (channels ${chans.join(', ')})` : ''}`, 'live');
        }
      }
      // the server ended the feed (timeout or shutdown): reconnect from where it stopped
      if (!paused && !stopped) setTimeout(follow, 1000);
    } catch (e) {
      if (e.name === 'AbortError') return;
      setState('stopped by an error', 'error');
      showError(err, e);
      if (!paused && !stopped) setTimeout(() => { if (!paused && !stopped) follow(); }, 5000);
    }
  }

  function pause() {
    paused = true;
    controller?.abort();
    toggle.textContent = 'Resume';
    setState(`paused at ${since} (resuming shows what changed meanwhile)`, 'paused');
  }
  function resume() {
    paused = false;
    toggle.textContent = 'Pause';
    follow();
  }
  toggle.addEventListener('click', () => (paused ? resume() : pause()));
  clear.addEventListener('click', () => { tbody.replaceChildren(); });
  filterForm.addEventListener('submit', async (e) => {
    e.preventDefault();
    controller?.abort();
    tbody.replaceChildren();
    try {
      since = await startSeq();
    } catch (err2) {
      showError(err, err2);
      return;
    }
    paused = false;
    toggle.textContent = 'Pause';
    follow();
  });

  fill(main, h('h1', null, `Live changes of ${db}`),
    h('div', { class: 'toolbar' }, filterForm, h('span', { class: 'spacer' }), toggle, clear),
    h('p', null, 'Feed: ', state), err, table);

  async function startSeq() {
    if (from.value === 'all') return 0;
    const seq = (await get(path(db) + '/')).update_seq;
    return typeof seq === 'number' ? Math.max(0, seq - Number(from.value)) : seq;
  }
  try {
    since = await startSeq();
  } catch (e) {
    showError(err, e);
    setState('could not open the database', 'error');
    return undefined;
  }
  follow();
  return () => {
    stopped = true;
    controller?.abort();
  };
}
