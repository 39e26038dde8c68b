// PouchDB against syncgate: the smallest push/pull round trip, admin port.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startServer } from '../lib/server.mjs';
import { localDb, remoteDb } from '../lib/pouch.mjs';

test('push then pull a few docs through the admin port', async () => {
  const s = await startServer();
  try {
    const a = localDb();
    await a.bulkDocs([{ _id: 'x', v: 1 }, { _id: 'y', v: 2 }]);
    const remote = remoteDb(`${s.admin}/db`);
    const push = await a.replicate.to(remote);
    assert.equal(push.docs_written, 2);
    const b = localDb();
    const pull = await b.replicate.from(remote);
    assert.equal(pull.docs_written, 2);
    assert.equal((await b.get('y')).v, 2);
  } finally {
    await s.stop();
  }
});
