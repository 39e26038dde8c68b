// The replication endpoints over raw HTTP: _revs_diff, _bulk_docs new_edits:false, _bulk_get,
// open_revs (JSON and multipart), revs/latest/conflicts/atts_since, _local checkpoints,
// _ensure_full_commit, _compact, and the 400s for malformed input (nothing half-written).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startServer, req } from '../lib/server.mjs';

let s;
before(async () => { s = await startServer(); });
after(async () => { await s?.stop(); });

let dbn = 0;
async function fresh() {
  const name = `p${dbn++}`;
  assert.equal((await req('PUT', `${s.admin}/${name}/`)).status, 201);
  return `${s.admin}/${name}`;
}
const b64 = (t) => Buffer.from(t).toString('base64');
const JSONH = { accept: 'application/json' };

function assertJson(r, what = '') {
  assert.match(r.headers.get('content-type') ?? '', /^application\/json/, `Content-Type of ${what}`);
}
function assert400(r, what) {
  assert.equal(r.status, 400, `${what}: ${JSON.stringify(r.body)}`);
  assert.equal(r.body.error, 'bad_request', what);
  assert.ok(typeof r.body.reason === 'string' && r.body.reason.length > 0, `${what}: reason`);
  assertJson(r, what);
}

/** Pushes a revision with its history, as a replicator does. */
async function push(url, docs) {
  const r = await req('POST', `${url}/_bulk_docs`, { new_edits: false, docs });
  assert.equal(r.status, 201, JSON.stringify(r.body));
  assertJson(r, '_bulk_docs');
  for (const row of r.body) assert.equal(row.error, undefined, JSON.stringify(row));
  return r.body;
}

test('_revs_diff: missing revisions and possible_ancestors; known docs are omitted', async () => {
  const url = await fresh();
  await push(url, [
    { _id: 'd', _rev: '3-c', _revisions: { start: 3, ids: ['c', 'b', 'a'] }, v: 3 },
    { _id: 'e', _rev: '1-x', v: 1 },
  ]);
  const r = await req('POST', `${url}/_revs_diff`, {
    d: ['3-c', '4-d', '2-b', '5-e'],
    e: ['1-x'],
    nope: ['1-a', '2-b'],
  });
  assert.equal(r.status, 200);
  assertJson(r, '_revs_diff');
  assert.deepEqual(Object.keys(r.body).sort(), ['d', 'nope']);
  assert.deepEqual(r.body.d.missing.sort(), ['4-d', '5-e']);
  assert.deepEqual(r.body.d.possible_ancestors, ['3-c']);
  assert.deepEqual(r.body.nope, { missing: ['1-a', '2-b'] });
  assert.deepEqual((await req('POST', `${url}/_revs_diff`, {})).body, {});
  for (const [body, what] of [
    [[], 'array body'],
    ['"x"', 'string body'],
    ['{not json', 'bad JSON'],
    [{ d: '1-a' }, 'non-array value'],
    [{ d: [1] }, 'non-string revision'],
    [{ d: ['garbage'] }, 'malformed revision'],
    [{ d: ['0-abc'] }, 'generation 0'],
  ]) {
    assert400(await req('POST', `${url}/_revs_diff`, body), `_revs_diff ${what}`);
  }
});

