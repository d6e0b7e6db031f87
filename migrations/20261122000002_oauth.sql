-- OAuth 2.0 authorization-code grant (RFC 6749, RFC 7636 PKCE).

-- The client secret of a client app acting as an OAuth client, SHA-256 of
-- the secret; NULL until one is issued (`linkd admin rotate-client-secret`).
ALTER TABLE client_apps ADD COLUMN client_secret_hash bytea;

-- An authorization request behind a Link session: {"redirectUri" (as sent,
-- or null), "effectiveRedirectUri", "state", "scope", "codeChallenge",
-- "tag", "recipientId"}. NULL for plain Link sessions.
ALTER TABLE flows ADD COLUMN oauth jsonb;

CREATE TABLE oauth_codes (
    id                     uuid PRIMARY KEY,
    -- SHA-256 of the code (256 random bits); the code itself is never stored.
    code_hash              bytea NOT NULL UNIQUE,
    organization_id        uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    environment            text NOT NULL,
    client_app_id          uuid NOT NULL REFERENCES client_apps (id) ON DELETE CASCADE,
    connection_id          uuid NOT NULL,
    -- The redirect_uri parameter of the authorization request (NULL when it
    -- was omitted) and the URI actually used.
    redirect_uri           text,
    effective_redirect_uri text NOT NULL,
    code_challenge         text,
    scope                  text NOT NULL,
    created_at             timestamptz NOT NULL DEFAULT now(),
    expires_at             timestamptz NOT NULL,
    used_at                timestamptz
);

CREATE TABLE oauth_tokens (
    id               uuid PRIMARY KEY,
    -- SHA-256 of the access token; the token itself is never stored.
    token_hash       bytea NOT NULL UNIQUE,
    code_id          uuid NOT NULL REFERENCES oauth_codes (id) ON DELETE CASCADE,
    organization_id  uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    environment      text NOT NULL,
    client_app_id    uuid NOT NULL REFERENCES client_apps (id) ON DELETE CASCADE,
    connection_id    uuid NOT NULL,
    scope            text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz NOT NULL,
    revoked_at       timestamptz
);

CREATE INDEX oauth_tokens_by_code ON oauth_tokens (code_id);
