// Replication with unmodified PouchDB 9 (memory adapter) against the real binary, admin port.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { isDeepStrictEqual } from 'node:util';
import { startServer, req } from '../lib/server.mjs';
import { localDb, remoteDb, PouchDB } from '../lib/pouch.mjs';
import { snapshot, assertSameSnapshot, eventually, bytes } from '../lib/compare.mjs';

let s;
before(async () => { s = await startServer(); });
after(async () => { await s?.stop(); });

let dbn = 0;
/** A fresh database on the server (admin PUT) and a PouchDB handle on it. */
async function freshRemote(server = s) {
  const name = `r${dbn++}`;
  const r = await req('PUT', `${server.admin}/${name}/`);
  assert.equal(r.status, 201, JSON.stringify(r.body));
  return { name, url: `${server.admin}/${name}`, db: remoteDb(`${server.admin}/${name}`) };
}

const N = Number(process.env.SYNCGATE_REPL_DOCS ?? 5000);

test(`push ${N} docs (some with attachments), pull into a fresh client: identical`, async (t) => {
  const { db: remote, url } = await freshRemote();
  const a = localDb();
  const docs = [];
  for (let i = 0; i < N; i++) {
    const doc = { _id: `doc-${String(i).padStart(5, '0')}`, i, text: `value ${i}`, nested: { list: [i, i * 2, { k: 'v' }], flag: i % 2 === 0 } };
    if (i % 50 === 0) {
      doc._attachments = {
        'blob.bin': { content_type: 'application/octet-stream', data: bytes(i + 1, 1000 + i).toString('base64') },
        'note.txt': { content_type: 'text/plain', data: Buffer.from(`note for ${i}\n`).toString('base64') },
      };
    }
    docs.push(doc);
  }
  for (let i = 0; i < docs.length; i += 500) await a.bulkDocs(docs.slice(i, i + 500));
  // a second revision on some docs, a deletion on others: histories longer than one
  const some = await a.allDocs({ include_docs: true, keys: docs.filter((d) => d.i % 97 === 0).map((d) => d._id) });
  await a.bulkDocs(some.rows.map((r) => ({ ...r.doc, edited: true })));
  const del = await a.allDocs({ keys: docs.filter((d) => d.i % 101 === 1).map((d) => d._id) });
  await a.bulkDocs(del.rows.map((r) => ({ _id: r.id, _rev: r.value.rev, _deleted: true })));

  let t0 = Date.now();
  const push = await a.replicate.to(remote);
  const pushMs = Date.now() - t0;
  assert.equal(push.ok, true);
  assert.equal(push.docs_written, N);
  assert.equal(push.doc_write_failures, 0);

  const info = (await req('GET', `${url}/`)).body;
  const deletedCount = docs.filter((d) => d.i % 101 === 1).length;
  assert.equal(info.doc_count, N - deletedCount);

  const b = localDb();
  t0 = Date.now();
  // compaction runs beside the pull (and beside writes): neither waits for the other
  const [pull, compact] = await Promise.all([
    b.replicate.from(remote),
    req('POST', `${url}/_compact`, ''),
    remote.bulkDocs(Array.from({ length: 20 }, (_, k) => ({ _id: `during-compact-${k}` }))),
  ]);
  const pullMs = Date.now() - t0;
  assert.equal(compact.status, 202);
  // both clients catch up with the docs written during compaction
  await b.replicate.from(remote);
  await a.replicate.from(remote);
  assert.equal(pull.ok, true);
  assert.ok(pull.docs_written >= N);
  t.diagnostic(`${N} docs: push ${pushMs} ms, pull ${pullMs} ms`);

  const [sa, sb] = await Promise.all([snapshot(a), snapshot(b)]);
  assert.equal(Object.keys(sa).length, N + 20);
  assertSameSnapshot(sa, sb, 'source and pulled client');
  // attachments really are the bytes that were pushed
  const att = await b.getAttachment('doc-00050', 'blob.bin');
  assert.deepEqual(Buffer.from(att), bytes(51, 1050));

  // checkpoint resume: 10 new docs transfer only those 10, both ways
  await a.bulkDocs(Array.from({ length: 10 }, (_, k) => ({ _id: `late-${k}`, k })));
  const push2 = await a.replicate.to(remote);
  assert.equal(push2.docs_read, 10);
  assert.equal(push2.docs_written, 10);
  const pull2 = await b.replicate.from(remote);
  assert.equal(pull2.docs_read, 10);
  assert.equal(pull2.docs_written, 10);
  assert.equal((await b.get('late-9')).k, 9);
});