test('_bulk_docs new_edits:false grafts histories and conflicting branches; re-push is a no-op', async () => {
  const url = await fresh();
  await push(url, [{ _id: 'd', _rev: '2-b', _revisions: { start: 2, ids: ['b', 'a'] }, v: 'b' }]);
  // a conflicting branch sharing 1-a, and a longer one
  await push(url, [{ _id: 'd', _rev: '3-y', _revisions: { start: 3, ids: ['y', 'x', 'a'] }, v: 'y' }]);
  const seqBefore = (await req('GET', `${url}/`)).body.update_seq;
  // pushing the same revision again changes nothing
  const again = await push(url, [{ _id: 'd', _rev: '2-b', _revisions: { start: 2, ids: ['b', 'a'] }, v: 'b' }]);
  assert.equal(again[0].rev, '2-b');
  assert.equal((await req('GET', `${url}/`)).body.update_seq, seqBefore);
  const all = await req('GET', `${url}/d?open_revs=all&revs=true`, undefined, JSONH);
  assert.equal(all.status, 200);
  assertJson(all, 'open_revs');
  const byRev = Object.fromEntries(all.body.map((r) => [r.ok._rev, r.ok]));
  assert.deepEqual(Object.keys(byRev).sort(), ['2-b', '3-y']);
  assert.deepEqual(byRev['3-y']._revisions, { start: 3, ids: ['y', 'x', 'a'] });
  assert.deepEqual(byRev['2-b']._revisions, { start: 2, ids: ['b', 'a'] });
  const w = await req('GET', `${url}/d?conflicts=true`);
  assert.equal(w.body._rev, '3-y');
  assert.deepEqual(w.body._conflicts, ['2-b']);
  // a tombstone on the winning branch: the live branch wins again
  await push(url, [{ _id: 'd', _rev: '4-z', _deleted: true, _revisions: { start: 4, ids: ['z', 'y', 'x', 'a'] } }]);
  const w2 = await req('GET', `${url}/d?conflicts=true&deleted_conflicts=true`);
  assert.equal(w2.body._rev, '2-b');
  assert.equal(w2.body._conflicts, undefined);
  assert.deepEqual(w2.body._deleted_conflicts, ['4-z']);
  // _rev alone (no _revisions) is accepted as a root
  await push(url, [{ _id: 'solo', _rev: '7-abc', v: 1 }]);
  assert.equal((await req('GET', `${url}/solo?revs=true`)).body._revisions.start, 7);
  // the winner among equal generations is the highest rev id, live before deleted
  await push(url, [{ _id: 'w', _rev: '1-aaa' }, { _id: 'w', _rev: '1-bbb' }]);
  assert.equal((await req('GET', `${url}/w`)).body._rev, '1-bbb');
});

