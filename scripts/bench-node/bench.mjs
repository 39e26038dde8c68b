// Side-by-side benchmark: syncgate (release build) against pouchdb-server 4.2.0 (LevelDB), plus
// the bare ceilings of this machine (a bare warp server, sled with a flush per batch).
// Run through `scripts/bench`, which builds the binaries, installs wrk and runs `npm ci` here.
// Not a test: it asserts nothing but that each workload did its work, and prints a table.
//
// Environment: SYNCGATE_BIN, BARE_WARP_BIN, SLED_CEILING_BIN (paths), BENCH_SECS (seconds per
// wrk run, default 10), BENCH_DOCS (default 20000), BENCH_LONGPOLL (clients, default 500),
// BENCH_SYNC_ROUNDS (rounds of the sync-function workload, default 2), BENCH_ONLY=syncfn (run
// only the sync-function workload) or BENCH_ONLY=bulk (only the bulk write, BENCH_BULK_ROUNDS
// rounds, default 3, alternating the servers, with the sled ceiling), BENCH_JSON (write the raw figures there as JSON),
// BENCH_POSTGRES (syncgate's databases on that PostgreSQL server: a fresh database per start)
// and BENCH_POSTGRES_PID (its postmaster, whose CPU then counts as syncgate's).
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, readFileSync, readdirSync, openSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import http from 'node:http';
import net from 'node:net';
import readline from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';

import PouchDB from 'pouchdb-core';
import memory from 'pouchdb-adapter-memory';
import httpAdapter from 'pouchdb-adapter-http';
import replication from 'pouchdb-replication';

PouchDB.plugin(memory).plugin(httpAdapter).plugin(replication);

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, '../..');
const SYNCGATE_BIN = resolve(process.env.SYNCGATE_BIN ?? join(root, 'target/release/syncgate'));
const BARE_WARP_BIN = resolve(process.env.BARE_WARP_BIN ?? join(root, 'target/release/examples/bare_warp'));
const SLED_CEILING_BIN = resolve(process.env.SLED_CEILING_BIN ?? join(root, 'target/release/examples/sled_ceiling'));
const POUCHDB_SERVER = join(here, 'node_modules/pouchdb-server/bin/pouchdb-server');
const SECS = Number(process.env.BENCH_SECS ?? 10);
const DOCS = Number(process.env.BENCH_DOCS ?? 20000);
const LONGPOLL = Number(process.env.BENCH_LONGPOLL ?? 500);
const BATCH = 100;
const BULK_CLIENTS = 4;
const WRK_CONNS = 32;
const DB = 'bench';
const PUSH_DB = 'push';
const CLK_TCK = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100;
/** The whole run is bounded: past this everything is killed and the run fails. */
const WATCHDOG_MS = Number(process.env.BENCH_WATCHDOG_SECS ?? 1200) * 1000;
const SYNC_ROUNDS = Number(process.env.BENCH_SYNC_ROUNDS ?? 2);
const ONLY = process.env.BENCH_ONLY ?? '';
// syncgate's databases on PostgreSQL: the URL of a server's maintenance database (scripts/bench
// sets it, and BENCH_POSTGRES_PID, when BENCH_BACKEND=postgres starts a throwaway cluster)
const POSTGRES = process.env.BENCH_POSTGRES ?? '';
if (!['', 'syncfn', 'bulk'].includes(ONLY)) {
  console.error(`bench: BENCH_ONLY=${ONLY}: the choices are syncfn and bulk`);
  process.exit(2);
}

const workdir = mkdtempSync(join(tmpdir(), 'syncgate-bench-'));
const children = new Set();

function cleanup() {
  for (const c of children) {
    if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  }
  children.clear();
  try { rmSync(workdir, { recursive: true, force: true }); } catch {}
}
process.on('exit', cleanup);
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => { cleanup(); process.exit(130); });
const watchdog = setTimeout(() => {
  console.error(`bench: still running after ${WATCHDOG_MS / 1000} s, giving up`);
  cleanup();
  process.exit(1);
}, WATCHDOG_MS);
watchdog.unref();

const log = (...a) => console.error('bench:', ...a);

// ---------------------------------------------------------------- process accounting

/** utime+stime of a process (all its threads) in seconds. */
function cpuSeconds(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // rest[0] is field 3 (state); utime is field 14, stime field 15
  return (Number(rest[11]) + Number(rest[12])) / CLK_TCK;
}

/** Bytes under `dir` (`du -sb`) in MB; 0 when there is none (syncgate on PostgreSQL may
 * never create its data directory). */
function dirMb(dir) {
  if (!existsSync(dir)) return 0;
  return Number(execFileSync('du', ['-sb', dir]).toString().split('\t')[0]) / 1048576;
}

/** CPU seconds of the PostgreSQL server (`BENCH_POSTGRES_PID`: its postmaster) and every
 * process under it, exited backends included; 0 without it. */
function postgresCpuSeconds() {
  const root = Number(process.env.BENCH_POSTGRES_PID ?? 0);
  if (!root) return 0;
  let total = 0;
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    let stat;
    try { stat = readFileSync(`/proc/${e}/stat`, 'utf8'); } catch { continue; }
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // rest[1] is field 4 (ppid); cutime/cstime (fields 16, 17): children that exited
    if (Number(e) === root) total += Number(rest[11]) + Number(rest[12]) + Number(rest[13]) + Number(rest[14]);
    else if (Number(rest[1]) === root) total += Number(rest[11]) + Number(rest[12]);
  }
  return total / CLK_TCK;
}