test('deletes replicate as tombstones, both ways', async () => {
  const { db: remote, url } = await freshRemote();
  const a = localDb();
  const r1 = await a.put({ _id: 'gone', v: 1 });
  await a.put({ _id: 'stays', v: 1 });
  await a.replicate.to(remote);
  const r2 = await a.remove('gone', r1.rev);
  await a.replicate.to(remote);
  // the server has the tombstone as the winner, with its history
  const g = await req('GET', `${url}/gone`);
  assert.equal(g.status, 404);
  assert.equal(g.body.reason, 'deleted');
  const tomb = await req('GET', `${url}/gone?rev=${r2.rev}&revs=true`);
  assert.equal(tomb.status, 200);
  assert.equal(tomb.body._deleted, true);
  assert.deepEqual(tomb.body._revisions, { start: 2, ids: [r2.rev.slice(2), r1.rev.slice(2)] });
  const ch = await req('GET', `${url}/_changes`);
  const row = ch.body.results.find((x) => x.id === 'gone');
  assert.equal(row.deleted, true);
  assert.equal(row.changes[0].rev, r2.rev);
  // a fresh client pulls the tombstone
  const b = localDb();
  await b.replicate.from(remote);
  await assert.rejects(b.get('gone'), (e) => e.status === 404);
  const bt = await b.get('gone', { rev: r2.rev });
  assert.equal(bt._deleted, true);
  // deleting on the server side replicates back to the client
  const stays = await remote.get('stays');
  await remote.remove(stays);
  await a.replicate.from(remote);
  await b.replicate.from(remote);
  await assert.rejects(a.get('stays'), (e) => e.status === 404 && e.reason === 'deleted');
  assertSameSnapshot(await snapshot(a), await snapshot(b), 'after deletes');
  assertSameSnapshot(await snapshot(a), await snapshot(remote), 'client and server');
});

test('conflicts: offline edits on two clients converge to one winner and the same _conflicts', async () => {
  const { db: remote } = await freshRemote();
  const a = localDb();
  const b = localDb();
  await a.put({ _id: 'c', v: 0, _attachments: { 'f.txt': { content_type: 'text/plain', data: Buffer.from('original').toString('base64') } } });
  await a.replicate.to(remote);
  await b.replicate.from(remote);
  // both edit offline; b edits twice so its branch is longer
  const da = await a.get('c');
  await a.put({ ...da, v: 'from-a' });
  let db_ = await b.get('c');
  const bput = await b.put({ ...db_, v: 'from-b-1' });
  db_ = await b.get('c');
  await b.put({ ...db_, v: 'from-b-2', _attachments: { ...db_._attachments, 'g.txt': { content_type: 'text/plain', data: Buffer.from('added by b').toString('base64') } } });
  assert.ok(bput.ok);
  // both sync (each pushes, then pulls)
  await a.sync(remote);
  await b.sync(remote);
  await a.sync(remote);
  // sync() pushes and pulls concurrently: b's pull may have read the feed while b's own push
  // was not yet durable (feeds show only durable sequences), so one more pull completes b
  await b.replicate.from(remote);
  const sa = await snapshot(a);
  const sb = await snapshot(b);
  const sr = await snapshot(remote);
  assertSameSnapshot(sa, sb, 'a and b');
  assertSameSnapshot(sa, sr, 'a and server');
  assert.equal(sa.c.conflicts.length, 1, 'one conflicting leaf');
  assert.ok(sa.c.winner.startsWith('3-'), `b's longer branch wins: ${sa.c.winner}`);
  const wa = await a.get('c', { conflicts: true });
  assert.equal(wa.v, 'from-b-2');
  assert.deepEqual(wa._conflicts, sa.c.conflicts);
  // the server agrees through its own API
  const rs = await remote.get('c', { conflicts: true });
  assert.equal(rs._rev, wa._rev);
  assert.deepEqual(rs._conflicts, wa._conflicts);
  // resolve on a: remove the losing branch
  await a.remove('c', wa._conflicts[0]);
  await a.sync(remote);
  await b.sync(remote);
  for (const db of [a, b, remote]) {
    const d = await db.get('c', { conflicts: true });
    assert.equal(d._conflicts, undefined, 'conflict resolved everywhere');
    assert.equal(d._rev, wa._rev);
    assert.equal(Buffer.from(await db.getAttachment('c', 'g.txt')).toString(), 'added by b');
  }
  assertSameSnapshot(await snapshot(a), await snapshot(b), 'after resolution');
});

