// Custom auth with syncgate: a tiny app server (Node ≥ 20, no dependencies).
//
// The app authenticates its users its own way (here: a user table in APP_USERS), makes sure
// each user exists in syncgate with the channels the app decides, asks syncgate's admin port
// for a session (POST /{db}/_session {"name","ttl"}) and hands the session cookie to its
// client. The client then replicates on syncgate's public port with nothing but that cookie.
//
//   SYNCGATE_ADMIN=http://127.0.0.1:4985 SYNCGATE_DB=db PORT=3000 node app-server.mjs
//
//   POST /login  {"username","password"} → 200 {"session_id","cookie_name","expires","cookie"}
//                plus Set-Cookie (browsers send cookies by host, not port, so a page served
//                from this host replicates with it); wrong credentials → 401
//   POST /logout {"session_id"} → revokes the session on syncgate
//
// Keep syncgate's admin port on loopback (it has no authentication): only this server talks
// to it.
import http from 'node:http';
import { randomBytes, timingSafeEqual, createHash } from 'node:crypto';

const ADMIN = process.env.SYNCGATE_ADMIN ?? 'http://127.0.0.1:4985';
const DB = process.env.SYNCGATE_DB ?? 'db';
const PORT = Number(process.env.PORT ?? 3000);
const TTL = Number(process.env.SESSION_TTL ?? 3600);
// The app's own users: name → { password, channels }. A real app asks its database or its
// identity provider instead.
const USERS = JSON.parse(
  process.env.APP_USERS ?? '{"alice":{"password":"alice-app-pw","channels":["alice"]}}',
);

const digest = (s) => createHash('sha256').update(String(s)).digest();

function checkPassword(name, password) {
  const u = Object.hasOwn(USERS, name) ? USERS[name] : null;
  // compare digests in constant time; unknown users cost the same
  const ok = timingSafeEqual(digest(u ? u.password : randomBytes(16)), digest(password));
  return u && ok ? u : null;
}

async function admin(method, path, body) {
  const r = await fetch(`${ADMIN}/${DB}/${path}`, {
    method,
    headers: { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = await r.json().catch(() => null);
  return { status: r.status, body: json };
}

/** Creates the syncgate user on first login (with a random password nobody knows) and keeps
 *  its channels in line with the app's rules. */
async function ensureUser(name, channels) {
  const path = `_user/${encodeURIComponent(name)}`;
  const existing = await admin('GET', path);
  const body = existing.status === 404
    ? { password: randomBytes(24).toString('base64url'), admin_channels: channels }
    : { admin_channels: channels };
  const r = await admin('PUT', path, body);
  if (r.status !== 200 && r.status !== 201) throw new Error(`syncgate user update: ${r.status}`);
}

async function readJson(req) {
  let raw = '';
  for await (const chunk of req) {
    raw += chunk;
    if (raw.length > 64 * 1024) throw new Error('body too large');
  }
  return raw ? JSON.parse(raw) : {};
}

function reply(res, status, body, headers = {}) {
  res.writeHead(status, { 'content-type': 'application/json', ...headers });
  res.end(JSON.stringify(body));
}

const server = http.createServer(async (req, res) => {
  try {
    if (req.method === 'POST' && req.url === '/login') {
      const { username, password } = await readJson(req);
      const user = typeof username === 'string' && checkPassword(username, password);
      if (!user) return reply(res, 401, { error: 'unauthorized', reason: 'wrong username or password' });
      await ensureUser(username, user.channels ?? []);
      const s = await admin('POST', '_session', { name: username, ttl: TTL });
      if (s.status !== 200) return reply(res, 502, { error: 'bad_gateway', reason: `syncgate answered ${s.status}` });
      const { session_id, cookie_name, expires } = s.body;
      const cookie = `${cookie_name}=${session_id}`;
      const setCookie = `${cookie}; Path=/${DB}; Expires=${new Date(expires).toUTCString()}; HttpOnly; SameSite=Lax`;
      return reply(res, 200, { session_id, cookie_name, expires, cookie }, { 'set-cookie': setCookie });
    }
    if (req.method === 'POST' && req.url === '/logout') {
      const { session_id } = await readJson(req);
      if (typeof session_id !== 'string' || !/^[0-9a-f]{40}$/.test(session_id)) {
        return reply(res, 400, { error: 'bad_request', reason: 'session_id expected' });
      }
      const r = await admin('DELETE', `_session/${session_id}`);
      return reply(res, r.status === 200 ? 200 : 404, { ok: r.status === 200 });
    }
    reply(res, 404, { error: 'not_found', reason: 'POST /login or /logout' });
  } catch (e) {
    reply(res, 400, { error: 'bad_request', reason: String(e.message ?? e) });
  }
});

server.listen(PORT, '127.0.0.1', () => {
  const { port } = server.address();
  console.log(`app server listening on http://127.0.0.1:${port}`);
});

for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => server.close(() => process.exit(0)));
