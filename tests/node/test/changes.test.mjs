// _changes over HTTP: every feed type and parameter, wake-ups, heartbeats and disconnects.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { startServer, req } from '../lib/server.mjs';
import { eventually } from '../lib/compare.mjs';
import { openStream, sleep } from '../lib/stream.mjs';

let s;
before(async () => { s = await startServer(); });
after(async () => { await s?.stop(); });

let dbn = 0;
async function fresh() {
  const name = `c${dbn++}`;
  assert.equal((await req('PUT', `${s.admin}/${name}/`)).status, 201);
  return { name, url: `${s.admin}/${name}` };
}
const feeds = (name) => s.metric(`syncgate_changes_feeds_active{db="${name}"}`);

/** Writes docs through _bulk_docs; returns the results. */
async function write(url, docs) {
  const r = await req('POST', `${url}/_bulk_docs`, { docs });
  assert.equal(r.status, 201, JSON.stringify(r.body));
  return r.body;
}

function assertJson(r) {
  assert.match(r.headers.get('content-type'), /^application\/json/);
}

test('normal feed: row shape, integer seqs, last_seq, Content-Type and cache headers', async () => {
  const { url } = await fresh();
  const [a] = await write(url, [{ _id: 'a', v: 1 }, { _id: 'b' }, { _id: 'c' }]);
  const r = await req('GET', `${url}/_changes`);
  assert.equal(r.status, 200);
  assertJson(r);
  assert.match(r.headers.get('cache-control') ?? '', /no-cache/);
  assert.deepEqual(r.body.results.map((x) => x.id), ['a', 'b', 'c']);
  assert.deepEqual(r.body.results[0], { seq: 1, id: 'a', changes: [{ rev: a.rev }] });
  assert.equal(r.body.last_seq, 3);
  // an updated doc moves to its new sequence and appears once
  await write(url, [{ _id: 'a', _rev: a.rev, v: 2 }]);
  const r2 = await req('GET', `${url}/_changes`);
  assert.deepEqual(r2.body.results.map((x) => [x.id, x.seq]), [['b', 2], ['c', 3], ['a', 4]]);
  assert.equal(r2.body.last_seq, 4);
  // POST with an empty body is the same feed
  const p = await req('POST', `${url}/_changes`, {});
  assert.deepEqual(p.body, r2.body);
});

test('since: integer, numeric string, JSON-quoted string, compound, now; bad values are 400', async () => {
  const { url } = await fresh();
  await write(url, [{ _id: 'a' }, { _id: 'b' }, { _id: 'c' }]);
  for (const since of ['2', '%222%22', '5:2']) {
    const r = await req('GET', `${url}/_changes?since=${since}`);
    assert.equal(r.status, 200, since);
    assert.deepEqual(r.body.results.map((x) => x.id), ['c'], `since=${since}`);
  }
  for (const since of [2, '2']) {
    const r = await req('POST', `${url}/_changes`, { since });
    assert.deepEqual(r.body.results.map((x) => x.id), ['c'], `POST since=${JSON.stringify(since)}`);
  }
  const now = await req('GET', `${url}/_changes?since=now`);
  assert.deepEqual(now.body, { results: [], last_seq: 3 });
  // query parameters win over the body (as Sync Gateway)
  const q = await req('POST', `${url}/_changes?since=1`, { since: 0 });
  assert.equal(q.body.results.length, 2);
  for (const bad of ['abc', '-1', '1.5', '1:2:3:4', '%5B1%5D']) {
    const r = await req('GET', `${url}/_changes?since=${bad}`);
    assert.equal(r.status, 400, `since=${bad}: ${JSON.stringify(r.body)}`);
    assert.equal(r.body.error, 'bad_request');
    assert.match(r.body.reason, /sequence/i);
    assertJson(r);
  }
  const rb = await req('POST', `${url}/_changes`, { since: { x: 1 } });
  assert.equal(rb.status, 400);
  const rl = await req('GET', `${url}/_changes?limit=abc`);
  assert.equal(rl.status, 400);
  const rf = await req('GET', `${url}/_changes?feed=sideways`);
  assert.equal(rf.status, 400);
  assert.match(rf.body.reason, /feed/);
});

