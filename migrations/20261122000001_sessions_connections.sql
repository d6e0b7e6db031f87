-- Link sessions (flows of kind 'session') and the connections they leave.

CREATE TABLE connections (
    id                  uuid PRIMARY KEY,
    organization_id     uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    environment         text NOT NULL CHECK (environment IN ('sandbox', 'production')),
    client_app_id       uuid NOT NULL REFERENCES client_apps (id) ON DELETE CASCADE,
    integration_id      text NOT NULL,
    status              text NOT NULL CHECK (status IN ('pending', 'active', 'awaiting_2fa', 'expired', 'failed')),
    client_reference_id text,
    -- {"country": "US", "state": "CA"}: the proxy location, when one was given.
    geolocation         jsonb,
    -- Provider session (cookies, tokens), AES-256-GCM encrypted (associated
    -- data: connections.session:<conn id>); NULL once expired or deleted.
    session_ciphertext  bytea,
    session_expires_at  timestamptz,
    authenticated_at    timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    -- Deleted connections are kept (billing records) but never read again.
    deleted_at          timestamptz,
    billing_stopped_at  timestamptz
);

-- Listing: newest first, keyset on (created_at, id).
CREATE INDEX connections_listing ON connections (organization_id, environment, created_at DESC, id DESC)
    WHERE deleted_at IS NULL;
CREATE INDEX connections_by_reference ON connections (organization_id, environment, client_reference_id, created_at DESC, id DESC)
    WHERE deleted_at IS NULL AND client_reference_id IS NOT NULL;
-- The session expiry sweep.
CREATE INDEX connections_session_expiry ON connections (session_expires_at)
    WHERE status = 'active' AND deleted_at IS NULL;

ALTER TABLE flows
    ADD COLUMN kind                text NOT NULL DEFAULT 'link' CHECK (kind IN ('link', 'session')),
    ADD COLUMN client_app_id       uuid REFERENCES client_apps (id) ON DELETE CASCADE,
    -- The registered redirect URI chosen at init; result parameters are appended.
    ADD COLUMN redirect_url        text,
    ADD COLUMN client_reference_id text,
    -- The connection this session creates (id chosen at init, row inserted
    -- at the first login attempt) or reconnects.
    ADD COLUMN connection_id       uuid,
    ADD COLUMN reconnect           boolean NOT NULL DEFAULT false,
    ADD COLUMN geolocation         jsonb,
    ADD COLUMN cancelled_step      text,
    ADD COLUMN lang                text NOT NULL DEFAULT 'en';

ALTER TABLE flows ADD CONSTRAINT flows_session_fields
    CHECK (kind = 'link' OR (client_app_id IS NOT NULL AND redirect_url IS NOT NULL AND connection_id IS NOT NULL));

-- The sweep that closes Link sessions nobody finished.
CREATE INDEX flows_open_sessions ON flows (expires_at) WHERE kind = 'session' AND outcome IS NULL;
