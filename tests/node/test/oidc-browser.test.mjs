// End to end in a real headless Chromium: the browser opens /{db}/_oidc, follows the OpenID
// provider's login (oauth2-mock-server), lands on the callback, is sent back to the app page
// (return_to) with the session cookie, and that page live-syncs with PouchDB (the browser
// edition, IndexedDB) using only the cookie.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, normalize } from 'node:path';
import { OAuth2Server } from 'oauth2-mock-server';
import { startServer, req } from '../lib/server.mjs';
import { launchBrowser } from '../lib/browser.mjs';

const require = createRequire(import.meta.url);
const pkgDir = (name) => dirname(require.resolve(`${name}/package.json`));

/** A free loopback port (closed again at once; the server binds it next). */
async function freePort() {
  const s = net.createServer();
  await new Promise((res) => s.listen(0, '127.0.0.1', res));
  const { port } = s.address();
  await new Promise((res) => s.close(res));
  return port;
}

/** A CommonJS module served as an ES module (default export = module.exports). */
function cjsAsEsm(file) {
  return `const module = { exports: {} }; const exports = module.exports; const define = undefined;
(function () {\n${readFileSync(file, 'utf8')}\n}).call(globalThis);
export default module.exports;\n`;
}

const APP_PAGE = (syncgate) => `<!doctype html><html><head><title>app</title>
<script type="importmap">${JSON.stringify({ imports: {
  pouchdb: '/m/pouchdb.js', 'spark-md5': '/m/spark-md5.js', vuvuzela: '/m/vuvuzela.js',
  events: '/m/events.js', uuid: '/m/uuid/index.js',
} })}</script></head><body><pre id="out"></pre>
<script type="module">
  import PouchDB from 'pouchdb';
  window.seen = [];
  window.errors = [];
  const local = new PouchDB('app-local');
  // the session cookie is the only credential: same site, so the browser attaches it
  const remote = new PouchDB(${JSON.stringify(`${syncgate}/db`)}, {
    skip_setup: true,
    fetch: (url, opts) => { opts.credentials = 'include'; return PouchDB.fetch(url, opts); },
  });
  window.session = await (await fetch(${JSON.stringify(`${syncgate}/db/_session`)}, { credentials: 'include' })).json();
  local.replicate.from(remote, { live: true, retry: false })
    .on('change', (info) => { for (const d of info.docs) window.seen.push(d._id); })
    .on('error', (e) => window.errors.push(String(e && (e.message || e.reason || e.status))))
    .on('denied', (e) => window.errors.push('denied ' + JSON.stringify(e)));
  window.ready = true;
</script></body></html>`;

let idp; let server; let app; let chromium; let appOrigin;

before(async () => {
  idp = new OAuth2Server();
  await idp.issuer.keys.generate('RS256', { kid: 'k1' });
  await idp.start(0, '127.0.0.1');
  idp.issuer.url = `http://127.0.0.1:${idp.address().port}`;

  const modules = {
    '/m/pouchdb.js': () => readFileSync(join(pkgDir('pouchdb-browser'), 'lib/index.es.js'), 'utf8'),
    '/m/spark-md5.js': () => cjsAsEsm(require.resolve('spark-md5')),
    '/m/vuvuzela.js': () => cjsAsEsm(require.resolve('vuvuzela')),
    '/m/events.js': () => cjsAsEsm(require.resolve('events/events.js')),
  };
  const uuidDir = join(pkgDir('uuid'), 'dist/esm-browser');
  const port = await freePort();
  const syncgate = `http://127.0.0.1:${port}`;
  app = http.createServer((rq, res) => {
    const path = new URL(rq.url, 'http://x').pathname;
    const js = (body) => { res.writeHead(200, { 'content-type': 'text/javascript' }); res.end(body); };
    if (path === '/app') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
      return res.end(APP_PAGE(syncgate));
    }
    if (modules[path]) return js(modules[path]());
    if (path.startsWith('/m/uuid/')) {
      const file = normalize(join(uuidDir, path.slice('/m/uuid/'.length)));
      if (file.startsWith(uuidDir)) return js(readFileSync(file, 'utf8'));
    }
    res.writeHead(404); res.end();
  });
  await new Promise((res) => app.listen(0, '127.0.0.1', res));
  appOrigin = `http://127.0.0.1:${app.address().port}`;

  server = await startServer((c) => {
    c.interface = `127.0.0.1:${port}`;
    c.databases.db = {
      cors: { origin: [appOrigin] },
      oidc: {
        return_to_origins: [appOrigin],
        providers: { idp: { issuer: idp.issuer.url, client_id: 'app', register: true, user_prefix: 'idp',
          callback_url: `${syncgate}/db/_oidc_callback` } },
      },
    };
  });
  // the user gets a channel from the admin; documents in it and one outside
  assert.equal((await req('PUT', `${server.admin}/db/_user/idp_johndoe`, { password: 'pw-unused-1', admin_channels: ['c1'] })).status, 201);
  assert.equal((await req('PUT', `${server.admin}/db/before`, { channels: ['c1'] })).status, 201);
  assert.equal((await req('PUT', `${server.admin}/db/secret`, { channels: ['c2'] })).status, 201);
  chromium = await launchBrowser();
});

after(async () => {
  await chromium?.close();
  app?.close();
  await server?.stop();
  await idp?.stop();
});

test('browser: _oidc login through the provider, back to the app, PouchDB live sync with the cookie', async () => {
  const page = await chromium.newPage();
  const hops = [];
  page.on('response', (r) => hops.push(`${r.status()} ${new URL(r.url()).pathname}`));
  // 1. the app sends the browser to syncgate's _oidc; redirects: provider, callback, app
  const start = `${server.public}/db/_oidc?return_to=${encodeURIComponent(`${appOrigin}/app`)}`;
  const resp = await page.goto(start, { waitUntil: 'load' });
  assert.equal(resp.status(), 200);
  assert.equal(page.url(), `${appOrigin}/app`, 'landed on the app page, no code or token in the URL');
  assert.deepEqual(hops.slice(0, 4), ['302 /db/_oidc', '302 /authorize', '302 /db/_oidc_callback', '200 /app']);
  // the session cookie: HttpOnly, for the database's path only; the login cookie is gone
  const cookies = await page.cookies(`${server.public}/db/`);
  const session = cookies.find((c) => c.name === 'SyncGatewaySession');
  assert.ok(session, JSON.stringify(cookies));
  assert.equal(session.httpOnly, true);
  assert.equal(session.path, '/db');
  assert.equal(cookies.find((c) => c.name === 'syncgate_oidc_login'), undefined);
  assert.equal(await page.evaluate(() => document.cookie), '', 'the app script cannot read it');
  // 2. the page knows who it is and pulls the user's channel
  await page.waitForFunction(() => window.ready === true);
  const me = await page.evaluate(() => window.session);
  assert.equal(me.userCtx.name, 'idp_johndoe');
  await page.waitForFunction(() => window.seen.includes('before'));
  // 3. live: a document written now reaches the page through the open feed
  assert.equal((await req('PUT', `${server.admin}/db/live-1`, { channels: ['c1'], n: 1 })).status, 201);
  await page.waitForFunction(() => window.seen.includes('live-1'));
  const state = await page.evaluate(() => ({ seen: window.seen, errors: window.errors }));
  assert.deepEqual(state.errors, []);
  assert.ok(!state.seen.includes('secret'), 'documents outside the user\'s channels stay out');
  await page.close();
});
