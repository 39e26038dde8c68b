// Two syncgate nodes on one PostgreSQL database (SPEC §14): real PouchDB clients live-syncing
// through different nodes converge, conflicts made offline on both sides included, and a
// longpoll parked on node B wakes for a write on node A (its latency is reported, not asserted:
// speed belongs to scripts/bench). Needs PostgreSQL: runs when SYNCGATE_TEST_POSTGRES is set
// (scripts/test sets it for its PostgreSQL pass); otherwise skipped, saying why.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isDeepStrictEqual } from 'node:util';
import { startServer, startNode, req, basic } from '../lib/server.mjs';
import { localDb, remoteDb } from '../lib/pouch.mjs';
import { snapshot, assertSameSnapshot, eventually } from '../lib/compare.mjs';

const skip = process.env.SYNCGATE_TEST_POSTGRES
  ? false
  : 'multi-node needs PostgreSQL: set SYNCGATE_TEST_POSTGRES to a postgres:// URL (scripts/test does in its PostgreSQL pass)';

const AUTH = { authorization: basic('ann', 'pw-ann-1') };

function withUser(c) {
  c.databases.db = { users: { ann: { password: 'pw-ann-1', admin_channels: ['*'] } } };
}

/** Two nodes on one PostgreSQL database; `fn(a, b)`; both stopped after. */
async function twoNodes(fn) {
  const a = await startServer(withUser);
  let b;
  try {
    b = await startNode(a);
    await fn(a, b);
  } finally {
    await b?.stop();
    await a.stop();
  }
}

/** Live sync both ways; `stop()` waits for the replicator to finish its requests. */
function liveSync(local, remote) {
  const sync = local.sync(remote, { live: true, retry: true });
  const errors = [];
  sync.on('error', (e) => errors.push(e));
  const done = new Promise((res) => sync.on('complete', res));
  return {
    errors,
    stop: () => { sync.cancel(); return done; },
  };
}

/** The winner and sorted `_conflicts` of `id` as a PouchDB database (local or remote) has it. */
async function winner(db, id) {
  const d = await db.get(id, { conflicts: true });
  return { rev: d._rev, v: d.v, conflicts: (d._conflicts ?? []).slice().sort() };
}

test('PouchDB clients live-syncing through two nodes converge, conflicts included', { skip }, async (t) => {
  await twoNodes(async (nodeA, nodeB) => {
    const remoteA = remoteDb(`${nodeA.public}/db`, AUTH);
    const remoteB = remoteDb(`${nodeB.public}/db`, AUTH);
    const ca = localDb();
    const cb = localDb();
    let sa = liveSync(ca, remoteA);
    let sb = liveSync(cb, remoteB);
    try {
      // writes on either client reach the other through the other node
      await ca.bulkDocs(Array.from({ length: 50 }, (_, i) => ({ _id: `a-${i}`, v: i })));
      await cb.bulkDocs(Array.from({ length: 50 }, (_, i) => ({ _id: `b-${i}`, v: i })));
      await ca.put({ _id: 'shared', v: 'first' });
      await eventually(async () => (await cb.allDocs()).rows.length === 101, 20000, 'client B has every document');
      await eventually(async () => (await ca.allDocs()).rows.length === 101, 20000, 'client A has every document');
      // an update and a deletion travel too
      const shared = await cb.get('shared');
      await cb.put({ ...shared, v: 'second' });
      await cb.remove(await cb.get('b-7'));
      await eventually(async () => (await ca.get('shared')).v === 'second', 20000, 'the update on client A');
      await eventually(async () => ca.get('b-7').then(() => false, (e) => e.status === 404), 20000, 'the deletion on client A');

      // offline on both sides: each client edits the same document differently
      await sa.stop();
      await sb.stop();
      const onA = await ca.get('shared');
      const onB = await cb.get('shared');
      assert.equal(onA._rev, onB._rev);
      await ca.put({ ...onA, v: 'edited on A' });
      await cb.put({ ...onB, v: 'edited on B' });
      await ca.put({ _id: 'offline-a', v: 1 });
      sa = liveSync(ca, remoteA);
      sb = liveSync(cb, remoteB);
      // both clients and both nodes end with both leaves, the same winner and the same conflicts
      const views = [ca, cb, remoteA, remoteB];
      await eventually(async () => {
        const w = await Promise.all(views.map((d) => winner(d, 'shared')));
        return w[0].conflicts.length === 1 && w.every((x) => isDeepStrictEqual(x, w[0]));
      }, 20000, 'the conflict to converge');
      const w = await winner(ca, 'shared');
      t.diagnostic(`winner ${w.rev} (${w.v}), conflict ${w.conflicts}`);
      // the winner is CouchDB's deterministic choice (same generation: the higher rev id)
      const leaves = [w.rev, ...w.conflicts].sort();
      assert.equal(w.rev, leaves[1]);
      // and everything else agrees too, leaf for leaf, on all four
      await eventually(async () => (await cb.allDocs({ keys: ['offline-a'] })).rows[0]?.value, 20000, 'offline-a on client B');
      const [snapA, snapB, snapNodeA, snapNodeB] = await Promise.all(views.map(snapshot));
      assertSameSnapshot(snapA, snapB, 'client A and client B');
      assertSameSnapshot(snapA, snapNodeA, 'client A and node A');
      assertSameSnapshot(snapA, snapNodeB, 'client A and node B');
      // resolving the conflict on one client reaches the other through the other node
      await ca.remove('shared', w.conflicts[0]);
      await eventually(async () => (await winner(cb, 'shared')).conflicts.length === 0, 20000, 'the resolution on client B');
      assert.deepEqual(await winner(remoteB, 'shared'), await winner(ca, 'shared'));
    } finally {
      await sa.stop();
      await sb.stop();
    }
    assert.deepEqual([...sa.errors, ...sb.errors], []);
  });
});

test('a longpoll parked on node B wakes for a write on node A (latency reported)', { skip }, async (t) => {
  await twoNodes(async (nodeA, nodeB) => {
    const feeds = () => nodeB.metric('syncgate_changes_feeds_active{db="db"}');
    const SAMPLES = 20;
    const fromWrite = [];
    const fromAck = [];
    for (let i = 0; i < SAMPLES; i++) {
      const since = (await req('GET', `${nodeB.admin}/db/_changes`)).body.last_seq;
      const before = await feeds();
      const parked = req('GET', `${nodeB.admin}/db/_changes?feed=longpoll&since=${since}&timeout=60000`)
        .then((r) => ({ r, at: performance.now() }));
      // wait until the longpoll is parked on B (a hang guard, not a speed check)
      await eventually(async () => (await feeds()) > before, 10000, 'the longpoll to park');
      const t0 = performance.now();
      const w = await req('PUT', `${nodeA.admin}/db/wake-${i}`, { i });
      const acked = performance.now();
      assert.equal(w.status, 201, JSON.stringify(w.body));
      const { r, at } = await parked;
      assert.equal(r.status, 200);
      assert.deepEqual(r.body.results.map((e) => e.id), [`wake-${i}`], 'node B reports node A\'s write');
      fromWrite.push(at - t0);
      fromAck.push(Math.max(0, at - acked));
    }
    const p50 = (xs) => xs.slice().sort((x, y) => x - y)[Math.floor(xs.length / 2)];
    const line = `longpoll on B woken by a write on A, ${SAMPLES} samples: p50 ${p50(fromWrite).toFixed(1)} ms from the write sent `
      + `(max ${Math.max(...fromWrite).toFixed(1)}), p50 ${p50(fromAck).toFixed(1)} ms after A acknowledged it`;
    t.diagnostic(line);
  });
});
