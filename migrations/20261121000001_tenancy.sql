-- Tenancy: organizations, their client apps, and API keys.
-- Every tenant-scoped table carries (organization_id, environment) and every
-- query filters on both.

CREATE TABLE organizations (
    id          uuid PRIMARY KEY,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE client_apps (
    id                         uuid PRIMARY KEY,
    organization_id            uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    environment                text NOT NULL CHECK (environment IN ('sandbox', 'production')),
    name                       text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    -- Compared by exact string; the first one is the default.
    redirect_uris              text[] NOT NULL CHECK (cardinality(redirect_uris) >= 1),
    webhook_url                text,
    -- whsec_… secret, AES-256-GCM encrypted (associated data: client_apps.webhook_secret:<id>).
    webhook_secret_ciphertext  bytea NOT NULL,
    created_at                 timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX client_apps_by_tenant ON client_apps (organization_id, environment, created_at, id);

CREATE TABLE api_keys (
    id               uuid PRIMARY KEY,
    organization_id  uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    environment      text NOT NULL CHECK (environment IN ('sandbox', 'production')),
    -- Public part of the key, used to find the row; the secret part is only
    -- stored as a SHA-256 hash and compared in constant time.
    lookup_id        text NOT NULL UNIQUE,
    secret_hash      bytea NOT NULL CHECK (length(secret_hash) = 32),
    created_at       timestamptz NOT NULL DEFAULT now(),
    revoked_at       timestamptz
);

CREATE INDEX api_keys_by_organization ON api_keys (organization_id, environment);
