-- Webhook delivery: every event row is also its delivery (one destination
-- per event), claimed by any replica's dispatcher with FOR UPDATE SKIP LOCKED.

ALTER TABLE events
    ADD COLUMN delivery_status text NOT NULL DEFAULT 'pending'
        CHECK (delivery_status IN ('pending', 'delivered', 'failed', 'skipped')),
    -- Attempts made (incremented when an attempt is claimed).
    ADD COLUMN attempts        integer NOT NULL DEFAULT 0,
    -- When the next attempt is due. While an attempt runs this is its lease:
    -- a dispatcher that dies leaves the event due again after the lease.
    ADD COLUMN next_attempt_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN delivered_at    timestamptz,
    ADD COLUMN last_error      text;

CREATE INDEX events_due ON events (next_attempt_at) WHERE delivery_status = 'pending';
CREATE INDEX events_by_connection ON events (organization_id, environment, connection_id, created_at);
CREATE INDEX events_by_link ON events (organization_id, environment, link_id, created_at);

CREATE TABLE delivery_attempts (
    id           uuid PRIMARY KEY,
    event_id     uuid NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    attempt      integer NOT NULL,
    url          text NOT NULL,
    started_at   timestamptz NOT NULL,
    latency_ms   integer NOT NULL,
    -- HTTP status, NULL when no response arrived (refused, timeout, error).
    status_code  integer,
    error        text
);

CREATE INDEX delivery_attempts_by_event ON delivery_attempts (event_id, attempt);

-- Secret rotation: the previous secret keeps signing (next to the new one)
-- until it expires, so receivers can switch without losing deliveries.
ALTER TABLE client_apps
    ADD COLUMN previous_webhook_secret_ciphertext bytea,
    ADD COLUMN previous_webhook_secret_expires_at timestamptz;

-- Endpoints that answered 410 Gone: nothing more is sent there until a
-- redelivery is requested for it.
CREATE TABLE disabled_webhook_endpoints (
    organization_id  uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    environment      text NOT NULL,
    url              text NOT NULL,
    disabled_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (organization_id, environment, url)
);

-- Where each event is delivered and which app signs it: the link's own
-- webhook URL when it has one, else the app's (a connection's app, or the
-- tenant's first app for link events).
CREATE VIEW event_destinations AS
SELECT e.id AS event_id,
       COALESCE(l.webhook_url, app.webhook_url) AS url,
       app.id AS client_app_id
FROM events e
LEFT JOIN links l ON l.id = e.link_id
LEFT JOIN connections conn ON conn.id = e.connection_id
LEFT JOIN LATERAL (
    SELECT a.id, a.webhook_url FROM client_apps a
    WHERE a.organization_id = e.organization_id AND a.environment = e.environment
      AND (conn.client_app_id IS NULL OR a.id = conn.client_app_id)
    ORDER BY a.created_at, a.id
    LIMIT 1
) app ON true;
