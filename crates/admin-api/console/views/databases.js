// Databases: GET /_all_dbs?verbose=true, PUT /{db}/ (create), DELETE /{db}/ (delete).

import { get, put, del, path } from '../api.js';
import { h, fill, field, onSubmit, errorSlot, showError, confirmDialog, status, route } from '../ui.js';

export async function render(ctx) {
  const { main } = ctx;
  const list = h('div', { id: 'db-list' });
  const listErr = errorSlot('list');
  const name = h('input', { type: 'text', id: 'new-db-name', name: 'name', required: true, autocomplete: 'off', spellcheck: 'false', placeholder: 'e.g. app' });
  const createErr = errorSlot('create');
  const form = h('form', { class: 'stack', id: 'create-db', 'aria-label': 'Create a database' },
    field('Name', name, 'Lower-case letter first, then a–z, 0–9 and _$()+/-'),
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary' }, 'Create database')));
  onSubmit(form, createErr, async () => {
    const n = name.value.trim();
    await put(path(n) + '/');
    status(`Database "${n}" created`);
    name.value = '';
    await ctx.refreshDbs();
    await load();
  });

  async function load() {
    let dbs;
    try {
      dbs = await get('/_all_dbs', { verbose: true });
      showError(listErr, null);
    } catch (e) {
      showError(listErr, e);
      return;
    }
    if (!dbs.length) {
      fill(list, h('p', { class: 'muted' }, 'No databases yet.'));
      return;
    }
    fill(list, h('table', { id: 'db-table' },
      h('thead', null, h('tr', null, h('th', null, 'Database'), h('th', null, 'State'), h('th', { class: 'num' }, 'Documents'),
        h('th', { class: 'num' }, 'update_seq'), h('th', null, 'Backend'), h('th', null, 'Open'), h('th', null, ''))),
      h('tbody', null, dbs.map((d) => h('tr', { 'data-db': d.db_name },
        h('td', null, h('a', { href: route('db', d.db_name, 'docs') }, d.db_name)),
        h('td', null, d.state),
        h('td', { class: 'num' }, d.doc_count),
        h('td', { class: 'num' }, String(d.update_seq)),
        h('td', null, d.backend ?? '(not reported)'),
        h('td', null, h('a', { href: route('db', d.db_name, 'users') }, 'users'), ' · ',
          h('a', { href: route('db', d.db_name, 'changes') }, 'changes')),
        h('td', null, h('button', { type: 'button', class: 'danger', 'data-action': 'delete-db', 'aria-label': `Delete database ${d.db_name}`, onclick: () => remove(d.db_name) }, 'Delete…')))))));
  }

  async function remove(db) {
    const ok = await confirmDialog({
      title: `Delete database "${db}"?`,
      message: `This deletes the database "${db}" with all its documents, users, roles and sessions. It cannot be undone.`,
      confirmLabel: `Delete "${db}"`,
      typeToConfirm: db,
    });
    if (!ok) return;
    try {
      await del(path(db) + '/');
      status(`Database "${db}" deleted`);
      await ctx.refreshDbs();
      await load();
    } catch (e) {
      showError(listErr, e);
    }
  }

  fill(main, h('h1', null, 'Databases'), listErr, list,
    h('h2', null, 'Create a database'), h('div', { class: 'panel' }, createErr, form));
  await load();
}
