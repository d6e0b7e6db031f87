// A client app using `openid-client` (v6, npm) against a live linkd, configured
// by RFC 8414 discovery alone: nothing but the issuer URL and the client's
// own credentials is given.
//
// Environment: ISSUER, CLIENT_ID, CLIENT_SECRET (unset: a public client),
// REDIRECT_URI, RESOURCE_BASE (linkd's URL for the protected resource).
// Protocol: prints `{"authorize": URL}` and reads one line, the URL the end
// user came back to; prints `{"result": {...}}` with what the library saw.
import * as client from 'openid-client';
import readline from 'node:readline';

const env = process.env;
const clientAuth = env.CLIENT_SECRET ? client.ClientSecretBasic(env.CLIENT_SECRET) : client.None();
const config = await client.discovery(new URL(env.ISSUER), env.CLIENT_ID, undefined, clientAuth, {
  algorithm: 'oauth2',
  execute: [client.allowInsecureRequests],
});
const server = config.serverMetadata();

const lines = readline.createInterface({ input: process.stdin });
const nextLine = () => new Promise((resolve) => lines.once('line', resolve));

// What a failed call said, as the library reports it.
async function oauthError(call) {
  try {
    await call();
    return null;
  } catch (err) {
    if (err instanceof client.ResponseBodyError) return err.error;
    if (err instanceof client.WWWAuthenticateChallengeError) {
      return err.cause.map((c) => `${c.scheme}:${c.parameters.error ?? ''}`).join(',');
    }
    throw err;
  }
}

const verifier = client.randomPKCECodeVerifier();
const state = client.randomState();
const authorizeUrl = client.buildAuthorizationUrl(config, {
  redirect_uri: env.REDIRECT_URI,
  scope: 'accounts identity',
  state,
  code_challenge: await client.calculatePKCECodeChallenge(verifier),
  code_challenge_method: 'S256',
  institution_id: 'northbank',
});
console.log(JSON.stringify({ authorize: authorizeUrl.href }));
const back = new URL(await nextLine());
lines.close();

// Checks state, PKCE and (the metadata says it is sent) `iss` on the way.
const first = await client.authorizationCodeGrant(config, back, {
  pkceCodeVerifier: verifier,
  expectedState: state,
});
const resource = new URL(`/v2/connections/${first.connection_id}`, env.RESOURCE_BASE);
const read = async (token) => (await client.fetchProtectedResource(config, token, resource, 'GET')).status;
const result = {
  endpoints: [server.token_endpoint, server.revocation_endpoint, server.introspection_endpoint],
  token_type: first.token_type,
  scope: first.scope,
  connection_id: first.connection_id,
  first_read: await read(first.access_token),
};
const second = await client.refreshTokenGrant(config, first.refresh_token);
const third = await client.refreshTokenGrant(config, second.refresh_token);
result.refresh_tokens = new Set([first.refresh_token, second.refresh_token, third.refresh_token]).size;
result.refreshed_read = await read(third.access_token);
result.introspected = await client.tokenIntrospection(config, third.access_token);
await client.tokenRevocation(config, third.access_token, { token_type_hint: 'access_token' });
result.revoked_access_active = (await client.tokenIntrospection(config, third.access_token)).active;
result.revoked_access_read = await oauthError(() => read(third.access_token));
result.refresh_active_after_access_revoked = (await client.tokenIntrospection(config, third.refresh_token)).active;
// The first refresh token again: a replay, which ends the grant.
result.replay = await oauthError(() => client.refreshTokenGrant(config, first.refresh_token));
result.refresh_active_after_replay = (await client.tokenIntrospection(config, third.refresh_token)).active;
result.refresh_after_replay = await oauthError(() => client.refreshTokenGrant(config, third.refresh_token));
console.log(JSON.stringify({ result }));
