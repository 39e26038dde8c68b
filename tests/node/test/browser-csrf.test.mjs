// A page of another origin cannot write into a user's database with the user's cookie.
//
// Real Chromium: the user logs in on the syncgate origin (cookie session), then opens a page
// served from another loopback port — same site, other origin, so the browser attaches the
// SameSite=Lax cookie — whose script sends the requests a browser allows without a CORS
// preflight (`no-cors` POSTs with text/plain or untyped bodies, plain HTML form posts) and a
// PUT. The admin API then shows that nothing was written, and the auth-failure metric shows
// that the requests did carry the session (they were refused for their Content-Type, not for
// missing credentials).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { startServer, req } from '../lib/server.mjs';
import { launchBrowser } from '../lib/browser.mjs';

let server;
let chromium;
let attacker;

const ATTACK_PAGE = `<!doctype html><html><head><title>another site</title></head><body>
<iframe name="sink" id="sink"></iframe>
<script>
  // no-cors requests: the browser sends them without asking the server (no preflight)
  window.attack = async (base) => {
    const results = {};
    const send = async (name, url, init) => {
      try {
        const r = await fetch(url, { credentials: 'include', ...init });
        results[name] = 'sent:' + r.type;
      } catch (e) {
        results[name] = 'refused:' + e.name;
      }
    };
    const textPlain = { 'Content-Type': 'text/plain' };
    await send('post-doc-text', base + '/db/', { method: 'POST', mode: 'no-cors', headers: textPlain, body: JSON.stringify({ _id: 'csrf-1', evil: true }) });
    await send('bulk-docs-text', base + '/db/_bulk_docs', { method: 'POST', mode: 'no-cors', headers: textPlain, body: JSON.stringify({ docs: [{ _id: 'csrf-2', evil: true }] }) });
    // a Blob without a type: the request has no Content-Type at all
    await send('post-doc-untyped', base + '/db/', { method: 'POST', mode: 'no-cors', body: new Blob([JSON.stringify({ _id: 'csrf-3', evil: true })]) });
    await send('bulk-docs-untyped', base + '/db/_bulk_docs', { method: 'POST', mode: 'no-cors', body: new Blob([JSON.stringify({ docs: [{ _id: 'csrf-4' }] })]) });
    await send('bulk-docs-new-edits', base + '/db/_bulk_docs', { method: 'POST', mode: 'no-cors', headers: textPlain, body: JSON.stringify({ new_edits: false, docs: [{ _id: 'csrf-5', _rev: '1-abc' }] }) });
    await send('local-text', base + '/db/_local/csrf-6', { method: 'POST', mode: 'no-cors', headers: textPlain, body: '{}' });
    await send('session-text', base + '/db/_session', { method: 'POST', mode: 'no-cors', headers: textPlain, body: '{}' });
    // PUT is not allowed in no-cors mode, and in cors mode it needs a preflight
    await send('put-doc-no-cors', base + '/db/csrf-7', { method: 'PUT', mode: 'no-cors', headers: textPlain, body: JSON.stringify({ evil: true }) });
    await send('put-doc-cors', base + '/db/csrf-8', { method: 'PUT', mode: 'cors', headers: textPlain, body: JSON.stringify({ evil: true }) });
    // control: a bodyless POST that any authenticated caller may send (201 with the cookie)
    await send('ensure-full-commit', base + '/db/_ensure_full_commit', { method: 'POST', mode: 'no-cors' });
    return results;
  };
  // a plain HTML form: text/plain encoding can shape a JSON body ({"_id":"csrf-9","x":"="})
  window.formPost = (action, enctype, name, value) => new Promise((resolve) => {
    const sink = document.getElementById('sink');
    sink.onload = () => resolve('loaded');
    const f = document.createElement('form');
    f.method = 'POST'; f.action = action; f.enctype = enctype; f.target = 'sink';
    const i = document.createElement('input');
    i.type = 'hidden'; i.name = name; i.value = value;
    f.appendChild(i); document.body.appendChild(f); f.submit();
  });
</script></body></html>`;

/** A free loopback port (closed again at once; the server binds it next). */
async function freePort() {
  const s = net.createServer();
  await new Promise((res) => s.listen(0, '127.0.0.1', res));
  const { port } = s.address();
  await new Promise((res) => s.close(res));
  return port;
}

before(async () => {
  // Browsers send Origin on every POST, same-origin ones too, and a login from an Origin
  // is refused unless it is listed in LoginOrigin (as Sync Gateway): list syncgate's own
  // origin, so the user logs in from a page of the public port. Nothing else is CORS-enabled.
  const port = await freePort();
  server = await startServer((c) => {
    c.interface = `127.0.0.1:${port}`;
    c.CORS = { LoginOrigin: [`http://127.0.0.1:${port}`] };
    c.databases.db.users = { alice: { password: 'pw-alice-1', admin_channels: ['*'] } };
  });
  attacker = http.createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(ATTACK_PAGE);
  });
  await new Promise((res) => attacker.listen(0, '127.0.0.1', res));
  chromium = await launchBrowser();
});

