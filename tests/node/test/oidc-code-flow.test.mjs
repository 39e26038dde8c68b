// The OpenID Connect authorization-code flow (_oidc, _oidc_callback, _oidc_refresh) against a
// real OpenID provider (oauth2-mock-server on a loopback port), driven with plain fetch that
// follows each redirect by hand, like a browser would.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import { OAuth2Server } from 'oauth2-mock-server';
import { startServer, req } from '../lib/server.mjs';
import { localDb, remoteDb } from '../lib/pouch.mjs';

/** A free loopback port (nothing listens on it when this returns). */
async function freePort() {
  const srv = createServer();
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  const { port } = srv.address();
  await new Promise((r) => srv.close(r));
  return port;
}

async function startIdp() {
  const idp = new OAuth2Server();
  await idp.issuer.keys.generate('RS256', { kid: 'k1' });
  await idp.start(0, '127.0.0.1');
  idp.issuer.url = `http://127.0.0.1:${idp.address().port}`;
  return idp;
}

/** Runs `fn` on every ID token the provider signs (not on access tokens, which carry amr). */
function onIdToken(idp, fn) {
  const h = (token) => { if (!token.payload.amr) fn(token.payload, token.header); };
  idp.service.on('beforeTokenSigning', h);
  return () => idp.service.off('beforeTokenSigning', h);
}

const cookieOf = (r, name) => r.headers.getSetCookie().find((c) => c.startsWith(`${name}=`));
const valueOf = (setCookie) => setCookie.split(';')[0];

let s; let idp; let idpDown; let idpBasic; let port; let log = '';
const seen = { authorize: [], token: [] };
const user = 'idp_johndoe';

before(async () => {
  idp = await startIdp();
  idp.service.on('beforeAuthorizeRedirect', (_u, r) => seen.authorize.push(new URL(r.url, 'http://x').searchParams));
  idp.service.on('beforeResponse', (_resp, r) => seen.token.push({ body: r.body, authorization: r.headers.authorization }));
  // a provider whose token endpoint is down (nothing listens there)
  idpDown = await startIdp();
  const dead = await freePort();
  idpDown.service.on('beforeWellKnownOpenIdConfiguration', (d) => { d.body.token_endpoint = `http://127.0.0.1:${dead}/token`; });
  // a provider that wants client_secret_basic
  idpBasic = await startIdp();
  idpBasic.service.on('beforeWellKnownOpenIdConfiguration', (d) => { d.body.token_endpoint_auth_methods_supported = ['client_secret_post', 'client_secret_basic']; });
  idpBasic.service.on('beforeResponse', (_resp, r) => seen.token.push({ basic: true, body: r.body, authorization: r.headers.authorization }));

  port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const provider = (issuer, db, extra = {}) => ({
    issuer, client_id: 'app', register: true, user_prefix: 'idp',
    callback_url: `${base}/${db}/_oidc_callback`, ...extra,
  });
  process.env.SYNCGATE_OIDC_TEST_SECRET = 'sh-secret-value';
  s = await startServer((c) => {
    c.interface = `127.0.0.1:${port}`;
    c.logging = { console: { log_level: 'trace' } };
    c.databases = {
      db: { oidc: { return_to_origins: ['http://app.example'], providers: { idp: provider(idp.issuer.url, 'db') } } },
      nosess: { oidc: { providers: { idp: provider(idp.issuer.url, 'nosess', { disable_session: true }) } } },
      access: { oidc: { providers: { idp: provider(idp.issuer.url, 'access', { include_access: true }) } } },
      down: { oidc: { providers: { idp: provider(idpDown.issuer.url, 'down') } } },
      secret: { oidc: { providers: { idp: provider(idpBasic.issuer.url, 'secret', { validation_key: '${SYNCGATE_OIDC_TEST_SECRET}' }) } } },
      noreg: { oidc: { providers: { idp: provider(idp.issuer.url, 'noreg', { register: false }) } } },
      implicit: { oidc: { providers: { idp: { issuer: idp.issuer.url, client_id: 'app' } } } },
    };
  });
  // the user exists beforehand with a channel, so a pull has something to read
  const put = await req('PUT', `${s.admin}/db/_user/${user}`, { password: 'pw-unused-1', admin_channels: ['c1'] });
  assert.equal(put.status, 201, JSON.stringify(put.body));
  for (const id of ['a', 'b']) {
    assert.equal((await req('PUT', `${s.admin}/db/${id}`, { channels: ['c1'], v: id })).status, 201);
  }
  assert.equal((await req('PUT', `${s.admin}/db/hidden`, { channels: ['c2'] })).status, 201);
});

