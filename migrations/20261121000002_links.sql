-- Link intents (CreateLink) and idempotency keys for creating calls.

CREATE TABLE links (
    id                    uuid PRIMARY KEY,
    organization_id       uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    environment           text NOT NULL CHECK (environment IN ('sandbox', 'production')),
    integration_id        text NOT NULL,
    -- [{resource, action}] without arguments.
    operations            jsonb NOT NULL,
    -- Arguments of every operation (card numbers, CVVs), AES-256-GCM encrypted
    -- (associated data: links.arguments:<id>); NULL once purged.
    arguments_ciphertext  bytea,
    webhook_url           text,
    return_url            text,
    external_user_id      text,
    debug                 boolean NOT NULL DEFAULT false,
    status                text NOT NULL DEFAULT 'pending' CHECK (status IN
                            ('pending', 'claimed', 'awaiting_2fa', 'completed', 'failed', 'expired', 'cancelled')),
    -- SHA-256 of the single-use claim code.
    claim_code_hash       bytea NOT NULL UNIQUE,
    error_code            text,
    error_message         text,
    result                jsonb,
    debug_trace           jsonb NOT NULL DEFAULT '[]',
    created_at            timestamptz NOT NULL DEFAULT now(),
    expires_at            timestamptz NOT NULL,
    claimed_at            timestamptz,
    finished_at           timestamptz
);

CREATE INDEX links_by_tenant ON links (organization_id, environment, created_at, id);
CREATE INDEX links_unfinished_by_expiry ON links (expires_at)
    WHERE status IN ('pending', 'claimed', 'awaiting_2fa');

CREATE TABLE idempotency_keys (
    organization_id  uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    environment      text NOT NULL,
    -- The RPC the key was used with, e.g. LinkService.CreateLink.
    operation        text NOT NULL,
    key              text NOT NULL,
    -- SHA-256 of the request message: same key with another request is refused.
    request_hash     bytea NOT NULL,
    -- The encoded response, encrypted (it may hold a claim code); NULL while
    -- the first request with this key is still running.
    response_ciphertext bytea,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization_id, environment, operation, key)
);
