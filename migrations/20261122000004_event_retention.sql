-- Finished events are removed after the retention period (LINKD_EVENT_RETENTION)
-- by the expiry sweep, oldest first; pending ones are never removed.
CREATE INDEX events_finished_by_age ON events (created_at) WHERE delivery_status <> 'pending';