/** CPU seconds of a server under test: syncgate on PostgreSQL counts the PostgreSQL server's
 * too (all of it: run nothing else on that server meanwhile). */
function serverCpu(server) {
  return cpuSeconds(server.pid) + (server.postgres ? postgresCpuSeconds() : 0);
}

/** Peak resident set size (VmHWM) in MB. */
function peakRssMb(pid) {
  const m = readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmHWM:\s+(\d+) kB/);
  return m ? Number(m[1]) / 1024 : NaN;
}

function track(child, name) {
  children.add(child);
  child.on('exit', (code, sig) => {
    children.delete(child);
    if (!child.expectedExit) log(`${name} exited unexpectedly (${code ?? sig})`);
  });
  return child;
}

async function stop(child) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.expectedExit = true;
  const done = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  const t = setTimeout(() => child.kill('SIGKILL'), 15000);
  await done;
  clearTimeout(t);
}

function freePort() {
  return new Promise((res, rej) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => res(port)); });
    s.on('error', rej);
  });
}

/** Waits for a line of the child's stdout that matches `re` (bounded). */
function waitForLines(child, re, count, what, logFile) {
  return new Promise((res, rej) => {
    const found = [];
    const timer = setTimeout(() => rej(new Error(`${what} did not start:\n${logFile ? readFileSync(logFile, 'utf8') : ''}`)), 30000);
    const rl = readline.createInterface({ input: child.stdout });
    rl.on('line', (line) => {
      const m = line.match(re);
      if (m) found.push(m);
      if (found.length === count) { clearTimeout(timer); res(found); }
    });
    child.once('exit', (code) => { clearTimeout(timer); rej(new Error(`${what} exited ${code}:\n${logFile ? readFileSync(logFile, 'utf8') : ''}`)); });
  });
}

// ---------------------------------------------------------------- servers

/** Starts the release binary in `workdir/<tag>` with `databases` (default: two empty ones). */
async function startSyncgate({ tag = 'syncgate', databases = { [DB]: {}, [PUSH_DB]: {} } } = {}) {
  const dir = join(workdir, tag);
  const config = {
    interface: '127.0.0.1:0',
    adminInterface: '127.0.0.1:0',
    metricsInterface: '127.0.0.1:0',
    data_dir: join(dir, 'data'),
    logging: { console: { log_level: 'warn' } },
    databases,
  };
  if (POSTGRES) config.server = freshPostgresDatabase(tag);
  execFileSync('mkdir', ['-p', dir]);
  const cfg = join(dir, 'config.json');
  writeFileSync(cfg, JSON.stringify(config, null, 2));
  const logFile = join(dir, 'server.log');
  const child = track(spawn(SYNCGATE_BIN, [cfg], { stdio: ['ignore', 'pipe', openSync(logFile, 'w')], env: { ...process.env, RUST_LOG: '' } }), 'syncgate');
  const lines = await waitForLines(child, /(public|admin|metrics) listener on (\S+)/, 3, 'syncgate', logFile);
  const urls = Object.fromEntries(lines.map((m) => [m[1], m[2]]));
  return { name: 'syncgate', child, pid: child.pid, base: urls.admin, public: urls.public, admin: urls.admin, dir, data: join(dir, 'data'), postgres: Boolean(POSTGRES) };
}

/** A new, empty database on the `BENCH_POSTGRES` server (made with `psql`); its URL. */
function freshPostgresDatabase(tag) {
  const name = `sgbench_${process.pid}_${tag.replace(/[^a-z0-9]/gi, '_')}_${Date.now()}`.toLowerCase();
  execFileSync('psql', [POSTGRES, '-q', '-v', 'ON_ERROR_STOP=1', '-c', `CREATE DATABASE ${name}`], { stdio: ['ignore', 'ignore', 'inherit'] });
  const u = new URL(POSTGRES);
  u.pathname = `/${name}`;
  return u.toString();
}

async function startPouchdbServer() {
  const dir = join(workdir, 'pouchdb-server');
  execFileSync('mkdir', ['-p', join(dir, 'data')]);
  // request logging off (the default logs every request at info), like syncgate at warn
  const cfg = join(dir, 'config.json');
  writeFileSync(cfg, JSON.stringify({ log: { file: join(dir, 'log.txt'), level: 'warning' } }));
  const port = await freePort();
  const logFile = join(dir, 'stderr.log');
  const child = track(spawn(process.execPath, [POUCHDB_SERVER, '--host', '127.0.0.1', '--port', String(port), '--dir', join(dir, 'data'), '--config', cfg, '--no-stdout-logs'], { cwd: dir, stdio: ['ignore', 'pipe', openSync(logFile, 'w')] }), 'pouchdb-server');
  child.stdout.resume();
  const base = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 30000;
  for (;;) {
    try { if ((await req('GET', `${base}/`)).status === 200) break; } catch {}
    if (Date.now() > deadline) throw new Error(`pouchdb-server did not start:\n${readFileSync(logFile, 'utf8')}`);
    await sleep(100);
  }
  for (const db of [DB, PUSH_DB]) {
    const r = await req('PUT', `${base}/${db}`);
    if (r.status !== 201) throw new Error(`pouchdb-server: creating ${db}: ${r.status} ${JSON.stringify(r.body)}`);
  }
  return { name: 'pouchdb-server', child, pid: child.pid, base, data: join(dir, 'data') };
}

async function startBareWarp() {
  const child = track(spawn(BARE_WARP_BIN, ['127.0.0.1:0'], { stdio: ['ignore', 'pipe', 'inherit'] }), 'bare_warp');
  const [m] = await waitForLines(child, /listening on (\S+)/, 1, 'bare_warp');
  return { name: 'bare warp', child, pid: child.pid, base: m[1] };
}

