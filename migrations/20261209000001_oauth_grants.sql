-- OAuth grants with refresh tokens (rotated, reuse-detected), public
-- clients, and the web origins allowed to call the token endpoints.

-- How a client app acts as an OAuth client (RFC 6749 §2.1):
-- 'confidential' authenticates with its client secret (client_secret_basic
-- or client_secret_post); 'public' (a native or single-page app,
-- token_endpoint_auth_method `none`) sends only its client_id and must use
-- PKCE. `oauth_refresh_tokens`: whether its grants get refresh tokens.
-- `oauth_web_origins`: the browser origins (`https://app.example`) its
-- JavaScript may call the token, revocation and introspection endpoints
-- from (CORS).
ALTER TABLE client_apps
    ADD COLUMN oauth_client_type text NOT NULL DEFAULT 'confidential'
        CHECK (oauth_client_type IN ('confidential', 'public')),
    ADD COLUMN oauth_refresh_tokens boolean NOT NULL DEFAULT true,
    ADD COLUMN oauth_web_origins text[] NOT NULL DEFAULT '{}';

CREATE INDEX client_apps_by_web_origin ON client_apps USING gin (oauth_web_origins);

-- A grant: what one redeemed authorization code allows its client, for as
-- long as the grant lives. Every token descends from one; revoking the
-- grant (code replayed, refresh token replayed, refresh token revoked,
-- connection deleted) ends all of them at once.
CREATE TABLE oauth_grants (
    id                 uuid PRIMARY KEY,
    code_id            uuid NOT NULL UNIQUE REFERENCES oauth_codes (id) ON DELETE CASCADE,
    organization_id    uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    environment        text NOT NULL,
    client_app_id      uuid NOT NULL REFERENCES client_apps (id) ON DELETE CASCADE,
    connection_id      uuid NOT NULL,
    scope              text NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    -- The end of every refresh token of the grant (LINKD_OAUTH_REFRESH_TTL
    -- after the code was redeemed): rotation never extends it. NULL: the
    -- client gets no refresh tokens.
    refresh_expires_at timestamptz,
    revoked_at         timestamptz
);

CREATE INDEX oauth_grants_by_connection ON oauth_grants (connection_id) WHERE revoked_at IS NULL;

-- Tokens issued before grants existed: one grant per code, same id.
INSERT INTO oauth_grants (id, code_id, organization_id, environment, client_app_id, connection_id, scope, created_at)
SELECT c.id, c.id, c.organization_id, c.environment, c.client_app_id, c.connection_id, c.scope, c.used_at
FROM oauth_codes c
WHERE c.used_at IS NOT NULL;

ALTER TABLE oauth_tokens
    ADD COLUMN grant_id uuid REFERENCES oauth_grants (id) ON DELETE CASCADE,
    -- 'access' (`lat_…`, read a connection) or 'refresh' (`lrt_…`, get new
    -- tokens at the token endpoint, once).
    ADD COLUMN kind text NOT NULL DEFAULT 'access' CHECK (kind IN ('access', 'refresh')),
    -- Refresh tokens: when it was exchanged. A second use is a replay and
    -- revokes the grant.
    ADD COLUMN used_at timestamptz;

UPDATE oauth_tokens SET grant_id = code_id;
-- `kind` keeps its default: the previous release inserts access tokens
-- without it (see the trigger below).
ALTER TABLE oauth_tokens ALTER COLUMN grant_id SET NOT NULL;

CREATE INDEX oauth_tokens_by_grant ON oauth_tokens (grant_id);

-- What the retention sweep looks for: codes never redeemed, grants that
-- ended (revoked, or past every token they could have issued), access
-- tokens long expired.
CREATE INDEX oauth_codes_unredeemed_by_expiry ON oauth_codes (expires_at) WHERE used_at IS NULL;
CREATE INDEX oauth_grants_by_end ON oauth_grants ((COALESCE(refresh_expires_at, created_at)));
CREATE INDEX oauth_grants_by_revocation ON oauth_grants (revoked_at) WHERE revoked_at IS NOT NULL;
CREATE INDEX oauth_access_tokens_by_expiry ON oauth_tokens (expires_at) WHERE kind = 'access';

-- During a rolling upgrade, replicas of the previous release still redeem
-- codes and insert access tokens without a grant: give such a token its
-- code's grant (made on the spot, like the ones above), so every token has
-- one and revoking the grant reaches it. New code always names the grant.
CREATE FUNCTION oauth_tokens_grant_of_code() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.grant_id IS NULL THEN
        INSERT INTO oauth_grants (id, code_id, organization_id, environment, client_app_id,
                                  connection_id, scope)
        VALUES (NEW.code_id, NEW.code_id, NEW.organization_id, NEW.environment,
                NEW.client_app_id, NEW.connection_id, NEW.scope)
        ON CONFLICT (code_id) DO NOTHING;
        NEW.grant_id := (SELECT id FROM oauth_grants WHERE code_id = NEW.code_id);
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER oauth_tokens_grant_of_code BEFORE INSERT ON oauth_tokens
    FOR EACH ROW EXECUTE FUNCTION oauth_tokens_grant_of_code();
