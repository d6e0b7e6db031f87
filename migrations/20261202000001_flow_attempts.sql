-- One provider call at a time per flow, and a link state for running
-- operations, so that concurrent requests on one flow cannot each reach the
-- provider (issue: five-attempt limit and run-once operations under races).

-- The attempt in flight: set by the statement that reserves it (which also
-- counts it in failed_logins and checks the limit), cleared by the statement
-- that records its outcome. While attempt_until is in the future no other
-- request may call the provider for this flow. A process that dies mid-call
-- leaves a lease that simply runs out.
ALTER TABLE flows
    ADD COLUMN attempt_id    uuid,
    ADD COLUMN attempt_until timestamptz;

COMMENT ON COLUMN flows.failed_logins IS
    'Provider calls (logins, second-factor codes) that failed or are in flight; a successful call is given back.';

-- Runs whose lease ran out (the process running them died) are failed by
-- the expiry sweep.
CREATE INDEX flows_running ON flows (attempt_until) WHERE step = 'processing' AND outcome IS NULL;

-- `processing`: logged in, the operations are running (one request runs them).
ALTER TABLE links DROP CONSTRAINT links_status_check;
ALTER TABLE links ADD CONSTRAINT links_status_check CHECK (status IN
    ('pending', 'claimed', 'awaiting_2fa', 'processing', 'completed', 'failed', 'expired', 'cancelled'));

-- What the sandbox provider saw: every login and second-factor code that
-- reached it for an account, as a real provider's own counters would.
ALTER TABLE sandbox_accounts
    ADD COLUMN login_attempts integer NOT NULL DEFAULT 0,
    ADD COLUMN code_attempts  integer NOT NULL DEFAULT 0;

-- The body of a link event written by a sweep, the shape finish_link
-- writes: {"type", "data": {"linkId", "integrationId", "status",
-- "externalUserId", "errorCode"}}.
CREATE FUNCTION link_event_payload(event_type text, link_id uuid, integration_id text,
                                   status text, external_user_id text, error_code text)
RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object('type', event_type, 'data', jsonb_build_object(
        'linkId', 'link_' || replace(link_id::text, '-', ''),
        'integrationId', integration_id,
        'status', status,
        'externalUserId', external_user_id,
        'errorCode', error_code))
$$;
