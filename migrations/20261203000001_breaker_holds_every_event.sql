-- A breaker holds every pending event of its destination, including the
-- ones written while it was opening and the ones in flight when it opened.
--
-- Before: an event inserted by a transaction that committed just after the
-- breaker opened was neither moved by the opening (not yet visible) nor by
-- the insert trigger (the breaker not yet visible): it was not sent (claims
-- skip paused destinations) but showed as due with no reason. Now the
-- trigger and the opening meet on an advisory lock per destination (the
-- two-key form, in its own key space 7131002). An attempt in flight when
-- the breaker opened used to reschedule its event for its own short retry
-- delay; `finish_attempts` now keeps it until the breaker's end.

CREATE OR REPLACE FUNCTION events_set_destination() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    held_until timestamptz;
    reason text;
BEGIN
    NEW.destination := event_destination(NEW.organization_id, NEW.environment, NEW.link_id, NEW.connection_id);
    -- Until this transaction ends, a breaker opening for the destination
    -- waits (and then holds this event too); one that opened first is seen
    -- by the next statement's fresh snapshot.
    PERFORM pg_advisory_xact_lock_shared(7131002, hashtext(NEW.destination));
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


CREATE OR REPLACE FUNCTION record_destination_outcomes(
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
            -- Waits for transactions still writing events to this
            -- destination, so the hold below sees them.
            PERFORM pg_advisory_xact_lock(7131002, hashtext(o.destination));
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
