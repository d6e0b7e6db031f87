"""A client app using Authlib (PyPI) against a live linkd, configured by
RFC 8414 discovery alone: nothing but the issuer URL and the client's own
credentials is given.

Environment: ISSUER, CLIENT_ID, CLIENT_SECRET (unset: a public client),
REDIRECT_URI, RESOURCE_BASE (linkd's URL for the protected resource).
Protocol: prints {"authorize": URL} and reads one line, the URL the end
user came back to; prints {"result": {...}} with what the library saw.
"""

import json
import os
import sys
from urllib.parse import parse_qs, urlsplit

import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session, OAuthError

# Authlib refuses plain http unless told; linkd runs on loopback here.
os.environ["AUTHLIB_INSECURE_TRANSPORT"] = "1"

env = os.environ
issuer = env["ISSUER"]
metadata = requests.get(f"{issuer}/.well-known/oauth-authorization-server", timeout=10).json()
secret = env.get("CLIENT_SECRET")
method = "client_secret_basic" if secret else "none"
assert method in metadata["token_endpoint_auth_methods_supported"], metadata
assert "S256" in metadata["code_challenge_methods_supported"], metadata

session = OAuth2Session(
    env["CLIENT_ID"],
    secret,
    scope="accounts identity",
    redirect_uri=env["REDIRECT_URI"],
    code_challenge_method="S256",
    token_endpoint_auth_method=method,
    revocation_endpoint_auth_method=method,
)
verifier = generate_token(64)
url, state = session.create_authorization_url(
    metadata["authorization_endpoint"], code_verifier=verifier, institution_id="northbank"
)
print(json.dumps({"authorize": url}), flush=True)
back = sys.stdin.readline().strip()

# RFC 9207: the response names the issuer the client talked to.
iss = parse_qs(urlsplit(back).query).get("iss", [None])[0]
assert metadata["authorization_response_iss_parameter_supported"] is True
first = session.fetch_token(
    metadata["token_endpoint"], authorization_response=back, code_verifier=verifier, state=state
)
resource = f"{env['RESOURCE_BASE']}/v2/connections/{first['connection_id']}"


def read(token):
    response = requests.get(resource, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    challenge = response.headers.get("WWW-Authenticate", "")
    return response.status_code if response.ok else f"{response.status_code} {challenge}"


def oauth_error(call):
    try:
        call()
        return None
    except OAuthError as err:
        return err.error


def introspect(token):
    return session.introspect_token(metadata["introspection_endpoint"], token=token).json()


result = {
    "iss": iss,
    "token_type": first["token_type"],
    "scope": first["scope"],
    "connection_id": first["connection_id"],
    "first_read": read(first["access_token"]),
}
second = session.refresh_token(metadata["token_endpoint"], refresh_token=first["refresh_token"])
third = session.refresh_token(metadata["token_endpoint"], refresh_token=second["refresh_token"])
result["refresh_tokens"] = len(
    {first["refresh_token"], second["refresh_token"], third["refresh_token"]}
)
result["refreshed_read"] = read(third["access_token"])
result["introspected"] = introspect(third["access_token"])
revoked = session.revoke_token(
    metadata["revocation_endpoint"], token=third["access_token"], token_type_hint="access_token"
)
result["revoke_status"] = revoked.status_code
result["revoked_access_active"] = introspect(third["access_token"])["active"]
result["revoked_access_read"] = read(third["access_token"])
result["refresh_active_after_access_revoked"] = introspect(third["refresh_token"])["active"]
# The first refresh token again: a replay, which ends the grant.
result["replay"] = oauth_error(
    lambda: session.refresh_token(metadata["token_endpoint"], refresh_token=first["refresh_token"])
)
result["refresh_active_after_replay"] = introspect(third["refresh_token"])["active"]
result["refresh_after_replay"] = oauth_error(
    lambda: session.refresh_token(metadata["token_endpoint"], refresh_token=third["refresh_token"])
)
print(json.dumps({"result": result}), flush=True)