test('limit: last_seq is the last row returned, so paging resumes exactly', async () => {
  const { url } = await fresh();
  await write(url, Array.from({ length: 7 }, (_, i) => ({ _id: `d${i}` })));
  const ids = [];
  let since = 0;
  for (let page = 0; page < 10; page++) {
    const r = await req('GET', `${url}/_changes?limit=3&since=${since}`);
    const rows = r.body.results;
    if (rows.length) assert.equal(r.body.last_seq, rows[rows.length - 1].seq);
    ids.push(...rows.map((x) => x.id));
    if (rows.length < 3) { assert.equal(r.body.last_seq, 7); break; }
    since = r.body.last_seq;
  }
  assert.deepEqual(ids, Array.from({ length: 7 }, (_, i) => `d${i}`));
  // limit=0 means no limit
  assert.equal((await req('GET', `${url}/_changes?limit=0`)).body.results.length, 7);
});

test('descending, include_docs, conflicts, style=all_docs, active_only', async () => {
  const { url } = await fresh();
  const [x, y] = await write(url, [{ _id: 'x', v: 1 }, { _id: 'y', v: 2 }, { _id: 'z', v: 3 }]);
  // a conflict on x: a second branch from x's parent-less root
  const br = await req('POST', `${url}/_bulk_docs`, { new_edits: false, docs: [{ _id: 'x', _rev: '1-zzzz', v: 'branch' }] });
  assert.equal(br.status, 201);
  await write(url, [{ _id: 'y', _rev: y.rev, _deleted: true }]);
  const d = await req('GET', `${url}/_changes?descending=true`);
  assert.deepEqual(d.body.results.map((r) => r.id), ['y', 'x', 'z']);
  assert.equal(d.body.last_seq, d.body.results[2].seq);
  const dl = await req('GET', `${url}/_changes?descending=true&limit=1`);
  assert.deepEqual(dl.body.results.map((r) => r.id), ['y']);
  assert.equal(dl.body.last_seq, dl.body.results[0].seq);

  const inc = await req('GET', `${url}/_changes?include_docs=true&conflicts=true&style=all_docs`);
  const byId = Object.fromEntries(inc.body.results.map((r) => [r.id, r]));
  assert.equal(byId.z.doc.v, 3);
  assert.equal(byId.z.doc._id, 'z');
  assert.ok(byId.z.doc._rev.startsWith('1-'));
  // 1-zzzz > x's rev? the winner is the highest rev id among equal generations
  const winner = [x.rev, '1-zzzz'].sort().pop();
  const loser = [x.rev, '1-zzzz'].sort()[0];
  assert.deepEqual(byId.x.changes, [{ rev: winner }, { rev: loser }]);
  assert.deepEqual(byId.x.doc._conflicts, [loser]);
  assert.equal(byId.y.deleted, true);
  assert.equal(byId.y.doc._deleted, true);
  // without style=all_docs only the winner is listed
  const main = await req('GET', `${url}/_changes`);
  assert.deepEqual(main.body.results.find((r) => r.id === 'x').changes, [{ rev: winner }]);
  // without conflicts=true no _conflicts
  const nc = await req('GET', `${url}/_changes?include_docs=true`);
  assert.equal(nc.body.results.find((r) => r.id === 'x').doc._conflicts, undefined);
  const active = await req('GET', `${url}/_changes?active_only=true`);
  assert.deepEqual(active.body.results.map((r) => r.id).sort(), ['x', 'z']);
});