test('_bulk_docs: malformed requests are 400 and write nothing', async () => {
  const url = await fresh();
  const info = async () => (await req('GET', `${url}/`)).body;
  const before = await info();
  const good = { _id: 'ok1', v: 1 };
  for (const [body, what] of [
    [[good], 'array body'],
    ['{"docs": [', 'truncated JSON'],
    [{}, 'missing docs'],
    [{ docs: {} }, 'docs not an array'],
    [{ docs: [good, 5] }, 'a non-object doc'],
    [{ docs: [good], new_edits: 'no' }, 'new_edits not a boolean'],
    [{ new_edits: false, docs: [{ _id: 'ok2', _rev: '1-a' }, { _id: 'x' }] }, 'new_edits:false without a revision'],
    [{ new_edits: false, docs: [{ _id: 'ok2', _rev: '1-a' }, { _rev: '1-a' }] }, 'new_edits:false without an _id'],
    [{ docs: [good, { _id: '_bad' }] }, 'reserved id'],
    [{ docs: [good, { _id: 5 }] }, 'non-string _id'],
    [{ docs: [good, { _id: 'att', _attachments: { 'a.txt': { content_type: 'text/plain', data: '!!!' } } }] }, 'bad base64'],
    [{ docs: [good, { _id: 'att', _attachments: { 'a.txt': { content_type: 'text/plain' } } }] }, 'attachment without data'],
    [{ docs: [good, { _id: 'x', _deleted: 'yes' }] }, '_deleted not a boolean'],
  ]) {
    assert400(await req('POST', `${url}/_bulk_docs`, body), `_bulk_docs ${what}`);
  }
  const after = await info();
  assert.equal(after.update_seq, before.update_seq, 'nothing was written');
  assert.equal(after.doc_count, 0);
  // per-document conflicts stay per-document results (CouchDB), in order
  const ok = await req('POST', `${url}/_bulk_docs`, { docs: [{ _id: 'a' }, { _id: 'b' }] });
  assert.equal(ok.status, 201);
  const mixed = await req('POST', `${url}/_bulk_docs`, { docs: [{ _id: 'a' }, { _id: 'c' }] });
  assert.equal(mixed.status, 201);
  assert.equal(mixed.body[0].error, 'conflict');
  assert.equal(mixed.body[0].status, 409);
  assert.equal(mixed.body[1].ok, true);
  assert.equal(mixed.body[1].id, 'c');
  // new_edits:false: a revision history that cannot be read refuses that document only (a
  // replicator must not stall on it); _revisions decides over a disagreeing _rev (CouchDB)
  for (const [bad, what] of [
    [{ _id: 'x', _rev: 'nonsense' }, 'bad _rev'],
    [{ _id: 'x', _rev: '1-' }, 'bare 1-'],
    [{ _id: 'x', _rev: '2-b', _revisions: { start: 1, ids: ['b', 'a'] } }, '_revisions start < ids'],
    [{ _id: 'x', _revisions: { start: 2, ids: 'ab' } }, '_revisions.ids not an array'],
    [{ _id: 'x', _revisions: { start: 2, ids: ['b c', 'a'] } }, 'bad id in _revisions'],
  ]) {
    const r = await req('POST', `${url}/_bulk_docs`, { new_edits: false, docs: [{ _id: 'ok2', _rev: '1-a' }, bad] });
    assert.equal(r.status, 201, what);
    const row = r.body.find((row) => row.id === 'x');
    assert.equal(row?.error, 'bad_request', `${what}: ${JSON.stringify(r.body)}`);
    assert.equal(r.body.filter((row) => row.error).length, 1, what);
  }
  assert.equal((await req('GET', `${url}/ok2`)).body._rev, '1-a');
  assert.equal((await req('GET', `${url}/x`)).status, 404);
});