// ---------------------------------------------------------------- HTTP helpers

/**
 * One request over a kept-alive connection (node:http). Not `fetch`: on two cores its per-request
 * work came out of the servers' CPU — 0.34–0.46 s of client CPU for the 200 bulk requests against
 * 0.13–0.19 s with node:http, and a 20 % slower syncgate bulk write for it.
 */
const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });

async function req(method, url, body, headers = {}) {
  const u = new URL(url);
  const h = { ...headers };
  const data = body === undefined ? '' : typeof body === 'string' ? body : JSON.stringify(body);
  if (body !== undefined) h['content-type'] ??= 'application/json';
  if (body !== undefined || method === 'PUT' || method === 'POST') h['content-length'] = Buffer.byteLength(data);
  const { status, text } = await new Promise((res, rej) => {
    const rq = http.request(
      { agent, hostname: u.hostname, port: u.port, path: u.pathname + u.search, method, headers: h, timeout: 120000 },
      (r) => {
        const chunks = [];
        r.on('data', (c) => chunks.push(c));
        r.on('end', () => res({ status: r.statusCode, text: Buffer.concat(chunks).toString('utf8') }));
        r.on('error', rej);
      },
    );
    rq.on('timeout', () => rq.destroy(new Error(`${method} ${url}: no answer in 120 s`)));
    rq.on('error', rej);
    rq.end(data);
  });
  let json;
  try { json = JSON.parse(text); } catch { json = text; }
  return { status, body: json, text };
}

/** The bulk workload's ~1 KB document (the same bytes examples/sled_ceiling.rs writes). */
function bulkDoc(i) {
  const id = `bulk-${String(i).padStart(6, '0')}`;
  const head = `{"_id":"${id}","type":"bench","n":${i},"pad":"`;
  return `${head}${'x'.repeat(1024 - head.length - 2)}"}`;
}

// ---------------------------------------------------------------- workloads

/** Runs `fn` and returns { wall, cpu } with the server's CPU seconds spent meanwhile. */
async function measured(server, fn) {
  const cpu0 = serverCpu(server);
  const client0 = process.cpuUsage();
  const t0 = performance.now();
  const out = await fn();
  const wall = (performance.now() - t0) / 1000;
  const c = process.cpuUsage(client0);
  return { ...out, wall, cpu: serverCpu(server) - cpu0, clientCpu: (c.user + c.system) / 1e6 };
}

/** The request bodies of [`bulkWrite`]: `{"docs":[...]}` of `BATCH` documents made by `doc(i)`. */
function bulkBodies(doc = bulkDoc) {
  const bodies = [];
  for (let b = 0; b * BATCH < DOCS; b++) {
    const docs = [];
    for (let i = b * BATCH; i < Math.min(DOCS, (b + 1) * BATCH); i++) docs.push(doc(i));
    bodies.push(`{"docs":[${docs.join(',')}]}`);
  }
  return bodies;
}

/**
 * Warms this client's HTTP path (V8 compiles fetch and its body handling on first use) by
 * sending the bulk workload's bodies to a bare warp server, so the first server measured does
 * not pay for it: syncgate always goes first, and its first bulk round measured 0.41 s of
 * client CPU against 0.25–0.28 s in later rounds.
 */
async function warmClient() {
  const bare = await startBareWarp();
  try {
    const bodies = bulkBodies();
    let next = 0;
    const client = async () => {
      while (next < bodies.length) await req('PUT', `${bare.base}/warm`, bodies[next++]);
    };
    await Promise.all(Array.from({ length: BULK_CLIENTS }, client));
  } finally {
    await stop(bare.child);
  }
}

/** `DOCS` documents made by `doc(i)` in `_bulk_docs` batches of 100 from 4 concurrent clients. */
async function bulkWrite(server, { doc = bulkDoc, headers = {} } = {}) {
  // the request bodies are made before the clock starts: on 2 cores the client's 20 MB of
  // string building would otherwise take CPU from the server it measures
  const bodies = bulkBodies(doc);
  return measured(server, async () => {
    let next = 0;
    async function client() {
      for (;;) {
        const b = next++;
        if (b >= bodies.length) return;
        const r = await req('POST', `${server.base}/${DB}/_bulk_docs`, bodies[b], headers);
        if (r.status !== 201 || !Array.isArray(r.body) || r.body.some((x) => !x.ok)) {
          throw new Error(`${server.name} _bulk_docs: ${r.status} ${r.text.slice(0, 300)}`);
        }
      }
    }
    await Promise.all(Array.from({ length: BULK_CLIENTS }, client));
    return {};
  }).then((m) => ({ ...m, rate: DOCS / m.wall }));
}

async function changesRead(server, rounds = 3, query = '') {
  const times = [];
  let cpu = 0;
  for (let i = 0; i < rounds; i++) {
    const m = await measured(server, async () => {
      const r = await req('GET', `${server.base}/${DB}/_changes?since=0${query}`);
      if (r.status !== 200 || r.body.results?.length !== DOCS) {
        throw new Error(`${server.name} _changes: ${r.status}, ${r.body.results?.length} rows`);
      }
      return {};
    });
    times.push(m.wall);
    cpu += m.cpu;
  }
  times.sort((a, b) => a - b);
  const wall = times[Math.floor(times.length / 2)];
  return { wall, rate: DOCS / wall, cpu: cpu / rounds };
}