test('filter=_doc_ids with GET (JSON array) and POST (body), and its errors', async () => {
  const { url } = await fresh();
  await write(url, [{ _id: 'a' }, { _id: 'b' }, { _id: 'c,d' }]);
  const g = await req('GET', `${url}/_changes?filter=_doc_ids&doc_ids=${encodeURIComponent('["a","c,d"]')}`);
  assert.deepEqual(g.body.results.map((r) => r.id), ['a', 'c,d']);
  const p = await req('POST', `${url}/_changes?filter=_doc_ids`, { doc_ids: ['b'] });
  assert.deepEqual(p.body.results.map((r) => r.id), ['b']);
  const pb = await req('POST', `${url}/_changes`, { filter: '_doc_ids', doc_ids: ['a', 'b'] });
  assert.deepEqual(pb.body.results.map((r) => r.id), ['a', 'b']);
  for (const [method, u, body] of [
    ['GET', `${url}/_changes?filter=_doc_ids`],
    ['POST', `${url}/_changes?filter=_doc_ids`, {}],
    ['POST', `${url}/_changes?filter=_doc_ids`, { doc_ids: 'a' }],
    ['POST', `${url}/_changes?filter=_doc_ids`, { doc_ids: [1] }],
    ['POST', `${url}/_changes?filter=_doc_ids`, { doc_ids: [] }],
    ['GET', `${url}/_changes?filter=_view`],
    ['POST', `${url}/_changes`, [1, 2]],
  ]) {
    const r = await req(method, u, body);
    assert.equal(r.status, 400, `${method} ${u} ${JSON.stringify(body)} → ${JSON.stringify(r.body)}`);
    assert.ok(r.body.reason);
  }
  // a live _doc_ids feed wakes only for its docs
  const lp = openStream(`${url}/_changes?feed=longpoll&since=now&filter=_doc_ids&doc_ids=${encodeURIComponent('["want"]')}`);
  const stream = await lp;
  await write(url, [{ _id: 'other' }]);
  await sleep(300);
  assert.equal(stream.text().includes('other'), false);
  await write(url, [{ _id: 'want' }]);
  await stream.done;
  const body = JSON.parse(stream.text());
  assert.deepEqual(body.results.map((r) => r.id), ['want']);
});

test('longpoll returns promptly on a write, with the row and a parseable body', async (t) => {
  const { url, name } = await fresh();
  await write(url, [{ _id: 'old' }]);
  // changes pending: answers at once
  const now = await req('GET', `${url}/_changes?feed=longpoll&since=0`);
  assert.deepEqual(now.body.results.map((r) => r.id), ['old']);
  assertJson(now);
  const st = await openStream(`${url}/_changes?feed=longpoll&since=1`);
  assert.equal(st.status, 200);
  assert.match(st.headers.get('content-type'), /^application\/json/);
  await eventually(async () => (await feeds(name)) === 1, 3000, 'feed counted');
  await sleep(200);
  const t0 = Date.now();
  await write(url, [{ _id: 'new' }]);
  const end = await st.done;
  const ms = Date.now() - t0;
  t.diagnostic(`longpoll answered ${ms} ms after the write`);
  assert.equal(end.aborted, false);
  assert.ok(ms < 1000, `took ${ms} ms`);
  const body = JSON.parse(st.text());
  assert.deepEqual(body.results.map((r) => r.id), ['new']);
  assert.equal(body.last_seq, 2);
  await eventually(async () => (await feeds(name)) === 0, 3000, 'feed released');
});