test('_bulk_get: CouchDB JSON shape, revs, latest, missing revisions, attachments, atts_since', async () => {
  const url = await fresh();
  const put = await req('PUT', `${url}/doc`, { v: 1, _attachments: { 'one.txt': { content_type: 'text/plain', data: b64('first') } } });
  const r1 = put.body.rev;
  const put2 = await req('PUT', `${url}/doc`, { _rev: r1, v: 2, _attachments: { 'one.txt': { stub: true }, 'two.txt': { content_type: 'text/plain', data: b64('second') } } });
  const r2 = put2.body.rev;
  const r = await req('POST', `${url}/_bulk_get?revs=true`, {
    docs: [
      { id: 'doc', rev: r2 },
      { id: 'doc', rev: '9-nothere' },
      { id: 'doc' },
      { id: 'missing-doc', rev: '1-a' },
      { id: 'doc', rev: r2, atts_since: [r1] },
    ],
  }, JSONH);
  assert.equal(r.status, 200);
  assertJson(r, '_bulk_get');
  const res = r.body.results;
  assert.equal(res.length, 5);
  assert.equal(res[0].id, 'doc');
  const d0 = res[0].docs[0].ok;
  assert.equal(d0._rev, r2);
  assert.equal(d0.v, 2);
  assert.deepEqual(d0._revisions, { start: 2, ids: [r2.slice(2), r1.slice(2)] });
  assert.equal(d0._attachments['one.txt'].stub, true);
  assert.equal(d0._attachments['one.txt'].revpos, 1);
  assert.equal(d0._attachments['two.txt'].revpos, 2);
  assert.equal(d0._attachments['two.txt'].length, 6);
  assert.match(d0._attachments['two.txt'].digest, /^md5-/);
  assert.deepEqual(res[1].docs[0].error, { id: 'doc', rev: '9-nothere', error: 'not_found', reason: 'missing' });
  assert.equal(res[2].docs[0].ok._rev, r2, 'no rev: the winner');
  assert.equal(res[3].docs[0].error.error, 'not_found');
  assert.equal(res[3].docs[0].error.id, 'missing-doc');
  // atts_since: only attachments newer than the common ancestor carry data
  const d4 = res[4].docs[0].ok;
  assert.equal(d4._attachments['one.txt'].stub, true);
  assert.equal(d4._attachments['two.txt'].data, b64('second'));
  // attachments=true inlines everything
  const wa = await req('POST', `${url}/_bulk_get?attachments=true`, { docs: [{ id: 'doc', rev: r2 }] });
  const atts = wa.body.results[0].docs[0].ok._attachments;
  assert.equal(atts['one.txt'].data, b64('first'));
  assert.equal(atts['two.txt'].data, b64('second'));
  assert.equal(atts['one.txt'].stub, undefined);
  // latest=true: an old revision is answered with the current leaf
  const lt = await req('POST', `${url}/_bulk_get?revs=true&latest=true`, { docs: [{ id: 'doc', rev: r1 }] });
  assert.equal(lt.body.results[0].docs[0].ok._rev, r2);
  const nl = await req('POST', `${url}/_bulk_get?revs=true`, { docs: [{ id: 'doc', rev: r1 }] });
  assert.equal(nl.body.results[0].docs[0].ok._rev, r1);
  assert.equal(nl.body.results[0].docs[0].ok.v, 1);
  // malformed requests
  for (const [body, what] of [
    [{}, 'missing docs'],
    [{ docs: 'x' }, 'docs not an array'],
    [[], 'array body'],
    [{ docs: [5] }, 'a non-object entry'],
    [{ docs: [{ rev: '1-a' }] }, 'entry without id'],
    [{ docs: [{ id: 'doc', rev: 5 }] }, 'non-string rev'],
    [{ docs: [{ id: 'doc', rev: 'bogus' }] }, 'malformed rev'],
    [{ docs: [{ id: 'doc', rev: r2, atts_since: 'x' }] }, 'atts_since not an array'],
  ]) {
    assert400(await req('POST', `${url}/_bulk_get`, body), `_bulk_get ${what}`);
  }
});

test('document GET: open_revs JSON, latest, revs, conflicts, atts_since, and 400s', async () => {
  const url = await fresh();
  await push(url, [
    { _id: 'd', _rev: '2-b', _revisions: { start: 2, ids: ['b', 'a'] }, v: 'b', _attachments: { 'f.txt': { content_type: 'text/plain', data: b64('at two') } } },
    { _id: 'd', _rev: '3-y', _revisions: { start: 3, ids: ['y', 'x', 'a'] }, v: 'y' },
  ]);
  const list = await req('GET', `${url}/d?open_revs=${encodeURIComponent('["2-b","9-q","1-a"]')}&revs=true`, undefined, JSONH);
  assert.equal(list.status, 200);
  assert.equal(list.body[0].ok._rev, '2-b');
  assert.equal(list.body[0].ok._attachments['f.txt'].stub, true);
  assert.deepEqual(list.body[1], { missing: '9-q' });
  // 1-a is a bodiless ancestor: missing (without latest)
  assert.deepEqual(list.body[2], { missing: '1-a' });
  const latest = await req('GET', `${url}/d?open_revs=${encodeURIComponent('["1-a"]')}&latest=true`, undefined, JSONH);
  assert.deepEqual(latest.body.map((r) => r.ok._rev).sort(), ['2-b', '3-y']);
  const latestX = await req('GET', `${url}/d?open_revs=${encodeURIComponent('["2-x"]')}&latest=true`, undefined, JSONH);
  assert.deepEqual(latestX.body.map((r) => r.ok._rev), ['3-y']);
  // atts_since on a single-revision GET
  const withData = await req('GET', `${url}/d?rev=2-b&atts_since=${encodeURIComponent('["1-a"]')}`);
  assert.equal(withData.body._attachments['f.txt'].data, b64('at two'));
  const noData = await req('GET', `${url}/d?rev=2-b&atts_since=${encodeURIComponent('["2-b"]')}`);
  assert.equal(noData.body._attachments['f.txt'].stub, true);
  // a rev from another branch is no common ancestor
  const other = await req('GET', `${url}/d?rev=2-b&atts_since=${encodeURIComponent('["3-y"]')}`);
  assert.equal(other.body._attachments['f.txt'].data, b64('at two'));
  assert.equal((await req('GET', `${url}/d?open_revs=all`, undefined, JSONH)).body.length, 2);
  assert.equal((await req('GET', `${url}/nope?open_revs=all`, undefined, JSONH)).status, 404);
  for (const [q, what] of [
    ['open_revs=%5B1%2C2%5D', 'open_revs of numbers'],
    ['open_revs=%5Bnope', 'open_revs bad JSON'],
    ['open_revs=%22x%22', 'open_revs a string'],
    ['open_revs=%5B%22garbage%22%5D', 'open_revs bad revision'],
    ['rev=2-b&open_revs=all', 'rev with open_revs'],
    ['rev=garbage', 'bad rev'],
    ['revs=maybe', 'bad boolean'],
    ['atts_since=%5Bnope', 'atts_since bad JSON'],
  ]) {
    assert400(await req('GET', `${url}/d?${q}`, undefined, JSONH), what);
  }
});

