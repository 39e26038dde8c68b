// DOM helpers. Text always goes in as text nodes (never as HTML), so names and document
// contents cannot inject markup.

const SVG_NS = 'http://www.w3.org/2000/svg';

function apply(el, attrs) {
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.setAttribute('class', Array.isArray(v) ? v.filter(Boolean).join(' ') : v);
    else if (k === 'text') el.textContent = v;
    else if (k === 'value' && 'value' in el && !(el instanceof SVGElement)) el.value = v;
    else if (k === 'checked') el.checked = !!v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** `h('div', {class: 'x', onclick: fn}, 'text', child…)` */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  apply(el, attrs);
  append(el, children);
  return el;
}

/** The same for SVG elements. */
export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  apply(el, attrs);
  append(el, children);
  return el;
}

/** Replaces an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** An error box for a failed call: the API's error name, status and reason. */
export function errorBox(err) {
  if (err && err.reason !== undefined) {
    return h('div', { class: 'error', role: 'alert', 'data-error': err.error },
      h('span', { class: 'code' }, err.status ? `${err.status} ${err.error}` : err.error),
      h('span', { class: 'reason' }, err.reason),
      err.what ? h('div', { class: 'hint' }, err.what) : null);
  }
  return h('div', { class: 'error', role: 'alert' }, String(err?.message ?? err));
}

/** Shows an error in `slot` (or clears it with `null`). */
export function showError(slot, err) {
  fill(slot, err ? errorBox(err) : null);
  slot.hidden = !err;
}

let statusTimer;
/** A short message in the polite status region. */
export function status(msg) {
  const el = document.getElementById('status');
  el.textContent = msg;
  el.classList.add('show');
  clearTimeout(statusTimer);
  statusTimer = setTimeout(() => el.classList.remove('show'), 3500);
}

/**
 * A modal confirmation. With `typeToConfirm`, the confirm button stays disabled until that
 * exact text is typed. Resolves true (confirmed) or false. Focus returns where it was.
 */
export function confirmDialog({ title, message, confirmLabel = 'Confirm', danger = true, typeToConfirm }) {
  return new Promise((resolve) => {
    const before = document.activeElement;
    const input = typeToConfirm
      ? h('input', { type: 'text', id: 'confirm-input', autocomplete: 'off', spellcheck: 'false' })
      : null;
    const ok = h('button', { type: 'submit', class: danger ? 'danger' : 'primary', id: 'confirm-ok', disabled: !!typeToConfirm }, confirmLabel);
    const cancel = h('button', { type: 'button', id: 'confirm-cancel' }, 'Cancel');
    const form = h('form', { method: 'dialog' },
      h('h2', { id: 'confirm-title' }, title),
      h('p', { id: 'confirm-message' }, message),
      input ? h('label', { class: 'field', for: 'confirm-input' },
        h('span', null, 'Type ', h('code', null, typeToConfirm), ' to confirm'), input) : null,
      h('div', { class: 'actions' }, cancel, ok));
    const dlg = h('dialog', { 'aria-labelledby': 'confirm-title', 'aria-describedby': 'confirm-message', class: 'confirm' }, form);
    let result = false;
    if (input) input.addEventListener('input', () => { ok.disabled = input.value !== typeToConfirm; });
    form.addEventListener('submit', (e) => {
      if (input && input.value !== typeToConfirm) { e.preventDefault(); return; }
      result = true;
    });
    cancel.addEventListener('click', () => dlg.close());
    dlg.addEventListener('close', () => {
      dlg.remove();
      if (before && before.focus) before.focus();
      resolve(result);
    });
    document.body.append(dlg);
    dlg.showModal();
    (input ?? cancel).focus();
  });
}

/** A comma-separated list → trimmed, non-empty items. */
export function parseList(text) {
  return text.split(',').map((x) => x.trim()).filter((x) => x.length > 0);
}

/** A labelled input for a `form.stack` (label and control side by side). */
export function field(label, input, hint) {
  const id = input.id || (input.id = `f-${Math.random().toString(36).slice(2, 9)}`);
  return [h('label', { for: id }, label), input, hint ? h('div', { class: 'hint' }, hint) : null];
}

/**
 * Wires a form: on submit (button or Enter), runs `action` with the submit button disabled;
 * an ApiError is shown in the form's error slot and focus goes back to the form.
 */
export function onSubmit(form, errSlot, action) {
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const buttons = form.querySelectorAll('button[type=submit]');
    buttons.forEach((b) => { b.disabled = true; });
    showError(errSlot, null);
    try {
      await action();
    } catch (err) {
      showError(errSlot, err);
      const first = form.querySelector('input, select');
      if (first) first.focus();
    } finally {
      buttons.forEach((b) => { b.disabled = false; });
    }
  });
}

/** An empty error slot (hidden until used). */
export function errorSlot(name) {
  return h('div', { class: 'err-slot', 'data-slot': name, hidden: true });
}

/** Local time of an RFC 3339 date, with the remaining time for future dates. */
export function when(iso) {
  const t = new Date(iso);
  if (Number.isNaN(t.getTime())) return iso;
  const secs = Math.round((t.getTime() - Date.now()) / 1000);
  const rel = secs > 0 ? ` (in ${duration(secs)})` : ` (${duration(-secs)} ago)`;
  return t.toLocaleString() + rel;
}

export function duration(secs) {
  if (secs < 90) return `${secs} s`;
  if (secs < 5400) return `${Math.round(secs / 60)} min`;
  if (secs < 172800) return `${Math.round(secs / 3600)} h`;
  return `${Math.round(secs / 86400)} days`;
}

/** Links inside the console's hash router. */
export function route(...parts) {
  return '#/' + parts.map(encodeURIComponent).join('/');
}
