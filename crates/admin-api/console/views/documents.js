// Documents: `_all_docs` with paging and id-prefix search; one document with its body (the
// server's JSON text, pretty-printed token by token), attachments, revision tree and readers.
//
// Calls: GET /{db}/_all_docs, GET /{db}/{id} (plain, ?rev=, ?revs_info=true,
// ?open_revs=all&revs=true), GET /{db}/_user/?name_only=false&include_access=true,
// GET /{db}/_user/GUEST, attachment downloads GET /{db}/{id}/{name}.

import { call, get, docPath, path } from '../api.js';
import { h, fill, errorSlot, showError, route } from '../ui.js';
import { jsonView } from '../json.js';
import { buildTree, renderTree } from '../revtree.js';

// id prefix search: every id starting with the prefix sorts between these keys
const HIGH = '\u{10FFFF}';
const pages = new Map(); // `${db}\n${prefix}\n${size}` → start keys of the pages seen

export async function renderList(ctx) {
  const { main, db, query } = ctx;
  const prefix = query.get('prefix') ?? '';
  const size = Math.min(500, Math.max(5, Number(query.get('size')) || 25));
  const stackKey = `${db}\n${prefix}\n${size}`;
  let page = Math.max(0, Number(query.get('page')) || 0);
  if (!pages.has(stackKey) || page === 0) pages.set(stackKey, [prefix || null]);
  const stack = pages.get(stackKey);
  // a page number whose start key this page has not seen (a reload) starts over
  if (page >= stack.length) page = 0;
  const start = stack[page];
  const err = errorSlot('list');
  const body = h('div', { id: 'doc-list' });

  const prefixIn = h('input', { type: 'search', id: 'doc-prefix', value: prefix, autocomplete: 'off', spellcheck: 'false', placeholder: 'id prefix' });
  const sizeIn = h('select', { id: 'doc-page-size' }, [10, 25, 50, 100].map((n) => h('option', { value: n }, n)));
  sizeIn.value = String(size);
  const search = h('form', { class: 'inline', id: 'doc-search', role: 'search' },
    h('label', { class: 'field', for: 'doc-prefix' }, 'Document id starts with', prefixIn),
    h('label', { class: 'field', for: 'doc-page-size' }, 'Per page', sizeIn),
    h('button', { type: 'submit', class: 'primary' }, 'Search'));
  search.addEventListener('submit', (e) => {
    e.preventDefault();
    const q = new URLSearchParams();
    if (prefixIn.value) q.set('prefix', prefixIn.value);
    q.set('size', sizeIn.value);
    ctx.navigate(`${route('db', db, 'docs')}?${q}`);
  });
  const openIn = h('input', { type: 'text', id: 'doc-open-id', required: true, autocomplete: 'off', spellcheck: 'false' });
  const open = h('form', { class: 'inline', id: 'doc-open' },
    h('label', { class: 'field', for: 'doc-open-id' }, 'Open by exact id (also deleted documents)', openIn),
    h('button', { type: 'submit' }, 'Open'));
  open.addEventListener('submit', (e) => {
    e.preventDefault();
    ctx.navigate(route('db', db, 'doc', openIn.value));
  });

  fill(main, h('h1', null, `Documents of ${db}`), h('div', { class: 'toolbar' }, search, h('span', { class: 'spacer' }), open), err, body);

  let res;
  try {
    const q = { limit: size + 1 };
    if (start !== null) q.startkey = JSON.stringify(start);
    if (prefix) q.endkey = JSON.stringify(prefix + HIGH);
    res = await get(path(db, '_all_docs'), q);
  } catch (e) {
    showError(err, e);
    return;
  }
  const rows = res.rows.slice(0, size);
  const next = res.rows[size];
  if (next) stack[page + 1] = next.id;
  const link = (p) => {
    const q = new URLSearchParams();
    if (prefix) q.set('prefix', prefix);
    q.set('size', size);
    q.set('page', p);
    return `${route('db', db, 'docs')}?${q}`;
  };
  const first = page * size + 1;
  fill(body,
    h('p', { class: 'muted', id: 'doc-range' }, rows.length
      ? `Documents ${first}–${first + rows.length - 1}${prefix ? ` with ids starting "${prefix}"` : ''} (${res.total_rows} in the database)`
      : `No documents${prefix ? ` with ids starting "${prefix}"` : ''}.`),
    rows.length ? h('table', { id: 'docs-table' },
      h('thead', null, h('tr', null, h('th', null, 'Document id'), h('th', null, 'Current revision'))),
      h('tbody', null, rows.map((r) => h('tr', { 'data-id': r.id },
        h('td', null, h('a', { href: route('db', db, 'doc', r.id) }, r.id)),
        h('td', null, h('code', null, r.value?.rev ?? '')))))) : null,
    h('div', { class: 'toolbar' },
      page > 0 ? h('a', { href: link(page - 1), id: 'docs-prev', class: 'button' }, '← Previous page') : null,
      next ? h('a', { href: link(page + 1), id: 'docs-next', class: 'button' }, 'Next page →') : null));
}

