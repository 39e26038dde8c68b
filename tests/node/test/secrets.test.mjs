// No password, token, cookie or session id appears in the server log, even at trace level.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SignJWT } from 'jose';
import { startServer, req, basic } from '../lib/server.mjs';
import { localDb, remoteDb } from '../lib/pouch.mjs';

test('secrets never reach the log at trace level', async () => {
  const password = 'Pw-' + Math.random().toString(36).slice(2) + '-secret';
  const wrong = 'Wrong-' + Math.random().toString(36).slice(2);
  const hmac = 'Hmac-' + Math.random().toString(36).slice(2) + '-0123456789abcdef0123456789';
  process.env.SG_TEST_LOG_HMAC = hmac;
  const s = await startServer((c) => {
    c.logging = { console: { log_level: 'trace' } };
    c.databases.db = {
      local_jwt: { p: { issuer: 'https://issuer.test', client_id: 'app', algorithms: ['HS256'], hmac_secret: '${SG_TEST_LOG_HMAC}', register: true, channels_claim: 'channels' } },
    };
  });
  const secrets = [password, wrong, hmac];
  try {
    const created = await req('PUT', `${s.admin}/db/_user/alice`, { password, admin_channels: ['*'] });
    assert.equal(created.status, 201);
    assert.ok(!JSON.stringify(created.body).includes(password));
    assert.equal((await req('GET', `${s.public}/db/`, undefined, { Authorization: basic('alice', password) })).status, 200);
    assert.equal((await req('GET', `${s.public}/db/`, undefined, { Authorization: basic('alice', wrong) })).status, 401);
    // a password change (the update carries the new password)
    const newPassword = password + '-2';
    secrets.push(newPassword);
    assert.equal((await req('PUT', `${s.admin}/db/_user/alice`, { password: newPassword })).status, 200);
    // public login: the cookie's session id
    const login = await req('POST', `${s.public}/db/_session`, { name: 'alice', password: newPassword });
    assert.equal(login.status, 200);
    const cookie = login.headers.get('set-cookie').split(';')[0];
    secrets.push(cookie.split('=')[1]);
    assert.equal((await req('GET', `${s.public}/db/_all_docs`, undefined, { Cookie: cookie })).status, 200);
    assert.equal((await req('GET', `${s.public}/db/_all_docs`, undefined, { Cookie: 'SyncGatewaySession=' + 'f'.repeat(40) })).status, 401);
    secrets.push('f'.repeat(40));
    // custom auth: a session made on the admin port, then used, then revoked
    const admin = await req('POST', `${s.admin}/db/_session`, { name: 'alice', ttl: 600 });
    assert.equal(admin.status, 200);
    secrets.push(admin.body.session_id);
    assert.equal((await req('GET', `${s.public}/db/`, undefined, { Cookie: `SyncGatewaySession=${admin.body.session_id}` })).status, 200);
    assert.equal((await req('DELETE', `${s.admin}/db/_session/${admin.body.session_id}`)).status, 200);
    // one-time session
    const once = await req('POST', `${s.public}/db/_session?one_time=true`, { name: 'alice', password: newPassword });
    if (once.status === 200 && once.body.one_time_session_id) secrets.push(once.body.one_time_session_id);
    // Bearer tokens, good and tampered
    const token = await new SignJWT({ sub: 'frodo', aud: 'app', channels: ['shire'] })
      .setProtectedHeader({ alg: 'HS256' }).setIssuer('https://issuer.test').setIssuedAt().setExpirationTime('10m')
      .sign(new TextEncoder().encode(hmac));
    secrets.push(token, token.split('.')[2]);
    assert.equal((await req('GET', `${s.public}/db/`, undefined, { Authorization: `Bearer ${token}` })).status, 200);
    const tampered = token.slice(0, -4) + 'AAAA';
    secrets.push(tampered.split('.')[2]);
    assert.equal((await req('GET', `${s.public}/db/`, undefined, { Authorization: `Bearer ${tampered}` })).status, 401);
    // a replication with Basic auth
    const local = localDb();
    await local.put({ _id: 'x' });
    await local.replicate.to(remoteDb(`${s.public}/db`, { Authorization: basic('alice', newPassword) }));
    await req('DELETE', `${s.public}/db/_session`, undefined, { Cookie: cookie });
  } finally {
    await s.stop();
  }
  const log = s.logText();
  // one line per request at least (on sled, the engine's own trace lines add many more)
  assert.ok(log.split('\n').length > 20, 'the trace log has content');
  assert.match(log, /TRACE|DEBUG/);
  for (const secret of secrets) {
    assert.ok(!log.includes(secret), `a secret (${secret.slice(0, 4)}…) appears in the log`);
  }
  // nor the base64 of Basic credentials
  assert.ok(!log.includes(Buffer.from(`alice:${password}`).toString('base64')));
});
