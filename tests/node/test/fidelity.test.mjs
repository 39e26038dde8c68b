// A sync server must never change a user's data: numbers and member order survive a PouchDB
// push and a pull into a fresh replica, and the server's own JSON text keeps every digit.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, req } from '../lib/server.mjs';
import { localDb, remoteDb } from '../lib/pouch.mjs';

let s;
before(async () => { s = await startServer(); });
after(async () => { await s?.stop(); });

/** Deterministic doubles, many of which need 17 significant digits. */
function* doubles(seed) {
  let x = seed;
  for (;;) {
    x = (x * 1103515245 + 12345) % 2147483648;
    yield x / 7 / 1000;            // e.g. 90.28571428571429
    yield (x % 1000) / 3 + 1e-9;    // long fractions
    yield x * 1e200;                // big exponents
    yield -x / 1e300;               // tiny negatives
  }
}

test('2,000 documents with 17-digit doubles and unsorted members: push, pull, identical', async () => {
  const r = await req('PUT', `${s.admin}/fid/`);
  assert.equal(r.status, 201);
  const remote = remoteDb(`${s.admin}/fid`);
  const a = localDb();
  const gen = doubles(42);
  const docs = [];
  for (let i = 0; i < 2000; i++) {
    // member order that is not alphabetical; nested objects too
    docs.push({ _id: `d${i}`, zeta: gen.next().value, alpha: gen.next().value, mid: { y: gen.next().value, b: [gen.next().value, i] }, n: i });
  }
  await a.bulkDocs(docs);
  const push = await a.replicate.to(remote);
  assert.equal(push.docs_written, 2000);
  const b = localDb();
  await b.replicate.from(remote);
  const got = await b.allDocs({ include_docs: true });
  assert.equal(got.rows.length, 2000);
  const byId = new Map(docs.map((d) => [d._id, d]));
  let checked = 0;
  for (const row of got.rows) {
    const want = byId.get(row.id);
    const { _rev, _id, ...doc } = row.doc;
    const { _id: wantId, ...wanted } = want;
    assert.equal(_id, wantId);
    // same values, same member order, same digits once printed
    assert.equal(JSON.stringify(doc), JSON.stringify(wanted), row.id);
    checked++;
  }
  assert.equal(checked, 2000);
});

test('the server answers the exact text of numbers JavaScript cannot hold', async () => {
  const body = '{"big":12345678901234567890123,"f":90.28571428571429,"e":1E+300,"neg":-0.0,"b":1,"a":2}';
  const put = await fetch(`${s.admin}/db/exact`, { method: 'PUT', headers: { 'content-type': 'application/json' }, body });
  assert.equal(put.status, 201);
  for (const path of ['exact', 'exact?revs=true', '_all_docs?include_docs=true', '_changes?include_docs=true']) {
    const text = await (await fetch(`${s.admin}/db/${path}`)).text();
    assert.ok(text.includes(body.slice(1, -1)), `${path}: ${text}`);
  }
});
