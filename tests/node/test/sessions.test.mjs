// Cookie sessions with real PouchDB: public login, and custom auth through the example app server.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import readline from 'node:readline';
import { startServer, req } from '../lib/server.mjs';
import { localDb, remoteDb } from '../lib/pouch.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const EXAMPLE = resolve(here, '../../../examples/custom-auth/app-server.mjs');

/** Push 20 docs, pull them into a fresh db, with `headers` as the only credentials. */
async function roundTrip(s, headers, tag) {
  const remote = remoteDb(`${s.public}/db`, headers);
  const a = localDb();
  await a.bulkDocs(Array.from({ length: 20 }, (_, i) => ({ _id: `${tag}-${i}`, channels: [tag], i })));
  const push = await a.replicate.to(remote);
  assert.equal(push.docs_written, 20);
  const b = localDb();
  const pull = await b.replicate.from(remote, { doc_ids: Array.from({ length: 20 }, (_, i) => `${tag}-${i}`) });
  assert.equal(pull.docs_written, 20);
  assert.equal((await b.get(`${tag}-7`)).i, 7);
}

test('public login: POST /_session, then PouchDB replicates with only the cookie', async () => {
  const s = await startServer((c) => {
    c.databases.db.users = { alice: { password: 'pw-alice-1', admin_channels: ['*'] } };
  });
  try {
    const r = await req('POST', `${s.public}/db/_session`, { name: 'alice', password: 'pw-alice-1' });
    assert.equal(r.status, 200);
    const setCookie = r.headers.get('set-cookie');
    const cookie = setCookie.split(';')[0];
    assert.match(cookie, /^SyncGatewaySession=[0-9a-f]{40}$/);
    assert.match(setCookie, /; Path=\/db; Expires=.+ GMT; HttpOnly; SameSite=Lax$/);
    await roundTrip(s, { Cookie: cookie }, 'pub');
    // logout ends it: the next replication is refused
    const out = await req('DELETE', `${s.public}/db/_session`, undefined, { Cookie: cookie });
    assert.equal(out.status, 200);
    assert.deepEqual(out.body, { ok: true });
    await assert.rejects(localDb().replicate.from(remoteDb(`${s.public}/db`, { Cookie: cookie })), (e) => e.status === 401);
  } finally {
    await s.stop();
  }
});

/** Starts the example app server against `s`; resolves to { url, stop() }. */
async function startAppServer(s, users) {
  const child = spawn(process.execPath, [EXAMPLE], {
    env: { ...process.env, SYNCGATE_ADMIN: s.admin, SYNCGATE_DB: 'db', PORT: '0', APP_USERS: JSON.stringify(users) },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const url = await new Promise((res, rej) => {
    const timer = setTimeout(() => rej(new Error('app server did not start')), 10000);
    readline.createInterface({ input: child.stdout }).on('line', (line) => {
      const m = line.match(/listening on (\S+)/);
      if (m) { clearTimeout(timer); res(m[1]); }
    });
    child.on('exit', (code) => { clearTimeout(timer); rej(new Error(`app server exited ${code}`)); });
  });
  const exited = new Promise((res) => child.on('exit', res));
  return { url, stop: async () => { child.kill('SIGTERM'); await exited; } };
}

test('custom auth: the example app server hands out sessions that PouchDB replicates with', async () => {
  const s = await startServer();
  const app = await startAppServer(s, {
    carol: { password: 'carol-app-pw', channels: ['carol'] },
    dave: { password: 'dave-app-pw', channels: ['dave'] },
  });
  try {
    const bad = await req('POST', `${app.url}/login`, { username: 'carol', password: 'nope' });
    assert.equal(bad.status, 401);
    const nobody = await req('POST', `${app.url}/login`, { username: 'eve', password: 'x' });
    assert.equal(nobody.status, 401);
    const r = await req('POST', `${app.url}/login`, { username: 'carol', password: 'carol-app-pw' });
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.equal(r.body.cookie_name, 'SyncGatewaySession');
    assert.match(r.body.session_id, /^[0-9a-f]{40}$/);
    assert.match(r.headers.get('set-cookie'), /^SyncGatewaySession=[0-9a-f]{40}; Path=\/db; /);
    // the app created the syncgate user with the channels it decided
    const u = await req('GET', `${s.admin}/db/_user/carol`);
    assert.deepEqual(u.body.admin_channels, ['carol']);
    await roundTrip(s, { Cookie: r.body.cookie }, 'carol');
    // the session shows who it is on the public port
    const me = await req('GET', `${s.public}/db/_session`, undefined, { Cookie: r.body.cookie });
    assert.equal(me.body.userCtx.name, 'carol');
    // a second login reuses the user; logout through the app revokes the session
    const again = await req('POST', `${app.url}/login`, { username: 'carol', password: 'carol-app-pw' });
    assert.equal(again.status, 200);
    const out = await req('POST', `${app.url}/logout`, { session_id: again.body.session_id });
    assert.equal(out.status, 200);
    const dead = await req('GET', `${s.public}/db/`, undefined, { Cookie: again.body.cookie });
    assert.equal(dead.status, 401);
    // the first session is unaffected
    const live = await req('GET', `${s.public}/db/`, undefined, { Cookie: r.body.cookie });
    assert.equal(live.status, 200);
  } finally {
    await app.stop();
    await s.stop();
  }
});