test('conflicting branches pushed from two clients to the server directly (new_edits:false)', async () => {
  const { db: remote, url } = await freshRemote();
  const a = localDb();
  const b = localDb();
  // the same id created independently on both clients: two roots, a conflict on the server
  await a.put({ _id: 'twin', who: 'a' });
  await b.put({ _id: 'twin', who: 'b' });
  await a.replicate.to(remote);
  const pb = await b.replicate.to(remote);
  assert.equal(pb.docs_written, 1);
  assert.equal(pb.doc_write_failures, 0);
  const open = await req('GET', `${url}/twin?open_revs=all`, undefined, { accept: 'application/json' });
  assert.equal(open.status, 200);
  assert.equal(open.body.length, 2);
  const c = await a.sync(remote);
  assert.ok(c.pull.ok);
  const d = await a.get('twin', { conflicts: true });
  assert.equal(d._conflicts.length, 1);
});

test('live two-way sync: a write on either side appears on the other within seconds', async (t) => {
  const { db: remote, name } = await freshRemote();
  const a = localDb();
  const b = localDb();
  const feedsBefore = await s.metric(`syncgate_changes_feeds_active{db="${name}"}`);
  const sa = a.sync(remote, { live: true, retry: true });
  const sb = b.sync(remote, { live: true, retry: true });
  try {
    await a.put({ _id: 'from-a', v: 1 });
    let t0 = Date.now();
    await eventually(() => b.get('from-a').then(() => true, () => false), 5000, 'a → b');
    t.diagnostic(`a → server → b in ${Date.now() - t0} ms`);
    t0 = Date.now();
    await b.put({ _id: 'from-b', v: 2 });
    await eventually(() => a.get('from-b').then(() => true, () => false), 5000, 'b → a');
    t.diagnostic(`b → server → a in ${Date.now() - t0} ms`);
    // a server-side write reaches both
    await remote.put({ _id: 'from-server', v: 3 });
    await eventually(async () => (await a.get('from-server').catch(() => null)) && (await b.get('from-server').catch(() => null)), 5000, 'server → a, b');
    // an update and a delete too
    const d = await a.get('from-b');
    await a.put({ ...d, v: 22 });
    await eventually(async () => (await b.get('from-b')).v === 22, 5000, 'update a → b');
    const d2 = await b.get('from-a');
    await b.remove(d2);
    await eventually(() => a.get('from-a').then(() => false, (e) => e.status === 404), 5000, 'delete b → a');
    // the live pulls hold longpoll feeds on the server
    assert.ok(await s.metric(`syncgate_changes_feeds_active{db="${name}"}`) >= 1);
  } finally {
    sa.cancel();
    sb.cancel();
  }
  // cancelled clients abort their longpolls: the server releases the feeds
  await eventually(async () => (await s.metric(`syncgate_changes_feeds_active{db="${name}"}`)) === feedsBefore, 5000, 'feeds released');
});

test('replication between two syncgate servers over HTTP on both ends', async () => {
  const s2 = await startServer();
  try {
    const src = await freshRemote(s);
    const dst = await freshRemote(s2);
    const a = localDb();
    const docs = Array.from({ length: 300 }, (_, i) => ({ _id: `d${i}`, i }));
    docs[7]._attachments = { 'x.bin': { content_type: 'application/octet-stream', data: bytes(7, 5000).toString('base64') } };
    await a.bulkDocs(docs);
    const x = await a.get('d3');
    await a.remove(x);
    await a.replicate.to(src.db);
    // a conflict on the source server too
    await req('POST', `${src.url}/_bulk_docs`, { new_edits: false, docs: [{ _id: 'd5', _rev: '2-ffff', _revisions: { start: 2, ids: ['ffff', (await a.get('d5'))._rev.slice(2)] }, i: 'branch' }] });
    const r = await PouchDB.replicate(src.url, dst.url);
    assert.equal(r.ok, true);
    assert.equal(r.docs_written, 300);
    assertSameSnapshot(await snapshot(src.db), await snapshot(dst.db), 'server A and server B');
    // incremental: only the new doc moves
    await src.db.put({ _id: 'new', v: 1 });
    const r2 = await PouchDB.replicate(src.url, dst.url);
    assert.equal(r2.docs_written, 1);
    const got = await dst.db.getAttachment('d7', 'x.bin');
    assert.deepEqual(Buffer.from(got), bytes(7, 5000));
  } finally {
    await s2.stop();
  }
});

