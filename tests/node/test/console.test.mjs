// The admin console in a real headless Chromium (Debian chromium driven by puppeteer-core)
// against the real binary: every check goes through the page's forms and buttons, and is
// verified through the API (and, for sessions, through the public port).
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startServer, req, basic } from '../lib/server.mjs';
import { eventually } from '../lib/compare.mjs';
import { launchBrowser, browserMissing, BROWSER } from '../lib/browser.mjs';

const here = dirname(fileURLToPath(import.meta.url));
// screenshots of each view; a Firefox run (CONSOLE_BROWSER=firefox) keeps its own
const OUT = join(here, '../output/console', BROWSER === 'firefox' ? 'firefox' : '');
const missing = browserMissing();

const hex = (c) => c.repeat(32);
const R = {
  a: `1-${hex('a')}`, b: `2-${hex('b')}`, c: `3-${hex('c')}`,
  d: `2-${hex('d')}`, e: `2-${hex('e')}`, f: `3-${hex('f')}`,
};

/** JSON text without the whitespace outside strings. */
function minify(text) {
  let out = '';
  let inStr = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (inStr) {
      out += c;
      if (c === '\\') { out += text[++i]; } else if (c === '"') inStr = false;
    } else if (c === '"') { inStr = true; out += c; } else if (!/\s/.test(c)) out += c;
  }
  return out;
}

// no silent skip: without a browser this test fails, naming what is missing (scripts/test installs one)
if (missing) throw new Error(`the admin console test needs a browser: ${missing}`);

