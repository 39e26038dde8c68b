// Bearer tokens against the real binary: a real OpenID provider (oauth2-mock-server on a
// loopback port) and static-key local_jwt providers with tokens minted by jose.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import { createPublicKey } from 'node:crypto';
import { OAuth2Server } from 'oauth2-mock-server';
import { SignJWT, generateKeyPair, exportJWK, exportSPKI } from 'jose';
import { startServer, req, basic } from '../lib/server.mjs';
import { localDb, remoteDb } from '../lib/pouch.mjs';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const now = () => Math.floor(Date.now() / 1000);
const bearer = (t) => ({ authorization: `Bearer ${t}` });
const b64 = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');

/** A free loopback port (nothing listens on it when this returns). */
async function freePort() {
  const srv = createServer();
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  const { port } = srv.address();
  await new Promise((r) => srv.close(r));
  return port;
}

async function startIdp(port = 0) {
  const idp = new OAuth2Server();
  if (!idp.issuer.keys.get('k1')) await idp.issuer.keys.generate('RS256', { kid: 'k1' });
  await idp.start(port, '127.0.0.1');
  // the loopback address itself, not "localhost" (which may resolve to ::1 first)
  idp.issuer.url = `http://127.0.0.1:${idp.address().port}`;
  return idp;
}

/** An ID token from the provider; `edit(payload, header)` shapes the claims. */
function idToken(idp, edit = () => {}, opts = {}) {
  return idp.issuer.buildToken({
    ...opts,
    scopesOrTransform: (header, payload) => {
      payload.sub = 'alice';
      payload.aud = 'app';
      payload.email = 'alice@example.com';
      edit(payload, header);
    },
  });
}