test('awkward ids and attachment names survive a round trip', async () => {
  const { db: remote } = await freshRemote();
  const a = localDb();
  const ids = ['a/b', 'sp ace', 'ünïcödé ✓', 'plus+sign', 'q?x#y&z=1', '%25', '_design/dd', 'semi;colon', 'quote"s', 'x'.repeat(300)];
  await a.bulkDocs(ids.map((id, i) => ({
    _id: id,
    i,
    _attachments: {
      'dir/file.txt': { content_type: 'text/plain', data: Buffer.from(`file of ${id}`).toString('base64') },
      'with space ü.bin': { content_type: 'application/octet-stream', data: bytes(i + 3, 64).toString('base64') },
      'empty': { content_type: 'text/plain', data: '' },
    },
  })));
  const push = await a.replicate.to(remote);
  assert.equal(push.docs_written, ids.length);
  const b = localDb();
  const pull = await b.replicate.from(remote);
  assert.equal(pull.docs_written, ids.length);
  assertSameSnapshot(await snapshot(a), await snapshot(b), 'awkward ids');
  assertSameSnapshot(await snapshot(a), await snapshot(remote), 'awkward ids on the server');
});

test('doc_ids replication (one-shot and live) moves only the named docs', async () => {
  const { db: remote } = await freshRemote();
  await remote.bulkDocs([{ _id: 'x', v: 1 }, { _id: 'y', v: 1 }, { _id: 'z', v: 1 }]);
  const b = localDb();
  const r = await b.replicate.from(remote, { doc_ids: ['x', 'z'] });
  assert.equal(r.docs_written, 2);
  assert.deepEqual((await b.allDocs()).rows.map((x) => x.id), ['x', 'z']);
  const live = b.replicate.from(remote, { doc_ids: ['y'], live: true, retry: true });
  try {
    await eventually(() => b.get('y').then(() => true, () => false), 5000, 'y arrives');
    const y = await remote.get('y');
    await remote.put({ ...y, v: 2 });
    const x = await remote.get('x');
    await remote.put({ ...x, v: 2 });
    await eventually(async () => (await b.get('y')).v === 2, 5000, 'y update arrives');
    assert.equal((await b.get('x')).v, 1, 'x is not part of the live replication');
  } finally {
    live.cancel();
  }
});

test('a server with a small revs_limit prunes history; clients still sync edits to it', async () => {
  const srv = await startServer((c) => { c.databases.db = { revs_limit: 20 }; });
  try {
    const remote = remoteDb(`${srv.admin}/db`);
    const a = localDb();
    let doc = { _id: 'long', n: 0 };
    for (let n = 1; n <= 30; n++) {
      const r = await a.put({ ...doc, n });
      doc = { ...doc, n, _rev: r.rev };
    }
    await a.replicate.to(remote);
    const onServer = await remote.get('long', { revs: true });
    assert.equal(onServer._revisions.start, 30);
    assert.equal(onServer._revisions.ids.length, 20, 'history pruned to revs_limit');
    const b = localDb();
    await b.replicate.from(remote);
    const onB = await b.get('long', { revs: true });
    assert.equal(onB._rev, doc._rev);
    assert.equal(onB._revisions.ids.length, 20);
    // further edits on both clients still replicate and merge as one line of history
    const r = await b.put({ ...onB, n: 31 });
    await b.replicate.to(remote);
    await a.replicate.from(remote);
    const onA = await a.get('long', { conflicts: true });
    assert.equal(onA._rev, r.rev);
    assert.equal(onA._conflicts, undefined);
    await a.put({ ...onA, n: 32 });
    const push = await a.replicate.to(remote);
    assert.equal(push.docs_written, 1);
    const final = await remote.get('long', { conflicts: true });
    assert.equal(final.n, 32);
    assert.equal(final._conflicts, undefined);
  } finally {
    await srv.stop();
  }
});

