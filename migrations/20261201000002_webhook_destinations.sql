-- One slow or failing destination cannot slow the others: every pending
-- event knows its destination (so a dispatcher can cap deliveries in flight
-- per destination and a circuit breaker can hold a destination's events back
-- together), and each destination that has failed has a breaker row.

-- The destination an event follows, as a key that does not change when a
-- webhook URL is corrected: `app:<client app id>` for events sent to an
-- app's webhook URL (wherever it points when the attempt is made),
-- `url:<org>/<environment>/<md5 of the url>` for a link's own webhook URL
-- (fixed at creation; hashed, so the key is short and a URL's query string
-- never reaches a log line), `tenant:<org>/<environment>` when there is no app. The same
-- choice as the event_destinations view makes for the URL.
CREATE FUNCTION event_destination(org uuid, env text, link uuid, conn uuid) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT COALESCE(
        (SELECT 'url:' || l.organization_id || '/' || l.environment || '/' || md5(l.webhook_url)
         FROM links l WHERE l.id = link AND l.webhook_url IS NOT NULL),
        (SELECT 'app:' || a.id FROM client_apps a
         LEFT JOIN connections c ON c.id = conn
         WHERE a.organization_id = org AND a.environment = env
           AND (c.client_app_id IS NULL OR a.id = c.client_app_id)
         ORDER BY a.created_at, a.id
         LIMIT 1),
        'tenant:' || org || '/' || env)
$$;

-- A destination's circuit breaker, shared by every replica. A row exists
-- once the destination failed; `open_until` in the future means its events
-- wait until then (the breaker is open).
CREATE TABLE webhook_destinations (
    destination           text PRIMARY KEY,
    -- Failed attempts since the last delivered one.
    consecutive_failures  integer NOT NULL DEFAULT 0,
    -- Times opened since the last delivered attempt: each doubles the wait.
    openings              integer NOT NULL DEFAULT 0,
    open_until            timestamptz,
    opened_at             timestamptz,
    -- Why it last failed (never a secret: statuses, time-outs, errors).
    last_error            text,
    last_failure_at       timestamptz,
    last_success_at       timestamptz
);

-- Existing finished events keep '' (their destination no longer matters; a
-- redelivery computes it). Adding a column with a constant default does not
-- rewrite the table.
ALTER TABLE events ADD COLUMN destination text NOT NULL DEFAULT '';
UPDATE events SET destination = event_destination(organization_id, environment, link_id, connection_id)
WHERE delivery_status = 'pending';

-- Every writer of the outbox gets the destination from here, and an event
-- written while its destination's breaker is open waits with the others.
CREATE FUNCTION events_set_destination() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    held_until timestamptz;
    reason text;
BEGIN
    NEW.destination := event_destination(NEW.organization_id, NEW.environment, NEW.link_id, NEW.connection_id);
    SELECT w.open_until, w.last_error INTO held_until, reason
    FROM webhook_destinations w
    WHERE w.destination = NEW.destination AND w.open_until > now();
    IF held_until IS NOT NULL AND NEW.next_attempt_at < held_until THEN
        NEW.next_attempt_at := held_until;
        NEW.last_error := 'destination paused until ' || held_until || ' after repeated failures ('
                          || COALESCE(reason, 'unknown') || ')';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER events_destination BEFORE INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION events_set_destination();

-- Holding a destination's events back reads only that destination's.
CREATE INDEX events_pending_by_destination ON events (destination, next_attempt_at)
    WHERE delivery_status = 'pending';

-- Records the outcomes of one batch of attempts per destination and moves
-- the breakers: `succeeded` (a 2xx among them; `failures` then counts the
-- failures after the last success), `failures`, the last `errors`. A
-- destination whose consecutive failures reach `threshold` opens for
-- `cooldown_secs`, doubled for each opening since its last success (at most
-- 32 times), and its pending events due before then wait until then; an
-- event older than `give_up_secs` (the whole retry schedule) fails instead.
-- Destinations are locked in sorted order, so concurrent replicas never
-- deadlock, and each decision is made on the locked row. Returns the
-- destinations opened now.
CREATE FUNCTION record_destination_outcomes(
    destinations text[], succeeded boolean[], failures integer[], errors text[],
    threshold integer, cooldown_secs float8, give_up_secs float8)
RETURNS TABLE (destination text, open_until timestamptz, held bigint, given_up bigint)
LANGUAGE plpgsql AS $$
DECLARE
    o record;
    b webhook_destinations%ROWTYPE;
    total integer;
    base integer;
    reason text;
BEGIN
    FOR o IN
        SELECT t.destination, t.succeeded, t.failures, t.error
        FROM unnest(destinations, succeeded, failures, errors) AS t(destination, succeeded, failures, error)
        ORDER BY t.destination
    LOOP
        IF o.failures > 0 THEN
            INSERT INTO webhook_destinations AS w (destination) VALUES (o.destination)
            ON CONFLICT DO NOTHING;
        END IF;
        SELECT * INTO b FROM webhook_destinations w WHERE w.destination = o.destination FOR UPDATE;
        CONTINUE WHEN NOT FOUND;
        IF o.succeeded THEN
            total := o.failures;
            base := 0;
        ELSE
            total := b.consecutive_failures + o.failures;
            base := b.openings;
        END IF;
        IF o.failures > 0 AND total >= threshold AND (b.open_until IS NULL OR b.open_until <= now()) THEN
            b.open_until := now() + make_interval(secs => cooldown_secs * power(2, LEAST(base, 5)));
            b.opened_at := now();
            b.openings := base + 1;
            reason := 'destination paused until ' || b.open_until || ' after ' || total
                      || ' failed attempts in a row (' || COALESCE(o.error, b.last_error, 'unknown') || ')';
            destination := o.destination;
            open_until := b.open_until;
            WITH due AS (
                SELECT e.id FROM events e
                WHERE e.destination = o.destination AND e.delivery_status = 'pending'
                  AND e.next_attempt_at < b.open_until
                FOR UPDATE SKIP LOCKED
            ), moved AS (
                UPDATE events e SET
                    delivery_status = CASE WHEN e.created_at < now() - make_interval(secs => give_up_secs)
                                           THEN 'failed' ELSE 'pending' END,
                    next_attempt_at = b.open_until,
                    last_error = CASE WHEN e.created_at < now() - make_interval(secs => give_up_secs)
                                      THEN reason || '; its retry schedule is over'
                                      ELSE reason END
                FROM due WHERE e.id = due.id
                RETURNING e.delivery_status
            )
            SELECT count(*) FILTER (WHERE m.delivery_status = 'pending'),
                   count(*) FILTER (WHERE m.delivery_status = 'failed')
            INTO held, given_up FROM moved m;
            RETURN NEXT;
        ELSIF o.succeeded AND o.failures = 0 THEN
            -- It answered last: closed, whatever the wait was.
            b.open_until := NULL;
            b.openings := 0;
        END IF;
        UPDATE webhook_destinations w SET
            consecutive_failures = total,
            openings = b.openings,
            open_until = b.open_until,
            opened_at = b.opened_at,
            last_error = COALESCE(o.error, b.last_error),
            last_failure_at = CASE WHEN o.failures > 0 THEN now() ELSE b.last_failure_at END,
            last_success_at = CASE WHEN o.succeeded THEN now() ELSE b.last_success_at END
        WHERE w.destination = o.destination;
    END LOOP;
END
$$;
