-- Rate limits shared by every replica: one token bucket per API key and per
-- client app. Replicas lease tokens from a bucket in chunks and spend them
-- locally, so a call costs a round trip here only once per chunk.
CREATE TABLE rate_limit_buckets (
    -- `api_key:<uuid>` or `client_app:<uuid>`.
    key         text PRIMARY KEY,
    -- The policy applied at the last lease (tokens per second, bucket size).
    rate        double precision NOT NULL CHECK (rate > 0),
    burst       double precision NOT NULL CHECK (burst >= 1),
    -- Tokens left after the last lease, as of `refilled_at`.
    tokens      double precision NOT NULL,
    -- What the last lease took (for its RETURNING).
    granted     integer NOT NULL,
    refilled_at timestamptz NOT NULL
);

-- The tokens a bucket holds now: what it had, plus what the rate added
-- since, up to the burst.
CREATE FUNCTION rate_limit_refilled(
    tokens double precision,
    refilled_at timestamptz,
    rate double precision,
    burst double precision
) RETURNS double precision
LANGUAGE sql STABLE AS $$
    SELECT LEAST(burst, tokens + rate * GREATEST(0, EXTRACT(EPOCH FROM now() - refilled_at))::double precision)
$$;

-- An operator's policy for one client app (`linkd admin set-rate-limit`);
-- both NULL: the server's `LINKD_RATE_LIMIT_CLIENT_APP`.
ALTER TABLE client_apps
    ADD COLUMN rate_limit_per_second double precision CHECK (rate_limit_per_second > 0),
    ADD COLUMN rate_limit_burst integer CHECK (rate_limit_burst >= 1),
    ADD CONSTRAINT client_apps_rate_limit_whole
        CHECK ((rate_limit_per_second IS NULL) = (rate_limit_burst IS NULL));