/** A document's channels from its body's `channels` property (the default sync function's rule). */
function channelsOf(doc) {
  const c = doc?.channels;
  if (typeof c === 'string') return [c];
  if (Array.isArray(c)) return c.filter((x) => typeof x === 'string');
  return [];
}

/** Users (and GUEST) whose channels include one of the doc's, `*` or the public `!`. */
function readers(users, docChannels) {
  const chans = new Set(docChannels);
  const out = [];
  for (const u of users) {
    if (u.disabled) continue;
    const all = new Set(u.all_channels ?? []);
    const via = [...chans].filter((c) => all.has(c) || c === '!');
    if (all.has('*')) via.push('*');
    if (via.length) out.push({ name: u.name, via });
  }
  return out;
}

async function readersPanel(db, winnerDoc, deleted) {
  const box = h('section', { class: 'panel', id: 'readers' }, h('h2', null, 'Who can read this'));
  if (deleted) {
    box.append(h('p', { class: 'muted' }, 'The winning revision is a tombstone: its body is empty; users who could read it get the deletion through their changes feeds.'));
    return box;
  }
  const chans = channelsOf(winnerDoc);
  box.append(h('p', null, 'Channels: ', chans.length ? chans.map((c) => h('code', { class: 'tag', 'data-doc-channel': c }, c)) : h('span', { class: 'muted' }, 'none (only users holding * can read it)')));
  let users;
  let guest = null;
  try {
    [users, guest] = await Promise.all([
      get(path(db, '_user') + '/', { name_only: false, include_access: true }),
      get(path(db, '_user', 'GUEST')).catch(() => null),
    ]);
  } catch (e) {
    const slot = errorSlot('readers');
    showError(slot, e);
    box.append(slot);
    return box;
  }
  const list = readers(guest ? [...users, guest] : users, chans);
  box.append(list.length
    ? h('table', { id: 'readers-table' },
      h('thead', null, h('tr', null, h('th', null, 'User'), h('th', null, 'Through channel'))),
      h('tbody', null, list.map((r) => h('tr', { 'data-user': r.name },
        h('td', null, h('a', { href: route('db', db, 'users', r.name) }, r.name === 'GUEST' ? 'GUEST (anyone)' : r.name)),
        h('td', null, r.via.map((c) => h('code', { class: 'tag' }, c)))))))
    : h('p', { class: 'muted', id: 'no-readers' }, 'No enabled user can read this document (admins always can).'),
  h('p', { class: 'hint' }, 'Computed from the document\'s channels and each user\'s effective channels (admin grants, roles, token claims). Disabled users are left out.'));
  return box;
}

