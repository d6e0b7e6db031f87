-- How the Link page presents a client app to its end users.
ALTER TABLE client_apps
    -- Shown instead of `name`; NULL: `name`.
    ADD COLUMN brand_display_name text,
    -- `#rrggbb` accent of the page's buttons; NULL: linkd's own.
    ADD COLUMN brand_accent_color text CHECK (brand_accent_color ~ '^#[0-9a-f]{6}$');

-- The app's logo, uploaded to linkd and served by it (the Link page loads
-- nothing from third parties). `sha256` versions its URL.
CREATE TABLE client_app_logos (
    client_app_id uuid PRIMARY KEY REFERENCES client_apps (id) ON DELETE CASCADE,
    content_type  text NOT NULL CHECK (content_type IN ('image/png', 'image/jpeg', 'image/webp')),
    bytes         bytea NOT NULL,
    sha256        text NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