test('longpoll: timeout answers an empty result; heartbeats are whitespace inside the JSON', async () => {
  const { url } = await fresh();
  await write(url, [{ _id: 'a' }]);
  const t0 = Date.now();
  const r = await req('GET', `${url}/_changes?feed=longpoll&since=1&timeout=300`);
  const ms = Date.now() - t0;
  assert.deepEqual(r.body, { results: [], last_seq: 1 });
  assert.ok(ms >= 250 && ms < 3000, `timeout took ${ms} ms`);
  // heartbeat=100 is clamped to 1000 ms: in ~2.5 s at most 2-3 newlines arrive
  const st = await openStream(`${url}/_changes?feed=longpoll&since=1&heartbeat=100`);
  await sleep(2500);
  const beats = (st.text().match(/\n/g) ?? []).length;
  assert.ok(beats >= 2 && beats <= 4, `newlines so far: ${JSON.stringify(st.text())}`);
  await write(url, [{ _id: 'b' }]);
  await st.done;
  const body = JSON.parse(st.text());
  assert.deepEqual(body.results.map((x) => x.id), ['b']);
  assert.equal(body.last_seq, 2);
  // heartbeat=true is CouchDB's default interval; garbage is a 400
  const ht = await req('GET', `${url}/_changes?feed=longpoll&since=2&heartbeat=true&timeout=200`);
  assert.deepEqual(ht.body, { results: [], last_seq: 2 });
  const hbad = await req('GET', `${url}/_changes?feed=longpoll&since=2&heartbeat=soon`);
  assert.equal(hbad.status, 400);
  assert.match(hbad.body.reason, /heartbeat/);
  // heartbeat plus timeout: the timeout still ends the request
  const t1 = Date.now();
  const hb = await req('GET', `${url}/_changes?feed=longpoll&since=2&heartbeat=1000&timeout=1500`);
  assert.deepEqual(hb.body, { results: [], last_seq: 2 });
  assert.ok(Date.now() - t1 < 4000);
});

test('longpoll with limit: several changes in one commit are cut at limit, last_seq resumes', async () => {
  const { url } = await fresh();
  const st = await openStream(`${url}/_changes?feed=longpoll&since=0&limit=2`);
  await sleep(100);
  await write(url, [{ _id: 'a' }, { _id: 'b' }, { _id: 'c' }]);
  await st.done;
  const body = JSON.parse(st.text());
  assert.deepEqual(body.results.map((r) => r.id), ['a', 'b']);
  assert.equal(body.last_seq, 2);
  const next = await req('GET', `${url}/_changes?feed=longpoll&since=${body.last_seq}&limit=2`);
  assert.deepEqual(next.body.results.map((r) => r.id), ['c']);
});

test('continuous streams one row per line, heartbeats, and ends on timeout with last_seq', async () => {
  const { url, name } = await fresh();
  await write(url, [{ _id: 'a' }, { _id: 'b' }]);
  const st = await openStream(`${url}/_changes?feed=continuous&since=0&heartbeat=1000&timeout=4000`);
  assert.equal(st.status, 200);
  await st.until((t) => t.split('\n').filter(Boolean).length >= 2);
  const lines = st.text().split('\n').filter(Boolean).map((l) => JSON.parse(l));
  assert.deepEqual(lines.map((l) => l.id), ['a', 'b']);
  assert.deepEqual(Object.keys(lines[0]).sort(), ['changes', 'id', 'seq']);
  await write(url, [{ _id: 'c' }]);
  await st.until((t) => t.includes('"c"'), 2000);
  await write(url, [{ _id: 'd' }]);
  await st.until((t) => t.includes('"d"'), 2000);
  // heartbeat newlines while idle
  const before = st.text().length;
  await sleep(2300);
  const idle = st.text().slice(before);
  assert.match(idle, /^\n+$/, `only heartbeats while idle: ${JSON.stringify(idle)}`);
  assert.equal(await feeds(name), 1);
  await st.done; // the 4 s idle timeout ends it
  const all = st.text().split('\n').filter(Boolean).map((l) => JSON.parse(l));
  assert.deepEqual(all.at(-1), { last_seq: 4 });
  await eventually(async () => (await feeds(name)) === 0, 3000, 'feed released');
  // limit ends a continuous feed too
  const lim = await req('GET', `${url}/_changes?feed=continuous&since=0&limit=3`);
  const ll = lim.body.split('\n').filter(Boolean).map((l) => JSON.parse(l));
  assert.deepEqual(ll.map((l) => l.id ?? l.last_seq), ['a', 'b', 'c', 3]);
});

