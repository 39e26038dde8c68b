// PouchDB's `selector` and `doc_ids` replication options against the real binary: the server
// filters the feed (`_changes?filter=_selector` / `filter=_doc_ids`), on both ports, inside the
// user's channels on the public port.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, req, basic } from '../lib/server.mjs';
import { localDb, PouchDB } from '../lib/pouch.mjs';

/** A remote database that records the `_changes` requests PouchDB makes. */
function recordingRemote(url, headers = {}) {
  const changes = [];
  const db = new PouchDB(url, {
    skip_setup: true,
    fetch: (u, opts) => {
      for (const [k, v] of Object.entries(headers)) opts.headers.set(k, v);
      if (String(u).includes('/_changes')) changes.push({ url: String(u), method: opts.method, body: opts.body });
      return PouchDB.fetch(u, opts);
    },
  });
  return { db, changes };
}

async function ids(db) {
  return (await db.allDocs()).rows.map((r) => r.id).sort();
}

const until = async (fn, ms = 10000) => {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 100));
  }
};

// notes, chunks (`leaf`) and a note deleted after it was written
const VAULT = [
  { _id: 'note-a', type: 'plain', path: 'a.md', children: ['h:1'] },
  { _id: 'note-b', type: 'newnote', path: 'b.md', children: ['h:2'] },
  { _id: 'h:1', type: 'leaf', data: 'aaa' },
  { _id: 'h:2', type: 'leaf', data: 'bbb' },
  { _id: 'settings', type: 'versioninfo', version: 12 },
];

async function seed(base, docs) {
  const r = await req('POST', `${base}/_bulk_docs`, { docs });
  assert.equal(r.status, 201, JSON.stringify(r.body));
  return r.body;
}

test('a selector pull brings only matching documents; the server does the filtering', async () => {
  const s = await startServer();
  try {
    await seed(`${s.admin}/db`, VAULT);
    const { db: remote, changes } = recordingRemote(`${s.admin}/db`);
    const local = localDb();
    const res = await PouchDB.replicate(remote, local, { selector: { type: { $ne: 'leaf' } } });
    assert.equal(res.ok, true);
    assert.deepEqual(await ids(local), ['note-a', 'note-b', 'settings']);
    assert.ok(changes.length > 0);
    for (const c of changes) {
      assert.match(c.url, /filter=_selector/);
      assert.equal(c.method, 'POST');
      assert.deepEqual(JSON.parse(c.body), { selector: { type: { $ne: 'leaf' } } });
    }
    // an edit that turns a note into a leaf is no longer pulled; a new note is
    const noteB = await (await fetch(`${s.admin}/db/note-b`)).json();
    await req('PUT', `${s.admin}/db/note-b`, { ...noteB, type: 'leaf' });
    await seed(`${s.admin}/db`, [{ _id: 'note-c', type: 'plain' }, { _id: 'h:3', type: 'leaf' }]);
    await PouchDB.replicate(remote, local, { selector: { type: { $ne: 'leaf' } } });
    assert.deepEqual(await ids(local), ['note-a', 'note-b', 'note-c', 'settings']);
    assert.equal((await local.get('note-b')).type, 'newnote', 'the leaf revision was not pulled');
    // the same selector, written with $nin and nested fields
    const other = localDb();
    await PouchDB.replicate(remote, other, { selector: { $and: [{ type: { $nin: ['leaf', 'versioninfo'] } }, { path: { $regex: '\\.md$' } }] } });
    assert.deepEqual(await ids(other), ['note-a']);
  } finally {
    await s.stop();
  }
});

test('a doc_ids pull brings only the listed documents', async () => {
  const s = await startServer();
  try {
    await seed(`${s.admin}/db`, VAULT);
    const { db: remote, changes } = recordingRemote(`${s.admin}/db`);
    const local = localDb();
    await PouchDB.replicate(remote, local, { doc_ids: ['h:2', 'note-a', 'missing'] });
    assert.deepEqual(await ids(local), ['h:2', 'note-a']);
    assert.ok(changes.every((c) => /filter=_doc_ids/.test(c.url) && c.method === 'POST'));
  } finally {
    await s.stop();
  }
});

test('on the public port, selector and doc_ids pulls stay inside the user\'s channels; a live selector pull waits for a match', async () => {
  const s = await startServer();
  try {
    const u = await req('PUT', `${s.admin}/db/_user/bob`, { password: 'bob-pw', admin_channels: ['bob'] });
    assert.ok([200, 201].includes(u.status));
    await seed(`${s.admin}/db`, [
      ...VAULT.map((d) => ({ ...d, channels: ['bob'] })),
      { _id: 'other-note', type: 'plain', channels: ['alice'] },
      { _id: 'h:9', type: 'leaf', channels: ['alice'] },
    ]);
    const auth = { Authorization: basic('bob', 'bob-pw') };
    const { db: remote } = recordingRemote(`${s.public}/db`, auth);
    const local = localDb();
    await PouchDB.replicate(remote, local, { selector: { type: { $ne: 'leaf' } } });
    assert.deepEqual(await ids(local), ['note-a', 'note-b', 'settings']);
    const byId = localDb();
    await PouchDB.replicate(remote, byId, { doc_ids: ['other-note', 'h:9', 'h:1'] });
    assert.deepEqual(await ids(byId), ['h:1']);

    // live: chunks and other users' notes never arrive, bob's new note does
    const live = PouchDB.replicate(remote, local, { live: true, retry: false, selector: { type: { $ne: 'leaf' } } });
    const errors = [];
    live.on('error', (e) => errors.push(e));
    try {
      await seed(`${s.admin}/db`, [
        { _id: 'h:10', type: 'leaf', channels: ['bob'] },
        { _id: 'other-2', type: 'plain', channels: ['alice'] },
      ]);
      await new Promise((r) => setTimeout(r, 500));
      await seed(`${s.admin}/db`, [{ _id: 'note-live', type: 'plain', channels: ['bob'] }]);
      await until(async () => (await ids(local)).includes('note-live'));
      assert.deepEqual(await ids(local), ['note-a', 'note-b', 'note-live', 'settings']);
    } finally {
      live.cancel();
    }
    assert.deepEqual(errors, []);

    // _find counts what bob may read
    const f = await req('POST', `${s.public}/db/_find`, { selector: { type: 'leaf' }, fields: ['_id'], limit: 1000 }, auth);
    assert.equal(f.status, 200, JSON.stringify(f.body));
    assert.deepEqual(f.body.docs, [{ _id: 'h:1' }, { _id: 'h:10' }, { _id: 'h:2' }]);
  } finally {
    await s.stop();
  }
});
