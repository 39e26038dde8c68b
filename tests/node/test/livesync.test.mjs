// Self-hosted LiveSync (the Obsidian plugin) against the real binary, re-enacted from the
// plugin's public source: its JWTs are made with WebCrypto (`crypto.subtle`) from a PKCS#8
// private key pasted into the "JWT Key" setting, with the header {alg, typ:"JWT"[, kid]} and the
// payload {exp, iat, sub, "_couchdb.roles":["_admin"]} — no iss, no aud — and its PouchDB gets
// the token through a `fetch` override that appends `authorization: Bearer …` to every request
// (no `auth` option). The server runs `local_jwt` in CouchDB mode (no issuer) with the public
// keys in PEM, and a role named `_admin` that has channel `*`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { startServer, req } from '../lib/server.mjs';
import { localDb, PouchDB } from '../lib/pouch.mjs';
import { snapshot, assertSameSnapshot, eventually } from '../lib/compare.mjs';

const { subtle } = globalThis.crypto;
const CURVES = { ES256: ['P-256', 'SHA-256'], ES512: ['P-521', 'SHA-512'] };

// --- keys and tokens, the way the plugin makes them ------------------------------------------

function pem(label, der) {
  const b64 = Buffer.from(der).toString('base64').match(/.{1,64}/g).join('\n');
  return `-----BEGIN ${label}-----\n${b64}\n-----END ${label}-----\n`;
}

/** A key pair as `openssl ecparam … | openssl pkcs8 -topk8` gives it: PKCS#8 and SPKI PEM. */
async function keyPair(alg) {
  const [namedCurve] = CURVES[alg];
  const k = await subtle.generateKey({ name: 'ECDSA', namedCurve }, true, ['sign', 'verify']);
  return {
    alg,
    privatePem: pem('PRIVATE KEY', await subtle.exportKey('pkcs8', k.privateKey)),
    publicPem: pem('PUBLIC KEY', await subtle.exportKey('spki', k.publicKey)),
  };
}