/** SG's default user prefix for an issuer URL: escaped host and path. */
function prefixFor(issuer) {
  const u = new URL(issuer);
  const hostPath = u.host + (issuer.endsWith('/') || u.pathname !== '/' ? u.pathname : '');
  return encodeURIComponent(hostPath).replace(/%20/g, '+').replace(/[!'()*]/g, (c) => '%' + c.charCodeAt(0).toString(16).toUpperCase());
}

async function expect401(s, token, needle, path = '/db/') {
  const r = await req('GET', `${s.public}${path}`, undefined, bearer(token));
  assert.equal(r.status, 401, `${needle}: ${JSON.stringify(r.body)}`);
  assert.equal(r.body.error, 'unauthorized');
  assert.match(r.body.reason, needle);
  assert.ok(!r.body.reason.includes(token), 'the reason never echoes the token');
}

test('OpenID Connect: register, replicate, session, every rejection, key rotation', async () => {
  const idp = await startIdp();
  const issuer = idp.issuer.url;
  const s = await startServer((c) => {
    c.databases.db = {
      oidc: { providers: { idp: { issuer, client_id: 'app', register: true,
        roles_claim: 'realm_access.roles', channels_claim: 'channels' } } },
    };
    c.databases.noreg = {
      oidc: { providers: { idp: { issuer, client_id: 'app' } } },
    };
  });
  try {
    const name = `${prefixFor(issuer)}_alice`;
    const firstFetch = Date.now();
    const t = await idToken(idp, (p) => { p.channels = ['c1']; p.realm_access = { roles: ['reader'] }; });

    // accepted and registered
    let r = await req('GET', `${s.public}/db/_session`, undefined, bearer(t));
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.equal(r.body.userCtx.name, name);
    assert.ok('c1' in r.body.userCtx.channels);
    assert.deepEqual(r.body.userCtx.roles, ['reader']);
    r = await req('GET', `${s.admin}/db/_user/${encodeURIComponent(name)}`);
    assert.equal(r.status, 200, 'registered user visible on the admin port');
    assert.deepEqual(r.body.jwt_channels, ['c1']);
    assert.deepEqual(r.body.jwt_roles, ['reader']);
    assert.equal(r.body.jwt_issuer, issuer);
    assert.equal(r.body.email, 'alice@example.com');

    // a PouchDB replication with the Bearer header sees only its channel
    await req('PUT', `${s.admin}/db/in1`, { channels: ['c1'], v: 1 });
    await req('PUT', `${s.admin}/db/out1`, { channels: ['c2'], v: 2 });
    const local = localDb();
    const pull = await local.replicate.from(remoteDb(`${s.public}/db`, bearer(t)));
    assert.equal(pull.docs_written, 1);
    assert.equal((await local.get('in1')).v, 1);
    await local.put({ _id: 'mine', channels: ['c1'] });
    const push = await local.replicate.to(remoteDb(`${s.public}/db`, bearer(t)));
    assert.equal(push.docs_written, 1);
    assert.equal((await req('GET', `${s.admin}/db/mine`)).status, 200);

    // POST /_session with the Bearer header gives a working cookie
    r = await req('POST', `${s.public}/db/_session`, {}, bearer(t));
    assert.equal(r.status, 200, JSON.stringify(r.body));
    const cookie = r.headers.get('set-cookie').split(';')[0];
    assert.match(cookie, /^SyncGatewaySession=[0-9a-f]{40}$/);
    r = await req('GET', `${s.public}/db/_session`, undefined, { cookie });
    assert.equal(r.body.userCtx.name, name);

    // every rejection is a 401 naming the failed check
    const [h, p] = t.split('.');
    const forged = `${h}.${b64({ ...JSON.parse(Buffer.from(p, 'base64url')), sub: 'mallory' })}.${t.split('.')[2]}`;
    await expect401(s, forged, /signature/);
    await expect401(s, `${b64({ alg: 'none', typ: 'JWT' })}.${p}.`, /none/);
    const hs = await new SignJWT({ sub: 'alice', aud: 'app', iss: issuer })
      .setProtectedHeader({ alg: 'HS256', kid: 'k1' }).setExpirationTime('1h')
      .sign(new TextEncoder().encode('app-client-secret-which-is-long-enough'));
    await expect401(s, hs, /HS256/);
    await expect401(s, await idToken(idp, (pl) => { pl.iss = 'https://evil.example'; }), /issuer/);
    await expect401(s, await idToken(idp, (pl) => { pl.aud = 'other-app'; }), /audience/);
    await expect401(s, await idToken(idp, () => {}, { expiresIn: -120 }), /expired/);
    await expect401(s, await idToken(idp, (pl) => { pl.nbf = now() + 600; }), /nbf/);
    await expect401(s, await idToken(idp, (pl) => { delete pl.sub; }), /sub/);
    await expect401(s, await idToken(idp, (pl) => { pl.sub = 'bob'; }), /unknown user/, '/noreg/');
    await expect401(s, 'not-a-jwt', /malformed/);

    // a disabled user is refused on the Bearer path too
    await idToken(idp, (pl) => { pl.sub = 'carol'; }).then(async (tc) => {
      assert.equal((await req('GET', `${s.public}/db/`, undefined, bearer(tc))).status, 200);
      const carol = `${prefixFor(issuer)}_carol`;
      r = await req('PUT', `${s.admin}/db/_user/${encodeURIComponent(carol)}`, { disabled: true });
      assert.ok(r.status < 300, JSON.stringify(r.body));
      await expect401(s, tc, /disabled/);
    });

    // key rotation at the provider: a token signed with a new kid is refused while the
    // refetch interval (10 s since the last JWKS fetch) runs, then accepted after one refetch
    await idp.issuer.keys.generate('RS256', { kid: 'k2' });
    const t2 = await idToken(idp, () => {}, { kid: 'k2' });
    assert.equal(JSON.parse(Buffer.from(t2.split('.')[0], 'base64url')).kid, 'k2');
    if (Date.now() - firstFetch < 8000) await expect401(s, t2, /kid/);
    let accepted = null;
    for (let i = 0; i < 30 && !accepted; i++) {
      r = await req('GET', `${s.public}/db/_session`, undefined, bearer(t2));
      if (r.status === 200) accepted = Date.now();
      else await sleep(500);
    }
    assert.ok(accepted, 'the rotated key is accepted without a restart');
    assert.ok(accepted - firstFetch >= 9_900, 'not before the 10 s refetch interval');
    assert.equal(r.body.userCtx.name, name);
  } finally {
    await s.stop();
    await idp.stop();
  }
});

test('OpenID provider down at startup, then up: Basic users served meanwhile', async () => {
  const port = await freePort();
  const issuer = `http://127.0.0.1:${port}`;
  const s = await startServer((c) => {
    c.databases.db = {
      users: { demo: { password: 'demo-password', admin_channels: ['*'] } },
      oidc: { providers: { idp: { issuer, client_id: 'app', register: true } } },
    };
  });
  let idp;
  try {
    // a token minted by a provider that is not running yet at that address
    const minter = new OAuth2Server();
    await minter.issuer.keys.generate('RS256', { kid: 'k1' });
    minter.issuer.url = issuer;
    const t = await idToken(minter);
    await expect401(s, t, /unavailable/);
    const r = await req('GET', `${s.public}/db/`, undefined, { authorization: basic('demo', 'demo-password') });
    assert.equal(r.status, 200, 'Basic users are served while the provider is down');
    // the provider comes up with the same key at that address
    idp = new OAuth2Server();
    await idp.issuer.keys.add(minter.issuer.keys.toJSON(true)[0]);
    idp.issuer.url = issuer;
    await idp.start(port, '127.0.0.1');
    let status = 0;
    for (let i = 0; i < 20 && status !== 200; i++) {
      await sleep(250);
      status = (await req('GET', `${s.public}/db/_session`, undefined, bearer(t))).status;
    }
    assert.equal(status, 200, 'recovers once the provider is up');
  } finally {
    await s.stop();
    if (idp) await idp.stop();
  }
});

test('local_jwt: ES256, ES512, RS256, PS256, EdDSA, HS256 and PEM keys; wrong algorithm; nested roles', async () => {
  const pairs = {};
  for (const alg of ['ES256', 'ES512', 'RS256', 'PS256', 'EdDSA']) {
    pairs[alg] = await generateKeyPair(alg, { extractable: true });
  }
  const secret = 'hmac secret from the environment, 32+ bytes';
  process.env.SG_TEST_JWT_HMAC = secret;
  const jwk = async (alg, kid) => ({ ...(await exportJWK(pairs[alg].publicKey)), kid, alg, use: 'sig' });
  const pkcs1 = createPublicKey(await exportSPKI(pairs.RS256.publicKey)).export({ type: 'pkcs1', format: 'pem' });
  const provider = (iss, extra) => ({ issuer: iss, client_id: 'app', register: true, user_prefix: iss,
    roles_claim: '_couchdb.roles', channels_claim: 'channels', ...extra });
  const localJwt = {
    es256: provider('es256', { algorithms: ['ES256'], keys: [await jwk('ES256', 'e1')] }),
    es512: provider('es512', { algorithms: ['ES512'], pem: [await exportSPKI(pairs.ES512.publicKey)] }),
    rs256: provider('rs256', { algorithms: ['RS256'], pem: [pkcs1] }),
    ps256: provider('ps256', { algorithms: ['PS256'], keys: [await jwk('PS256', 'p1')] }),
    eddsa: provider('eddsa', { algorithms: ['EdDSA'], pem: [await exportSPKI(pairs.EdDSA.publicKey)] }),
    hs256: provider('hs256', { algorithms: ['HS256'], hmac_secret: '${SG_TEST_JWT_HMAC}', required_claims: ['email'] }),
  };
  const s = await startServer((c) => { c.databases.db = { local_jwt: localJwt }; });
  try {
    const mint = (alg, iss, claims = {}, key = alg === 'HS256' ? new TextEncoder().encode(secret) : pairs[alg].privateKey, kid) =>
      new SignJWT({ sub: 'bilbo', aud: 'app', email: 'b@shire.example', _couchdb: { roles: ['hobbit'] }, channels: ['shire'], ...claims })
        .setProtectedHeader({ alg, ...(kid ? { kid } : {}) }).setIssuer(iss).setIssuedAt().setExpirationTime('10m')
        .sign(key);
    for (const [alg, iss, kid] of [['ES256', 'es256', 'e1'], ['ES512', 'es512'], ['RS256', 'rs256'], ['PS256', 'ps256', 'p1'], ['EdDSA', 'eddsa'], ['HS256', 'hs256']]) {
      const t = await mint(alg, iss, {}, undefined, kid);
      const r = await req('GET', `${s.public}/db/_session`, undefined, bearer(t));
      assert.equal(r.status, 200, `${alg}: ${JSON.stringify(r.body)}`);
      assert.equal(r.body.userCtx.name, `${iss}_bilbo`);
      assert.deepEqual(r.body.userCtx.roles, ['hobbit'], `${alg}: nested _couchdb.roles claim mapped to roles`);
      const u = await req('GET', `${s.admin}/db/_user/${iss}_bilbo`);
      assert.deepEqual(u.body.jwt_roles, ['hobbit']);
      assert.deepEqual(u.body.roles, ['hobbit']);
      assert.ok(u.body.all_channels.includes('shire'));
    }
    // wrong algorithm for the provider: a valid RS256 signature presented as PS256's issuer
    await expect401(s, await mint('RS256', 'ps256', {}, pairs.RS256.privateKey), /RS256/);
    // HS256 where the provider only takes ES256, keyed with the public JWK text (key confusion)
    const pubText = new TextEncoder().encode(JSON.stringify(await jwk('ES256', 'e1')));
    await expect401(s, await mint('HS256', 'es256', {}, pubText), /HS256/);
    // a required claim is missing
    await expect401(s, await mint('HS256', 'hs256', { email: undefined }), /email/);
    // a wrong HMAC secret
    await expect401(s, await mint('HS256', 'hs256', {}, new TextEncoder().encode('not the secret at all, 32 bytes!!')), /signature/);
  } finally {
    await s.stop();
  }
  // the hs256 provider is removed from the config: its users lose their JWT grants, the
  // others keep theirs
  const config = structuredClone(s.config);
  delete config.databases.db.local_jwt.hs256;
  const s2 = await startServer(undefined, { dir: s.dir, config });
  try {
    const gone = await req('GET', `${s2.admin}/db/_user/hs256_bilbo`);
    assert.equal(gone.status, 200);
    assert.equal(gone.body.jwt_issuer, undefined);
    assert.ok(!(gone.body.roles ?? []).includes('hobbit'), JSON.stringify(gone.body));
    assert.ok(!gone.body.all_channels.includes('shire'));
    const kept = await req('GET', `${s2.admin}/db/_user/es256_bilbo`);
    assert.deepEqual(kept.body.jwt_roles, ['hobbit']);
  } finally {
    await s2.stop();
    delete process.env.SG_TEST_JWT_HMAC;
  }
});

test('a bad local_jwt block stops the binary with a config error', async () => {
  await assert.rejects(
    startServer((c) => {
      c.databases.db = { local_jwt: { p: { issuer: 'i', client_id: '', algorithms: ['RS999'], hmac_secret: 'x' } } };
    }),
    /exited 2[\s\S]*algorithms\[0\]: unknown algorithm "RS999"/,
  );
});
