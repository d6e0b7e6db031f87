//! Organizations and their client apps.

use crate::client_apps::rules::NewClientApp;
use crate::kernel::db::Db;
use crate::kernel::error::{Error, Result};
use crate::kernel::ids::{ClientAppId, OrganizationId};
use crate::kernel::tenant::{Environment, Tenant};
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClientAppRow {
    pub id: ClientAppId,
    pub organization_id: OrganizationId,
    pub environment: String,
    pub name: String,
    pub redirect_uris: Vec<String>,
    pub webhook_url: Option<String>,
    pub created_at: DateTime<Utc>,
    /// May read connections' provider access tokens (operator setting).
    pub access_token_handoff: bool,
    pub brand_display_name: Option<String>,
    pub brand_accent_color: Option<String>,
    /// The logo's version (its SHA-256, hex) when it has one.
    pub logo_sha256: Option<String>,
    /// The app's own rate limit (operator setting), both or neither.
    pub rate_limit_per_second: Option<f64>,
    pub rate_limit_burst: Option<i32>,
    /// `confidential` or `public` (RFC 6749 §2.1).
    pub oauth_client_type: String,
    /// Whether its OAuth grants get refresh tokens.
    pub oauth_refresh_tokens: bool,
    /// Browser origins allowed to call the token endpoints (CORS).
    pub oauth_web_origins: Vec<String>,
}

/// The stored `oauth_client_type` of a public client (RFC 6749 §2.1).
const PUBLIC_CLIENT: &str = "public";

impl ClientAppRow {
    /// A public OAuth client: no secret, PKCE required.
    pub fn is_public_client(&self) -> bool {
        self.oauth_client_type == PUBLIC_CLIENT
    }

    pub fn environment(&self) -> Environment {
        Environment::parse(&self.environment).expect("CHECK constraint limits environment")
    }
}

/// Columns of [`ClientAppRow`], as a macro so queries stay `&'static str`.
macro_rules! app_columns {
    () => {
        "id, organization_id, environment, name, redirect_uris, webhook_url, created_at, access_token_handoff, \
         brand_display_name, brand_accent_color, rate_limit_per_second, rate_limit_burst, \
         oauth_client_type, oauth_refresh_tokens, oauth_web_origins, \
         (SELECT sha256 FROM client_app_logos l WHERE l.client_app_id = client_apps.id) AS logo_sha256"
    };
}

pub async fn create_organization(
    db: impl PgExecutor<'_>,
    id: OrganizationId,
    name: &str,
) -> Result<()> {
    sqlx::query("INSERT INTO organizations (id, name) VALUES ($1, $2)")
        .bind(id)
        .bind(name)
        .execute(db)
        .await?;
    Ok(())
}

pub async fn organization_exists(db: impl PgExecutor<'_>, id: OrganizationId) -> Result<bool> {
    Ok(
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM organizations WHERE id = $1)")
            .bind(id)
            .fetch_one(db)
            .await?,
    )
}

pub async fn count_organizations(db: impl PgExecutor<'_>) -> Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM organizations")
        .fetch_one(db)
        .await?)
}

pub async fn insert_client_app(
    db: impl PgExecutor<'_>,
    id: ClientAppId,
    tenant: Tenant,
    app: &NewClientApp,
    webhook_secret_ciphertext: &[u8],
    client_secret_hash: &[u8],
) -> Result<ClientAppRow> {
    Ok(sqlx::query_as(concat!(
        "INSERT INTO client_apps (id, organization_id, environment, name, redirect_uris, webhook_url,
             webhook_secret_ciphertext, client_secret_hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING ",
        app_columns!()
    ))
    .bind(id)
    .bind(tenant.organization_id)
    .bind(tenant.environment.as_str())
    .bind(&app.name)
    .bind(&app.redirect_uris)
    .bind(&app.webhook_url)
    .bind(webhook_secret_ciphertext)
    .bind(client_secret_hash)
    .fetch_one(db)
    .await?)
}

/// The tenant's apps, oldest first (the first is the default app).
pub async fn list_client_apps(
    db: impl PgExecutor<'_>,
    tenant: Tenant,
) -> Result<Vec<ClientAppRow>> {
    Ok(sqlx::query_as(concat!(
        "SELECT ",
        app_columns!(),
        " FROM client_apps WHERE organization_id = $1 AND environment = $2 ORDER BY created_at, id"
    ))
    .bind(tenant.organization_id)
    .bind(tenant.environment.as_str())
    .fetch_all(db)
    .await?)
}

/// Every app, for operators; optionally of one organization.
pub async fn list_all_client_apps(
    db: &Db,
    organization_id: Option<OrganizationId>,
) -> Result<Vec<ClientAppRow>> {
    Ok(sqlx::query_as(concat!(
        "SELECT ",
        app_columns!(),
        " FROM client_apps WHERE $1::uuid IS NULL OR organization_id = $1 ORDER BY created_at, id"
    ))
    .bind(organization_id)
    .fetch_all(db)
    .await?)
}

