// A small SVG line chart: time on x (the sampled window), one polyline per series.

import { h, s } from './ui.js';

const W = 600;
const H = 150;
const L = 46; // left margin for labels
const B = 18; // bottom margin

function fmt(v, unit) {
  if (v === null || v === undefined) return '–';
  if (v === 0) return unit ? `0 ${unit}` : '0';
  const a = Math.abs(v);
  const n = a >= 100 ? v.toFixed(0) : a >= 10 ? v.toFixed(1) : a >= 1 ? v.toFixed(2) : v.toFixed(3);
  return unit ? `${n} ${unit}` : n;
}

/**
 * A chart panel. `update(times, series)` redraws: `times` are ms timestamps, `series`
 * [{ name, values }] with null for gaps.
 */
export function chart(title, { unit = '', id } = {}) {
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: 'none', role: 'img', 'aria-label': title });
  const keys = h('div', { class: 'keys' });
  const panel = h('section', { class: 'chart', 'data-chart': id ?? title }, h('h3', null, title), svg, keys);
  function update(times, series) {
    svg.replaceChildren();
    keys.replaceChildren();
    const all = series.flatMap((x) => x.values).filter((v) => v !== null && Number.isFinite(v));
    const max = Math.max(1e-9, ...all) * 1.1 || 1;
    const t0 = times[0] ?? 0;
    const t1 = times[times.length - 1] ?? 1;
    const x = (t) => L + ((t - t0) / Math.max(1, t1 - t0)) * (W - L - 4);
    const y = (v) => H - B - (v / max) * (H - B - 6);
    for (const f of [0, 0.5, 1]) {
      svg.append(s('line', { class: 'grid', x1: L, x2: W, y1: y(max * f), y2: y(max * f) }),
        s('text', { class: 'lbl', x: L - 4, y: y(max * f) + 3, 'text-anchor': 'end' }, fmt(max * f)));
    }
    svg.append(s('line', { class: 'axis', x1: L, x2: W, y1: H - B, y2: H - B }));
    const span = Math.round((t1 - t0) / 1000);
    svg.append(s('text', { class: 'lbl', x: L, y: H - 4 }, times.length > 1 ? `−${span} s` : ''),
      s('text', { class: 'lbl', x: W - 2, y: H - 4, 'text-anchor': 'end' }, 'now'));
    series.forEach((ser, i) => {
      const cls = `s${i % 6}`;
      let d = '';
      let pen = false;
      ser.values.forEach((v, k) => {
        if (v === null || !Number.isFinite(v)) { pen = false; return; }
        d += `${pen ? 'L' : 'M'}${x(times[k]).toFixed(1)},${y(v).toFixed(1)} `;
        pen = true;
      });
      if (d) svg.append(s('path', { class: `line ${cls}`, d, 'data-series': ser.name }));
      const last = [...ser.values].reverse().find((v) => v !== null && Number.isFinite(v));
      keys.append(h('span', { class: cls }, h('span', { class: 'sw' }), `${ser.name}: ${fmt(last ?? null, unit)}`));
    });
    if (!series.length) keys.append(h('span', { class: 'muted' }, 'no data yet'));
  }
  return { panel, update };
}