test('open_revs as multipart/mixed only when that is the sole accepted type', async () => {
  const url = await fresh();
  await push(url, [
    { _id: 'm', _rev: '1-a', v: 'a', _attachments: { 'x.bin': { content_type: 'application/octet-stream', data: b64('xyz') } } },
    { _id: 'm', _rev: '1-b', v: 'b' },
  ]);
  for (const accept of [undefined, 'application/json', '*/*', 'multipart/mixed, application/json', 'application/json, multipart/mixed;q=0.9']) {
    const r = await req('GET', `${url}/m?open_revs=all`, undefined, accept ? { accept } : {});
    assert.equal(r.status, 200);
    assertJson(r, `open_revs with Accept ${accept}`);
    assert.equal(r.body.length, 2);
  }
  const r = await fetch(`${url}/m?open_revs=${encodeURIComponent('["1-a","1-b","1-c"]')}&revs=true`, { headers: { accept: 'multipart/mixed' } });
  assert.equal(r.status, 200);
  const ct = r.headers.get('content-type');
  const m = ct.match(/^multipart\/mixed;\s*boundary="?([^";]+)"?/);
  assert.ok(m, `content-type ${ct}`);
  const text = await r.text();
  const parts = text.split(`--${m[1]}`).slice(1, -1).map((p) => {
    const [head, ...rest] = p.replace(/^\r\n/, '').split('\r\n\r\n');
    return { head: head.toLowerCase(), body: rest.join('\r\n\r\n').replace(/\r\n$/, '') };
  });
  assert.ok(text.trimEnd().endsWith(`--${m[1]}--`), 'closing boundary');
  assert.equal(parts.length, 3);
  assert.match(parts[0].head, /content-type: application\/json/);
  const doc = JSON.parse(parts[0].body);
  assert.equal(doc._rev, '1-a');
  assert.equal(doc._attachments['x.bin'].stub, true);
  assert.equal(JSON.parse(parts[1].body)._rev, '1-b');
  assert.match(parts[2].head, /error="true"/);
  assert.deepEqual(JSON.parse(parts[2].body), { missing: '1-c' });
});

