-- End-user flows, the event outbox, and the sandbox connector's account state.

-- A flow is what the end user's browser or app clip moves through, authorized
-- by a bearer flow token stored only as a hash.
CREATE TABLE flows (
    id                    uuid PRIMARY KEY,
    token_hash            bytea NOT NULL UNIQUE,
    organization_id       uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    environment           text NOT NULL,
    link_id               uuid REFERENCES links (id) ON DELETE CASCADE,
    integration_id        text,
    step                  text NOT NULL CHECK (step IN ('pre-login', 'authorization', 'login', '2fa', 'processing', 'done')),
    outcome               text CHECK (outcome IN ('success', 'cancelled', 'error')),
    error_code            text,
    second_factor_prompt  text,
    -- Provider session (pending 2FA login), AES-256-GCM encrypted
    -- (associated data: flows.session:<id>); NULL when none.
    session_ciphertext    bytea,
    failed_logins         integer NOT NULL DEFAULT 0,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    expires_at            timestamptz NOT NULL
);

CREATE INDEX flows_by_link ON flows (link_id);

-- Events, written in the same transaction as the change they describe;
-- webhook delivery reads them from here.
CREATE TABLE events (
    id               uuid PRIMARY KEY,
    organization_id  uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    environment      text NOT NULL,
    type             text NOT NULL,
    link_id          uuid,
    connection_id    uuid,
    -- {"type": ..., "data": {...}}: never contains a secret.
    payload          jsonb NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX events_by_tenant ON events (organization_id, environment, created_at, id);

-- The sandbox connector's fake provider accounts, per tenant. Cards keep only
-- brand, last four digits and expiry.
CREATE TABLE sandbox_accounts (
    organization_id  uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    environment      text NOT NULL,
    integration_id   text NOT NULL,
    username         text NOT NULL,
    payment_methods  jsonb NOT NULL DEFAULT '[]',
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization_id, environment, integration_id, username)
);