describe('admin console', () => {
  let s;
  let b;
  let page;
  const pageErrors = [];

  before(async () => {
    mkdirSync(OUT, { recursive: true });
    s = await startServer((c) => {
      c.databases.db.users = { demo: { password: 'demo-password-1', admin_channels: ['*'] } };
    });
    b = await launchBrowser();
    page = await b.browser.newPage();
    page.on('console', (m) => {
      // Chromium reports every 4xx answer as a console error; those are expected here
      if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) pageErrors.push(m.text());
    });
    page.on('pageerror', (e) => pageErrors.push(e.message));
    // the policy's own report, in both browsers
    await page.evaluateOnNewDocument(() => {
      window.__violations = [];
      document.addEventListener('securitypolicyviolation', (e) => {
        window.__violations.push(`${e.violatedDirective} blocked ${e.blockedURI}`);
      });
    });
    await page.goto(`${s.admin}/_console/`, { waitUntil: 'load' });
    await page.waitForSelector('html[data-ready="true"]');
  });

  after(async () => {
    await b?.close();
    await s?.stop();
  });

  const go = async (hash, selector) => {
    await page.evaluate((h) => { location.hash = h; }, hash);
    if (selector) await page.waitForSelector(selector);
  };
  const shot = async (name) => {
    // without the transient status toast of an earlier step
    await page.evaluate(() => {
      const st = document.getElementById('status');
      st.classList.remove('show');
      st.textContent = '';
    });
    await page.screenshot({ path: join(OUT, `${name}.png`), fullPage: true });
  };
  const text = (sel) => page.$eval(sel, (e) => e.textContent);
  const setValue = async (sel, value) => {
    await page.$eval(sel, (e) => { e.value = ''; });
    await page.type(sel, value);
  };
  const confirm = async (typed) => {
    await page.waitForSelector('dialog[open] #confirm-ok');
    if (typed !== undefined) {
      assert.equal(await page.$eval('#confirm-ok', (e) => e.disabled), true, 'confirm stays disabled until the name is typed');
      await page.type('#confirm-input', typed);
    }
    await page.click('#confirm-ok');
    await page.waitForSelector('dialog', { hidden: true });
  };

  test('served on the admin port only, with a policy that allows only its own files', async () => {
    const r = await fetch(`${s.admin}/_console/`);
    assert.equal(r.status, 200);
    assert.match(r.headers.get('content-type'), /^text\/html/);
    const csp = r.headers.get('content-security-policy');
    for (const d of ["default-src 'none'", "script-src 'self'", "style-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"]) {
      assert.ok(csp.includes(d), `${d} in ${csp}`);
    }
    assert.ok(!/unsafe|https?:|\*/.test(csp), csp);
    const js = await fetch(`${s.admin}/_console/views/documents.js`);
    assert.equal(js.status, 200);
    assert.match(js.headers.get('content-type'), /^text\/javascript/);
    assert.deepEqual((await req('GET', `${s.admin}/_console/nope.js`)).status, 404);
    for (const p of ['/_console/', '/_console/app.js', '/_metrics']) {
      const pub = await req('GET', `${s.public}${p}`);
      assert.equal(pub.status, 404, p);
      assert.deepEqual(pub.body, { error: 'not_found', reason: 'unknown URL' });
    }
    // every other admin response is sandboxed (an HTML attachment cannot act as the console)
    const api = await fetch(`${s.admin}/db/`);
    assert.match(api.headers.get('content-security-policy'), /^sandbox/);
    const m = await (await fetch(`${s.admin}/_metrics`)).text();
    assert.match(m, /syncgate_http_requests_total\{/);
  });

  test('databases: list, create with Enter, refuse a bad name with the API reason, delete after typing the name', async () => {
    await go('#/databases', '#db-table tr[data-db="db"]');
    const cells = await page.$$eval('#db-table tr[data-db="db"] td', (tds) => tds.map((t) => t.textContent));
    assert.equal(cells[0], 'db');
    assert.equal(cells[1], 'Online');
    assert.equal(cells[4], 'embedded');
    await page.focus('#new-db-name');
    await page.keyboard.type('extra');
    await page.keyboard.press('Enter');
    await page.waitForSelector('#db-table tr[data-db="extra"]');
    assert.equal((await req('GET', `${s.admin}/extra/`)).status, 200);
    await shot('databases');

    await setValue('#new-db-name', 'Bad Name');
    await page.keyboard.press('Enter');
    await page.waitForSelector('[data-slot="create"] .reason');
    const api = await req('PUT', `${s.admin}/Bad%20Name/`);
    assert.equal(api.status, 400);
    assert.equal(await text('[data-slot="create"] .reason'), api.body.reason);
    assert.equal(await page.evaluate(() => document.activeElement.id), 'new-db-name', 'focus returns to the form');

    await page.click('#db-table tr[data-db="extra"] button[data-action="delete-db"]');
    await page.waitForSelector('dialog[open]');
    assert.match(await text('#confirm-title'), /"extra"/);
    await confirm('extra');
    await page.waitForSelector('#db-table tr[data-db="extra"]', { hidden: true });
    assert.equal((await req('GET', `${s.admin}/extra/`)).status, 404);
  });

  test('users and roles: create through the forms, verified through the API; sources of channels; search', async () => {
    await go('#/db/db/roles', '#create-role');
    await setValue('#new-role-name', 'team');
    await setValue('#new-role-channels', 'green');
    await page.click('#create-role button[type=submit]');
    await page.waitForSelector('#roles-table tr[data-role="team"]');
    assert.deepEqual((await req('GET', `${s.admin}/db/_role/team`)).body.admin_channels, ['green']);

    await go('#/db/db/users', '#create-user');
    await setValue('#new-user-name', 'carol');
    await setValue('#new-user-password', 'pw-carol-123');
    await setValue('#new-user-email', 'carol@example.com');
    await setValue('#new-user-channels', 'red, blue');
    await setValue('#new-user-roles', 'team');
    await page.click('#create-user button[type=submit]');
    await page.waitForSelector('#users-table tr[data-user="carol"]');
    const u = (await req('GET', `${s.admin}/db/_user/carol`)).body;
    assert.equal(u.name, 'carol');
    assert.equal(u.email, 'carol@example.com');
    assert.deepEqual(u.admin_channels, ['blue', 'red']);
    assert.deepEqual(u.admin_roles, ['team']);
    assert.ok(u.all_channels.includes('green'), JSON.stringify(u));
    assert.equal(await page.$eval('#new-user-password', (e) => e.value), '', 'the password field is cleared');
    assert.equal((await req('GET', `${s.public}/db/`, undefined, { authorization: basic('carol', 'pw-carol-123') })).status, 200);
    await req('PUT', `${s.admin}/db/_user/erin`, { password: 'pw-erin-123', admin_channels: ['yellow'] });

    await page.reload({ waitUntil: 'load' });
    await page.waitForSelector('#users-table tr[data-user="erin"]');
    await setValue('#user-search', 'car');
    await page.waitForSelector('#users-table tr[data-user="erin"]', { hidden: true });
    assert.deepEqual(await page.$$eval('#users-table tbody tr', (rs) => rs.map((r) => r.dataset.user)), ['carol']);
    await setValue('#user-search', '');
    await shot('users');

    await go('#/db/db/users/carol', '#effective-channels');
    const src = await page.$$eval('#effective-channels tr[data-channel]', (rs) => Object.fromEntries(rs.map((r) =>
      [r.dataset.channel, [...r.querySelectorAll('[data-source]')].map((x) => x.dataset.source)])));
    assert.deepEqual(src.red, ['admin']);
    assert.deepEqual(src.blue, ['admin']);
    assert.deepEqual(src.green, ['role:team']);
    assert.deepEqual(src['!'], ['public']);

    await go('#/db/db/roles/team', '#role-members');
    assert.deepEqual(await page.$$eval('#role-members tr', (rs) => rs.map((r) => r.dataset.user)), ['carol']);

    // GUEST: channels and disabled only, no sessions
    await go('#/db/db/users/GUEST', '#edit-user');
    assert.equal(await page.$('#edit-email'), null);
    assert.equal(await page.$('#sessions'), null);

    // delete, after a confirmation naming the user
    await req('PUT', `${s.admin}/db/_user/frank`, { password: 'pw-frank-123' });
    await go('#/db/db/users/frank', '#delete-user');
    await page.click('#delete-user');
    await page.waitForSelector('dialog[open]');
    assert.match(await text('#confirm-title'), /"frank"/);
    await confirm();
    await page.waitForSelector('#users-table');
    assert.equal((await req('GET', `${s.admin}/db/_user/frank`)).status, 404);
  });

  test('a bad form value shows the API reason; a new password is accepted and never shown back', async () => {
    await go('#/db/db/users/carol', '#edit-user');
    await setValue('#edit-email', 'not-an-email');
    await page.click('#edit-user button[type=submit]');
    await page.waitForSelector('[data-slot="edit"] .reason');
    const api = await req('PUT', `${s.admin}/db/_user/carol`, { email: 'not-an-email' });
    assert.equal(api.status, 400);
    assert.equal(await text('[data-slot="edit"] .reason'), api.body.reason);
    assert.match(await text('[data-slot="edit"] .code'), /^400 bad_request$/);
    assert.equal((await req('GET', `${s.admin}/db/_user/carol`)).body.email, 'carol@example.com', 'nothing written');

    await page.type('#set-password', 'pw-carol-456');
    await page.keyboard.press('Enter');
    await eventually(async () => (await req('GET', `${s.public}/db/`, undefined, { authorization: basic('carol', 'pw-carol-456') })).status === 200, 5000, 'new password');
    assert.equal(await page.$eval('#set-password', (e) => e.value), '');
    assert.ok(!(await page.content()).includes('pw-carol-456'), 'the password is not in the page');
  });

  test('sessions: a login on the public port is listed with its expiry and revoked from the console', async () => {
    const login = async () => {
      const r = await req('POST', `${s.public}/db/_session`, { name: 'carol', password: 'pw-carol-456' });
      assert.equal(r.status, 200);
      return r.headers.get('set-cookie').split(';')[0];
    };
    const first = await login();
    await new Promise((r) => setTimeout(r, 20)); // a later expiry for the second login
    const second = await login();
    const with_ = (cookie) => req('GET', `${s.public}/db/`, undefined, { cookie }).then((r) => r.status);
    assert.equal(await with_(first), 200);
    assert.equal(await with_(second), 200);

    await go('#/db/db/users', '#users-table');
    await go('#/db/db/users/carol', '#sessions-table');
    const rows = await page.$$eval('#sessions-table tbody tr', (rs) => rs.map((r) => ({
      handle: r.dataset.handle, expires: r.querySelector('[data-expires]').dataset.expires,
    })));
    assert.equal(rows.length, 2);
    for (const r of rows) {
      assert.match(r.handle, /^[0-9a-f]{32}$/);
      const left = Date.parse(r.expires) - Date.now();
      assert.ok(left > 23 * 3600e3 && left <= 24 * 3600e3 + 5000, `expiry ${r.expires}`);
    }
    const html = await page.content();
    for (const c of [first, second]) assert.ok(!html.includes(c.split('=')[1]), 'no session id in the page');
    await shot('user');

    // rows are ordered by expiry: the first is the first login
    await page.click('#sessions-table tbody tr:first-child button[data-action="revoke-session"]');
    await confirm();
    await page.waitForFunction(() => document.querySelectorAll('#sessions-table tbody tr').length === 1);
    assert.equal(await with_(first), 401, 'the revoked session is refused');
    assert.equal(await with_(second), 200, 'the other session still works');

    await page.click('#revoke-all');
    await confirm();
    await page.waitForSelector('#sessions-table', { hidden: true });
    assert.equal(await text('#session-count'), '0 live sessions');
    assert.equal(await with_(second), 401);
  });

  test('documents: paging and prefix search; two conflicting branches and a tombstone drawn as a tree', async () => {
    const att = Buffer.from('hello attachment').toString('base64');
    const bulk = await req('POST', `${s.admin}/db/_bulk_docs`, {
      new_edits: false,
      docs: [
        { _id: 'tree', _rev: R.c, _revisions: { start: 3, ids: [hex('c'), hex('b'), hex('a')] }, channels: ['red'],
          price: 1.50, big: 12345678901234567890, tiny: 1e-7, name: 'caf\u00e9 "quoted"', nested: { list: [1, 2.0, [], {}] },
          _attachments: { 'hello.txt': { content_type: 'text/plain', data: att } } },
        { _id: 'tree', _rev: R.d, _revisions: { start: 2, ids: [hex('d'), hex('a')] }, channels: ['red'], branch: 'B' },
        { _id: 'tree', _rev: R.f, _deleted: true, _revisions: { start: 3, ids: [hex('f'), hex('e'), hex('a')] } },
      ],
    });
    assert.equal(bulk.status, 201, JSON.stringify(bulk.body));
    await req('POST', `${s.admin}/db/_bulk_docs`, { docs: Array.from({ length: 12 }, (_, i) => ({ _id: `page-${String(i).padStart(2, '0')}`, i })) });

    await go('#/db/db/docs?prefix=page-&size=5', '#docs-table');
    const ids = () => page.$$eval('#docs-table tbody tr', (rs) => rs.map((r) => r.dataset.id));
    assert.deepEqual(await ids(), ['page-00', 'page-01', 'page-02', 'page-03', 'page-04']);
    await page.click('#docs-next');
    await page.waitForSelector('#docs-table tr[data-id="page-05"]');
    await page.click('#docs-next');
    await page.waitForSelector('#docs-table tr[data-id="page-10"]');
    assert.deepEqual(await ids(), ['page-10', 'page-11']);
    assert.equal(await page.$('#docs-next'), null, 'no next page after the last');
    await page.click('#docs-prev');
    await page.waitForSelector('#docs-table tr[data-id="page-05"]');

    await go('#/db/db/doc/tree', '#revtree svg');
    await page.waitForSelector('#doc-body');
    const nodes = await page.$$eval('#revtree g.node', (gs) => gs.map((g) => ({
      rev: g.dataset.rev, parent: g.dataset.parent, cls: g.getAttribute('class'),
      mark: g.querySelector('[data-mark]')?.dataset.mark ?? null,
    })));
    const byRev = Object.fromEntries(nodes.map((n) => [n.rev, n]));
    assert.deepEqual(Object.keys(byRev).sort(), Object.values(R).sort(), 'every revision is a node');
    assert.equal(byRev[R.a].parent, '');
    assert.equal(byRev[R.b].parent, R.a);
    assert.equal(byRev[R.c].parent, R.b);
    assert.equal(byRev[R.d].parent, R.a);
    assert.equal(byRev[R.e].parent, R.a);
    assert.equal(byRev[R.f].parent, R.e);
    const edges = await page.$$eval('#revtree path.edge', (ps) => ps.map((p) => `${p.dataset.from}>${p.dataset.to}`).sort());
    assert.deepEqual(edges, [`${R.a}>${R.b}`, `${R.a}>${R.d}`, `${R.a}>${R.e}`, `${R.b}>${R.c}`, `${R.e}>${R.f}`].sort());
    const marked = (kind) => nodes.filter((n) => n.cls.split(' ').includes(kind)).map((n) => n.rev);
    assert.deepEqual(marked('winner'), [R.c]);
    assert.deepEqual(marked('conflict'), [R.d]);
    assert.deepEqual(marked('tombstone'), [R.f]);
    assert.equal(byRev[R.c].mark, 'winner');
    assert.equal(byRev[R.d].mark, 'conflict');
    assert.equal(byRev[R.f].mark, 'tombstone');
    assert.equal(byRev[R.b].mark, null);

    // the body is the server's text, re-indented only
    const raw = await (await fetch(`${s.admin}/db/tree`)).text();
    const shown = await text('#doc-body');
    assert.equal(minify(shown), minify(raw));
    assert.ok(shown.split('\n').length > 10, 'pretty-printed over several lines');
    assert.equal(await text('#shown-rev'), R.c);

    // attachment download link
    const href = await page.$eval('#attachments tr[data-attachment="hello.txt"] a[download]', (a) => a.getAttribute('href'));
    assert.equal(href, '/db/tree/hello.txt');
    assert.equal(await page.evaluate((h) => fetch(h).then((r) => r.text()), href), 'hello attachment');

    // readers: carol (red) and demo (*), not erin (yellow)
    const readers = await page.$$eval('#readers-table tr[data-user]', (rs) => rs.map((r) => r.dataset.user).sort());
    assert.deepEqual(readers, ['carol', 'demo']);
    await shot('document');

    // the conflicting branch's body, chosen with the keyboard
    const focused = await page.$eval(`#revtree g.node[data-rev="${R.d}"]`, (g) => { g.focus(); return document.activeElement?.dataset?.rev; });
    assert.equal(focused, R.d, 'tree nodes take the keyboard focus');
    await page.keyboard.press('Enter');
    await page.waitForFunction((rev) => document.querySelector('#shown-rev')?.textContent === rev, {}, R.d);
    await page.waitForSelector('#doc-body');
    assert.match(await text('#doc-body'), /"branch": "B"/);
    assert.equal(await page.evaluate(() => document.activeElement?.dataset?.rev), R.d, 'focus stays on the node');
    // the tombstone: its body is just the deletion
    await page.click(`#revtree g.node[data-rev="${R.f}"]`);
    await page.waitForFunction((rev) => document.querySelector('#shown-rev')?.textContent === rev, {}, R.f);
    await page.waitForSelector('#doc-body');
    assert.match(await text('#doc-body'), /"_deleted": true/);
  });

  test('live changes: a write appears; pause closes the feed and resume catches up; channel filter', async () => {
    await go('#/db/db/changes', '#feed-state.live');
    // it opens with the last 20 changes
    await page.waitForSelector('#changes-table tr[data-id="page-11"]');
    assert.equal((await req('PUT', `${s.admin}/db/live-1`, { channels: ['red'], n: 1 })).status, 201);
    await page.waitForSelector('#changes-table tr[data-id="live-1"]');
    await shot('changes');

    await page.click('#feed-toggle');
    await page.waitForSelector('#feed-state.paused');
    await eventually(async () => (await s.metric('syncgate_changes_feeds_active')) === 0, 5000, 'the paused feed to close');
    assert.equal((await req('PUT', `${s.admin}/db/live-2`, { channels: ['red'] })).status, 201);
    assert.equal(await page.$('#changes-table tr[data-id="live-2"]'), null);
    await page.click('#feed-toggle');
    await page.waitForSelector('#changes-table tr[data-id="live-2"]');

    await setValue('#feed-channels', 'red');
    await page.keyboard.press('Enter');
    await page.waitForFunction(() => /channels red/.test(document.querySelector('#feed-state').textContent));
    await req('PUT', `${s.admin}/db/live-3`, { channels: ['blue'] });
    await req('PUT', `${s.admin}/db/live-4`, { channels: ['red'] });
    await page.waitForSelector('#changes-table tr[data-id="live-4"]');
    assert.equal(await page.$('#changes-table tr[data-id="live-3"]'), null, 'filtered out (it came before live-4)');
  });

  test('metrics: live charts from the Prometheus text, auth failures by reason', async () => {
    for (let i = 0; i < 3; i++) {
      await req('GET', `${s.public}/db/`, undefined, { authorization: basic('carol', 'wrong-password') });
      await req('GET', `${s.public}/db/`, undefined, { authorization: basic('demo', 'demo-password-1') });
    }
    await go('#/metrics', '[data-chart="requests"]');
    await page.waitForSelector('[data-chart="requests"] path.line');
    await page.waitForFunction(() => {
      const cells = [...document.querySelectorAll('#totals-table thead th')].map((t) => t.textContent);
      const i = cells.indexOf('Auth failures: password');
      const row = document.querySelector('#totals-table tr[data-db="db"]');
      return i > 0 && row && Number(row.children[i].textContent) >= 3;
    });
    for (const c of ['requests', 'latency', 'feeds', 'docs', 'auth']) {
      assert.ok(await page.$(`[data-chart="${c}"] svg`), c);
    }
    const series = await page.$$eval('[data-chart="auth"] path.line', (ps) => ps.map((p) => p.dataset.series));
    assert.ok(series.includes('password'), series.join());
    await shot('metrics');
  });

  test('no script error and no policy violation in the page', async () => {
    assert.deepEqual(pageErrors, []);
    assert.deepEqual(await page.evaluate(() => window.__violations), []);
    // the listener does see a violation (an inline script is refused)
    await page.evaluate(() => {
      const el = document.createElement('script');
      el.textContent = 'window.__ran = true';
      document.body.append(el);
    });
    await page.waitForFunction(() => window.__violations.length > 0);
    assert.equal(await page.evaluate(() => window.__ran ?? false), false);
  });
});
