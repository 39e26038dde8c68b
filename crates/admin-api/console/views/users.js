// Users: list and search, create, edit (email, admin_channels, admin_roles, disabled), set a
// password, delete; effective channels with their sources; sessions (list, revoke one or all).
//
// Calls: GET /{db}/_user/?name_only=false&include_access=true, POST /{db}/_user/,
// GET|PUT|DELETE /{db}/_user/{name}, GET /{db}/_role/{name},
// GET|DELETE /{db}/_user/{name}/_session, DELETE /{db}/_user/{name}/_session/{handle}.

import { get, put, post, del, path } from '../api.js';
import { h, fill, field, onSubmit, errorSlot, showError, confirmDialog, status, parseList, when, duration, route } from '../ui.js';

const SOURCE_TEXT = {
  admin: 'admin grant',
  token: 'token claim',
  public: 'public channel (every user)',
  other: 'other (not from an admin grant, role or token)',
};

/** A tag for one source: `admin`, `token`, `role:NAME`, `doc:ID`, `public`, `other`. */
export function sourceTag(src) {
  if (src.startsWith('role:')) return h('span', { class: 'tag role', 'data-source': src }, `role ${src.slice(5)}`);
  if (src.startsWith('doc:')) return h('span', { class: 'tag other', 'data-source': src }, `access() in doc ${src.slice(4)}`);
  const cls = SOURCE_TEXT[src] ? src : 'other';
  return h('span', { class: `tag ${cls}`, 'data-source': src }, SOURCE_TEXT[src] ?? src);
}

/**
 * Where each of a user's channels comes from: Map(channel → [source]). Uses the server's
 * `channel_sources` when it reports them; otherwise derives them from the user record and its
 * roles' admin channels (admin grant, role, token claim).
 */
export async function channelSources(db, user) {
  const out = new Map();
  const add = (ch, src) => {
    if (!out.has(ch)) out.set(ch, []);
    if (!out.get(ch).includes(src)) out.get(ch).push(src);
  };
  if (user.channel_sources && typeof user.channel_sources === 'object') {
    for (const [ch, srcs] of Object.entries(user.channel_sources)) for (const x of srcs) add(ch, x);
  } else {
    for (const ch of user.admin_channels ?? []) add(ch, 'admin');
    for (const ch of user.jwt_channels ?? []) add(ch, 'token');
    const roleErrors = [];
    for (const r of user.roles ?? []) {
      try {
        const role = await get(path(db, '_role', r));
        for (const ch of role.admin_channels ?? []) add(ch, `role:${r}`);
      } catch (e) {
        roleErrors.push(`${r}: ${e.reason ?? e.message}`);
      }
    }
    out.roleErrors = roleErrors;
  }
  for (const ch of user.all_channels ?? []) {
    if (!out.has(ch)) add(ch, ch === '!' ? 'public' : 'other');
  }
  return out;
}

function list(v) {
  return (v ?? []).length ? v.join(', ') : '—';
}

