// A third-party OAuth provider for linkd's tests: oidc-provider (OpenID
// Certified) on loopback with its development login and consent pages,
// refresh-token rotation, RFC 7009 revocation, short-lived access tokens,
// and a small protected API under /api that echoes what it received.
//
// Environment: PORT (0 = any), CLIENTS (JSON list of client metadata),
// ACCESS_TTL (seconds, default 60). Prints `listening <port>` when ready.
//
// Test controls (not part of any standard, used to put the provider in a
// state a test needs): GET /__stats (token endpoint calls by grant type,
// revocations, API calls, token calls refused while down), POST /__down?status=503&retry_after=1 (the token
// endpoint answers that status until POST /__up), POST /__forget (every
// grant and token is destroyed, as when the user revokes the app), POST
// /__slow?ms=300 (the token endpoint takes that long to answer), POST
// /__expire_access (every access token is forgotten, refresh tokens kept),
// GET /__tokens (every access and refresh token value issued).
import http from 'node:http';
import Provider from 'oidc-provider';

const storage = new Map();
// Every access and refresh token value issued, for tests that look for
// them where they must not be (GET /__tokens).
const issued = [];

class Adapter {
  constructor(model) { this.model = model; }
  key(id) { return `${this.model}:${id}`; }
  async upsert(id, payload, expiresIn) {
    if (this.model === 'AccessToken' || this.model === 'RefreshToken') issued.push(id);
    storage.set(this.key(id), { payload, expiresAt: expiresIn ? Date.now() + expiresIn * 1000 : null });
    if (payload.grantId) {
      const grantKey = `grant:${payload.grantId}`;
      const list = storage.get(grantKey) || [];
      list.push(this.key(id));
      storage.set(grantKey, list);
    }
    if (payload.userCode) storage.set(`userCode:${payload.userCode}`, id);
    if (payload.uid) storage.set(`uid:${this.model}:${payload.uid}`, id);
  }
  async find(id) {
    const entry = storage.get(this.key(id));
    if (!entry || (entry.expiresAt && entry.expiresAt < Date.now())) return undefined;
    return entry.payload;
  }
  async findByUid(uid) { const id = storage.get(`uid:${this.model}:${uid}`); return id ? this.find(id) : undefined; }
  async findByUserCode(code) { const id = storage.get(`userCode:${code}`); return id ? this.find(id) : undefined; }
  async consume(id) { const entry = storage.get(this.key(id)); if (entry) entry.payload.consumed = Math.floor(Date.now() / 1000); }
  async destroy(id) { storage.delete(this.key(id)); }
  async revokeByGrantId(grantId) {
    for (const key of storage.get(`grant:${grantId}`) || []) storage.delete(key);
    storage.delete(`grant:${grantId}`);
  }
}

const stats = { authorization_code: 0, refresh_token: 0, revocations: 0, api: 0, token_errors: 0, refused_while_down: 0 };
let down = null;
let tokenDelayMs = 0;

const port = Number(process.env.PORT || 0);
const server = http.createServer();
await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  adapter: Adapter,
  clients: JSON.parse(process.env.CLIENTS || '[]'),
  scopes: ['openid', 'offline_access', 'read', 'write'],
  ttl: {
    AccessToken: Number(process.env.ACCESS_TTL || 60),
    AuthorizationCode: 60,
    RefreshToken: 14 * 24 * 3600,
    Grant: 14 * 24 * 3600,
    Interaction: 3600,
    Session: 3600,
  },
  features: { devInteractions: { enabled: true }, revocation: { enabled: true } },
  // A refresh token for every code grant of a client allowed to refresh,
  // and a new one on every use (rotation).
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  rotateRefreshToken: () => true,
  pkce: { required: () => false },
  cookies: { keys: ['linkd-test-cookie-key'] },
});
provider.proxy = false;
provider.on('grant.success', (ctx) => { const type = ctx.oidc.params.grant_type; stats[type] = (stats[type] || 0) + 1; });
provider.on('grant.error', () => { stats.token_errors += 1; });

const handle = provider.callback();

function json(res, status, body, headers = {}) {
  res.writeHead(status, { 'content-type': 'application/json', ...headers });
  res.end(JSON.stringify(body));
}

async function api(req, res, url) {
  stats.api += 1;
  const header = req.headers.authorization || '';
  const token = header.startsWith('Bearer ') ? await provider.AccessToken.find(header.slice(7)) : undefined;
  if (!token || token.isExpired) {
    return json(res, 401, { error: 'invalid_token' }, { 'www-authenticate': 'Bearer error="invalid_token"' });
  }
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  if (url.pathname === '/api/big') {
    const bytes = Number(url.searchParams.get('bytes') || 0);
    if (!url.searchParams.get('chunked')) {
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': String(bytes) });
      return res.end(Buffer.alloc(bytes, 120));
    }
    // Size not announced: chunked transfer encoding.
    res.writeHead(200, { 'content-type': 'application/octet-stream' });
    for (let sent = 0; sent < bytes; sent += 65536) {
      if (!res.write(Buffer.alloc(Math.min(65536, bytes - sent), 120))) await new Promise((r) => res.once('drain', r));
    }
    return res.end();
  }
  return json(res, url.pathname === '/api/teapot' ? 418 : 200, {
    method: req.method,
    path: url.pathname,
    query: Object.fromEntries(url.searchParams),
    headers: req.headers,
    body: Buffer.concat(chunks).toString('utf8'),
    sub: token.accountId,
    scope: token.scope,
  }, { 'x-provider': 'test', 'set-cookie': 'provider_session=1' });
}

server.on('request', async (req, res) => {
  const url = new URL(req.url, issuer);
  try {
    if (url.pathname === '/__stats') return json(res, 200, stats);
    if (url.pathname === '/__down') {
      down = { status: Number(url.searchParams.get('status') || 503), retryAfter: url.searchParams.get('retry_after') };
      return json(res, 200, { down });
    }
    if (url.pathname === '/__up') { down = null; return json(res, 200, {}); }
    if (url.pathname === '/__slow') { tokenDelayMs = Number(url.searchParams.get('ms') || 0); return json(res, 200, {}); }
    if (url.pathname === '/__expire_access') {
      for (const key of [...storage.keys()]) if (key.startsWith('AccessToken:')) storage.delete(key);
      return json(res, 200, {});
    }
    if (url.pathname === '/__tokens') return json(res, 200, { tokens: issued });
    if (url.pathname === '/__forget') {
      for (const key of [...storage.keys()]) {
        if (/^(Grant|AccessToken|RefreshToken|AuthorizationCode|grant):/.test(key)) storage.delete(key);
      }
      return json(res, 200, {});
    }
    if (url.pathname.startsWith('/api/')) return await api(req, res, url);
    if (url.pathname === '/token/revocation' && req.method === 'POST') stats.revocations += 1;
    if (url.pathname === '/token' && tokenDelayMs) await new Promise((r) => setTimeout(r, tokenDelayMs));
    if (url.pathname === '/token' && down) {
      stats.refused_while_down += 1;
      const headers = down.retryAfter ? { 'retry-after': down.retryAfter } : {};
      return json(res, down.status, { error: 'temporarily_unavailable' }, headers);
    }
    return handle(req, res);
  } catch (err) {
    return json(res, 500, { error: String(err) });
  }
});

console.log(`listening ${server.address().port}`);