test('live sync survives a server crash and restart (retry), losing no acknowledged write', async () => {
  let srv = await startServer();
  const adminAddr = new URL(srv.admin).host;
  srv.config.adminInterface = adminAddr;
  const url = `${srv.admin}/db`;
  const a = localDb();
  const b = localDb();
  const remote = remoteDb(url);
  const sa = a.sync(remote, { live: true, retry: true });
  const sb = b.sync(remoteDb(url), { live: true, retry: true });
  try {
    await a.put({ _id: 'before', v: 1 });
    await eventually(() => b.get('before').then(() => true, () => false), 5000, 'before crash');
    await srv.kill();
    await a.put({ _id: 'during', v: 1 });
    srv = await startServer(undefined, { dir: srv.dir, config: srv.config });
    assert.equal(new URL(srv.admin).host, adminAddr);
    await eventually(() => b.get('during').then(() => true, () => false), 20000, 'after restart');
    await b.put({ _id: 'back', v: 1 });
    await eventually(() => a.get('back').then(() => true, () => false), 10000, 'b → a after restart');
    assertSameSnapshot(await snapshot(a), await snapshot(b), 'after the crash');
  } finally {
    sa.cancel();
    sb.cancel();
    await srv.stop();
  }
});

test('live sync under concurrent edits of the same docs on two clients converges', async () => {
  const { db: remote } = await freshRemote();
  const a = localDb();
  const b = localDb();
  await a.bulkDocs(Array.from({ length: 5 }, (_, i) => ({ _id: `hot${i}`, n: 0 })));
  await a.replicate.to(remote);
  await b.replicate.from(remote);
  const sa = a.sync(remote, { live: true, retry: true });
  const sb = b.sync(remote, { live: true, retry: true });
  try {
    // both sides edit every doc repeatedly, racing the replication
    for (let round = 1; round <= 10; round++) {
      await Promise.all([a, b].flatMap((db, side) => Array.from({ length: 5 }, async (_, i) => {
        const d = await db.get(`hot${i}`);
        await db.put({ ...d, n: round, side });
      })));
      await new Promise((r) => setTimeout(r, 20));
    }
    // converged: same winners and conflicts on both clients and on the server
    await eventually(async () => {
      const [x, y, z] = await Promise.all([snapshot(a), snapshot(b), snapshot(remote)]);
      return isDeepStrictEqual(x, y) && isDeepStrictEqual(x, z);
    }, 15000, 'replicas converge');
  } finally {
    sa.cancel();
    sb.cancel();
  }
  const final = await snapshot(remote);
  for (let i = 0; i < 5; i++) {
    const d = final[`hot${i}`];
    assert.ok(d.winner.startsWith('11-'), `hot${i} winner ${d.winner}`);
  }
});

test('public port (GUEST with every channel): push, pull and live sync as on the admin port', async () => {
  const srv = await startServer((c) => { c.databases.db = { guest: { disabled: false, admin_channels: ['*'] } }; });
  try {
    const remote = remoteDb(`${srv.public}/db`);
    const a = localDb();
    await a.bulkDocs(Array.from({ length: 200 }, (_, i) => ({ _id: `p${i}`, i, channels: [`ch${i % 3}`] })));
    const x = await a.put({ _id: 'att', _attachments: { 'a.bin': { content_type: 'application/octet-stream', data: bytes(9, 2048).toString('base64') } } });
    assert.ok(x.ok);
    const push = await a.replicate.to(remote);
    assert.equal(push.docs_written, 201);
    const b = localDb();
    const pull = await b.replicate.from(remote);
    assert.equal(pull.docs_written, 201);
    assertSameSnapshot(await snapshot(a), await snapshot(b), 'through the public port');
    const sa = a.sync(remote, { live: true, retry: true });
    const sb = b.sync(remoteDb(`${srv.public}/db`), { live: true, retry: true });
    try {
      await a.put({ _id: 'live-a', channels: ['ch1'] });
      await eventually(() => b.get('live-a').then(() => true, () => false), 5000, 'a → b via public port');
      await b.put({ _id: 'live-b' });
      await eventually(() => a.get('live-b').then(() => true, () => false), 5000, 'b → a via public port');
    } finally {
      sa.cancel();
      sb.cancel();
    }
    await eventually(async () => (await srv.metric('syncgate_changes_feeds_active{db="db"}')) === 0, 5000, 'public feeds released');
  } finally {
    await srv.stop();
  }
});
