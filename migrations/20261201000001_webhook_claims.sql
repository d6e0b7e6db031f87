-- Claiming due events costs the batch, not the backlog: "pending, due, oldest
-- first, LIMIT n" reads n entries of this index in order (no sort of every
-- due row). Replaces events_due, which had no id to break ties on.
--
-- This runs inside the migration's transaction and blocks event writes while
-- it builds. With a large outbox, build it first without blocking:
--   CREATE INDEX CONCURRENTLY events_due_in_order ON events (next_attempt_at, id)
--       WHERE delivery_status = 'pending';
-- and this migration then only drops the old index.
CREATE INDEX IF NOT EXISTS events_due_in_order ON events (next_attempt_at, id)
    WHERE delivery_status = 'pending';
DROP INDEX IF EXISTS events_due;