/** base64 of a string via btoa, then made URL-safe without padding (as the plugin does). */
const b64url = (s) => btoa(s).replace(/\+/g, '-').replace(/\//g, '_').replace(/=/g, '');

/**
 * The plugin's token source: the settings "JWT Algorithm", "JWT Key" (PKCS#8 PEM), "JWT Key ID
 * (kid)" (optional), "JWT Subject (sub)" and "JWT Expiration Duration (minutes)". A token is
 * reused until it is close to its expiry.
 */
function tokenSource({ alg, privatePem, kid = '', sub, expMinutes = 5 }) {
  let key;
  let current;
  const sign = async () => {
    const [namedCurve, hash] = CURVES[alg];
    if (!key) {
      const body = privatePem.replace(/-----BEGIN [^-]+-----/, '').replace(/-----END [^-]+-----/, '').replace(/\s+/g, '');
      const der = Uint8Array.from(atob(body), (c) => c.charCodeAt(0));
      key = await subtle.importKey('pkcs8', der, { name: 'ECDSA', namedCurve }, true, ['sign']);
    }
    const iat = Math.floor(Date.now() / 1000);
    const header = { alg, typ: 'JWT', kid: kid || undefined }; // JSON.stringify drops an undefined kid
    const payload = { exp: iat + expMinutes * 60, iat, sub, '_couchdb.roles': ['_admin'] };
    const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(payload))}`;
    const sig = await subtle.sign({ name: 'ECDSA', hash }, key, new TextEncoder().encode(input));
    return { token: `${input}.${Buffer.from(sig).toString('base64url')}`, exp: payload.exp };
  };
  return async () => {
    if (!current || current.exp < Math.floor(Date.now() / 1000) + 60) current = await sign();
    return current.token;
  };
}

/** The plugin's remote database: http adapter, no `auth`, Bearer added by a fetch override. */
function livesyncRemote(url, token, { setup = false } = {}) {
  return new PouchDB(url, {
    adapter: 'http',
    skip_setup: !setup,
    fetch: async (request, opts) => {
      const headers = new Headers(opts?.headers);
      headers.append('authorization', `Bearer ${await token()}`);
      return PouchDB.fetch(request, { ...opts, headers });
    },
  });
}

// --- a vault as the plugin stores it ---------------------------------------------------------

const chunkId = (data) => `h:${createHash('sha256').update(data).digest('base64url').slice(0, 14).toLowerCase()}`;

/** A note (`plain` for text, `newnote` for binary) plus its chunk documents (`leaf`). */
function fileDocs(path, content, { binary = false, mtime = 1_760_000_000_000 } = {}) {
  const pieces = [];
  const text = binary ? Buffer.from(content).toString('base64') : content;
  const size = binary ? Buffer.byteLength(content) : Buffer.byteLength(content, 'utf8');
  for (let i = 0; i < text.length; i += 120) pieces.push(text.slice(i, i + 120));
  if (pieces.length === 0) pieces.push('');
  const chunks = pieces.map((data) => ({ _id: chunkId(data), type: 'leaf', data }));
  const note = {
    _id: path.toLowerCase(),
    path,
    children: chunks.map((c) => c._id),
    ctime: mtime - 86_400_000,
    mtime,
    size,
    type: binary ? 'newnote' : 'plain',
    eden: {},
  };
  return [note, ...chunks];
}

function vault(n) {
  const docs = new Map();
  const add = (list) => { for (const d of list) docs.set(d._id, d); };
  add([{ _id: 'obsydian_livesync_version', type: 'versioninfo', version: 12 }]);
  add([{ _id: 'syncinfo', type: 'syncinfo', data: 'a1b2c3d4e5f6' }]);
  for (let i = 0; i < n; i++) {
    const body = [
      `# Note ${i}`,
      '',
      `Written on day ${i} — with ünïcödé, 日本語のテキスト and an emoji 🗒️.`,
      '- [ ] a task',
      `- [x] done ${'x'.repeat(i * 7)}`,
      '```js',
      `const n = ${i} * 1.5e3; // 90.28571428571429`,
      '```',
      `[[Note ${(i + 1) % n}]] ![[image ${i % 5}.png]]`,
    ].join('\n');
    add(fileDocs(`Folder ${i % 4}/Note ${i}.md`, body, { mtime: 1_760_000_000_000 + i * 1000 }));
  }
  for (let i = 0; i < 5; i++) {
    const bin = Buffer.alloc(700 + i * 50);
    for (let j = 0; j < bin.length; j++) bin[j] = (j * 31 + i * 7) & 0xff;
    add(fileDocs(`image ${i}.png`, bin, { binary: true }));
  }
  // a shared chunk (the same text in two notes is one chunk document)
  add(fileDocs('Copy.md', 'same text'));
  add(fileDocs('Another copy.md', 'same text'));
  // an empty note
  add(fileDocs('Empty.md', ''));
  return [...docs.values()];
}

/** What a replica holds, by id: the body without `_rev` (for comparing with the source). */
async function bodies(db) {
  const all = await db.allDocs({ include_docs: true });
  return Object.fromEntries(all.rows.map((r) => {
    const { _rev, ...body } = r.doc;
    return [r.id, body];
  }));
}

// --- the server ------------------------------------------------------------------------------

async function startLivesyncServer() {
  const desktop = await keyPair('ES512');
  const phone = await keyPair('ES256');
  // the public keys stay out of the config file: ${VAR} expansion (PEM newlines included)
  process.env.SG_TEST_LIVESYNC_ES512 = desktop.publicPem;
  process.env.SG_TEST_LIVESYNC_ES256 = phone.publicPem;
  const s = await startServer((c) => {
    c.CORS = { Origin: ['app://obsidian.md', 'capacitor://localhost', 'http://localhost'] };
    c.databases = {
      vault: {
        local_jwt: {
          livesync: {
            algorithms: ['ES256', 'ES512'],
            pem: ['${SG_TEST_LIVESYNC_ES512}', '${SG_TEST_LIVESYNC_ES256}'],
            roles_claim: '_couchdb.roles',
            required_claims: ['exp'],
            register: true,
          },
        },
        roles: { _admin: { admin_channels: ['*'] } },
        disable_password_auth: true,
      },
    };
  });
  // the config holds the variables' names, never the keys
  assert.ok(!JSON.stringify(s.config).includes(desktop.publicPem.split('\n')[1]));
  return { s, desktop, phone };
}

