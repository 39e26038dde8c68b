// Channels and per-user read access with real PouchDB against the public port.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, req, basic } from '../lib/server.mjs';
import { localDb, remoteDb } from '../lib/pouch.mjs';

async function user(s, name, body) {
  const r = await req('PUT', `${s.admin}/db/_user/${name}`, { password: `${name}-pw`, ...body });
  assert.ok([200, 201].includes(r.status), JSON.stringify(r.body));
}

function asUser(s, name) {
  return remoteDb(`${s.public}/db`, { Authorization: basic(name, `${name}-pw`) });
}

async function seed(s, docs) {
  const r = await req('POST', `${s.admin}/db/_bulk_docs`, { docs });
  assert.equal(r.status, 201);
  return r.body;
}

async function ids(db) {
  return (await db.allDocs()).rows.map((r) => r.id).sort();
}

const until = async (fn, ms = 8000) => {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 100));
  }
};

test('users pull only the documents of their channels; direct GET of others is 403', async () => {
  const s = await startServer();
  try {
    await user(s, 'alice', { admin_channels: ['red'] });
    await user(s, 'bob', { admin_channels: ['blue'] });
    await seed(s, [
      { _id: 'r1', channels: ['red'], v: 1 },
      { _id: 'r2', channels: 'red', v: 2 },
      { _id: 'b1', channels: ['blue'] },
      { _id: 'both', channels: ['red', 'blue'] },
      { _id: 'pub', channels: ['!'] },
      { _id: 'none' },
    ]);
    const a = localDb();
    await a.replicate.from(asUser(s, 'alice'));
    assert.deepEqual(await ids(a), ['both', 'pub', 'r1', 'r2']);
    const b = localDb();
    await b.replicate.from(asUser(s, 'bob'));
    assert.deepEqual(await ids(b), ['b1', 'both', 'pub']);
    const auth = { Authorization: basic('alice', 'alice-pw') };
    assert.equal((await req('GET', `${s.public}/db/b1`, undefined, auth)).status, 403);
    assert.equal((await req('GET', `${s.public}/db/none`, undefined, auth)).status, 403);
    assert.equal((await req('GET', `${s.public}/db/r1`, undefined, auth)).status, 200);
    const all = await req('GET', `${s.public}/db/_all_docs`, undefined, auth);
    assert.deepEqual(all.body.rows.map((r) => r.id), ['both', 'pub', 'r1', 'r2']);
    const bg = await req('POST', `${s.public}/db/_bulk_get`, { docs: [{ id: 'b1' }, { id: 'r1' }] }, auth);
    assert.equal(bg.body.results[0].docs[0].error.error, 'forbidden');
    assert.equal(bg.body.results[1].docs[0].ok._id, 'r1');
    const sess = await req('GET', `${s.public}/db/_session`, undefined, auth);
    assert.ok('red' in sess.body.userCtx.channels, JSON.stringify(sess.body));
    // any authenticated user may write (SG default sync function)
    const w = await req('PUT', `${s.public}/db/from-alice`, { channels: ['blue'] }, auth);
    assert.equal(w.status, 201);
    await b.replicate.from(asUser(s, 'bob'));
    assert.ok((await ids(b)).includes('from-alice'));
  } finally {
    await s.stop();
  }
});

test('a role grant gives its channels; bychannel narrows the feed', async () => {
  const s = await startServer();
  try {
    assert.equal((await req('PUT', `${s.admin}/db/_role/editors`, { admin_channels: ['drafts'] })).status, 201);
    await user(s, 'carol', { admin_roles: ['editors'] });
    await seed(s, [{ _id: 'd1', channels: ['drafts'] }, { _id: 'x1', channels: ['other'] }]);
    const c = localDb();
    await c.replicate.from(asUser(s, 'carol'));
    assert.deepEqual(await ids(c), ['d1']);
    const auth = { Authorization: basic('carol', 'carol-pw') };
    await user(s, 'carol', { admin_channels: ['other'] });
    const f = await req('GET', `${s.public}/db/_changes?filter=sync_gateway/bychannel&channels=other`, undefined, auth);
    assert.deepEqual(f.body.results.map((r) => r.id), ['x1']);
  } finally {
    await s.stop();
  }
});