after(async () => {
  await s?.stop();
  await idp?.stop(); await idpDown?.stop(); await idpBasic?.stop();
  delete process.env.SYNCGATE_OIDC_TEST_SECRET;
});

/** GET /{db}/_oidc, then the provider's /authorize: returns the login cookie and callback URL. */
async function start(db = 'db', query = '') {
  const r1 = await fetch(`${s.public}/${db}/_oidc${query}`, { redirect: 'manual' });
  const text = r1.status === 302 ? '' : await r1.text();
  assert.equal(r1.status, 302, text);
  const login = cookieOf(r1, 'syncgate_oidc_login');
  assert.ok(login, 'the login cookie is set');
  assert.match(login, /; Path=\/[a-z]+; Max-Age=300; HttpOnly; SameSite=Lax$/);
  const authorize = new URL(r1.headers.get('location'));
  const r2 = await fetch(authorize, { redirect: 'manual' });
  assert.equal(r2.status, 302);
  return { authorize, callback: new URL(r2.headers.get('location')), cookie: valueOf(login) };
}

async function callback(url, cookie) {
  const r = await fetch(url, { redirect: 'manual', headers: cookie ? { cookie } : {} });
  const text = await r.text();
  let body = text; try { body = JSON.parse(text); } catch { /* redirect */ }
  return { status: r.status, body, headers: r.headers, r };
}

async function login(db = 'db', query = '') {
  const st = await start(db, query);
  return { ...st, res: await callback(st.callback, st.cookie) };
}

test('code flow: PKCE S256 and nonce, JSON answer with a session a PouchDB pull uses', async () => {
  seen.authorize.length = 0; seen.token.length = 0;
  const { authorize, callback: cb, res } = await login();
  // the authorization request
  assert.equal(authorize.searchParams.get('response_type'), 'code');
  assert.equal(authorize.searchParams.get('client_id'), 'app');
  assert.equal(authorize.searchParams.get('redirect_uri'), `http://127.0.0.1:${port}/db/_oidc_callback`);
  assert.equal(authorize.searchParams.get('code_challenge_method'), 'S256');
  assert.match(authorize.searchParams.get('code_challenge'), /^[A-Za-z0-9_-]{43}$/);
  assert.match(authorize.searchParams.get('state'), /^[A-Za-z0-9_-]{43}$/);
  assert.match(authorize.searchParams.get('nonce'), /^[A-Za-z0-9_-]{43}$/);
  assert.deepEqual(authorize.searchParams.get('scope').split(' ').sort(), ['email', 'openid']);
  // the token request carried the verifier (the provider checked it against the challenge)
  const tok = seen.token.at(-1).body;
  assert.equal(tok.grant_type, 'authorization_code');
  assert.match(tok.code_verifier, /^[A-Za-z0-9_-]{43}$/);
  assert.equal(tok.client_id, 'app');
  assert.equal(tok.redirect_uri, `http://127.0.0.1:${port}/db/_oidc_callback`);
  // the answer
  assert.equal(res.status, 200, JSON.stringify(res.body));
  assert.equal(res.headers.get('cache-control'), 'no-store');
  assert.equal(res.headers.get('pragma'), 'no-cache');
  assert.deepEqual(Object.keys(res.body), ['id_token', 'refresh_token', 'session_id', 'name']);
  assert.equal(res.body.name, user);
  assert.match(res.body.session_id, /^[0-9a-f]{40}$/);
  assert.equal(res.body.id_token.split('.').length, 3);
  const session = cookieOf(res.r, 'SyncGatewaySession');
  assert.match(session, new RegExp(`^SyncGatewaySession=${res.body.session_id}; Path=/db; Expires=`));
  assert.match(cookieOf(res.r, 'syncgate_oidc_login'), /^syncgate_oidc_login=; .*Max-Age=0/);
  // the session cookie replicates the user's channel
  const local = localDb();
  const out = await local.replicate.from(remoteDb(`${s.public}/db`, { Cookie: valueOf(session) }));
  assert.equal(out.docs_written, 2);
  assert.deepEqual((await local.allDocs()).rows.map((r) => r.id), ['a', 'b']);
  // the ID token also works as a Bearer token (implicit flow)
  const me = await req('GET', `${s.public}/db/_session`, undefined, { authorization: `Bearer ${res.body.id_token}` });
  assert.equal(me.body.userCtx.name, user);
  // the user's email, issuer... were updated from the token
  const u = await req('GET', `${s.admin}/db/_user/${user}`);
  assert.deepEqual(u.body.admin_channels, ['c1']);
});