async function expect401(url, token, needle) {
  const r = await req('GET', url, undefined, { authorization: `Bearer ${token}`, origin: 'app://obsidian.md' });
  assert.equal(r.status, 401, `${needle}: ${JSON.stringify(r.body)}`);
  assert.equal(r.body.error, 'unauthorized');
  assert.match(r.body.reason, needle);
  assert.ok(!r.body.reason.includes(token), 'the reason never echoes the token');
  assert.equal(r.headers.get('www-authenticate'), null, 'no native login popup in the app');
  assert.equal(r.headers.get('access-control-allow-origin'), 'app://obsidian.md', 'the app can read its 401');
}

test('LiveSync: ES512 and ES256 devices push a vault, a fresh device pulls it identical, edits flow back, live sync', async (t) => {
  const { s, desktop, phone } = await startLivesyncServer();
  try {
    const url = `${s.public}/vault`;
    const desktopToken = tokenSource({ ...desktop, sub: 'obsidian-user' });
    // the phone sets the plugin's optional "JWT Key ID (kid)": PEM keys have none, so it
    // falls back to the keys of the token's type
    const phoneToken = tokenSource({ ...phone, kid: 'phone-key', sub: 'obsidian-user' });
    const header = JSON.parse(Buffer.from((await phoneToken()).split('.')[0], 'base64url'));
    assert.deepEqual(header, { alg: 'ES256', typ: 'JWT', kid: 'phone-key' });
    const claims = JSON.parse(Buffer.from((await desktopToken()).split('.')[1], 'base64url'));
    assert.deepEqual(Object.keys(claims), ['exp', 'iat', 'sub', '_couchdb.roles']);

    // "Test connection": db.info() with the token; the user is registered as the sub, with
    // the token's role and that role's channels
    const info = await livesyncRemote(url, desktopToken).info();
    assert.equal(info.db_name, 'vault');
    let r = await req('GET', `${url}/_session`, undefined, { authorization: `Bearer ${await desktopToken()}` });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.equal(r.body.userCtx.name, 'obsidian-user');
    assert.deepEqual(r.body.userCtx.roles, ['_admin']);
    assert.ok('*' in r.body.userCtx.channels, JSON.stringify(r.body.userCtx));
    r = await req('GET', `${s.admin}/vault/_user/obsidian-user`);
    assert.deepEqual(r.body.jwt_roles, ['_admin']);
    assert.equal(r.body.jwt_issuer, 'local_jwt:livesync');
    // the "create or connect" setup: PouchDB probes the existing database (412 is fine) …
    assert.equal((await livesyncRemote(url, desktopToken, { setup: true }).info()).db_name, 'vault');
    // … but cannot create one from the public port
    await assert.rejects(livesyncRemote(`${s.public}/othervault`, desktopToken, { setup: true }).info(),
      (e) => e.status === 401 || e.status === 403);
    assert.equal((await req('GET', `${s.admin}/othervault/`)).status, 404);
    // "Check server requirements" asks for CouchDB's node config, which syncgate does not have
    r = await req('GET', `${s.public}/_node/_local/_config`, undefined, { authorization: `Bearer ${await desktopToken()}` });
    assert.equal(r.status, 404);

    // CORS as the app sees it: the preflight allows the Authorization header
    r = await fetch(`${url}/_changes`, {
      method: 'OPTIONS',
      headers: { origin: 'app://obsidian.md', 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization,content-type' },
    });
    assert.ok(r.status < 300, `preflight ${r.status}`);
    assert.equal(r.headers.get('access-control-allow-origin'), 'app://obsidian.md');
    assert.match(r.headers.get('access-control-allow-headers') ?? '', /authorization/i);
    assert.equal(r.headers.get('access-control-allow-credentials'), 'true');

    // the desktop pushes its vault (LiveSync's replicator options: batches of 50, push:{})
    const desktopDb = localDb();
    const docs = vault(50);
    await desktopDb.bulkDocs(docs);
    const remote = livesyncRemote(url, desktopToken);
    const push = await desktopDb.replicate.to(remote, { batch_size: 50, batches_limit: 40 });
    assert.equal(push.ok, true);
    assert.equal(push.docs_written, docs.length);
    assert.equal(push.doc_write_failures, 0);
    // the plugin's own bookkeeping on the remote: a _local milestone document
    await remote.put({ _id: '_local/obsydian_livesync_milestone', type: 'milestoneinfo', created: Date.now(), locked: false, accepted_nodes: ['desktop'], node_chunk_info: {}, tweak_values: {} });
    assert.equal((await remote.get('_local/obsydian_livesync_milestone')).accepted_nodes[0], 'desktop');

    // a fresh phone pulls everything: every document byte-identical to what the desktop wrote
    const phoneDb = localDb();
    const pull = await phoneDb.replicate.from(livesyncRemote(url, phoneToken), { batch_size: 50, batches_limit: 40 });
    assert.equal(pull.ok, true);
    assert.equal(pull.docs_written, docs.length);
    const want = Object.fromEntries(docs.map((d) => [d._id, d]));
    assert.deepEqual(await bodies(phoneDb), want);
    for (const d of docs.filter((x) => x.type === 'leaf')) {
      assert.equal((await phoneDb.get(d._id)).data, d.data, `chunk ${d._id}`);
    }
    assertSameSnapshot(await snapshot(desktopDb), await snapshot(phoneDb), 'desktop vs phone');

    // the phone edits a note (new chunk list, a new chunk) and deletes another; the desktop pulls
    const note = await phoneDb.get('folder 2/note 2.md');
    const [edited, ...newChunks] = fileDocs(note.path, 'Edited on the phone ✍️', { mtime: note.mtime + 5000 });
    await phoneDb.bulkDocs([...newChunks, { ...edited, _rev: note._rev }]);
    const gone = await phoneDb.get('folder 3/note 3.md');
    await phoneDb.put({ ...gone, deleted: true, children: [], mtime: gone.mtime + 1 });
    const back = await phoneDb.replicate.to(livesyncRemote(url, phoneToken));
    assert.equal(back.docs_written, 2 + newChunks.length);
    await desktopDb.replicate.from(remote);
    assert.deepEqual((await desktopDb.get('folder 2/note 2.md')).children, edited.children);
    assert.equal((await desktopDb.get(newChunks[0]._id)).data, 'Edited on the phone ✍️');
    assert.equal((await desktopDb.get('folder 3/note 3.md')).deleted, true);
    assertSameSnapshot(await snapshot(desktopDb), await snapshot(phoneDb), 'after the edit');

    // LiveSync mode: the desktop syncs live (push and pull, retry, 30 s heartbeat); a note the
    // phone pushes arrives without another request from the desktop's side
    const live = desktopDb.sync(remote, { live: true, retry: true, heartbeat: 30000, batch_size: 50, batches_limit: 40, push: {} });
    try {
      // the desktop's live feed is connected and idle before the phone writes
      await eventually(async () => (await s.metric('syncgate_changes_feeds_active')) >= 1, 10000, 'the live feed');
      const fresh = fileDocs('Inbox/From the phone.md', `Captured at ${new Date(0).toISOString()} 📱`);
      const t0 = Date.now();
      await phoneDb.bulkDocs(fresh);
      await phoneDb.replicate.to(livesyncRemote(url, phoneToken));
      await eventually(() => desktopDb.get('inbox/from the phone.md').then(() => true, () => false), 10000, 'live pull of the new note');
      t.diagnostic(`phone → syncgate → live desktop in ${Date.now() - t0} ms`);
      const got = await desktopDb.get('inbox/from the phone.md');
      assert.deepEqual(got.children, fresh[0].children);
      await eventually(() => desktopDb.get(fresh[1]._id).then(() => true, () => false), 10000, 'its chunk');
      // and a note written on the desktop while live reaches the server
      const typed = fileDocs('Inbox/From the desktop.md', 'typed on the desktop');
      await desktopDb.bulkDocs(typed);
      // the note and its chunk are in the server's feed (which shows only durable writes)
      const ids = typed.map((d) => d._id);
      await eventually(async () => {
        const r = await fetch(`${s.admin}/vault/_changes?filter=_doc_ids`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ doc_ids: ids }) });
        return (await r.json()).results.length === ids.length;
      }, 10000, 'live push');
    } finally {
      await new Promise((res) => { live.on('complete', res); live.cancel(); });
    }
    await phoneDb.replicate.from(livesyncRemote(url, phoneToken));
    assertSameSnapshot(await snapshot(desktopDb), await snapshot(phoneDb), 'after live sync');
  } finally {
    await s.stop();
  }
});