function parseDuration(s) {
  const m = s.match(/^([\d.]+)(us|ms|s|m)$/);
  if (!m) return NaN;
  return Number(m[1]) * { us: 0.001, ms: 1, s: 1000, m: 60000 }[m[2]];
}

/** Runs wrk against `base` with a Lua script; returns throughput, latency and server CPU. */
async function wrk(server, script, { path = '/', headers = [], env = {}, secs = SECS } = {}) {
  const args = ['-t2', `-c${WRK_CONNS}`, `-d${secs}s`, '--timeout', '10s', '--latency', '-s', join(here, script)];
  for (const h of headers) args.push('-H', h);
  args.push(`${server.base}${path}`);
  const run = () => new Promise((res, rej) => {
    const c = spawn('wrk', args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    children.add(c);
    let out = '';
    c.stdout.on('data', (d) => { out += d; });
    c.stderr.on('data', (d) => { out += d; });
    const t = setTimeout(() => c.kill('SIGKILL'), (secs + 60) * 1000);
    c.on('exit', (code) => { clearTimeout(t); children.delete(c); code === 0 ? res(out) : rej(new Error(`wrk exited ${code}:\n${out}`)); });
  });
  const m = await measured(server, async () => ({ out: await run() }));
  const out = m.out;
  const rps = Number(out.match(/Requests\/sec:\s+([\d.]+)/)?.[1]);
  const total = Number(out.match(/(\d+) requests in/)?.[1]);
  const p50 = parseDuration(out.match(/\s50%\s+(\S+)/)?.[1] ?? '');
  const p99 = parseDuration(out.match(/\s99%\s+(\S+)/)?.[1] ?? '');
  const non2xx = Number(out.match(/Non-2xx or 3xx responses: (\d+)/)?.[1] ?? 0);
  const sockErr = out.match(/Socket errors: (.*)/)?.[1];
  if (!(rps > 0) || non2xx > 0.001 * total) {
    throw new Error(`${server.name} wrk ${script}: ${non2xx} non-2xx of ${total}\n${out}`);
  }
  if (sockErr) log(`${server.name} wrk ${script}: socket errors ${sockErr}`);
  return { rate: rps, p50, p99, cpu: m.cpu, requests: total, cpuPer1k: (m.cpu / total) * 1000 * 1000 };
}

async function pull(server) {
  const local = new PouchDB(`pull-${server.name}-${Date.now()}`, { adapter: 'memory' });
  const remote = new PouchDB(`${server.base}/${DB}`, { skip_setup: true });
  const m = await measured(server, async () => {
    const r = await local.replicate.from(remote, { batch_size: 100 });
    if (r.status !== 'complete' || r.docs_written !== DOCS) throw new Error(`${server.name} pull: ${JSON.stringify(r)}`);
    return {};
  });
  return { ...m, local };
}

async function push(server, local) {
  const remote = new PouchDB(`${server.base}/${PUSH_DB}`, { skip_setup: true });
  const m = await measured(server, async () => {
    const r = await local.replicate.to(remote, { batch_size: 100 });
    if (r.status !== 'complete' || r.docs_written !== DOCS) throw new Error(`${server.name} push: ${JSON.stringify(r)}`);
    return {};
  });
  await local.destroy();
  const info = await req('GET', `${server.base}/${PUSH_DB}/`);
  if (info.body.doc_count !== DOCS) throw new Error(`${server.name} push: doc_count ${info.body.doc_count}`);
  return m;
}

/** N longpoll clients wait on `_changes`; one write wakes them all. */
async function longpoll(server) {
  const info = await req('GET', `${server.base}/${DB}/`);
  const since = info.body.update_seq;
  const agent = new http.Agent({ keepAlive: false, maxSockets: Infinity });
  const url = new URL(`${server.base}/${DB}/_changes?feed=longpoll&since=${encodeURIComponent(since)}&timeout=60000`);
  const cpu0 = serverCpu(server);
  const t0 = performance.now();
  let woke = null;
  const headersAt = [];
  const clients = [];
  for (let i = 0; i < LONGPOLL; i++) {
    clients.push(new Promise((res, rej) => {
      const r = http.get(url, { agent }, (resp) => {
        headersAt.push(performance.now());
        let body = '';
        resp.setEncoding('utf8');
        resp.on('data', (d) => { body += d; });
        resp.on('end', () => res({ at: performance.now(), body, status: resp.statusCode }));
        resp.on('error', rej);
      });
      r.on('error', rej);
      r.setTimeout(90000, () => r.destroy(new Error('longpoll client timed out')));
    }));
  }
  // every client has its response headers once the server holds its feed open
  const setupDeadline = Date.now() + 60000;
  while (headersAt.length < LONGPOLL) {
    if (Date.now() > setupDeadline) throw new Error(`${server.name} longpoll: only ${headersAt.length} of ${LONGPOLL} clients connected`);
    await sleep(2);
  }
  const setup = Math.max(...headersAt) - t0;
  await sleep(500);
  const w0 = performance.now();
  const put = await req('PUT', `${server.base}/${DB}/wake-${Date.now()}`, { wake: true });
  if (put.status !== 201) throw new Error(`${server.name} wake write: ${put.status}`);
  woke = await Promise.all(clients);
  const cpu = serverCpu(server) - cpu0;
  agent.destroy();
  for (const w of woke) {
    if (w.status !== 200 || !w.body.includes('wake-')) throw new Error(`${server.name} longpoll: bad wake response ${w.status} ${w.body.slice(0, 200)}`);
  }
  const lat = woke.map((w) => w.at - w0).sort((a, b) => a - b);
  return { setup, wakeP50: lat[Math.floor(lat.length / 2)], wakeMax: lat[lat.length - 1], cpu };
}

/** syncgate only: Basic-auth GET on the public port against no-auth GET on the admin port. */
async function basicAuth(sg) {
  const password = `bench-${process.pid}-secret`;
  const r = await req('POST', `${sg.admin}/${DB}/_user/`, { name: 'bench', password, admin_channels: ['*'] });
  if (r.status !== 201) return { na: `n/a (users not available: POST /${DB}/_user/ → ${r.status})` };
  const auth = `Authorization: Basic ${Buffer.from(`bench:${password}`).toString('base64')}`;
  const probe = await req('GET', `${sg.public}/${DB}/bulk-000000`, undefined, { authorization: auth.slice(15) });
  if (probe.status !== 200) return { na: `n/a (Basic GET → ${probe.status})` };
  const admin = await wrk(sg, 'get.lua', { env: { BENCH_DB: DB, BENCH_DOCS: String(DOCS) } });
  const basic = await wrk({ ...sg, base: sg.public }, 'get.lua', { headers: [auth], env: { BENCH_DB: DB, BENCH_DOCS: String(DOCS) } });
  return { admin, basic };
}

/**
 * The sled ceiling: the best of three runs. One run is mostly waiting on flushes, whose latency
 * on this virtual disk moves a run between 74,000 and 120,000 docs/s; the best is what the
 * machine can do, so the ratio against it is the strict one.
 */
function sledCeiling() {
  const runs = [];
  for (let i = 0; i < 3; i++) {
    const out = execFileSync(SLED_CEILING_BIN, [String(DOCS), String(BATCH)], { timeout: 300000, env: { ...process.env, TMPDIR: workdir } }).toString();
    runs.push(JSON.parse(out.trim().split('\n').pop()));
  }
  return runs.reduce((a, b) => (b.docs_per_sec > a.docs_per_sec ? b : a));
}

// ---------------------------------------------------------------- sync function (SPEC §13)

// The same release binary with the default sync function (no JavaScript) and with JavaScript
// functions, each on a fresh server: the bulk write and the single PUT above, on the public port
// as user `bench` (Basic auth, so the function's requireUser has a user to check), reported as
// ratios to the default. The documents carry `"owner":"bench"` and `"channels":["user-bench"]`:
// the default function (`channel(doc.channels)`) gives them the channel the five-line function
// gives them, so both store the same channels and the difference is the function's cost.
const SF_USER = 'bench';
const SF_PASSWORD = `bench-${process.pid}-secret`;
const SYNC_VARIANTS = [
  { key: 'default', label: 'default (no JS)', sync: null },
  {
    key: 'js',
    label: 'five-line function',
    sync: `function (doc, oldDoc) {
  if (oldDoc) requireUser(oldDoc.owner); else requireUser(doc.owner);
  if (doc.type !== "bench") throw({forbidden: "unknown type"});
  channel("user-" + doc.owner);
  if (doc.members) access(doc.members, "user-" + doc.owner);
}`,
  },
  {
    // the pattern of per-document lists: every document grants its owner a channel of its own
    key: 'grant',
    label: 'a grant per document',
    sync: `function (doc, oldDoc) {
  if (oldDoc) requireUser(oldDoc.owner); else requireUser(doc.owner);
  if (doc.type !== "bench") throw({forbidden: "unknown type"});
  channel("list-" + doc._id);
  access(doc.owner, "list-" + doc._id);
}`,
  },
];

/** The bulk document with an owner (same size as `bulkDoc`). */
function ownedDoc(i) {
  const id = `bulk-${String(i).padStart(6, '0')}`;
  const head = `{"_id":"${id}","type":"bench","owner":"${SF_USER}","channels":["user-${SF_USER}"],"n":${i},"pad":"`;
  return `${head}${'x'.repeat(1024 - head.length - 2)}"}`;
}

async function syncFunctionBench() {
  const basicAuth = `Basic ${Buffer.from(`${SF_USER}:${SF_PASSWORD}`).toString('base64')}`;
  const out = Object.fromEntries(SYNC_VARIANTS.map((v) => [v.key, []]));
  for (let round = 0; round < SYNC_ROUNDS; round++) {
    for (const v of SYNC_VARIANTS) {
      const tag = `syncfn-${v.key}-${round}`;
      const db = { users: { [SF_USER]: { password: SF_PASSWORD } }, ...(v.sync ? { sync: v.sync } : {}) };
      const sg = await startSyncgate({ tag, databases: { [DB]: db } });
      const pub = { ...sg, base: sg.public };
      try {
        log(`sync function, round ${round + 1}/${SYNC_ROUNDS}, ${v.label}: bulk write`);
        const bulk = await bulkWrite(pub, { doc: ownedDoc, headers: { authorization: basicAuth } });
        log(`sync function, round ${round + 1}/${SYNC_ROUNDS}, ${v.label}: single PUT`);
        const put = await wrk(pub, 'put.lua', {
          headers: [`Authorization: ${basicAuth}`],
          env: { BENCH_DB: DB, BENCH_OWNER: SF_USER, BENCH_RUN: `sf${round}` },
        });
        // the function did run: a document in someone else's name is refused by it
        const probe = await req('PUT', `${sg.public}/${DB}/probe`, { type: 'bench', owner: 'someone-else' }, { authorization: basicAuth });
        const want = v.sync ? 403 : 201;
        if (probe.status !== want) throw new Error(`sync function ${v.key}: probe PUT → ${probe.status}, expected ${want}`);
        const r = { bulk, put, rss: peakRssMb(sg.pid) };
        log(`sync function, ${v.label} → bulk ${f(bulk.rate)} docs/s, ${f(bulk.cpu, 2)} s CPU; PUT ${f(put.rate)} req/s, ${f(put.cpuPer1k, 1)} ms CPU per 1,000`);
        out[v.key].push(r);
      } finally {
        await stop(sg.child);
        rmSync(sg.dir, { recursive: true, force: true });
      }
    }
  }
  return out;
}

function reportSyncFn(S) {
  const mean = (runs, get) => runs.reduce((a, x) => a + get(x), 0) / runs.length;
  const M = Object.fromEntries(Object.entries(S).map(([k, runs]) => [k, {
    putRate: mean(runs, (x) => x.put.rate),
    putP50: mean(runs, (x) => x.put.p50),
    putP99: mean(runs, (x) => x.put.p99),
    putCpu: mean(runs, (x) => x.put.cpuPer1k),
    bulkRate: mean(runs, (x) => x.bulk.rate),
    bulkCpu: mean(runs, (x) => x.bulk.cpu),
    rss: Math.max(...runs.map((x) => x.rss)),
  }]));
  const [D, J, G] = [M.default, M.js, M.grant];
  const lines = [];
  lines.push(`| sync function (public port, Basic auth; mean of ${SYNC_ROUNDS} rounds) | default (no JS) | five-line function | function / default | target | a grant per document | grant / default |`);
  lines.push('|---|---:|---:|---:|:-:|---:|---:|');
  const row = (name, key, digits, unit, target = '') => {
    lines.push(`| ${name} | ${f(D[key], digits)} ${unit} | ${f(J[key], digits)} ${unit} | ${f(J[key] / D[key], 2)}× | ${target} | ${f(G[key], digits)} ${unit} | ${f(G[key] / D[key], 2)}× |`);
  };
  const putCost = 1 - J.putRate / D.putRate;
  const bulkCpu = J.bulkCpu / D.bulkCpu;
  row('single PUT (32 conns)', 'putRate', 0, 'req/s', `cost ${f(putCost * 100, 0)} % (≤ 25 %: ${putCost <= 0.25 ? 'yes' : '**no**'})`);
  row('  p50 latency', 'putP50', 2, 'ms');
  row('  p99 latency', 'putP99', 2, 'ms');
  row('  server CPU per 1,000 PUTs', 'putCpu', 1, 'ms');
  row(`bulk write ${f(DOCS)} × 1 KB (100/batch, 4 clients)`, 'bulkRate', 0, 'docs/s');
  row('  server CPU for it', 'bulkCpu', 2, 's', `${f(bulkCpu, 2)}× (≤ 2×: ${bulkCpu <= 2 ? 'yes' : '**no**'})`);
  row('peak RSS (VmHWM)', 'rss', 1, 'MB');
  lines.push('');
  const perRound = S.default.map((d, i) => {
    const j = S.js[i];
    return `round ${i + 1}: PUT cost ${f((1 - j.put.rate / d.put.rate) * 100, 0)} %, bulk CPU ${f(j.bulk.cpu / d.bulk.cpu, 2)}×`;
  });
  lines.push(`Five-line function against the default, per round: ${perRound.join('; ')}.`);
  return lines.join('\n');
}

// ---------------------------------------------------------------- report

const f = (x, d = 0) => (Number.isFinite(x) ? x.toLocaleString('en-US', { minimumFractionDigits: d, maximumFractionDigits: d }) : 'n/a');

function report(R) {
  const rows = [];
  // higher: bigger is better for syncgate (ratio sg/pdb); otherwise ratio pdb/sg
  // judged: whether the ≥ 5× target applies to this row (not to client-bound wall times, nor to
  // whole-run totals, which cover different amounts of work in the fixed-duration wrk runs)
  const row = (name, sg, pdb, digits, higher, unit, judged = true) => {
    const ratio = higher ? sg / pdb : pdb / sg;
    const verdict = !judged ? '—' : ratio >= 5 ? 'yes' : '**no**';
    rows.push(`| ${name} | ${f(sg, digits)} ${unit} | ${f(pdb, digits)} ${unit} | ${f(ratio, 1)}× | ${verdict} |`);
  };
  const S = R.syncgate; const P = R['pouchdb-server'];
  row(`bulk write ${f(DOCS)} × 1 KB (100/batch, 4 clients)`, S.bulk.rate, P.bulk.rate, 0, true, 'docs/s');
  row('  server CPU for it', S.bulk.cpu, P.bulk.cpu, 2, false, 's');
  for (const [k, label] of [['put', 'single PUT (32 conns)'], ['get', 'single GET (32 conns)']]) {
    row(label, S[k].rate, P[k].rate, 0, true, 'req/s');
    row('  p50 latency', S[k].p50, P[k].p50, 2, false, 'ms');
    row('  p99 latency', S[k].p99, P[k].p99, 2, false, 'ms');
    row('  server CPU per 1,000 requests', S[k].cpuPer1k, P[k].cpuPer1k, 1, false, 'ms');
  }
  row(`changes feed read, ${f(DOCS)} rows`, S.changes.rate, P.changes.rate, 0, true, 'rows/s');
  row('  server CPU per read', S.changes.cpu, P.changes.cpu, 3, false, 's');
  row(`changes feed read with \`include_docs=true\`, ${f(DOCS)} rows`, S.changesDocs.rate, P.changesDocs.rate, 0, true, 'rows/s');
  row('  server CPU per read', S.changesDocs.cpu, P.changesDocs.cpu, 3, false, 's');
  row(`PouchDB pull ${f(DOCS)} docs: wall (client-bound)`, S.pull.wall, P.pull.wall, 1, false, 's', false);
  row('  server CPU (the figure to compare)', S.pull.cpu, P.pull.cpu, 2, false, 's');
  row(`PouchDB push ${f(DOCS)} docs: wall (client-bound)`, S.push.wall, P.push.wall, 1, false, 's', false);
  row('  server CPU (the figure to compare)', S.push.cpu, P.push.cpu, 2, false, 's');
  row(`${LONGPOLL} longpoll clients: setup`, S.longpoll.setup, P.longpoll.setup, 0, false, 'ms');
  row('  wake latency p50 after one write', S.longpoll.wakeP50, P.longpoll.wakeP50, 0, false, 'ms');
  row('  wake latency, last client', S.longpoll.wakeMax, P.longpoll.wakeMax, 0, false, 'ms');
  row('  server CPU', S.longpoll.cpu, P.longpoll.cpu, 2, false, 's');
  row('server CPU, whole run (unequal work)', S.cpuTotal, P.cpuTotal, 1, false, 's', false);
  row(`peak RSS (VmHWM) at ${f(DOCS)} docs (after bulk, changes, GET, pull)`, S.rssAfter.pull, P.rssAfter.pull, 1, false, 'MB', false);
  row(`peak RSS (VmHWM), whole run (${f(R.docsAtEnd.syncgate)} / ${f(R.docsAtEnd['pouchdb-server'])} docs)`, S.rss, P.rss, 1, false, 'MB', false);
  row('data directory after the run (`du -sb`)', S.disk, P.disk, 1, false, 'MB', false);

  const lines = [];
  const sgLabel = POSTGRES ? 'syncgate on PostgreSQL' : 'syncgate';
  if (POSTGRES) {
    lines.push(`syncgate's databases on PostgreSQL; its server CPU figures include the PostgreSQL server's${process.env.BENCH_POSTGRES_PID ? '' : ' (not measured: BENCH_POSTGRES_PID unset, so syncgate only)'}.`);
    lines.push('');
  }
  lines.push(`| workload | ${sgLabel} | pouchdb-server 4.2.0 | syncgate better by | ≥ 5× |`);
  lines.push('|---|---:|---:|---:|:-:|');
  lines.push(...rows);
  lines.push('');
  lines.push(`peak RSS of syncgate at ${f(DOCS)} docs: ${f(S.rssAfter.pull, 1)} MB (target < 100 MB: ${S.rssAfter.pull < 100 ? 'yes' : '**no**'}); ` +
    `after the whole run: ${f(S.rss, 1)} MB. VmHWM after each workload (MB): ` +
    Object.entries(S.rssAfter).map(([k, v]) => `${k} ${f(v, 0)}`).join(', ') +
    '. Data directory after each workload (MB), syncgate: ' +
    Object.entries(S.diskAfter).map(([k, v]) => `${k} ${f(v, 1)}`).join(', ') +
    '; pouchdb-server: ' + Object.entries(P.diskAfter).map(([k, v]) => `${k} ${f(v, 1)}`).join(', '));
  lines.push('');
  lines.push('| syncgate only | admin port, no auth | public port, Basic auth | Basic / none |');
  lines.push('|---|---:|---:|---:|');
  if (R.auth.na) {
    lines.push(`| single GET (32 conns) | ${R.auth.na} | ${R.auth.na} | n/a |`);
  } else {
    lines.push(`| single GET (32 conns) | ${f(R.auth.admin.rate)} req/s | ${f(R.auth.basic.rate)} req/s | ${f(R.auth.basic.rate / R.auth.admin.rate, 2)}× |`);
    lines.push(`|   p99 latency | ${f(R.auth.admin.p99, 2)} ms | ${f(R.auth.basic.p99, 2)} ms | |`);
    lines.push(`|   server CPU per 1,000 requests | ${f(R.auth.admin.cpuPer1k, 1)} ms | ${f(R.auth.basic.cpuPer1k, 1)} ms | |`);
  }
  lines.push('');
  lines.push('| against the bare ceiling | syncgate | ceiling | ceiling / syncgate | ≤ 2× |');
  lines.push('|---|---:|---:|---:|:-:|');
  const ceil = (name, sg, c, digits, unit) => {
    const r = c / sg;
    lines.push(`| ${name} | ${f(sg, digits)} ${unit} | ${f(c, digits)} ${unit} | ${f(r, 2)}× | ${r <= 2 ? 'yes' : '**no**'} |`);
  };
  ceil('single GET vs bare warp (200-byte JSON)', S.get.rate, R.bare.get.rate, 0, 'req/s');
  ceil('single PUT vs bare warp (200-byte JSON)', S.put.rate, R.bare.put.rate, 0, 'req/s');
  ceil('bulk write vs sled, flush per 100-doc batch', S.bulk.rate, R.sled.docs_per_sec, 0, 'docs/s');
  lines.push(`|   bare warp server CPU per 1,000 GET / PUT | ${f(S.get.cpuPer1k, 1)} / ${f(S.put.cpuPer1k, 1)} ms | ${f(R.bare.get.cpuPer1k, 1)} / ${f(R.bare.put.cpuPer1k, 1)} ms | | |`);
  return lines.join('\n');
}

// ---------------------------------------------------------------- BENCH_ONLY=bulk

/** The bulk write alone, a fresh server of each kind per round, then the sled ceiling. */
async function bulkOnly() {
  const rounds = Number(process.env.BENCH_BULK_ROUNDS ?? 3);
  const rows = [];
  await warmClient();
  for (let round = 0; round < rounds; round++) {
    const r = {};
    for (const start of [() => startSyncgate({ tag: `bulk-${round}` }), startPouchdbServer]) {
      const s = await start();
      try {
        log(`bulk, round ${round + 1}/${rounds}: ${s.name}`);
        r[s.name] = { ...(await bulkWrite(s)), rss: peakRssMb(s.pid), disk: dirMb(s.data) };
      } finally {
        await stop(s.child);
        rmSync(s.dir ?? join(workdir, 'pouchdb-server'), { recursive: true, force: true });
      }
    }
    rows.push(r);
  }
  log('ceilings: sled');
  const sled = sledCeiling();
  const lines = [
    `| bulk write ${DOCS.toLocaleString('en-US')} × 1 KB (100/batch, 4 clients) | syncgate | pouchdb-server | ratio | syncgate / sled ceiling (${f(sled.docs_per_sec)} docs/s) |`,
    '|---|---:|---:|---:|---:|',
  ];
  rows.forEach((r, i) => {
    const [s, p] = [r.syncgate, r['pouchdb-server']];
    lines.push(`| round ${i + 1}: docs/s | ${f(s.rate)} | ${f(p.rate)} | ${f(s.rate / p.rate, 2)}× | ${f((s.rate / sled.docs_per_sec) * 100)} % |`);
    lines.push(`|   server CPU | ${f(s.cpu, 2)} s | ${f(p.cpu, 2)} s | ${f(p.cpu / s.cpu, 2)}× less | |`);
    lines.push(`|   the bench client's CPU meanwhile | ${f(s.clientCpu, 2)} s | ${f(p.clientCpu, 2)} s | | |`);
    lines.push(`|   peak RSS / data dir | ${f(s.rss, 1)} / ${f(s.disk, 1)} MB | ${f(p.rss, 1)} / ${f(p.disk, 1)} MB | | |`);
  });
  return lines.join('\n');
}

// ---------------------------------------------------------------- main

async function main() {
  log(`work dir ${workdir}; ${DOCS} docs, ${SECS} s per wrk run, ${LONGPOLL} longpoll clients`);
  if (ONLY === 'syncfn') {
    const S = await syncFunctionBench();
    console.log(reportSyncFn(S));
    if (process.env.BENCH_JSON) writeFileSync(process.env.BENCH_JSON, JSON.stringify({ syncFunction: S }, null, 2));
    return;
  }
  if (ONLY === 'bulk') {
    const table = await bulkOnly();
    console.log(table);
    return;
  }
  await warmClient();
  const sg = await startSyncgate();
  const pdb = await startPouchdbServer();
  const servers = [sg, pdb];
  const R = { syncgate: {}, 'pouchdb-server': {} };
  const each = async (label, fn) => {
    for (const s of servers) {
      log(`${label}: ${s.name}`);
      R[s.name][label] = await fn(s);
      (R[s.name].rssAfter ??= {})[label] = peakRssMb(s.pid);
      (R[s.name].diskAfter ??= {})[label] = dirMb(s.data);
      log(`${label}: ${s.name} → ${JSON.stringify(R[s.name][label], (k, v) => (k === 'local' ? undefined : typeof v === 'number' ? Number(v.toFixed(3)) : v))}`);
    }
  };
  const wrkEnv = { BENCH_DB: DB, BENCH_DOCS: String(DOCS) };
  await each('bulk', bulkWrite);
  await each('changes', (s) => changesRead(s));
  await each('changesDocs', (s) => changesRead(s, 3, '&include_docs=true'));
  await each('get', (s) => wrk(s, 'get.lua', { env: wrkEnv }));
  await each('pull', pull);
  await each('push', (s) => push(s, R[s.name].pull.local));
  await each('put', (s) => wrk(s, 'put.lua', { env: { ...wrkEnv, BENCH_RUN: 'put' } }));
  await each('longpoll', longpoll);
  R.docsAtEnd = {};
  for (const s of servers) {
    let docs = 0;
    for (const db of [DB, PUSH_DB]) docs += (await req('GET', `${s.base}/${db}/`)).body.doc_count;
    R.docsAtEnd[s.name] = docs;
    R[s.name].cpuTotal = serverCpu(s);
    R[s.name].rss = peakRssMb(s.pid);
    R[s.name].disk = dirMb(s.data);
  }
  log('basic auth vs admin GET: syncgate');
  R.auth = await basicAuth(sg);
  for (const s of servers) await stop(s.child);

  log('ceilings: bare warp');
  const bare = await startBareWarp();
  R.bare = {
    get: await wrk(bare, 'get.lua', { env: wrkEnv }),
    put: await wrk(bare, 'put.lua', { env: { ...wrkEnv, BENCH_RUN: 'bare' } }),
  };
  await stop(bare.child);
  log('ceilings: sled');
  R.sled = sledCeiling();
  R.syncFunction = await syncFunctionBench();

  const table = report(R);
  console.log(table);
  console.log('');
  console.log(reportSyncFn(R.syncFunction));
  if (process.env.BENCH_JSON) {
    writeFileSync(process.env.BENCH_JSON, JSON.stringify(R, (k, v) => (k === 'local' || k === 'child' ? undefined : v), 2));
  }
}

main().then(
  () => { cleanup(); process.exit(0); },
  (e) => { console.error(e); cleanup(); process.exit(1); },
);