test('eventsource feed: text/event-stream with data/id lines', async () => {
  const { url, name } = await fresh();
  await write(url, [{ _id: 'a' }]);
  const st = await openStream(`${url}/_changes?feed=eventsource&since=0&heartbeat=1000`, { headers: { accept: 'text/event-stream' } });
  assert.match(st.headers.get('content-type'), /^text\/event-stream/);
  await st.until((t) => t.includes('\n\n'));
  await write(url, [{ _id: 'b' }]);
  await st.until((t) => t.split('\n\n').filter(Boolean).length >= 2);
  const events = st.text().split('\n\n').filter((e) => e.includes('data:'));
  const parsed = events.map((e) => {
    const data = e.split('\n').find((l) => l.startsWith('data: '));
    const id = e.split('\n').find((l) => l.startsWith('id: '));
    return { data: JSON.parse(data.slice(6)), id: id?.slice(4) };
  });
  assert.deepEqual(parsed.map((p) => p.data.id), ['a', 'b']);
  assert.deepEqual(parsed.map((p) => p.id), ['1', '2']);
  st.abort();
  // a reconnecting EventSource resumes from Last-Event-ID, which wins over since in its URL
  const re = await openStream(`${url}/_changes?feed=eventsource&since=0&timeout=1000`, { headers: { accept: 'text/event-stream', 'last-event-id': '1' } });
  await re.done;
  assert.deepEqual(re.text().split('\n').filter((l) => l.startsWith('data: ')).map((l) => JSON.parse(l.slice(6)).id), ['b']);
  await eventually(async () => (await feeds(name)) === 0, 5000, 'eventsource released');
});

test('a real EventSource reconnects with Last-Event-ID and gets no event twice', async () => {
  const { url } = await fresh();
  await write(url, [{ _id: 'a' }, { _id: 'b' }]);
  // Node's own EventSource (undici, behind a flag in Node 20): it reconnects by itself when the
  // server ends the stream (here after 500 ms idle), to the same URL, with Last-Event-ID
  const script = `
    const es = new EventSource(process.argv[1]);
    es.onmessage = (e) => console.log(JSON.stringify({ id: JSON.parse(e.data).id, lastEventId: e.lastEventId }));
    es.onopen = () => console.log(JSON.stringify({ open: true }));
    setInterval(() => {}, 1000); // the reconnect timer alone does not keep the process alive`;
  const child = spawn(process.execPath, ['--experimental-eventsource', '--no-warnings', '-e', script, `${url}/_changes?feed=eventsource&since=0&timeout=500`], { stdio: ['ignore', 'pipe', 'inherit'] });
  try {
    const lines = [];
    let buf = '';
    child.stdout.on('data', (d) => {
      buf += d;
      const parts = buf.split('\n');
      buf = parts.pop();
      for (const p of parts.filter(Boolean)) lines.push(JSON.parse(p));
    });
    const events = () => lines.filter((l) => l.id);
    await eventually(async () => events().length >= 2, 10000, 'first two events');
    // the first stream ends after 500 ms idle and the client reconnects by itself
    await eventually(async () => lines.filter((l) => l.open).length >= 2, 15000, 'a reconnect');
    await write(url, [{ _id: 'c' }]);
    await eventually(async () => events().some((e) => e.id === 'c'), 15000, 'event c after the reconnect');
    assert.deepEqual(events().map((e) => e.id), ['a', 'b', 'c'], JSON.stringify(lines));
    assert.deepEqual(events().map((e) => e.lastEventId), ['1', '2', '3']);
  } finally {
    child.kill();
  }
});

test('disconnected clients leave nothing behind (longpoll with and without heartbeat, continuous)', async () => {
  const { url, name } = await fresh();
  const streams = [];
  for (const q of ['feed=longpoll&since=now', 'feed=longpoll&since=now&heartbeat=1000', 'feed=continuous&since=now', 'feed=continuous&since=now&heartbeat=1000', 'feed=eventsource&since=now']) {
    streams.push(await openStream(`${url}/_changes?${q}`));
  }
  await eventually(async () => (await feeds(name)) === 5, 3000, '5 feeds open');
  for (const st of streams) st.abort();
  const t0 = Date.now();
  await eventually(async () => (await feeds(name)) === 0, 5000, 'feeds released after disconnect');
  assert.ok(Date.now() - t0 < 5000);
  // a write after the disconnects does not resurrect anything
  await write(url, [{ _id: 'after' }]);
  await sleep(200);
  assert.equal(await feeds(name), 0);
});