test('code flow: a replayed callback, another browser, a forged state are refused', async () => {
  const { callback: cb, cookie, res } = await login();
  assert.equal(res.status, 200);
  // replay: the transaction was used up
  const replay = await callback(cb, cookie);
  assert.equal(replay.status, 400);
  assert.match(replay.body.reason, /State mismatch.*already used/);
  // state mismatch (CSRF): the provider sends back a state no login has
  const st = await start();
  const forged = new URL(st.callback); forged.searchParams.set('state', 'x'.repeat(43));
  const bad = await callback(forged, st.cookie);
  assert.equal(bad.status, 400);
  assert.match(bad.body.reason, /State mismatch/);
  // the real state still works once, but only with this browser's cookie: without it the
  // transaction is refused and used up
  const other = await callback(st.callback, 'syncgate_oidc_login=someone-elses-cookie');
  assert.equal(other.status, 400);
  assert.match(other.body.reason, /did not start this login/);
  const after = await callback(st.callback, st.cookie);
  assert.equal(after.status, 400, 'a failed callback used up the transaction');
  // no state, no code
  const nostate = new URL(st.callback); nostate.searchParams.delete('state');
  assert.equal((await callback(nostate, st.cookie)).status, 400);
  const nocode = new URL(st.callback); nocode.searchParams.delete('code');
  const nc = await callback(nocode, st.cookie);
  assert.equal(nc.status, 400);
  assert.match(nc.body.reason, /Code must be present/);
});

test('code flow: an expired login transaction is refused', async () => {
  // SYNCGATE_OIDC_LOGIN_TTL_SECS (tests only) shortens the 5-minute lifetime
  const base = `http://127.0.0.1:${await freePort()}`;
  const port2 = Number(new URL(base).port);
  process.env.SYNCGATE_OIDC_LOGIN_TTL_SECS = '1';
  let s2;
  try {
    s2 = await startServer((c) => {
      c.interface = `127.0.0.1:${port2}`;
      c.databases = { db: { oidc: { providers: { idp: { issuer: idp.issuer.url, client_id: 'app', register: true, callback_url: `${base}/db/_oidc_callback` } } } } };
    });
  } finally { delete process.env.SYNCGATE_OIDC_LOGIN_TTL_SECS; }
  try {
    const r1 = await fetch(`${s2.public}/db/_oidc`, { redirect: 'manual' });
    assert.match(cookieOf(r1, 'syncgate_oidc_login'), /Max-Age=1;/);
    const r2 = await fetch(r1.headers.get('location'), { redirect: 'manual' });
    await new Promise((r) => setTimeout(r, 1500));
    const res = await callback(r2.headers.get('location'), valueOf(cookieOf(r1, 'syncgate_oidc_login')));
    assert.equal(res.status, 400);
    assert.match(res.body.reason, /expired/);
  } finally { await s2.stop(); }
});

test('code flow: return_to redirects with the session cookie; other origins are refused', async () => {
  const to = 'http://app.example/after-login?x=1';
  const { res } = await login('db', `?return_to=${encodeURIComponent(to)}`);
  assert.equal(res.status, 302);
  assert.equal(res.headers.get('location'), to);
  assert.doesNotMatch(res.headers.get('location'), /code=|state=|token/);
  const session = valueOf(cookieOf(res.r, 'SyncGatewaySession'));
  const me = await req('GET', `${s.public}/db/_session`, undefined, { cookie: session });
  assert.equal(me.body.userCtx.name, user);
  for (const bad of ['http://evil.example/', 'https://app.example/', 'javascript:alert(1)', '/relative']) {
    const r = await req('GET', `${s.public}/db/_oidc?return_to=${encodeURIComponent(bad)}`);
    assert.equal(r.status, 400, bad);
    assert.equal(r.body.error, 'bad_request');
  }
});

test('code flow: _oidc_challenge answers 401 with the login URL', async () => {
  const r = await fetch(`${s.public}/db/_oidc_challenge`, { redirect: 'manual' });
  assert.equal(r.status, 401);
  const m = r.headers.get('www-authenticate').match(/^OIDC login="(.+)"$/);
  assert.ok(m, r.headers.get('www-authenticate'));
  const url = new URL(m[1]);
  assert.equal(url.origin + url.pathname, `${idp.issuer.url}/authorize`);
  assert.equal(url.searchParams.get('code_challenge_method'), 'S256');
  assert.ok(cookieOf(r, 'syncgate_oidc_login'));
  // and the login completes from there
  const r2 = await fetch(url, { redirect: 'manual' });
  const res = await callback(r2.headers.get('location'), valueOf(cookieOf(r, 'syncgate_oidc_login')));
  assert.equal(res.status, 200);
});

