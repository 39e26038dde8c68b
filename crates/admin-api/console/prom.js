// Prometheus text from the admin port's `GET /_metrics` (the same text as the metrics
// listener's `/metrics`), parsed and sampled into a short history for the charts.

import { getText } from './api.js';

/** Parses the text format into [{ name, labels, value }] (comments and `# EOF` skipped). */
export function parse(text) {
  const out = [];
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    let i = 0;
    while (i < line.length && /[A-Za-z0-9_:]/.test(line[i])) i++;
    const name = line.slice(0, i);
    const labels = {};
    if (line[i] === '{') {
      i++;
      while (i < line.length && line[i] !== '}') {
        const eq = line.indexOf('=', i);
        const key = line.slice(i, eq).trim().replace(/^,/, '').trim();
        let j = eq + 2; // after ="
        let val = '';
        while (j < line.length && line[j] !== '"') {
          if (line[j] === '\\') {
            const e = line[j + 1];
            val += e === 'n' ? '\n' : e;
            j += 2;
          } else {
            val += line[j++];
          }
        }
        labels[key] = val;
        i = j + 1;
        if (line[i] === ',') i++;
      }
      i++;
    }
    const rest = line.slice(i).trim().split(/\s+/);
    const value = Number(rest[0] === '+Inf' ? Infinity : rest[0]);
    if (name && !Number.isNaN(value)) out.push({ name, labels, value });
  }
  return out;
}

/** Sum of the samples of `name` whose labels match `where`. */
export function sum(samples, name, where = {}) {
  let t = 0;
  for (const x of samples) {
    if (x.name !== name) continue;
    if (Object.entries(where).every(([k, v]) => x.labels[k] === v)) t += x.value;
  }
  return t;
}

/** Values of `name` grouped by one label: Map(labelValue → summed value). */
export function by(samples, name, label, where = {}) {
  const m = new Map();
  for (const x of samples) {
    if (x.name !== name) continue;
    if (!Object.entries(where).every(([k, v]) => x.labels[k] === v)) continue;
    const key = x.labels[label] ?? '';
    m.set(key, (m.get(key) ?? 0) + x.value);
  }
  return m;
}

/** Cumulative histogram buckets of `name` (summed over other labels): [[le, count]] sorted. */
export function buckets(samples, name, where = {}) {
  const m = by(samples, `${name}_bucket`, 'le', where);
  return [...m.entries()].map(([le, c]) => [le === '+Inf' ? Infinity : Number(le), c]).sort((a, b) => a[0] - b[0]);
}

/** `histogram_quantile` over the difference of two bucket snapshots; null without observations. */
export function quantile(q, now, before) {
  const prev = new Map(before ?? []);
  const d = now.map(([le, c]) => [le, c - (prev.get(le) ?? 0)]);
  const total = d.length ? d[d.length - 1][1] : 0;
  if (!(total > 0)) return null;
  const rank = q * total;
  let lo = 0;
  let loCount = 0;
  for (const [le, c] of d) {
    if (c >= rank) {
      if (le === Infinity) return lo;
      if (c === loCount) return le;
      return lo + (le - lo) * ((rank - loCount) / (c - loCount));
    }
    lo = le;
    loCount = c;
  }
  return lo;
}

/** Samples `/_metrics` every `everyMs`, keeping `keep` snapshots; listeners get each new one. */
export class Sampler {
  constructor(everyMs = 2000, keep = 300) {
    this.everyMs = everyMs;
    this.keep = keep;
    this.history = []; // [{ t, samples }]
    this.listeners = new Set();
    this.error = null;
  }

  start() {
    if (this.timer) return;
    const tick = async () => {
      try {
        const text = await getText('/_metrics');
        this.history.push({ t: Date.now(), samples: parse(text) });
        if (this.history.length > this.keep) this.history.shift();
        this.error = null;
      } catch (e) {
        this.error = e;
      }
      for (const f of this.listeners) f(this);
    };
    tick();
    this.timer = setInterval(tick, this.everyMs);
  }

  onSample(f) {
    this.listeners.add(f);
    return () => this.listeners.delete(f);
  }
}