test('500 concurrent longpoll clients all return promptly on one write and release their feeds', async (t) => {
  const { url, name } = await fresh();
  const { Agent } = await import('node:http');
  const agent = new Agent({ keepAlive: false, maxSockets: Infinity });
  const http = await import('node:http');
  const n = 500;
  const u = new URL(`${url}/_changes?feed=longpoll&since=now&heartbeat=10000`);
  const results = [];
  const opened = [];
  for (let i = 0; i < n; i++) {
    results.push(new Promise((resolve, reject) => {
      const rq = http.get(u, { agent }, (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c) => { text += c; });
        res.on('end', () => resolve({ status: res.statusCode, text, at: Date.now() }));
        res.on('error', reject);
      });
      rq.on('error', reject);
      opened.push(rq);
    }));
  }
  await eventually(async () => (await feeds(name)) === n, 20000, `${n} feeds open`);
  const t0 = Date.now();
  await write(url, [{ _id: 'ping' }]);
  const all = await Promise.all(results);
  const slowest = Math.max(...all.map((r) => r.at)) - t0;
  t.diagnostic(`${n} longpolls answered within ${slowest} ms of the write`);
  for (const r of all) {
    assert.equal(r.status, 200);
    assert.deepEqual(JSON.parse(r.text).results.map((x) => x.id), ['ping']);
  }
  assert.ok(slowest < 5000, `slowest answer ${slowest} ms`);
  await eventually(async () => (await feeds(name)) === 0, 5000, 'gauge back to 0');
  agent.destroy();
});

test('shutdown ends open feeds with complete bodies and the process exits 0', async () => {
  const srv = await startServer();
  const url = `${srv.admin}/db`;
  assert.equal((await req('PUT', `${url}/x`, { v: 1 })).status, 201);
  const lp = await openStream(`${url}/_changes?feed=longpoll&since=1&heartbeat=1000`);
  const ct = await openStream(`${url}/_changes?feed=continuous&since=0&heartbeat=1000`);
  await ct.until((t) => t.includes('"x"'));
  await eventually(async () => (await srv.metric('syncgate_changes_feeds_active{db="db"}')) === 2, 3000, 'feeds open');
  const t0 = Date.now();
  const exit = await srv.stop();
  assert.equal(exit.code, 0);
  assert.ok(Date.now() - t0 < 5000, `shutdown took ${Date.now() - t0} ms`);
  await lp.done;
  assert.deepEqual(JSON.parse(lp.text()), { results: [], last_seq: 1 });
  await ct.done;
  const lines = ct.text().split('\n').filter(Boolean).map((l) => JSON.parse(l));
  assert.deepEqual(lines.at(-1), { last_seq: 1 });
});

test('a continuous feed from far back streams every row once, in order, page by page', async () => {
  const { url } = await fresh();
  for (let k = 0; k < 5; k++) await write(url, Array.from({ length: 500 }, (_, i) => ({ _id: `d${k * 500 + i}` })));
  const r = await req('GET', `${url}/_changes?feed=continuous&since=0&timeout=500`);
  const lines = r.body.split('\n').filter(Boolean).map((l) => JSON.parse(l));
  assert.equal(lines.length, 2501);
  assert.deepEqual(lines.slice(0, -1).map((l) => l.seq), Array.from({ length: 2500 }, (_, i) => i + 1));
  assert.deepEqual(lines.at(-1), { last_seq: 2500 });
  const lim = await req('GET', `${url}/_changes?feed=continuous&since=100&limit=1500`);
  const ll = lim.body.split('\n').filter(Boolean).map((l) => JSON.parse(l));
  assert.equal(ll.length, 1501);
  assert.equal(ll[0].seq, 101);
  assert.deepEqual(ll.at(-1), { last_seq: 1600 });
});