test('code flow: provider errors, nonce, audience and azp failures are 401 naming them', async () => {
  // the user refuses consent at the provider
  const st = await start();
  const denied = new URL(st.callback);
  denied.searchParams.delete('code');
  denied.searchParams.set('error', 'access_denied');
  denied.searchParams.set('error_description', 'The user said no');
  const d = await callback(denied, st.cookie);
  assert.equal(d.status, 401);
  assert.match(d.body.reason, /access_denied/);
  assert.doesNotMatch(d.body.reason, /said no/, 'the provider text goes to the log, not the answer');

  const cases = [
    ['nonce mismatch', (p) => { p.nonce = 'not-the-login-nonce'; }, /nonce/i],
    ['nonce missing', (p) => { delete p.nonce; }, /nonce/i],
    ['wrong aud', (p) => { p.aud = 'someone-else'; }, /audience|aud/],
    ['several audiences without azp', (p) => { p.aud = ['app', 'other']; }, /azp|authorized party/i],
    ['azp of another client', (p) => { p.aud = ['app', 'other']; p.azp = 'other'; }, /azp|authorized party/i],
    ['expired', (p) => { p.exp = Math.floor(Date.now() / 1000) - 3600; }, /expired/],
  ];
  for (const [what, edit, needle] of cases) {
    const off = onIdToken(idp, edit);
    try {
      const { res } = await login();
      assert.equal(res.status, 401, `${what}: ${JSON.stringify(res.body)}`);
      assert.match(res.body.reason, needle, what);
      assert.equal(cookieOf(res.r, 'SyncGatewaySession'), undefined, what);
    } finally { off(); }
  }
  // several audiences with azp = client_id is fine
  const off = onIdToken(idp, (p) => { p.aud = ['app', 'other']; p.azp = 'app'; });
  try { assert.equal((await login()).res.status, 200); } finally { off(); }

  // the provider refuses the code (invalid_grant)
  const h = (resp) => { resp.statusCode = 400; resp.body = { error: 'invalid_grant', error_description: 'code expired' }; };
  idp.service.once('beforeResponse', h);
  const g = (await login()).res;
  assert.equal(g.status, 401);
  assert.match(g.body.reason, /invalid_grant/);
});

test('code flow: token endpoint down or failing is a 502', async () => {
  const { res } = await login('down');
  assert.equal(res.status, 502, JSON.stringify(res.body));
  assert.equal(res.body.error, 'bad_gateway');
  assert.match(res.body.reason, /cannot reach the token endpoint/);
  idp.service.once('beforeResponse', (resp) => { resp.statusCode = 503; resp.body = { error: 'temporarily_unavailable' }; });
  const r = (await login()).res;
  assert.equal(r.status, 502);
  assert.match(r.body.reason, /HTTP 503/);
});

test('code flow: client_secret_basic from validation_key with env expansion', async () => {
  seen.token.length = 0;
  const { res } = await login('secret');
  assert.equal(res.status, 200, JSON.stringify(res.body));
  const t = seen.token.find((x) => x.basic);
  assert.equal(t.authorization, 'Basic ' + Buffer.from('app:sh-secret-value').toString('base64'));
  assert.equal(t.body.client_secret, undefined);
});

test('code flow: disable_session, include_access, register off, disabled user', async () => {
  const ns = (await login('nosess')).res;
  assert.equal(ns.status, 200);
  assert.equal(ns.body.session_id, undefined);
  assert.equal(cookieOf(ns.r, 'SyncGatewaySession'), undefined);
  assert.equal(ns.body.name, user);

  const ac = (await login('access')).res;
  assert.equal(ac.status, 200);
  assert.equal(ac.body.access_token.split('.').length, 3);
  assert.equal(ac.body.token_type.toLowerCase(), 'bearer');
  assert.equal(typeof ac.body.expires_in, 'number');
  assert.match(ac.body.session_id, /^[0-9a-f]{40}$/);

  const nr = (await login('noreg')).res;
  assert.equal(nr.status, 401);
  assert.match(nr.body.reason, /unknown user/);

  // a disabled user is refused before anything is updated
  assert.equal((await req('PUT', `${s.admin}/access/_user/${user}`, { disabled: true })).status, 200);
  const before = (await req('GET', `${s.admin}/access/_user/${user}`)).body;
  const off = onIdToken(idp, (p) => { p.email = 'changed@example.com'; });
  try {
    const dis = (await login('access')).res;
    assert.equal(dis.status, 401);
    assert.match(dis.body.reason, /disabled/);
  } finally { off(); }
  const afterU = (await req('GET', `${s.admin}/access/_user/${user}`)).body;
  assert.deepEqual(afterU, before, 'nothing was updated');

  // a database without the code flow for its provider, and unknown providers
  const im = await req('GET', `${s.public}/implicit/_oidc`);
  assert.equal(im.status, 400);
  assert.match(im.body.reason, /callback_url/);
  const unk = await req('GET', `${s.public}/db/_oidc?provider=fred`);
  assert.equal(unk.status, 400);
  assert.match(unk.body.reason, /not configured/);
  assert.equal((await req('POST', `${s.public}/db/_oidc`)).status, 405);
});

