-- Claiming due events costs the batch, not the backlog: "pending, due, oldest
-- first, LIMIT n" reads n entries of this index in order (no sort of every
-- due row). Replaces events_due, which had no id to break ties on.
CREATE INDEX events_due_in_order ON events (next_attempt_at, id) WHERE delivery_status = 'pending';
DROP INDEX events_due;
