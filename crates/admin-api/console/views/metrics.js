// Metrics: live charts over the last minutes from the admin port's `GET /_metrics` (the same
// Prometheus text as the metrics listener). The page samples it every 2 s from the moment the
// console opens and keeps 10 minutes.

import { h, fill, showError, errorSlot } from '../ui.js';
import { sum, by, buckets, quantile } from '../prom.js';
import { chart } from '../chart.js';

const REQ = 'syncgate_http_requests_total';
const LAT = 'syncgate_http_request_duration_seconds';
const FEEDS = 'syncgate_changes_feeds_active';
const WRITTEN = 'syncgate_docs_written_total';
const READ = 'syncgate_docs_read_total';
const AUTH = 'syncgate_auth_failures_total';

/** Per-second rate between consecutive snapshots (null across a counter reset). */
function rates(history, f) {
  const out = [];
  for (let i = 0; i < history.length; i++) {
    if (i === 0) { out.push(null); continue; }
    const a = history[i - 1];
    const b = history[i];
    const d = f(b.samples) - f(a.samples);
    const dt = (b.t - a.t) / 1000;
    out.push(d < 0 || dt <= 0 ? null : d / dt);
  }
  return out;
}

export async function render(ctx) {
  const { main, sampler } = ctx;
  const err = errorSlot('metrics');
  const charts = {
    requests: chart('Requests per second', { unit: '/s', id: 'requests' }),
    latency: chart('Public-port latency (ms)', { unit: 'ms', id: 'latency' }),
    feeds: chart('Open changes feeds', { id: 'feeds' }),
    docs: chart('Documents written and read per second', { unit: '/s', id: 'docs' }),
    auth: chart('Authentication failures per second, by reason', { unit: '/s', id: 'auth' }),
  };
  const totals = h('div', { id: 'metric-totals' });
  const info = h('p', { class: 'hint', id: 'metric-info' });
  fill(main, h('h1', null, 'Metrics'),
    h('p', { class: 'hint' }, 'From GET /_metrics on the admin port (the same Prometheus text as the metrics listener), sampled every 2 s while the console is open. Admin-port requests include the console\'s own.'),
    info, err,
    h('div', { class: 'grid2' }, Object.values(charts).map((c) => c.panel)),
    h('h2', null, 'Totals since the server started'), totals);

  function draw() {
    showError(err, sampler.error);
    const hist = sampler.history;
    if (!hist.length) return;
    const times = hist.map((x) => x.t);
    info.textContent = `${hist.length} samples over ${Math.round((times[times.length - 1] - times[0]) / 1000)} s; last at ${new Date(times[times.length - 1]).toLocaleTimeString()}`;
    charts.requests.update(times, ['public', 'admin'].map((port) => ({
      name: `${port} port`, values: rates(hist, (s) => sum(s, REQ, { port })),
    })));
    charts.latency.update(times, [0.5, 0.95, 0.99].map((q) => ({
      name: `p${Math.round(q * 100)}`,
      values: hist.map((x, i) => {
        if (i === 0) return null;
        const v = quantile(q, buckets(x.samples, LAT, { port: 'public' }), buckets(hist[i - 1].samples, LAT, { port: 'public' }));
        return v === null ? null : v * 1000;
      }),
    })));
    const last = hist[hist.length - 1].samples;
    const dbs = [...by(last, FEEDS, 'db').keys()].sort().slice(0, 6);
    charts.feeds.update(times, dbs.map((db) => ({ name: db, values: hist.map((x) => sum(x.samples, FEEDS, { db })) })));
    charts.docs.update(times, [
      { name: 'written', values: rates(hist, (s) => sum(s, WRITTEN)) },
      { name: 'read', values: rates(hist, (s) => sum(s, READ)) },
    ]);
    const reasons = [...by(last, AUTH, 'reason').keys()].sort();
    charts.auth.update(times, reasons.map((reason) => ({ name: reason, values: rates(hist, (s) => sum(s, AUTH, { reason })) })));
    const dbNames = [...by(last, 'syncgate_doc_count', 'db').keys()].sort();
    fill(totals, h('table', { id: 'totals-table' },
      h('thead', null, h('tr', null, ['Database', 'Documents', 'Open feeds', 'Docs written', 'Docs read', ...reasons.map((r) => `Auth failures: ${r}`)].map((t) => h('th', { class: t === 'Database' ? '' : 'num' }, t)))),
      h('tbody', null, dbNames.map((db) => h('tr', { 'data-db': db },
        h('td', null, db),
        [sum(last, 'syncgate_doc_count', { db }), sum(last, FEEDS, { db }), sum(last, WRITTEN, { db }), sum(last, READ, { db }),
          ...reasons.map((reason) => sum(last, AUTH, { db, reason }))].map((v) => h('td', { class: 'num' }, String(v))))))),
    h('p', { class: 'hint' }, `Requests answered: ${sum(last, REQ)} · store size: ${(sum(last, 'syncgate_store_size_bytes') / 1024).toFixed(0)} KiB`));
  }
  draw();
  return sampler.onSample(draw);
}