test('refresh: rotation returned, JSON/form/GET bodies, new session; without rotation', async () => {
  const first = (await login()).res;
  assert.equal(first.status, 200);
  const rt = first.body.refresh_token;
  seen.token.length = 0;
  // JSON body; the mock provider rotates refresh tokens
  const r1 = await req('POST', `${s.public}/db/_oidc_refresh`, { refresh_token: rt });
  assert.equal(r1.status, 200, JSON.stringify(r1.body));
  assert.equal(r1.headers.get('cache-control'), 'no-store');
  assert.equal(seen.token.at(-1).body.grant_type, 'refresh_token');
  assert.equal(seen.token.at(-1).body.refresh_token, rt);
  assert.ok(r1.body.refresh_token && r1.body.refresh_token !== rt, 'the rotated token is returned');
  assert.match(r1.body.session_id, /^[0-9a-f]{40}$/);
  assert.notEqual(r1.body.session_id, first.body.session_id);
  assert.equal(r1.body.name, user);
  const cookie = `SyncGatewaySession=${r1.body.session_id}`;
  assert.equal((await req('GET', `${s.public}/db/`, undefined, { cookie })).status, 200);
  // form body
  const form = await fetch(`${s.public}/db/_oidc_refresh`, {
    method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ refresh_token: r1.body.refresh_token, provider: 'idp' }),
  });
  assert.equal(form.status, 200);
  const fb = await form.json();
  // without rotation: the provider returns no new refresh token, and none is invented
  idp.service.once('beforeResponse', (resp) => { delete resp.body.refresh_token; });
  const r2 = await req('GET', `${s.public}/db/_oidc_refresh?refresh_token=${encodeURIComponent(fb.refresh_token)}`);
  assert.equal(r2.status, 200);
  assert.equal(r2.body.refresh_token, undefined);
  assert.ok(r2.body.id_token);
  // refused refresh token
  idp.service.once('beforeResponse', (resp) => { resp.statusCode = 400; resp.body = { error: 'invalid_grant' }; });
  const r3 = await req('POST', `${s.public}/db/_oidc_refresh`, { refresh_token: 'revoked' });
  assert.equal(r3.status, 401);
  assert.match(r3.body.reason, /invalid_grant/);
  const r4 = await req('POST', `${s.public}/db/_oidc_refresh`, {});
  assert.equal(r4.status, 400);
  assert.match(r4.body.reason, /Refresh token must be present/);
  const r5 = await req('POST', `${s.public}/db/_oidc_refresh`, { refresh_token: 42 });
  assert.equal(r5.status, 400);
  assert.doesNotMatch(r5.body.reason, /42/);
});

test('no token, code, state, nonce or verifier in the server log at trace level', async () => {
  seen.token.length = 0;
  const { authorize, callback: cb, res } = await login();
  assert.equal(res.status, 200);
  const r = await req('POST', `${s.public}/db/_oidc_refresh`, { refresh_token: res.body.refresh_token });
  assert.equal(r.status, 200);
  await new Promise((x) => setTimeout(x, 200));
  log = s.logText();
  assert.match(log, /TRACE|DEBUG/i, 'the log is at trace level');
  const secrets = {
    state: authorize.searchParams.get('state'),
    nonce: authorize.searchParams.get('nonce'),
    code_challenge: authorize.searchParams.get('code_challenge'),
    code: cb.searchParams.get('code'),
    verifier: seen.token[0].body.code_verifier,
    id_token: res.body.id_token,
    id_token_signature: res.body.id_token.split('.')[2],
    refresh_token: res.body.refresh_token,
    refreshed_id_token: r.body.id_token.split('.')[2],
    new_refresh_token: r.body.refresh_token,
    session: res.body.session_id,
    client_secret: 'sh-secret-value',
  };
  for (const [what, v] of Object.entries(secrets)) {
    assert.ok(v && v.length > 8, what);
    assert.ok(!log.includes(v), `${what} appears in the log`);
  }
});
