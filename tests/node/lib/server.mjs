// Starts the real syncgate binary on ephemeral loopback ports with a generated config.
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, openSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import readline from 'node:readline';

const here = dirname(fileURLToPath(import.meta.url));
export const BIN = process.env.SYNCGATE_BIN
  ? resolve(process.env.SYNCGATE_BIN)
  : resolve(here, '../../../target/debug/syncgate');

let pgDatabases = 0;

/**
 * With SYNCGATE_TEST_POSTGRES (a postgres:// URL of a server the tests may create databases
 * on), a fresh PostgreSQL database for one server: its URL. `psql` creates it.
 */
function freshPostgresDatabase(url) {
  const name = `sgnode_${process.pid}_${Date.now()}_${pgDatabases++}`;
  execFileSync('psql', [url, '-q', '-c', `CREATE DATABASE ${name}`], { stdio: ['ignore', 'ignore', 'inherit'] });
  const u = new URL(url);
  u.pathname = `/${name}`;
  return u.toString();
}

export function baseConfig(dir) {
  const config = {
    interface: '127.0.0.1:0',
    adminInterface: '127.0.0.1:0',
    metricsInterface: '127.0.0.1:0',
    data_dir: join(dir, 'data'),
    logging: { console: { log_level: 'debug' } },
    databases: { db: {} },
  };
  // every database of the server on PostgreSQL (scripts/test runs every suite once more so)
  if (process.env.SYNCGATE_TEST_POSTGRES) config.server = freshPostgresDatabase(process.env.SYNCGATE_TEST_POSTGRES);
  return config;
}

/**
 * Starts syncgate. `edit(config)` may change the config. Returns
 * { public, admin, metrics, dir, log, stop(), kill(), restart(), logText() }.
 */
export async function startServer(edit = () => {}, { dir, config } = {}) {
  dir = dir ?? mkdtempSync(join(tmpdir(), 'syncgate-'));
  if (!config) {
    config = baseConfig(dir);
    edit(config);
  }
  const cfgPath = join(dir, 'config.json');
  writeFileSync(cfgPath, JSON.stringify(config, null, 2));
  const log = join(dir, `server-${Date.now()}.log`);
  const child = spawn(BIN, [cfgPath], { stdio: ['ignore', 'pipe', openSync(log, 'w')], env: { ...process.env, RUST_LOG: '' } });
  const urls = {};
  await new Promise((res, rej) => {
    const timer = setTimeout(() => rej(new Error(`syncgate did not start:\n${readFileSync(log, 'utf8')}`)), 20000);
    const rl = readline.createInterface({ input: child.stdout });
    rl.on('line', (line) => {
      const m = line.match(/(public|admin|metrics) listener on (\S+)/);
      if (m) urls[m[1]] = m[2];
      if (urls.public && urls.admin && urls.metrics) { clearTimeout(timer); res(); }
    });
    child.on('exit', (code) => { clearTimeout(timer); rej(new Error(`syncgate exited ${code}:\n${readFileSync(log, 'utf8')}`)); });
  });
  const exited = new Promise((res) => child.on('exit', (code, sig) => res({ code, sig })));
  const server = {
    ...urls, dir, log, config, child,
    logText: () => readFileSync(log, 'utf8'),
    async stop() { if (child.exitCode === null) { child.kill('SIGTERM'); } return exited; },
    async kill() { if (child.exitCode === null) { child.kill('SIGKILL'); } return exited; },
    async restart() { await server.kill(); return startServer(undefined, { dir, config }); },
    async metric(name) {
      const text = await (await fetch(`${urls.metrics}/metrics`)).text();
      const line = text.split('\n').find((l) => l.startsWith(name) && !l.startsWith('#'));
      return line ? Number(line.split(' ').pop()) : 0;
    },
  };
  return server;
}

/**
 * Another node of `server` (which must be on PostgreSQL): a second syncgate process with the
 * same config — the same PostgreSQL database — but its own directory and ports.
 */
export async function startNode(server, edit = () => {}) {
  if (!server.config.server) throw new Error('startNode: the first node is not on PostgreSQL');
  const dir = mkdtempSync(join(tmpdir(), 'syncgate-'));
  const config = structuredClone({ ...server.config, data_dir: join(dir, 'data') });
  edit(config);
  return startServer(undefined, { dir, config });
}

/** JSON fetch helper: returns { status, body, headers }. */
export async function req(method, url, body, headers = {}) {
  const opts = { method, headers: { ...headers } };
  if (body !== undefined) {
    opts.body = typeof body === 'string' ? body : JSON.stringify(body);
    opts.headers['content-type'] ??= 'application/json';
  }
  const r = await fetch(url, opts);
  const text = await r.text();
  let json = null;
  try { json = JSON.parse(text); } catch { json = text; }
  return { status: r.status, body: json, headers: r.headers };
}

export function basic(user, pass) {
  return 'Basic ' + Buffer.from(`${user}:${pass}`).toString('base64');
}
