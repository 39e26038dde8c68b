// A document's revision tree, built from what the API returns and drawn as SVG:
//  - `GET /{db}/{id}?open_revs=all&revs=true`: every leaf (live or deleted) with `_revisions`,
//    its ancestry (`start` generation and the hashes, newest first);
//  - `GET /{db}/{id}` (`_rev`): the winning revision;
//  - `GET /{db}/{id}?revs_info=true`: the winner's ancestors with `available`/`missing`/`deleted`.

import { s } from './ui.js';

const gen = (rev) => parseInt(rev, 10);

/** CouchDB's winner rule: live leaves before deleted ones, then the higher generation, then the higher rev. */
export function pickWinner(leaves) {
  return [...leaves].sort((a, b) =>
    (a.deleted - b.deleted) || (gen(b.rev) - gen(a.rev)) || (a.rev < b.rev ? 1 : a.rev > b.rev ? -1 : 0))[0]?.rev ?? null;
}

/**
 * Builds the tree. Returns { nodes: Map(rev → node), roots: [rev], leaves: [rev], winner }.
 * A node: { rev, gen, parent, children, leaf, deleted, winner, conflict, status }.
 */
export function buildTree(openRevs, winnerRev, revsInfo) {
  const nodes = new Map();
  const node = (rev) => {
    let n = nodes.get(rev);
    if (!n) {
      n = { rev, gen: gen(rev), parent: null, children: [], leaf: false, deleted: false, winner: false, conflict: false, status: null };
      nodes.set(rev, n);
    }
    return n;
  };
  const leaves = [];
  for (const row of openRevs) {
    const doc = row.ok;
    if (!doc) continue;
    const revs = doc._revisions
      ? doc._revisions.ids.map((id, i) => `${doc._revisions.start - i}-${id}`)
      : [doc._rev];
    for (let i = 0; i < revs.length; i++) {
      const n = node(revs[i]);
      const parent = revs[i + 1] ?? null;
      if (parent && !n.parent) n.parent = parent;
    }
    const leaf = node(doc._rev);
    leaf.leaf = true;
    leaf.deleted = doc._deleted === true;
    leaves.push({ rev: doc._rev, deleted: leaf.deleted });
  }
  for (const n of nodes.values()) {
    if (n.parent) {
      const p = node(n.parent);
      if (!p.children.includes(n.rev)) p.children.push(n.rev);
    }
  }
  const winner = winnerRev && nodes.has(winnerRev) ? winnerRev : pickWinner(leaves);
  for (const l of leaves) {
    const n = nodes.get(l.rev);
    n.winner = l.rev === winner;
    n.conflict = !n.winner && !n.deleted;
  }
  for (const info of revsInfo ?? []) {
    const n = nodes.get(info.rev);
    if (n) n.status = info.status;
  }
  const roots = [...nodes.values()].filter((n) => !n.parent).map((n) => n.rev);
  return { nodes, roots, leaves: leaves.map((l) => l.rev), winner };
}

/** Rows and columns: one row per leaf (the winner's branch first), a column per generation. */
export function layout(tree) {
  const { nodes } = tree;
  // a subtree holding the winner sorts first, then live before deleted, then by rev (newest first)
  const holdsWinner = new Map();
  const hw = (rev) => {
    if (holdsWinner.has(rev)) return holdsWinner.get(rev);
    const n = nodes.get(rev);
    const v = n.winner || n.children.some(hw);
    holdsWinner.set(rev, v);
    return v;
  };
  const order = (a, b) => (hw(b) - hw(a)) || (nodes.get(a).deleted - nodes.get(b).deleted) || (a < b ? 1 : -1);
  const minGen = Math.min(...[...nodes.values()].map((n) => n.gen));
  const pos = new Map();
  let row = 0;
  const place = (rev) => {
    const n = nodes.get(rev);
    const kids = [...n.children].sort(order);
    let r = null;
    for (const k of kids) {
      const kr = place(k);
      if (r === null) r = kr;
    }
    if (r === null) r = row++;
    pos.set(rev, { col: n.gen - minGen, row: r });
    return r;
  };
  for (const root of [...tree.roots].sort(order)) place(root);
  return { pos, rows: row, cols: Math.max(0, ...[...pos.values()].map((p) => p.col)) + 1 };
}