after(async () => {
  await chromium?.close();
  attacker?.close();
  await server?.stop();
});

async function authFailures() {
  const text = await (await fetch(`${server.metrics}/metrics`)).text();
  return text.split('\n')
    .filter((l) => l.startsWith('syncgate_auth_failures') && !l.startsWith('#'))
    .reduce((n, l) => n + Number(l.split(' ').pop()), 0);
}

test('a page of another origin cannot write with the user\'s session cookie', async () => {
  const page = await chromium.newPage();
  // 1. log in on the syncgate origin: the browser keeps the session cookie
  await page.goto(`${server.public}/_ping`);
  const login = await page.evaluate(async () => {
    const r = await fetch('/db/_session', {
      method: 'POST', credentials: 'include',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ name: 'alice', password: 'pw-alice-1' }),
    });
    return { status: r.status, body: await r.json() };
  });
  assert.equal(login.status, 200, JSON.stringify(login.body));
  assert.equal(login.body.userCtx.name, 'alice');
  // Path=/db: the cookie belongs to the database's URLs, not to /_ping
  assert.equal((await page.cookies()).length, 0);
  const cookies = await page.cookies(`${server.public}/db/`);
  const session = cookies.find((c) => c.name === 'SyncGatewaySession');
  assert.ok(session, `no session cookie in ${JSON.stringify(cookies)}`);
  assert.equal(session.path, '/db');
  assert.equal(session.sameSite, 'Lax');
  assert.equal(session.httpOnly, true);
  assert.equal(session.secure, false);
  // the cookie alone authenticates writes from the syncgate origin itself
  const own = await page.evaluate(async () => {
    const r = await fetch('/db/own-doc', {
      method: 'PUT', credentials: 'include',
      headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ mine: true }),
    });
    return r.status;
  });
  assert.equal(own, 201);

  const before = (await req('GET', `${server.admin}/db/`)).body;
  const failuresBefore = await authFailures();
  const sessionsBefore = (await req('GET', `${server.admin}/db/_user/alice`)).body;

  // 2. another origin (another loopback port: same site, so the Lax cookie goes along)
  const origin = `http://127.0.0.1:${attacker.address().port}`;
  assert.notEqual(origin, server.public);
  await page.goto(`${origin}/`);
  assert.equal(await page.title(), 'another site');
  const results = await page.evaluate((base) => window.attack(base), server.public);
  // the no-cors POSTs really went out; the PUTs never could
  for (const name of ['post-doc-text', 'bulk-docs-text', 'post-doc-untyped', 'bulk-docs-untyped', 'bulk-docs-new-edits', 'local-text', 'session-text', 'ensure-full-commit']) {
    assert.equal(results[name], 'sent:opaque', `${name}: ${JSON.stringify(results)}`);
  }
  assert.match(results['put-doc-no-cors'], /^refused:/, JSON.stringify(results));
  assert.match(results['put-doc-cors'], /^refused:/, JSON.stringify(results));
  // HTML form posts
  await page.evaluate((base) => window.formPost(`${base}/db/`, 'text/plain', '{"_id":"csrf-9","x":"', '"}'), server.public);
  await page.evaluate((base) => window.formPost(`${base}/db/_bulk_docs`, 'text/plain', '{"docs":[{"_id":"csrf-10","x":"', '"}]}'), server.public);
  await page.evaluate((base) => window.formPost(`${base}/db/`, 'application/x-www-form-urlencoded', '_id', 'csrf-11'), server.public);

  // 3. nothing was written
  const afterInfo = (await req('GET', `${server.admin}/db/`)).body;
  assert.equal(afterInfo.update_seq, before.update_seq, 'a cross-site request wrote a change');
  assert.equal(afterInfo.doc_count, before.doc_count);
  for (let i = 1; i <= 11; i++) {
    assert.equal((await req('GET', `${server.admin}/db/csrf-${i}`)).status, 404, `csrf-${i} exists`);
  }
  assert.equal((await req('GET', `${server.admin}/db/_local/csrf-6`)).status, 404);
  assert.deepEqual((await req('GET', `${server.admin}/db/_user/alice`)).body, sessionsBefore);
  // and every request above was authenticated by the cookie: none counted as a refused login
  assert.equal(await authFailures(), failuresBefore, 'cross-site requests arrived without the session cookie');
  await page.close();
});