test('LiveSync: tokens no configured key verifies are refused with 401', async () => {
  const { s, desktop } = await startLivesyncServer();
  try {
    const url = `${s.public}/vault/`;
    // the right key works (control)
    const ok = await tokenSource({ ...desktop, sub: 'u' })();
    assert.equal((await req('GET', url, undefined, { authorization: `Bearer ${ok}` })).status, 200);
    // signed by another ES512 key (a device whose public key was never configured)
    const stranger = await keyPair('ES512');
    await expect401(url, await tokenSource({ ...stranger, sub: 'mallory' })(), /signature/);
    // the same, presented under a kid
    await expect401(url, await tokenSource({ ...stranger, kid: 'desktop', sub: 'mallory' })(), /signature/);
    // HS256 (the plugin's shared-secret option) where no HMAC secret is configured
    const hsKey = await subtle.importKey('raw', new TextEncoder().encode('a guessed shared secret'), { name: 'HMAC', hash: 'SHA-256' }, false, ['sign']);
    const now = Math.floor(Date.now() / 1000);
    const input = `${b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }))}.${b64url(JSON.stringify({ exp: now + 300, iat: now, sub: 'mallory', '_couchdb.roles': ['_admin'] }))}`;
    const hs = `${input}.${Buffer.from(await subtle.sign('HMAC', hsKey, new TextEncoder().encode(input))).toString('base64url')}`;
    await expect401(url, hs, /HS256/);
    // a tampered payload (another sub) under the right key's signature
    const [h, , sig] = ok.split('.');
    const forged = `${h}.${b64url(JSON.stringify({ exp: now + 300, iat: now, sub: 'mallory', '_couchdb.roles': ['_admin'] }))}.${sig}`;
    await expect401(url, forged, /signature/);
    // expired (the plugin renews tokens itself; a stale one is refused)
    await expect401(url, await tokenSource({ ...desktop, sub: 'u', expMinutes: -5 })(), /expired/);
    // a PouchDB replication with a foreign key fails with 401 and writes nothing
    const db = localDb();
    await db.bulkDocs(vault(2));
    await assert.rejects(
      db.replicate.to(livesyncRemote(`${s.public}/vault`, tokenSource({ ...stranger, sub: 'mallory' }))),
      (e) => e.status === 401,
    );
    const info = (await req('GET', `${s.admin}/vault/`)).body;
    assert.equal(info.doc_count, 0);
    // only the good token's user was registered, never the stranger's
    assert.deepEqual((await req('GET', `${s.admin}/vault/_user/`)).body, ['u']);
  } finally {
    await s.stop();
  }
});