test('_local checkpoints: 0-N revisions, conflicts, not in _changes, not replicated', async () => {
  const url = await fresh();
  const id = encodeURIComponent('Syg_Zthb/9SKIg8ilxN7Cw==');
  assert.equal((await req('GET', `${url}/_local/${id}`)).status, 404);
  const p1 = await req('PUT', `${url}/_local/${id}`, { _id: `_local/Syg_Zthb/9SKIg8ilxN7Cw==`, last_seq: 5, history: [{ last_seq: 5, session_id: 's' }] });
  assert.equal(p1.status, 201);
  assertJson(p1, '_local PUT');
  assert.equal(p1.body.rev, '0-1');
  assert.equal(p1.body.id, '_local/Syg_Zthb/9SKIg8ilxN7Cw==');
  const g = await req('GET', `${url}/_local/${id}`);
  assert.deepEqual(g.body, { _id: '_local/Syg_Zthb/9SKIg8ilxN7Cw==', _rev: '0-1', last_seq: 5, history: [{ last_seq: 5, session_id: 's' }] });
  assert.equal((await req('PUT', `${url}/_local/${id}`, { last_seq: 6 })).status, 409);
  assert.equal((await req('PUT', `${url}/_local/${id}`, { _rev: '0-7', last_seq: 6 })).status, 409);
  const p2 = await req('PUT', `${url}/_local/${id}`, { _rev: '0-1', last_seq: '6' });
  assert.equal(p2.body.rev, '0-2');
  assert.equal((await req('GET', `${url}/_local/${id}`)).body.last_seq, '6');
  const ch = await req('GET', `${url}/_changes`);
  assert.deepEqual(ch.body, { results: [], last_seq: 0 });
  const ad = await req('GET', `${url}/_all_docs`);
  assert.equal(ad.body.rows.length, 0);
  // _local docs inside _bulk_docs
  const bd = await req('POST', `${url}/_bulk_docs`, { docs: [{ _id: '_local/bulk', v: 1 }, { _id: 'real' }] });
  assert.equal(bd.body[0].id, '_local/bulk');
  assert.equal(bd.body[1].id, 'real');
  assert.equal((await req('DELETE', `${url}/_local/${id}?rev=0-1`)).status, 409);
  assert.equal((await req('DELETE', `${url}/_local/${id}?rev=0-2`)).status, 200);
  assert.equal((await req('GET', `${url}/_local/${id}`)).status, 404);
});

test('_ensure_full_commit and admin _compact', async () => {
  const url = await fresh();
  const e = await req('POST', `${url}/_ensure_full_commit`, '');
  assert.equal(e.status, 201);
  assertJson(e, '_ensure_full_commit');
  assert.equal(e.body.ok, true);
  assert.ok(e.body.instance_start_time);
  const r1 = (await req('PUT', `${url}/doc`, { v: 1, _attachments: { 'old.txt': { content_type: 'text/plain', data: b64('old data') } } })).body.rev;
  const r2 = (await req('PUT', `${url}/doc`, { _rev: r1, v: 2, _attachments: { 'new.txt': { content_type: 'text/plain', data: b64('new data') } } })).body.rev;
  assert.equal((await req('GET', `${url}/doc?rev=${r1}`)).body.v, 1);
  const c = await req('POST', `${url}/_compact`, '');
  assert.equal(c.status, 202);
  assertJson(c, '_compact');
  assert.deepEqual(c.body, { ok: true });
  // the old body is gone, its history stays; the leaf and its attachment are intact
  assert.equal((await req('GET', `${url}/doc?rev=${r1}`)).status, 404);
  const cur = await req('GET', `${url}/doc?revs=true&attachments=true`);
  assert.equal(cur.body._rev, r2);
  assert.deepEqual(cur.body._revisions.ids, [r2.slice(2), r1.slice(2)]);
  assert.equal(cur.body._attachments['new.txt'].data, b64('new data'));
  assert.equal(cur.body._attachments['old.txt'], undefined);
  const att = await fetch(`${url}/doc/new.txt`);
  assert.equal(await att.text(), 'new data');
  // public port: _compact does not exist there
  const pub = await req('POST', `${s.public}/${url.split('/').pop()}/_compact`, '');
  assert.equal(pub.status === 404 || pub.status === 401, true);
});

