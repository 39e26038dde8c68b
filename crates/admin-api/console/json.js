// Pretty-printing JSON text exactly as the server sent it: a tokenizer re-indents the text
// and copies every token verbatim, so numbers keep their digits (no round trip through
// JavaScript numbers), strings keep their escapes and members keep their order.

import { h } from './ui.js';

const WS = new Set([' ', '\t', '\n', '\r']);

/** Splits JSON text into tokens: { t: 'p'|'s'|'n'|'l', v } (punctuation, string, number, literal). */
export function tokens(text) {
  const out = [];
  let i = 0;
  const n = text.length;
  while (i < n) {
    const c = text[i];
    if (WS.has(c)) { i++; continue; }
    if ('{}[],:'.includes(c)) { out.push({ t: 'p', v: c }); i++; continue; }
    if (c === '"') {
      let j = i + 1;
      while (j < n && text[j] !== '"') j += text[j] === '\\' ? 2 : 1;
      if (j >= n) throw new Error(`unterminated string at offset ${i}`);
      out.push({ t: 's', v: text.slice(i, j + 1) });
      i = j + 1;
      continue;
    }
    let j = i;
    while (j < n && !WS.has(text[j]) && !'{}[],:"'.includes(text[j])) j++;
    if (j === i) throw new Error(`unexpected character at offset ${i}`);
    const v = text.slice(i, j);
    out.push({ t: /^[-0-9]/.test(v) ? 'n' : 'l', v });
    i = j;
  }
  return out;
}

/**
 * Pretty-prints JSON text into `pre` element children (spans classed k/s/n/l/p). The text of
 * the result, with whitespace outside strings removed, is the input with the same removed.
 */
export function prettyInto(pre, text, indent = '  ') {
  const toks = tokens(text);
  const frag = document.createDocumentFragment();
  let depth = 0;
  let line = '';
  const flush = () => { if (line) { frag.append(line); line = ''; } };
  const span = (cls, v) => { flush(); frag.append(h('span', { class: cls }, v)); };
  const nl = () => { line += '\n' + indent.repeat(depth); };
  for (let k = 0; k < toks.length; k++) {
    const { t, v } = toks[k];
    const next = toks[k + 1];
    if (t === 'p') {
      if (v === '{' || v === '[') {
        const close = v === '{' ? '}' : ']';
        if (next && next.t === 'p' && next.v === close) {
          span('p', v + close);
          k++;
          continue;
        }
        span('p', v);
        depth++;
        nl();
      } else if (v === '}' || v === ']') {
        depth--;
        nl();
        span('p', v);
      } else if (v === ',') {
        span('p', v);
        nl();
      } else {
        span('p', ':');
        line += ' ';
      }
    } else if (t === 's') {
      span(next && next.t === 'p' && next.v === ':' ? 'k' : 's', v);
    } else {
      span(t, v);
    }
  }
  flush();
  pre.replaceChildren(frag);
  return pre;
}

/** A `<pre class="json">` holding the pretty-printed text (or the raw text if it is not JSON). */
export function jsonView(text, attrs = {}) {
  const pre = h('pre', { class: 'json', tabindex: '0', ...attrs });
  try {
    prettyInto(pre, text);
  } catch {
    pre.textContent = text;
  }
  return pre;
}
