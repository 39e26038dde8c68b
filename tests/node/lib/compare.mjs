// Helpers to compare replicas: every document with every leaf, its history and its attachments.
import assert from 'node:assert/strict';

/**
 * A canonical snapshot of a PouchDB database (local or remote): for each doc id, the winning
 * rev, `_conflicts`, `_deleted`, the body, the revision history and the attachment bytes
 * (base64). Tombstones are included (read through the changes feed, not _all_docs).
 */
export async function snapshot(db) {
  const out = {};
  const changes = await db.changes({ style: 'all_docs', return_docs: true, since: 0 });
  for (const ch of changes.results) {
    const id = ch.id;
    const leaves = ch.changes.map((c) => c.rev).sort();
    const docs = await db.get(id, { open_revs: leaves, revs: true, attachments: true });
    const revs = {};
    for (const row of docs) {
      assert.ok(row.ok, `${id}: leaf ${JSON.stringify(row)} is missing`);
      revs[row.ok._rev] = normalize(row.ok);
    }
    let winner;
    let conflicts = [];
    if (ch.deleted) {
      winner = ch.changes[0].rev;
    } else {
      const w = await db.get(id, { conflicts: true });
      winner = w._rev;
      conflicts = (w._conflicts ?? []).slice().sort();
    }
    out[id] = { winner, deleted: !!ch.deleted, conflicts, leaves: revs };
  }
  return out;
}

function normalize(doc) {
  const d = { ...doc };
  if (d._attachments) {
    const atts = {};
    for (const [name, a] of Object.entries(d._attachments)) {
      atts[name] = {
        content_type: a.content_type,
        digest: a.digest,
        data: typeof a.data === 'string' ? a.data : Buffer.from(a.data).toString('base64'),
      };
    }
    d._attachments = atts;
  }
  return d;
}

/** Asserts two snapshots are identical, with a readable first difference. */
export function assertSameSnapshot(a, b, what = 'replicas') {
  const ka = Object.keys(a).sort();
  const kb = Object.keys(b).sort();
  assert.deepEqual(ka.length, kb.length, `${what}: ${ka.length} vs ${kb.length} docs`);
  assert.deepEqual(ka, kb, `${what}: doc ids differ`);
  for (const id of ka) {
    assert.deepEqual(a[id], b[id], `${what}: doc ${id} differs`);
  }
}

/** Waits until `fn()` is truthy (polling every 50 ms), or throws after `ms`. */
export async function eventually(fn, ms = 5000, what = 'condition') {
  const end = Date.now() + ms;
  let last;
  while (Date.now() < end) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out after ${ms} ms waiting for ${what} (last: ${last})`);
}

/** Deterministic pseudo-random bytes for attachment content. */
export function bytes(seed, len) {
  const b = Buffer.alloc(len);
  let x = seed * 2654435761 >>> 0;
  for (let i = 0; i < len; i++) {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    b[i] = x & 0xff;
  }
  return b;
}