pub async fn get_client_app(
    db: impl PgExecutor<'_>,
    tenant: Tenant,
    id: ClientAppId,
) -> Result<ClientAppRow> {
    sqlx::query_as(concat!(
        "SELECT ",
        app_columns!(),
        " FROM client_apps WHERE id = $1 AND organization_id = $2 AND environment = $3"
    ))
    .bind(id)
    .bind(tenant.organization_id)
    .bind(tenant.environment.as_str())
    .fetch_optional(db)
    .await?
    .ok_or(Error::NotFound("client app"))
}

/// Any tenant's app by id (OAuth identifies the client by `client_id` alone).
pub async fn find_client_app(
    db: impl PgExecutor<'_>,
    id: ClientAppId,
) -> Result<Option<ClientAppRow>> {
    Ok(sqlx::query_as(concat!(
        "SELECT ",
        app_columns!(),
        " FROM client_apps WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(db)
    .await?)
}

/// A client app as an OAuth client authenticates and is served.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OAuthClientRow {
    /// SHA-256 of its client secret, if one was issued.
    pub client_secret_hash: Option<Vec<u8>>,
    pub oauth_client_type: String,
    pub oauth_refresh_tokens: bool,
    pub oauth_web_origins: Vec<String>,
}

impl OAuthClientRow {
    /// A public OAuth client: no secret, PKCE required.
    pub fn is_public(&self) -> bool {
        self.oauth_client_type == PUBLIC_CLIENT
    }
}

/// What the token endpoints need to know of client `id`.
pub async fn oauth_client(
    db: impl PgExecutor<'_>,
    id: ClientAppId,
) -> Result<Option<OAuthClientRow>> {
    Ok(sqlx::query_as(
        "SELECT client_secret_hash, oauth_client_type, oauth_refresh_tokens, oauth_web_origins
         FROM client_apps WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(db)
    .await?)
}

/// Whether any client app registered `origin` as one of its web origins.
pub async fn web_origin_registered(db: impl PgExecutor<'_>, origin: &str) -> Result<bool> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM client_apps WHERE oauth_web_origins @> ARRAY[$1])",
    )
    .bind(origin)
    .fetch_one(db)
    .await?)
}

/// How an app acts as an OAuth client; `None` leaves a setting as it is.
/// False when no such app.
pub async fn set_oauth_registration(
    db: impl PgExecutor<'_>,
    id: ClientAppId,
    client_type: Option<&str>,
    refresh_tokens: Option<bool>,
    web_origins: Option<&[String]>,
) -> Result<bool> {
    Ok(sqlx::query(
        "UPDATE client_apps SET oauth_client_type = COALESCE($2, oauth_client_type),
             oauth_refresh_tokens = COALESCE($3, oauth_refresh_tokens),
             oauth_web_origins = COALESCE($4, oauth_web_origins)
         WHERE id = $1",
    )
    .bind(id)
    .bind(client_type)
    .bind(refresh_tokens)
    .bind(web_origins)
    .execute(db)
    .await?
    .rows_affected()
        == 1)
}

/// Replaces an app's OAuth client secret hash; false when no such app.
pub async fn set_client_secret_hash(
    db: impl PgExecutor<'_>,
    id: ClientAppId,
    hash: &[u8],
) -> Result<bool> {
    let updated = sqlx::query("UPDATE client_apps SET client_secret_hash = $2 WHERE id = $1")
        .bind(id)
        .bind(hash)
        .execute(db)
        .await?;
    Ok(updated.rows_affected() == 1)
}

/// Locks an app's row for a secret rotation and returns its sealed webhook
/// secret. `tenant` scopes the app to the caller; operators pass `None`.
pub async fn lock_webhook_secret(
    tx: &mut PgConnection,
    tenant: Option<Tenant>,
    app_id: ClientAppId,
) -> Result<Vec<u8>> {
    sqlx::query_scalar(
        "SELECT webhook_secret_ciphertext FROM client_apps
         WHERE id = $1 AND ($2::uuid IS NULL OR (organization_id = $2 AND environment = $3))
         FOR UPDATE",
    )
    .bind(app_id)
    .bind(tenant.map(|t| t.organization_id))
    .bind(tenant.map(|t| t.environment.as_str()))
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(Error::NotFound("client app"))
}

