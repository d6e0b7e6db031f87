-- OAuth 2.0 provider integrations (catalog entries with auth type oauth2).

-- A client app's OAuth client at a provider, one per integration. The
-- secret is AES-256-GCM encrypted (associated data:
-- provider_oauth_clients.secret:<app>:<integration>) and never returned.
CREATE TABLE provider_oauth_clients (
    client_app_id     uuid NOT NULL REFERENCES client_apps (id) ON DELETE CASCADE,
    integration_id    text NOT NULL,
    client_id         text NOT NULL,
    secret_ciphertext bytea NOT NULL,
    -- Scopes requested; NULL: the catalog's default scopes.
    scopes            text[],
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (client_app_id, integration_id)
);

-- Whether the app may read a connection's access token
-- (GetConnectionAccessToken); off unless the operator turns it on.
ALTER TABLE client_apps ADD COLUMN access_token_handoff boolean NOT NULL DEFAULT false;

-- One authorization request sent to a provider for a flow: its `state`
-- (hashed; 256 random bits), single-use, and the PKCE verifier kept here
-- (encrypted, associated data flow_authorizations.verifier:<state hash>)
-- until the code is exchanged.
CREATE TABLE flow_authorizations (
    state_hash            bytea PRIMARY KEY,
    flow_id               uuid NOT NULL REFERENCES flows (id) ON DELETE CASCADE,
    verifier_ciphertext   bytea,
    -- `page` (the Link page's own tab) or `popup` (embedded Link pages).
    display               text NOT NULL CHECK (display IN ('page', 'popup')),
    created_at            timestamptz NOT NULL DEFAULT now(),
    -- Set by the one callback that may use it.
    used_at               timestamptz
);

CREATE INDEX flow_authorizations_by_flow ON flow_authorizations (flow_id);

-- The tokens of an OAuth connection live in its sealed session; these
-- columns say when they need refreshing and how refreshing has gone.
ALTER TABLE connections
    -- When the access token expires; NULL: unknown (refreshed on a 401).
    ADD COLUMN token_expires_at  timestamptz,
    -- When the current access token was obtained.
    ADD COLUMN token_obtained_at timestamptz,
    -- When the background refresher should take it next (before expiry, or
    -- after a back-off); NULL: nothing to do.
    ADD COLUMN refresh_due_at    timestamptz,
    -- No refresh (on demand either) before this: back-off after failures.
    ADD COLUMN refresh_not_before timestamptz,
    -- Refreshes that failed in a row, and the last one's error code.
    ADD COLUMN refresh_failures  integer NOT NULL DEFAULT 0,
    ADD COLUMN refresh_error     text,
    -- Set when refreshing has failed too often to keep retrying soon.
    ADD COLUMN refresh_exhausted_at timestamptz;

CREATE INDEX connections_refresh_due ON connections (refresh_due_at)
    WHERE refresh_due_at IS NOT NULL AND status = 'active' AND deleted_at IS NULL;
