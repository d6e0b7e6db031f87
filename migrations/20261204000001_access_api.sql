-- The Access API: operations run on a connection's stored provider session.

-- The run that holds a connection's provider session, and until when: runs
-- on one connection take turns (a session is not assumed to be safe to
-- share), and a replica that dies mid-run frees it when the lease ends.
ALTER TABLE connections
    ADD COLUMN operations_run_id      uuid,
    ADD COLUMN operations_lease_until timestamptz;

-- Every ExecuteOperations call that ran: what it ran (never arguments), how
-- it ended and how long it took.
CREATE TABLE operation_runs (
    id              uuid PRIMARY KEY,
    organization_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    environment     text NOT NULL CHECK (environment IN ('sandbox', 'production')),
    connection_id   uuid NOT NULL REFERENCES connections (id),
    operations      jsonb NOT NULL,
    status          text NOT NULL CHECK (status IN ('succeeded', 'failed')),
    error_code      text,
    error_message   text,
    started_at      timestamptz NOT NULL,
    finished_at     timestamptz NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX operation_runs_listing ON operation_runs (connection_id, created_at DESC, id DESC);

-- A claim of an idempotency key that is held by a lease rather than by the
-- claiming transaction (calls whose work cannot sit in one transaction):
-- while it lasts, a repeat is told the first is still running.
ALTER TABLE idempotency_keys ADD COLUMN lease_until timestamptz;
