// Basic auth on the public port with real PouchDB replications.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, req, basic } from '../lib/server.mjs';
import { localDb, remoteDb } from '../lib/pouch.mjs';

const withUsers = (c) => {
  c.databases.db.users = {
    alice: { password: 'pw-alice-1', admin_channels: ['*'] },
  };
};

test('PouchDB push and pull with Basic auth on the public port', async () => {
  const s = await startServer(withUsers);
  try {
    const remote = remoteDb(`${s.public}/db`, { Authorization: basic('alice', 'pw-alice-1') });
    const a = localDb();
    const docs = Array.from({ length: 50 }, (_, i) => ({ _id: `doc-${i}`, n: i }));
    await a.bulkDocs(docs);
    const push = await a.replicate.to(remote);
    assert.equal(push.ok, true);
    assert.equal(push.docs_written, 50);
    // what arrived is visible on the admin port
    const info = await req('GET', `${s.admin}/db/`);
    assert.equal(info.body.doc_count, 50);
    const b = localDb();
    const pull = await b.replicate.from(remote);
    assert.equal(pull.docs_written, 50);
    assert.equal((await b.get('doc-42')).n, 42);
    // live sync keeps working across many requests (the verified-password cache serves them)
    const sync = b.sync(remote, { live: true, retry: false });
    await b.put({ _id: 'from-b', v: 1 });
    await waitFor(async () => (await req('GET', `${s.admin}/db/from-b`)).status === 200);
    // let the replicator finish its in-flight requests (checkpoints) before the server stops
    await new Promise((res) => { sync.on('complete', res); sync.cancel(); });
  } finally {
    await s.stop();
  }
});

test('PouchDB replication fails cleanly with a wrong password, a disabled or a deleted user', async () => {
  const s = await startServer(withUsers);
  try {
    const bad = remoteDb(`${s.public}/db`, { Authorization: basic('alice', 'wrong-pw') });
    await assert.rejects(localDb().replicate.from(bad), (e) => e.status === 401);
    await req('PUT', `${s.admin}/db/_user/alice`, { disabled: true });
    const good = remoteDb(`${s.public}/db`, { Authorization: basic('alice', 'pw-alice-1') });
    await assert.rejects(localDb().replicate.from(good), (e) => e.status === 401);
    await req('PUT', `${s.admin}/db/_user/alice`, { disabled: false });
    const ok = await localDb().replicate.from(good);
    assert.equal(ok.ok, true);
    await req('DELETE', `${s.admin}/db/_user/alice`);
    await assert.rejects(localDb().replicate.from(good), (e) => e.status === 401);
  } finally {
    await s.stop();
  }
});

async function waitFor(pred, ms = 10000) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await pred()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error('timed out');
}
