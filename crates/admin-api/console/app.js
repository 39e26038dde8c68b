// The console's shell: a hash router, the database picker and the tabs. Each view module
// exports `render(ctx)`, which fills `ctx.main` and may return a cleanup function (live feeds
// and timers stop when the view is left).

import { get } from './api.js';
import { h, fill, showError } from './ui.js';
import { Sampler } from './prom.js';
import * as databases from './views/databases.js';
import * as users from './views/users.js';
import * as roles from './views/roles.js';
import * as documents from './views/documents.js';
import * as changes from './views/changes.js';
import * as metrics from './views/metrics.js';

const main = document.getElementById('view');
const select = document.getElementById('db-select');
const globalError = document.getElementById('global-error');
const STORE_KEY = 'syncgate.console.db';

/** Metrics are sampled from page load, so the charts have history when opened. */
export const sampler = new Sampler(2000, 300);

let cleanup = null;
let dbNames = [];

function currentDb() {
  return select.value || null;
}

/** Reloads the database list into the picker (keeps the selection when it still exists). */
export async function refreshDbs(preferred) {
  dbNames = await get('/_all_dbs');
  const want = preferred ?? currentDb() ?? localStorage.getItem(STORE_KEY);
  fill(select, dbNames.length ? null : h('option', { value: '' }, '(no database)'),
    dbNames.map((n) => h('option', { value: n }, n)));
  select.value = dbNames.includes(want) ? want : (dbNames[0] ?? '');
  updateTabs();
}

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, '');
  const [p, q = ''] = raw.split('?');
  const parts = p.split('/').filter((x, i) => x !== '' || i === 0).map((x) => {
    try { return decodeURIComponent(x); } catch { return x; }
  });
  return { parts: parts.filter((x) => x !== ''), query: new URLSearchParams(q) };
}

function updateTabs(active) {
  const db = currentDb();
  for (const a of document.querySelectorAll('.tabs a')) {
    const tab = a.dataset.dbTab;
    if (tab) {
      if (db) {
        a.href = `#/db/${encodeURIComponent(db)}/${tab}`;
        a.removeAttribute('aria-disabled');
      } else {
        a.setAttribute('aria-disabled', 'true');
      }
    }
    if (active !== undefined) {
      if (a.dataset.tab === active) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
  }
}

const VIEWS = {
  users: (ctx) => (ctx.rest.length ? users.renderUser(ctx, ctx.rest[0]) : users.renderList(ctx)),
  roles: (ctx) => (ctx.rest.length ? roles.renderRole(ctx, ctx.rest[0]) : roles.renderList(ctx)),
  docs: (ctx) => documents.renderList(ctx),
  doc: (ctx) => documents.renderDoc(ctx, ctx.rest.join('/')),
  changes: (ctx) => changes.render(ctx),
};

async function route() {
  if (cleanup) { try { cleanup(); } catch { /* ignore */ } cleanup = null; }
  showError(globalError, null);
  const { parts, query } = parseHash();
  const ctx = { main, query, navigate: (hash) => { location.hash = hash; }, refreshDbs, sampler };
  let tab = parts[0] ?? 'databases';
  let view;
  if (tab === 'db' && parts.length >= 3) {
    const db = parts[1];
    if (!dbNames.includes(db)) await refreshDbs(db).catch(() => {});
    if (dbNames.includes(db)) { select.value = db; localStorage.setItem(STORE_KEY, db); }
    ctx.db = db;
    ctx.rest = parts.slice(3);
    tab = parts[2];
    view = VIEWS[tab];
    if (tab === 'doc') tab = 'docs';
  } else if (tab === 'metrics') {
    view = metrics.render;
  } else {
    tab = 'databases';
    view = databases.render;
  }
  updateTabs(tab);
  if (!view) {
    fill(main, h('h1', null, 'Not found'), h('p', null, 'No such view: ', location.hash));
    return;
  }
  fill(main, h('p', { class: 'muted' }, 'Loading…'));
  try {
    const c = await view(ctx);
    if (typeof c === 'function') cleanup = c;
  } catch (e) {
    fill(main, h('h1', null, 'Could not load this view'));
    showError(globalError, e);
  }
  const heading = main.querySelector('h1');
  if (heading && document.activeElement === document.body) { heading.tabIndex = -1; heading.focus({ preventScroll: true }); }
}

select.addEventListener('change', () => {
  const db = currentDb();
  if (!db) return;
  localStorage.setItem(STORE_KEY, db);
  const { parts } = parseHash();
  const tab = parts[0] === 'db' ? parts[2] : null;
  // same view for the other database (a user or doc page goes back to its list)
  const target = tab === 'doc' ? 'docs' : tab;
  if (target && VIEWS[target]) location.hash = `#/db/${encodeURIComponent(db)}/${target}`;
  else updateTabs();
});

window.addEventListener('hashchange', route);

async function start() {
  sampler.start();
  try {
    const root = await get('/');
    document.getElementById('server-version').textContent = root.version ?? '';
    await refreshDbs();
  } catch (e) {
    showError(globalError, e);
  }
  if (!location.hash) history.replaceState(null, '', '#/databases');
  await route();
  document.documentElement.dataset.ready = 'true';
}

start();