test('every replication endpoint answers JSON with a JSON Content-Type', async () => {
  const url = await fresh();
  const p = await req('PUT', `${url}/d`, { v: 1 });
  const checks = [
    ['GET', `${url}/`],
    ['GET', `${url}/d`],
    ['GET', `${url}/d?open_revs=all`],
    ['PUT', `${url}/e`, { v: 1 }],
    ['POST', `${url}/_bulk_docs`, { docs: [] }],
    ['POST', `${url}/_bulk_get`, { docs: [{ id: 'd', rev: p.body.rev }] }],
    ['POST', `${url}/_revs_diff`, { d: ['2-x'] }],
    ['GET', `${url}/_changes`],
    ['POST', `${url}/_changes`, {}],
    ['GET', `${url}/_changes?feed=longpoll&since=0`],
    ['GET', `${url}/_all_docs`],
    ['PUT', `${url}/_local/x`, { a: 1 }],
    ['GET', `${url}/_local/x`],
    ['POST', `${url}/_ensure_full_commit`, {}],
    ['GET', `${url}/nope`],
    ['GET', `${url}/_local/nope`],
    ['POST', `${url}/_bulk_get`, '{'],
  ];
  for (const [m, u, body] of checks) {
    const r = await req(m, u, body, JSONH);
    assertJson(r, `${m} ${u}`);
    assert.equal(typeof r.body, 'object', `${m} ${u} body parses as JSON`);
  }
});

test('new_edits:false with attachment stubs (CouchDB-replicator style): revpos kept, unknown data refused', async () => {
  const url = await fresh();
  await push(url, [{ _id: 'a', _rev: '1-x', _attachments: { 'f.txt': { content_type: 'text/plain', data: b64('hello'), revpos: 1 } } }]);
  const digest = (await req('GET', `${url}/a`)).body._attachments['f.txt'].digest;
  // a stub naming the digest, and a stub relying on the parent
  await push(url, [{ _id: 'a', _rev: '2-y', _revisions: { start: 2, ids: ['y', 'x'] }, v: 2, _attachments: { 'f.txt': { stub: true, digest, revpos: 1, content_type: 'text/plain' } } }]);
  await push(url, [{ _id: 'a', _rev: '3-z', _revisions: { start: 3, ids: ['z', 'y', 'x'] }, v: 3, _attachments: { 'f.txt': { stub: true, revpos: 1 } } }]);
  const cur = await req('GET', `${url}/a?attachments=true`);
  assert.equal(cur.body._rev, '3-z');
  assert.equal(cur.body._attachments['f.txt'].revpos, 1);
  assert.equal(cur.body._attachments['f.txt'].data, b64('hello'));
  // another document may refer to stored data by digest
  await push(url, [{ _id: 'b', _rev: '1-q', _attachments: { 'copy.txt': { stub: true, digest, revpos: 1, content_type: 'text/plain' } } }]);
  assert.equal(await (await fetch(`${url}/b/copy.txt`)).text(), 'hello');
  // a stub for data the server does not have is refused for that document only
  const before = (await req('GET', `${url}/`)).body.update_seq;
  const r = await req('POST', `${url}/_bulk_docs`, { new_edits: false, docs: [{ _id: 'c', _rev: '1-c', _attachments: { 'g.txt': { stub: true, digest: 'md5-AAAAAAAAAAAAAAAAAAAAAA==' } } }] });
  assert.equal(r.status, 201);
  assert.equal(r.body[0].status, 412);
  assert.match(r.body[0].reason, /stub/);
  assert.equal((await req('GET', `${url}/c`)).status, 404);
  assert.equal((await req('GET', `${url}/`)).body.update_seq, before);
});