test('a grant during a live sync delivers the newly visible docs; a revoke delivers removals', async () => {
  const s = await startServer();
  try {
    await user(s, 'dave', { admin_channels: ['a'] });
    await seed(s, [{ _id: 'a1', channels: ['a'] }, { _id: 'b1', channels: ['b'] }, { _id: 'b2', channels: ['b'] }]);
    const auth = { Authorization: basic('dave', 'dave-pw') };
    // a checkpoint taken after the docs were written and before the grant
    const checkpoint = (await req('GET', `${s.public}/db/_changes`, undefined, auth)).body.last_seq;
    const d = localDb();
    const remote = asUser(s, 'dave');
    const live = d.replicate.from(remote, { live: true, retry: true });
    try {
      await until(async () => (await ids(d)).includes('a1'));
      assert.deepEqual(await ids(d), ['a1']);
      // grant b while the live pull is waiting: the backfill arrives without a restart
      await user(s, 'dave', { admin_channels: ['a', 'b'] });
      await until(async () => (await ids(d)).length === 3);
      assert.deepEqual(await ids(d), ['a1', 'b1', 'b2']);
    } finally {
      live.cancel();
    }
    // from the old checkpoint, the grant shows as compound backfill sequences "G:S"
    const feed = await req('GET', `${s.public}/db/_changes?since=${checkpoint}`, undefined, auth);
    const back = feed.body.results.filter((r) => typeof r.seq === 'string');
    assert.deepEqual(back.map((r) => r.id).sort(), ['b1', 'b2'], JSON.stringify(feed.body));
    assert.ok(back.every((r) => /^\d+:\d+$/.test(r.seq)));
    // a client that checkpoints inside the backfill resumes it
    const page = await req('GET', `${s.public}/db/_changes?since=${checkpoint}&limit=1`, undefined, auth);
    assert.equal(typeof page.body.last_seq, 'string', JSON.stringify(page.body));
    const rest = await req('GET', `${s.public}/db/_changes?since=${encodeURIComponent(page.body.last_seq)}`, undefined, auth);
    assert.deepEqual([...page.body.results, ...rest.body.results].map((r) => r.id).sort(), ['b1', 'b2']);
    // revoke b: the next feed from the old checkpoint carries removals for b's docs
    const before = (await req('GET', `${s.public}/db/_changes`, undefined, auth)).body.last_seq;
    await user(s, 'dave', { admin_channels: ['a'] });
    const after = await req('GET', `${s.public}/db/_changes?since=${encodeURIComponent(JSON.stringify(before))}`, undefined, auth);
    const removed = after.body.results.filter((r) => r.removed).map((r) => r.id).sort();
    assert.deepEqual(removed, ['b1', 'b2'], JSON.stringify(after.body));
    assert.equal((await req('GET', `${s.public}/db/b1`, undefined, auth)).status, 403);
  } finally {
    await s.stop();
  }
});

test('a document moving between channels is removed for one user and appears for the other', async () => {
  const s = await startServer();
  try {
    await user(s, 'erin', { admin_channels: ['x'] });
    await user(s, 'fred', { admin_channels: ['y'] });
    const [r] = await seed(s, [{ _id: 'mover', channels: ['x'], v: 1 }]);
    const auth = { Authorization: basic('erin', 'erin-pw') };
    const first = await req('GET', `${s.public}/db/_changes`, undefined, auth);
    assert.deepEqual(first.body.results.map((x) => x.id), ['mover']);
    const put = await req('PUT', `${s.admin}/db/mover`, { _rev: r.rev, channels: ['y'], v: 2 });
    assert.equal(put.status, 201);
    const next = await req('GET', `${s.public}/db/_changes?since=${first.body.last_seq}`, undefined, auth);
    assert.equal(next.body.results.length, 1);
    assert.deepEqual(next.body.results[0].removed, ['x']);
    const f = localDb();
    await f.replicate.from(asUser(s, 'fred'));
    assert.equal((await f.get('mover')).v, 2);
  } finally {
    await s.stop();
  }
});

test("a one-channel user's changes among 10,000 docs in 100 channels reads no unrelated docs", async () => {
  const s = await startServer();
  try {
    for (let b = 0; b < 10; b++) {
      const docs = [];
      for (let i = 0; i < 1000; i++) {
        const n = b * 1000 + i;
        docs.push({ _id: `d${String(n).padStart(5, '0')}`, channels: [`ch${n % 100}`], n });
      }
      await seed(s, docs);
    }
    await user(s, 'gina', { admin_channels: ['ch42'] });
    const before = await s.metric('syncgate_docs_read_total');
    const auth = { Authorization: basic('gina', 'gina-pw') };
    const feed = await req('GET', `${s.public}/db/_changes`, undefined, auth);
    assert.equal(feed.body.results.length, 100);
    const read = (await s.metric('syncgate_docs_read_total')) - before;
    assert.ok(read <= 150, `read ${read} documents/entries for a 100-doc channel`);
    const g = localDb();
    await g.replicate.from(asUser(s, 'gina'));
    assert.equal((await g.allDocs()).rows.length, 100);
  } finally {
    await s.stop();
  }
});