const COL = 150;
const ROW = 58;
const PAD = 30;

function shortRev(rev) {
  const [g, hash = ''] = rev.split('-');
  return `${g}-${hash.slice(0, 7)}${hash.length > 7 ? '…' : ''}`;
}

/** The tree as an SVG element; `onSelect(rev)` runs when a node is clicked or activated by keyboard. */
export function renderTree(tree, { selected, onSelect } = {}) {
  const { pos, rows, cols } = layout(tree);
  const width = PAD * 2 + (cols - 1) * COL + 110;
  const height = PAD * 2 + (rows - 1) * ROW + 24;
  const xy = (rev) => {
    const p = pos.get(rev);
    return [PAD + 10 + p.col * COL, PAD + p.row * ROW];
  };
  const svg = s('svg', {
    class: 'revtree', viewBox: `0 0 ${width} ${height}`, width, height,
    role: 'group', 'aria-label': `Revision tree: ${tree.nodes.size} revisions, ${tree.leaves.length} leaves`,
    'data-nodes': tree.nodes.size,
  });
  const edges = s('g', { class: 'edges' });
  const nodeLayer = s('g', { class: 'nodes' });
  svg.append(edges, nodeLayer);
  for (const n of tree.nodes.values()) {
    if (!n.parent) continue;
    const [x1, y1] = xy(n.parent);
    const [x2, y2] = xy(n.rev);
    const d = y1 === y2 ? `M${x1},${y1} L${x2},${y2}` : `M${x1},${y1} C${x1 + COL / 2},${y1} ${x1 + COL / 2},${y2} ${x2},${y2}`;
    edges.append(s('path', { class: 'edge', d, 'data-from': n.parent, 'data-to': n.rev }));
  }
  for (const n of tree.nodes.values()) {
    const [x, y] = xy(n.rev);
    const kinds = [n.winner && 'winner', n.conflict && 'conflict', n.deleted && 'tombstone', n.status === 'missing' && 'missing', n.leaf && 'leaf'].filter(Boolean);
    const words = [n.winner && 'winning revision', n.conflict && 'conflict', n.deleted && 'deleted (tombstone)', n.status === 'missing' && 'no body stored'].filter(Boolean);
    const g = s('g', {
      class: ['node', ...kinds, n.rev === selected && 'selected'],
      'data-rev': n.rev, 'data-gen': n.gen, 'data-parent': n.parent ?? '',
      tabindex: '0', role: 'button', 'aria-pressed': n.rev === selected ? 'true' : 'false',
      'aria-label': `Revision ${n.rev}${words.length ? ', ' + words.join(', ') : ''}`,
      transform: `translate(${x},${y})`,
    });
    g.append(s('title', null, n.rev + (words.length ? ` — ${words.join(', ')}` : '')));
    // a transparent area over the whole node, so a click anywhere on it (label included) selects it
    g.append(s('rect', { class: 'hit', x: -14, y: -24, width: COL - 20, height: 54 }));
    if (n.deleted) {
      g.append(s('rect', { class: 'shape', x: -9, y: -9, width: 18, height: 18, rx: 2 }),
        s('path', { class: 'x', d: 'M-5,-5 L5,5 M5,-5 L-5,5' }));
    } else {
      g.append(s('circle', { class: 'shape', r: 9 }));
    }
    g.append(s('text', { x: -9, y: 24 }, shortRev(n.rev)));
    const mark = n.winner ? ['winner', '★ winner'] : n.conflict ? ['conflict', '⚠ conflict'] : n.deleted ? ['tombstone', '✕ deleted'] : null;
    if (mark) g.append(s('text', { class: `mark ${mark[0]}`, x: 14, y: -10, 'data-mark': mark[0] }, mark[1]));
    if (onSelect) {
      g.addEventListener('click', () => onSelect(n.rev));
      g.addEventListener('keydown', (e) => {
        if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); onSelect(n.rev); }
      });
    }
    nodeLayer.append(g);
  }
  return svg;
}