export async function renderList(ctx) {
  const { main, db } = ctx;
  const search = h('input', { type: 'search', id: 'user-search', placeholder: 'name contains…', autocomplete: 'off' });
  const table = h('div', { id: 'user-list' });
  const listErr = errorSlot('list');
  let users = [];

  function draw() {
    const q = search.value.trim().toLowerCase();
    const shown = users.filter((u) => u.name.toLowerCase().includes(q));
    fill(table, h('p', { class: 'muted', id: 'user-count' }, `${shown.length} of ${users.length} users`),
      shown.length ? h('table', { id: 'users-table' },
        h('thead', null, h('tr', null, ['Name', 'Email', 'Disabled', 'admin_channels', 'Roles', 'All channels'].map((t) => h('th', null, t)))),
        h('tbody', null, shown.map((u) => h('tr', { 'data-user': u.name },
          h('td', null, h('a', { href: route('db', db, 'users', u.name) }, u.name)),
          h('td', null, u.email || '—'),
          h('td', null, u.disabled ? h('span', { class: 'tag bad' }, 'disabled') : 'no'),
          h('td', null, list(u.admin_channels)),
          h('td', null, list(u.roles)),
          h('td', null, list(u.all_channels)))))) : null);
  }

  async function load() {
    try {
      users = await get(path(db, '_user') + '/', { name_only: false, include_access: true });
      showError(listErr, null);
    } catch (e) {
      showError(listErr, e);
      users = [];
    }
    draw();
  }
  search.addEventListener('input', draw);

  // create
  const f = {
    name: h('input', { type: 'text', id: 'new-user-name', required: true, autocomplete: 'off', spellcheck: 'false' }),
    password: h('input', { type: 'password', id: 'new-user-password', autocomplete: 'new-password' }),
    email: h('input', { type: 'text', id: 'new-user-email', inputmode: 'email', autocomplete: 'off' }),
    channels: h('input', { type: 'text', id: 'new-user-channels', autocomplete: 'off', placeholder: 'a, b, c' }),
    roles: h('input', { type: 'text', id: 'new-user-roles', autocomplete: 'off' }),
    disabled: h('input', { type: 'checkbox', id: 'new-user-disabled' }),
  };
  const createErr = errorSlot('create');
  const form = h('form', { class: 'stack', id: 'create-user', 'aria-label': 'Create a user' },
    field('Name', f.name), field('Password', f.password, 'Optional; stored only as a hash and never shown again.'),
    field('Email', f.email), field('admin_channels', f.channels, 'Comma-separated channel names'),
    field('admin_roles', f.roles, 'Comma-separated role names'), field('Disabled', f.disabled),
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary' }, 'Create user')));
  onSubmit(form, createErr, async () => {
    const body = { name: f.name.value.trim(), admin_channels: parseList(f.channels.value), admin_roles: parseList(f.roles.value) };
    if (f.password.value) body.password = f.password.value;
    if (f.email.value.trim()) body.email = f.email.value.trim();
    if (f.disabled.checked) body.disabled = true;
    await post(path(db, '_user') + '/', body);
    f.password.value = '';
    status(`User "${body.name}" created`);
    for (const k of ['name', 'email', 'channels', 'roles']) f[k].value = '';
    f.disabled.checked = false;
    await load();
    f.name.focus();
  });

  fill(main, h('h1', null, `Users of ${db}`),
    h('div', { class: 'toolbar' }, h('label', { for: 'user-search' }, 'Search by name'), search,
      h('span', { class: 'spacer' }), h('a', { href: route('db', db, 'users', 'GUEST') }, 'GUEST (anonymous access)')),
    listErr, table,
    h('h2', null, 'Create a user'), h('div', { class: 'panel' }, createErr, form));
  await load();
}

export async function renderUser(ctx, name) {
  const { main, db } = ctx;
  const userPath = path(db, '_user', name);
  const isGuest = name === 'GUEST';
  const topErr = errorSlot('top');
  let user;
  try {
    user = await get(userPath);
  } catch (e) {
    fill(main, h('h1', null, `User ${name}`), h('p', null, h('a', { href: route('db', db, 'users') }, '← all users')), topErr);
    showError(topErr, e);
    return;
  }

  // edit
  const f = {
    email: h('input', { type: 'text', id: 'edit-email', inputmode: 'email', autocomplete: 'off', value: user.email ?? '' }),
    channels: h('input', { type: 'text', id: 'edit-channels', autocomplete: 'off', value: (user.admin_channels ?? []).join(', ') }),
    roles: h('input', { type: 'text', id: 'edit-roles', autocomplete: 'off', value: (user.admin_roles ?? []).join(', ') }),
    disabled: h('input', { type: 'checkbox', id: 'edit-disabled', checked: user.disabled }),
  };
  const editErr = errorSlot('edit');
  const editForm = h('form', { class: 'stack', id: 'edit-user', 'aria-label': 'Edit user' },
    isGuest ? null : field('Email', f.email),
    field('admin_channels', f.channels, 'Comma-separated; empty clears'),
    isGuest ? null : field('admin_roles', f.roles, 'Comma-separated; empty clears'),
    field('Disabled', f.disabled),
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary' }, 'Save changes')));
  onSubmit(editForm, editErr, async () => {
    const body = { admin_channels: parseList(f.channels.value), disabled: f.disabled.checked };
    if (!isGuest) {
      body.email = f.email.value.trim();
      body.admin_roles = parseList(f.roles.value);
    }
    await put(userPath, body);
    status(`User "${name}" saved`);
    await renderUser(ctx, name);
  });

  // password
  const pw = h('input', { type: 'password', id: 'set-password', autocomplete: 'new-password', required: true });
  const pwErr = errorSlot('password');
  const pwForm = h('form', { class: 'stack', id: 'set-password-form', 'aria-label': 'Set password' },
    field('New password', pw, 'Never shown back. Setting it ends every session of this user.'),
    h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Set password')));
  onSubmit(pwForm, pwErr, async () => {
    try {
      await put(userPath, { password: pw.value });
    } finally {
      pw.value = '';
    }
    status(`Password of "${name}" set`);
    await loadSessions();
  });

  // effective channels and roles
  const sources = await channelSources(db, user);
  const chTable = h('table', { id: 'effective-channels' },
    h('thead', null, h('tr', null, h('th', null, 'Channel'), h('th', null, 'Comes from'))),
    h('tbody', null, [...sources.keys()].sort().map((ch) => h('tr', { 'data-channel': ch },
      h('td', null, h('code', null, ch)), h('td', null, sources.get(ch).map(sourceTag))))));
  const roleRows = (user.roles ?? []).map((r) => {
    const srcs = [];
    if ((user.admin_roles ?? []).includes(r)) srcs.push('admin');
    if ((user.jwt_roles ?? []).includes(r)) srcs.push('token');
    if (!srcs.length) srcs.push('other');
    return h('tr', { 'data-role': r }, h('td', null, h('a', { href: route('db', db, 'roles', r) }, r)), h('td', null, srcs.map(sourceTag)));
  });

  // sessions
  const sessBox = h('div', { id: 'sessions' });
  const sessErr = errorSlot('sessions');
  async function loadSessions() {
    if (isGuest) return;
    let list;
    try {
      list = await get(path(db, '_user', name, '_session'));
      showError(sessErr, null);
    } catch (e) {
      showError(sessErr, e);
      return;
    }
    fill(sessBox,
      h('p', { class: 'muted', id: 'session-count' }, `${list.length} live session${list.length === 1 ? '' : 's'}`),
      list.length ? h('table', { id: 'sessions-table' },
        h('thead', null, h('tr', null, ['Session', 'Issued', 'Expires', 'TTL', 'Kind', ''].map((t) => h('th', null, t)))),
        h('tbody', null, list.map((s) => h('tr', { 'data-handle': s.handle },
          h('td', null, h('code', { title: 'A handle for this session (not its id)' }, s.handle.slice(0, 12) + '…')),
          h('td', null, when(s.issued)),
          h('td', { 'data-expires': s.expires }, when(s.expires)),
          h('td', null, duration(s.ttl_secs)),
          h('td', null, s.one_time ? 'one-time' : 'cookie'),
          h('td', null, h('button', { type: 'button', class: 'danger', 'data-action': 'revoke-session', onclick: () => revoke(s) }, 'Revoke…')))))) : null,
      list.length ? h('div', { class: 'toolbar' }, h('button', { type: 'button', class: 'danger', id: 'revoke-all', onclick: revokeAll }, 'Revoke all sessions…')) : null);
  }
  async function revoke(s) {
    const ok = await confirmDialog({
      title: 'Revoke this session?',
      message: `The session of "${name}" expiring ${when(s.expires)} ends now; the client must log in again.`,
      confirmLabel: 'Revoke session',
    });
    if (!ok) return;
    try {
      await del(path(db, '_user', name, '_session', s.handle));
      status('Session revoked');
    } catch (e) {
      showError(sessErr, e);
    }
    await loadSessions();
  }
  async function revokeAll() {
    const ok = await confirmDialog({
      title: `Revoke every session of "${name}"?`,
      message: `Every client logged in as "${name}" must log in again.`,
      confirmLabel: 'Revoke all',
    });
    if (!ok) return;
    try {
      await del(path(db, '_user', name, '_session'));
      status('All sessions revoked');
    } catch (e) {
      showError(sessErr, e);
    }
    await loadSessions();
  }

  // delete
  async function remove() {
    const ok = await confirmDialog({
      title: `Delete user "${name}"?`,
      message: `The user "${name}" of database "${db}" is deleted and all its sessions end.`,
      confirmLabel: `Delete "${name}"`,
    });
    if (!ok) return;
    try {
      await del(userPath);
      status(`User "${name}" deleted`);
      ctx.navigate(route('db', db, 'users'));
    } catch (e) {
      showError(topErr, e);
    }
  }

  fill(main,
    h('p', null, h('a', { href: route('db', db, 'users') }, '← all users')),
    h('h1', null, `User ${name}`, user.disabled ? [' ', h('span', { class: 'tag bad' }, 'disabled')] : null),
    topErr,
    h('div', { class: 'grid2' },
      h('section', { class: 'panel' }, h('h2', null, 'Settings'), editErr, editForm,
        isGuest ? null : [h('h3', null, 'Password'), pwErr, pwForm]),
      h('section', { class: 'panel' }, h('h2', null, 'Effective channels'),
        h('p', { class: 'hint' }, 'Every channel this user can read, and where each comes from.'),
        sources.roleErrors?.length ? h('div', { class: 'error' }, 'Some roles could not be read: ', sources.roleErrors.join('; ')) : null,
        chTable,
        isGuest ? null : [h('h3', null, 'Roles'), roleRows.length ? h('table', { id: 'user-roles' }, h('tbody', null, roleRows)) : h('p', { class: 'muted' }, 'No roles.')],
        user.jwt_issuer ? h('p', { class: 'hint' }, 'Token claims from ', h('code', null, user.jwt_issuer)) : null)),
    isGuest ? null : h('section', { class: 'panel' }, h('h2', null, 'Sessions'), sessErr, sessBox),
    isGuest ? null : h('section', { class: 'panel' }, h('h2', null, 'Delete'),
      h('button', { type: 'button', class: 'danger', id: 'delete-user', onclick: remove }, `Delete user ${name}…`)));
  await loadSessions();
}