/// Stores a new webhook secret, keeping the previous one signing for
/// `grace_secs`; returns when it stops.
pub async fn replace_webhook_secret(
    tx: &mut PgConnection,
    app_id: ClientAppId,
    sealed: &[u8],
    sealed_previous: &[u8],
    grace_secs: i64,
) -> Result<DateTime<Utc>> {
    Ok(sqlx::query_scalar(
        "UPDATE client_apps SET webhook_secret_ciphertext = $2,
             previous_webhook_secret_ciphertext = $3,
             previous_webhook_secret_expires_at = now() + make_interval(secs => $4)
         WHERE id = $1 RETURNING previous_webhook_secret_expires_at",
    )
    .bind(app_id)
    .bind(sealed)
    .bind(sealed_previous)
    .bind(grace_secs as f64)
    .fetch_one(&mut *tx)
    .await?)
}

/// Sets (or with `None` clears) an app's webhook URL; false when no such app.
pub async fn set_webhook_url(
    db: impl PgExecutor<'_>,
    app_id: ClientAppId,
    url: Option<&str>,
) -> Result<bool> {
    let updated = sqlx::query("UPDATE client_apps SET webhook_url = $2 WHERE id = $1")
        .bind(app_id)
        .bind(url)
        .execute(db)
        .await?;
    Ok(updated.rows_affected() == 1)
}

/// How the Link page presents an app: its display name, accent colour and
/// logo version.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Presentation {
    pub name: String,
    pub accent_color: Option<String>,
    pub logo_sha256: Option<String>,
}

pub async fn presentation(
    db: impl PgExecutor<'_>,
    id: ClientAppId,
) -> Result<Option<Presentation>> {
    Ok(sqlx::query_as(
        "SELECT COALESCE(a.brand_display_name, a.name) AS name, a.brand_accent_color AS accent_color,
                l.sha256 AS logo_sha256
         FROM client_apps a LEFT JOIN client_app_logos l ON l.client_app_id = a.id
         WHERE a.id = $1",
    )
    .bind(id)
    .fetch_optional(db)
    .await?)
}

/// What `SetClientAppBranding` changes; `None` leaves a part as it is.
pub struct BrandingChange<'a> {
    /// `Some(None)` clears it.
    pub display_name: Option<Option<&'a str>>,
    pub accent_color: Option<Option<&'a str>>,
    /// `Some(None)` removes the logo; `Some((type, bytes, sha256))` sets it.
    pub logo: Option<Option<(&'a str, &'a [u8], &'a str)>>,
}

/// Applies `change` to the tenant's app in one transaction; `false` when
/// there is no such app.
pub async fn set_branding(
    tx: &mut PgConnection,
    tenant: Tenant,
    id: ClientAppId,
    change: &BrandingChange<'_>,
) -> Result<bool> {
    let found = sqlx::query(
        "UPDATE client_apps SET
             brand_display_name = CASE WHEN $4 THEN $5 ELSE brand_display_name END,
             brand_accent_color = CASE WHEN $6 THEN $7 ELSE brand_accent_color END
         WHERE id = $1 AND organization_id = $2 AND environment = $3",
    )
    .bind(id)
    .bind(tenant.organization_id)
    .bind(tenant.environment.as_str())
    .bind(change.display_name.is_some())
    .bind(change.display_name.flatten())
    .bind(change.accent_color.is_some())
    .bind(change.accent_color.flatten())
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !found {
        return Ok(false);
    }
    match change.logo {
        None => {}
        Some(None) => {
            sqlx::query("DELETE FROM client_app_logos WHERE client_app_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        Some(Some((content_type, bytes, sha256))) => {
            sqlx::query(
                "INSERT INTO client_app_logos (client_app_id, content_type, bytes, sha256)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (client_app_id) DO UPDATE
                     SET content_type = $2, bytes = $3, sha256 = $4, updated_at = now()",
            )
            .bind(id)
            .bind(content_type)
            .bind(bytes)
            .bind(sha256)
            .execute(&mut *tx)
            .await?;
        }
    }
    Ok(true)
}

/// An app's logo: its media type and bytes.
pub async fn logo(db: impl PgExecutor<'_>, id: ClientAppId) -> Result<Option<(String, Vec<u8>)>> {
    Ok(
        sqlx::query_as("SELECT content_type, bytes FROM client_app_logos WHERE client_app_id = $1")
            .bind(id)
            .fetch_optional(db)
            .await?,
    )
}

/// Serialises first starts on an empty database until `tx` ends, so only
/// one creates the development sandbox tenant.
pub async fn lock_bootstrap(tx: &mut PgConnection) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(7131001)")
        .execute(tx)
        .await?;
    Ok(())
}

/// Turns the app's access-token hand-off on or off (operators only).
pub async fn set_access_token_handoff(
    db: impl PgExecutor<'_>,
    id: ClientAppId,
    enabled: bool,
) -> Result<bool> {
    Ok(
        sqlx::query("UPDATE client_apps SET access_token_handoff = $2 WHERE id = $1")
            .bind(id)
            .bind(enabled)
            .execute(db)
            .await?
            .rows_affected()
            == 1,
    )
}