// With the plugin's default "Fetch chunks on demand", its pull is
//   localDb.replicate.from(remote, { selector: { type: { $ne: 'leaf' } } })
// (PouchDB: POST /vault/_changes?style=all_docs&filter=_selector with {"selector": …}); chunks are
// then fetched by id as notes need them. With end-to-end encryption it counts chunks at start
// through POST /vault/_find.
test('LiveSync: a selector pull brings every note and no chunk, chunks come on demand, _find counts them, live too', async () => {
  const { s, desktop, phone } = await startLivesyncServer();
  try {
    const url = `${s.public}/vault`;
    const desktopToken = tokenSource({ ...desktop, sub: 'obsidian-user' });
    const phoneToken = tokenSource({ ...phone, sub: 'obsidian-user' });
    const desktopDb = localDb();
    const docs = vault(20);
    await desktopDb.bulkDocs(docs);
    const remote = livesyncRemote(url, desktopToken);
    assert.equal((await desktopDb.replicate.to(remote, { batch_size: 50 })).docs_written, docs.length);
    const notLeaf = docs.filter((d) => d.type !== 'leaf');
    const leaves = docs.filter((d) => d.type === 'leaf');
    assert.ok(leaves.length > 20 && notLeaf.length > 20);

    // the on-demand pull: every note (and the plugin's own documents), not one chunk
    const phoneRemote = livesyncRemote(url, phoneToken);
    const phoneDb = localDb();
    const selector = { type: { $ne: 'leaf' } };
    const pull = await phoneDb.replicate.from(phoneRemote, { selector, batch_size: 50, batches_limit: 40 });
    assert.equal(pull.ok, true);
    const want = Object.fromEntries(notLeaf.map((d) => [d._id, d]));
    assert.deepEqual(await bodies(phoneDb), want);

    // a note's chunks fetched on demand, as the plugin's chunk fetcher does
    const note = await phoneDb.get('folder 1/note 5.md');
    const fetched = await phoneRemote.allDocs({ keys: note.children, include_docs: true });
    const byId = Object.fromEntries(leaves.map((d) => [d._id, d.data]));
    assert.deepEqual(fetched.rows.map((r) => r.doc.data), note.children.map((id) => byId[id]));

    // counting chunks with _find (every page of it)
    const bearer = { authorization: `Bearer ${await phoneToken()}`, origin: 'app://obsidian.md' };
    let r = await req('POST', `${url}/_find`, { selector: { type: 'leaf' }, fields: ['_id'], limit: 1000 }, bearer);
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.equal(r.headers.get('access-control-allow-origin'), 'app://obsidian.md');
    assert.deepEqual(r.body.docs.map((d) => d._id), leaves.map((d) => d._id).sort());
    assert.deepEqual(r.body.docs[0], { _id: r.body.docs[0]._id }, 'only the fields asked for');
    assert.match(r.body.warning, /No matching index/);
    let paged = [];
    let bookmark;
    for (;;) {
      r = await req('POST', `${url}/_find`, { selector: { type: 'leaf' }, fields: ['_id'], limit: 25, bookmark }, bearer);
      assert.equal(r.status, 200);
      if (r.body.docs.length === 0) break;
      paged = paged.concat(r.body.docs.map((d) => d._id));
      bookmark = r.body.bookmark;
    }
    assert.deepEqual(paged, leaves.map((d) => d._id).sort());

    // live: the phone's live on-demand pull receives a new note from the desktop, not its chunks
    const live = phoneDb.replicate.from(phoneRemote, { live: true, retry: true, heartbeat: 30000, selector, batch_size: 50 });
    try {
      await eventually(async () => (await s.metric('syncgate_changes_feeds_active')) >= 1, 10000, 'the live feed');
      const fresh = fileDocs('Inbox/Live.md', 'written while the phone listens 📡');
      await desktopDb.bulkDocs(fresh);
      await desktopDb.replicate.to(remote);
      await eventually(() => phoneDb.get('inbox/live.md').then(() => true, () => false), 10000, 'the live note');
      assert.deepEqual((await phoneDb.get('inbox/live.md')).children, fresh[0].children);
      await assert.rejects(phoneDb.get(fresh[1]._id), (e) => e.status === 404, 'the chunk stays on the server');
    } finally {
      await new Promise((res) => { live.on('complete', res); live.cancel(); });
    }
    const after = await phoneDb.allDocs();
    assert.ok(after.rows.every((row) => !row.id.startsWith('h:')), 'no chunk was ever pulled');
  } finally {
    await s.stop();
  }
});
