// Roles: list, create, edit admin_channels, delete, and each role's members (from the users'
// admin_roles and token roles).
//
// Calls: GET|POST /{db}/_role/, GET|PUT|DELETE /{db}/_role/{name},
// GET /{db}/_user/?name_only=false&include_access=true.

import { get, put, post, del, path } from '../api.js';
import { h, fill, field, onSubmit, errorSlot, showError, confirmDialog, status, parseList, route } from '../ui.js';
import { sourceTag } from './users.js';

async function allUsers(db) {
  return get(path(db, '_user') + '/', { name_only: false, include_access: true });
}

/** Users holding `role`, with how they hold it: [{ user, sources }]. */
function members(users, role) {
  const out = [];
  for (const u of users) {
    const sources = [];
    if ((u.admin_roles ?? []).includes(role)) sources.push('admin');
    if ((u.jwt_roles ?? []).includes(role)) sources.push('token');
    if (!sources.length && (u.roles ?? []).includes(role)) sources.push('other');
    if (sources.length) out.push({ user: u, sources });
  }
  return out;
}

export async function renderList(ctx) {
  const { main, db } = ctx;
  const listErr = errorSlot('list');
  const box = h('div', { id: 'role-list' });
  async function load() {
    let names;
    let users = [];
    try {
      [names, users] = await Promise.all([get(path(db, '_role') + '/'), allUsers(db)]);
      showError(listErr, null);
    } catch (e) {
      showError(listErr, e);
      return;
    }
    const roles = await Promise.all(names.map((n) => get(path(db, '_role', n)).catch((e) => ({ name: n, error: e }))));
    fill(box, roles.length ? h('table', { id: 'roles-table' },
      h('thead', null, h('tr', null, ['Role', 'admin_channels', 'Members'].map((t) => h('th', null, t)))),
      h('tbody', null, roles.map((r) => h('tr', { 'data-role': r.name },
        h('td', null, h('a', { href: route('db', db, 'roles', r.name) }, r.name)),
        h('td', null, r.error ? `(${r.error.reason})` : (r.admin_channels ?? []).join(', ') || '—'),
        h('td', null, members(users, r.name).map((m) => m.user.name).join(', ') || '—'))))) : h('p', { class: 'muted' }, 'No roles yet.'));
  }
  const name = h('input', { type: 'text', id: 'new-role-name', required: true, autocomplete: 'off' });
  const channels = h('input', { type: 'text', id: 'new-role-channels', autocomplete: 'off', placeholder: 'a, b' });
  const createErr = errorSlot('create');
  const form = h('form', { class: 'stack', id: 'create-role', 'aria-label': 'Create a role' },
    field('Name', name), field('admin_channels', channels, 'Comma-separated channel names'),
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary' }, 'Create role')));
  onSubmit(form, createErr, async () => {
    const n = name.value.trim();
    await post(path(db, '_role') + '/', { name: n, admin_channels: parseList(channels.value) });
    status(`Role "${n}" created`);
    name.value = '';
    channels.value = '';
    await load();
    name.focus();
  });
  fill(main, h('h1', null, `Roles of ${db}`), listErr, box,
    h('h2', null, 'Create a role'), h('div', { class: 'panel' }, createErr, form));
  await load();
}

export async function renderRole(ctx, name) {
  const { main, db } = ctx;
  const rolePath = path(db, '_role', name);
  const topErr = errorSlot('top');
  let role;
  let users;
  try {
    [role, users] = await Promise.all([get(rolePath), allUsers(db)]);
  } catch (e) {
    fill(main, h('h1', null, `Role ${name}`), h('p', null, h('a', { href: route('db', db, 'roles') }, '← all roles')), topErr);
    showError(topErr, e);
    return;
  }
  const channels = h('input', { type: 'text', id: 'edit-role-channels', autocomplete: 'off', value: (role.admin_channels ?? []).join(', ') });
  const editErr = errorSlot('edit');
  const form = h('form', { class: 'stack', id: 'edit-role', 'aria-label': 'Edit role' },
    field('admin_channels', channels, 'Comma-separated; empty clears'),
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary' }, 'Save changes')));
  onSubmit(form, editErr, async () => {
    await put(rolePath, { admin_channels: parseList(channels.value) });
    status(`Role "${name}" saved`);
    await renderRole(ctx, name);
  });
  const ms = members(users, name);
  async function remove() {
    const ok = await confirmDialog({
      title: `Delete role "${name}"?`,
      message: `The role "${name}" is deleted; its ${ms.length} member(s) lose the channels it grants.`,
      confirmLabel: `Delete "${name}"`,
    });
    if (!ok) return;
    try {
      await del(rolePath);
      status(`Role "${name}" deleted`);
      ctx.navigate(route('db', db, 'roles'));
    } catch (e) {
      showError(topErr, e);
    }
  }
  fill(main,
    h('p', null, h('a', { href: route('db', db, 'roles') }, '← all roles')),
    h('h1', null, `Role ${name}`), topErr,
    h('div', { class: 'grid2' },
      h('section', { class: 'panel' }, h('h2', null, 'Channels'), editErr, form,
        h('p', { class: 'hint' }, 'all_channels: ', (role.all_channels ?? []).join(', '))),
      h('section', { class: 'panel' }, h('h2', null, `Members (${ms.length})`),
        ms.length ? h('table', { id: 'role-members' }, h('tbody', null, ms.map((m) => h('tr', { 'data-user': m.user.name },
          h('td', null, h('a', { href: route('db', db, 'users', m.user.name) }, m.user.name)),
          h('td', null, m.sources.map(sourceTag)))))) : h('p', { class: 'muted' }, 'No users hold this role.'))),
    h('section', { class: 'panel' }, h('h2', null, 'Delete'),
      h('button', { type: 'button', class: 'danger', id: 'delete-role', onclick: remove }, `Delete role ${name}…`)));
}