export async function renderDoc(ctx, id) {
  const { main, db, query } = ctx;
  const p = docPath(db, id);
  const err = errorSlot('doc');
  fill(main, h('p', null, h('a', { href: route('db', db, 'docs') }, '← all documents')), h('h1', null, id), err);
  let winnerText = null;
  let deletedWinner = false;
  let leaves;
  let revsInfo = null;
  try {
    const [w, o, ri] = await Promise.all([
      call('GET', p, { raw: true }).then((r) => r.text).catch((e) => {
        if (e.status === 404) return e;
        throw e;
      }),
      get(p, { open_revs: 'all', revs: true }),
      get(p, { revs_info: true }).catch(() => null),
    ]);
    if (typeof w === 'string') winnerText = w;
    else deletedWinner = true;
    leaves = o;
    revsInfo = ri?._revs_info ?? null;
  } catch (e) {
    showError(err, e);
    return;
  }
  if (!leaves.some((r) => r.ok)) {
    showError(err, { status: 404, error: 'not_found', reason: `No revision of "${id}" exists`, what: `GET ${p}` });
    return;
  }
  const winnerDoc = winnerText ? JSON.parse(winnerText) : null;
  const tree = buildTree(leaves, winnerDoc?._rev ?? null, revsInfo);
  const treeBox = h('div', { id: 'revtree' });
  const bodyBox = h('section', { class: 'panel', id: 'revision' });

  const counts = [...tree.nodes.values()];
  const summary = h('p', { class: 'muted', id: 'tree-summary' },
    `${counts.length} revisions, ${tree.leaves.length} leaves: `,
    h('span', { class: 'tag winner' }, `winner ${tree.winner}`),
    counts.filter((n) => n.conflict).length ? h('span', { class: 'tag conflict' }, `${counts.filter((n) => n.conflict).length} conflict(s)`) : null,
    counts.filter((n) => n.deleted).length ? h('span', { class: 'tag tombstone' }, `${counts.filter((n) => n.deleted).length} deleted leaf/leaves`) : null);

  async function select(rev) {
    drawTree(rev);
    const n = tree.nodes.get(rev);
    const slot = errorSlot('rev');
    fill(bodyBox, h('h2', null, 'Revision ', h('code', { id: 'shown-rev' }, rev), ' ',
      n?.winner ? h('span', { class: 'tag winner' }, 'winner') : null,
      n?.conflict ? h('span', { class: 'tag conflict' }, 'conflict') : null,
      n?.deleted ? h('span', { class: 'tag tombstone' }, 'deleted') : null), slot);
    let text;
    try {
      text = rev === tree.winner && winnerText !== null ? winnerText : await call('GET', p, { query: { rev }, raw: true }).then((r) => r.text);
    } catch (e) {
      showError(slot, e);
      return;
    }
    bodyBox.append(h('p', { class: 'hint' }, 'As the server sent it (member order, numbers and escapes untouched).'), jsonView(text, { id: 'doc-body' }));
    let doc = null;
    try { doc = JSON.parse(text); } catch { /* shown raw above */ }
    const atts = doc?._attachments ? Object.entries(doc._attachments) : [];
    bodyBox.append(h('h3', null, `Attachments (${atts.length})`), atts.length ? h('table', { id: 'attachments' },
      h('thead', null, h('tr', null, ['Name', 'Type', 'Size', 'Digest', ''].map((t) => h('th', null, t)))),
      h('tbody', null, atts.map(([name, a]) => {
        const href = docPath(db, id, name) + (rev === tree.winner ? '' : `?rev=${encodeURIComponent(rev)}`);
        return h('tr', { 'data-attachment': name },
          h('td', null, name), h('td', null, a.content_type ?? ''), h('td', { class: 'num' }, a.length ?? ''),
          h('td', null, h('code', null, a.digest ?? '')),
          h('td', null, h('a', { href, download: name.split('/').pop() }, 'Download')));
      }))) : h('p', { class: 'muted' }, 'None.'));
  }

  function drawTree(selected) {
    const hadFocus = !!document.activeElement?.closest?.('#revtree');
    fill(treeBox, renderTree(tree, { selected, onSelect: (rev) => { select(rev); } }),
      h('div', { class: 'legend' },
        h('span', null, '● revision (click or Enter to show its body)'),
        h('span', null, '★ winner'), h('span', null, '⚠ conflict: another live leaf'),
        h('span', null, '■✕ tombstone: a deleted leaf'), h('span', null, 'dashed: the server keeps no body for it (compacted, or received without one; known for the winner\'s branch)')));
    const focus = treeBox.querySelector(`[data-rev="${CSS.escape(selected)}"]`);
    if (focus && hadFocus) focus.focus();
  }

  main.append(...[
    deletedWinner ? h('p', { class: 'tag tombstone', id: 'deleted-note' }, 'This document is deleted (its winning revision is a tombstone).') : null,
    h('section', { class: 'panel' }, h('h2', null, 'Revision tree'), summary, treeBox),
    bodyBox,
    await readersPanel(db, winnerDoc, deletedWinner)].filter(Boolean));
  const want = query.get('rev');
  await select(want && tree.nodes.has(want) ? want : tree.winner);
}
