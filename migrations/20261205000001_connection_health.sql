-- Connection health: the background check asks each active connection's
-- connector whether its session is still usable, spread over the check
-- interval; a session that will end soon is announced once.
ALTER TABLE connections
    -- When the next check is due; NULL: one interval after authenticated_at.
    ADD COLUMN next_check_at    timestamptz,
    -- When connection.expiring was sent for the current session (a reconnect,
    -- which moves authenticated_at, allows another).
    ADD COLUMN expiry_warned_at timestamptz;

CREATE INDEX connections_health_due ON connections (next_check_at NULLS FIRST)
    WHERE status = 'active' AND deleted_at IS NULL;

-- Sandbox provider sessions ended on purpose (ResetSandboxLogin), by the
-- sandboxSession id the sandbox connector gives each login.
CREATE TABLE sandbox_ended_sessions (
    session_id text PRIMARY KEY,
    ended_at   timestamptz NOT NULL DEFAULT now()
);
