//! Client apps: the apps of an organization that send end users to Link,
//! with their redirect URIs, webhook URL and secrets. Imports the kernel
//! and auth (the caller).

pub mod rules;
pub mod store;

use crate::auth::Caller;
use crate::kernel::crypto::Sealed;
use crate::kernel::error::{Error, Result};
use crate::kernel::ids::{ClientAppId, token_hash};
use crate::kernel::tenant::Tenant;
use crate::kernel::time::timestamp;
use crate::pb;
use crate::ratelimit::Policy;
use rules::NewClientApp;
use secrecy::SecretString;
use store::ClientAppRow;

/// How long a rotated-out webhook secret keeps signing by default.
pub const DEFAULT_ROTATION_GRACE_SECS: i64 = 24 * 60 * 60;
/// The longest such grace period.
pub const MAX_ROTATION_GRACE_SECS: i64 = 7 * 24 * 60 * 60;

/// A client app just created, with the secrets that are shown only now.
#[derive(Debug)]
pub struct CreatedClientApp {
    pub app: ClientAppRow,
    pub webhook_secret: SecretString,
    /// The OAuth client secret (`client_secret` at `/v3/oauth/token`).
    pub client_secret: SecretString,
}

/// Where the Link page loads an app's logo version `sha256` from.
pub fn logo_path(app: ClientAppId, sha256: &str) -> String {
    format!(
        "/link/brand/{app}/logo?v={}",
        &sha256[..16.min(sha256.len())]
    )
}

fn client_app_to_proto(row: ClientAppRow, default_limit: Option<Policy>) -> pb::ClientApp {
    let own_limit =
        row.rate_limit_per_second
            .zip(row.rate_limit_burst)
            .map(|(per_second, burst)| Policy {
                per_second,
                burst: burst as u32,
            });
    // Without a server default, no app is limited (see RateLimiter).
    let rate_limit = default_limit.map(|default| {
        let effective = own_limit.unwrap_or(default);
        pb::ClientAppRateLimit {
            per_second: effective.per_second,
            burst: effective.burst,
            custom: own_limit.is_some(),
        }
    });
    let branding = pb::ClientAppBranding {
        display_name: row.brand_display_name.clone().unwrap_or_default(),
        accent_color: row.brand_accent_color.clone().unwrap_or_default(),
        logo_url: row
            .logo_sha256
            .as_deref()
            .map(|sha| logo_path(row.id, sha))
            .unwrap_or_default(),
    };
    let public_client = row.is_public_client();
    pb::ClientApp {
        branding: Some(branding),
        id: row.id.to_string(),
        environment: row.environment().to_proto() as i32,
        name: row.name,
        redirect_uris: row.redirect_uris,
        webhook_url: row.webhook_url,
        created_at: Some(timestamp(row.created_at)),
        access_token_handoff: row.access_token_handoff,
        rate_limit,
        oauth: Some(pb::ClientAppOAuth {
            token_endpoint_auth_method: if public_client {
                "none"
            } else {
                "client_secret_basic"
            }
            .into(),
            refresh_tokens: row.oauth_refresh_tokens,
            web_origins: row.oauth_web_origins,
        }),
    }
}

/// Client apps: create, read, rotate their secrets.
#[derive(Debug, Clone)]
pub struct ClientApps {
    db: crate::kernel::db::Db,
    cipher: crate::kernel::crypto::Cipher,
    /// `LINKD_RATE_LIMIT_CLIENT_APP`, shown on apps without their own.
    default_limit: Option<Policy>,
}

impl ClientApps {
    pub fn new(
        db: crate::kernel::db::Db,
        cipher: crate::kernel::crypto::Cipher,
        default_limit: Option<Policy>,
    ) -> Self {
        ClientApps {
            db,
            cipher,
            default_limit,
        }
    }
}

impl ClientApps {
    pub async fn list_client_apps(&self, caller: &Caller) -> Result<pb::ListClientAppsResponse> {
        let apps = store::list_client_apps(&self.db, caller.tenant).await?;
        Ok(pb::ListClientAppsResponse {
            client_apps: apps
                .into_iter()
                .map(|app| client_app_to_proto(app, self.default_limit))
                .collect(),
        })
    }

    pub async fn get_client_app(
        &self,
        caller: &Caller,
        req: pb::GetClientAppRequest,
    ) -> Result<pb::GetClientAppResponse> {
        let id = ClientAppId::from_request("clientAppId", &req.client_app_id)?;
        let app = store::get_client_app(&self.db, caller.tenant, id).await?;
        Ok(pb::GetClientAppResponse {
            client_app: Some(client_app_to_proto(app, self.default_limit)),
        })
    }

    /// Registers a client app (operators, through `linkd admin`). The webhook
    /// signing secret is stored encrypted and returned only here.
    pub async fn create_client_app(
        &self,
        tenant: Tenant,
        app: &NewClientApp,
    ) -> Result<CreatedClientApp> {
        let id = ClientAppId::new();
        let secret = rules::generate_webhook_secret();
        let sealed = self
            .cipher
            .encrypt(secret.as_bytes(), Sealed::WebhookSecret(id));
        let client_secret = rules::generate_client_secret();
        let app = store::insert_client_app(
            &self.db,
            id,
            tenant,
            app,
            &sealed,
            &token_hash(&client_secret),
        )
        .await?;
        Ok(CreatedClientApp {
            app,
            webhook_secret: SecretString::from(secret),
            client_secret: SecretString::from(client_secret),
        })
    }

    /// Replaces an app's webhook signing secret. The previous one keeps
    /// signing next to it for `grace_secs`. `tenant` scopes the app to the
    /// caller; operators pass `None`. Returns the new secret (its only copy)
    /// and when the previous one stops signing.
    pub async fn rotate_webhook_secret(
        &self,
        tenant: Option<Tenant>,
        app_id: ClientAppId,
        grace_secs: i64,
    ) -> Result<(SecretString, chrono::DateTime<chrono::Utc>)> {
        if !(0..=MAX_ROTATION_GRACE_SECS).contains(&grace_secs) {
            return Err(Error::invalid(
                "previousSecretGraceSeconds",
                format!("must be between 0 and {MAX_ROTATION_GRACE_SECS}"),
            ));
        }
        let mut tx = self.db.begin().await?;
        let current = store::lock_webhook_secret(&mut tx, tenant, app_id).await?;
        let cipher = &self.cipher;
        let previous = cipher
            .decrypt(&current, Sealed::WebhookSecret(app_id))
            .map_err(Error::Internal)?;
        let secret = rules::generate_webhook_secret();
        let expires_at = store::replace_webhook_secret(
            &mut tx,
            app_id,
            &cipher.encrypt(secret.as_bytes(), Sealed::WebhookSecret(app_id)),
            &cipher.encrypt(&previous, Sealed::PreviousWebhookSecret(app_id)),
            grace_secs,
        )
        .await?;
        tx.commit().await?;
        Ok((SecretString::from(secret), expires_at))
    }

    pub async fn rotate_webhook_secret_for(
        &self,
        caller: &Caller,
        req: pb::RotateWebhookSecretRequest,
    ) -> Result<pb::RotateWebhookSecretResponse> {
        let id = ClientAppId::from_request("clientAppId", &req.client_app_id)?;
        let grace = req
            .previous_secret_grace_seconds
            .unwrap_or(DEFAULT_ROTATION_GRACE_SECS);
        let (secret, expires_at) = self
            .rotate_webhook_secret(Some(caller.tenant), id, grace)
            .await?;
        Ok(pb::RotateWebhookSecretResponse {
            webhook_secret: secrecy::ExposeSecret::expose_secret(&secret).to_string(),
            previous_secret_expires_at: Some(timestamp(expires_at)),
        })
    }

    /// Issues a new OAuth client secret for an app (any tenant: operators),
    /// replacing the old one at once. Returns the only copy.
    pub async fn rotate_client_secret(&self, app_id: ClientAppId) -> Result<SecretString> {
        let secret = rules::generate_client_secret();
        if !store::set_client_secret_hash(&self.db, app_id, &token_hash(&secret)).await? {
            return Err(Error::NotFound("client app"));
        }
        Ok(SecretString::from(secret))
    }
}

impl ClientApps {
    /// `SetClientAppBranding`.
    pub async fn set_branding(
        &self,
        caller: &Caller,
        req: pb::SetClientAppBrandingRequest,
    ) -> Result<pb::SetClientAppBrandingResponse> {
        let id = ClientAppId::from_request("clientAppId", &req.client_app_id)?;
        let change = rules::Branding::parse(&rules::BrandingRequest {
            display_name: req.display_name.as_deref(),
            accent_color: req.accent_color.as_deref(),
            logo: req.logo.as_deref(),
            remove_logo: req.remove_logo,
        })?;
        let mut tx = self.db.begin().await?;
        let logo = change.logo.as_ref().map(|l| {
            l.as_ref()
                .map(|l| (l.content_type, l.bytes.as_slice(), l.sha256.as_str()))
        });
        let found = store::set_branding(
            &mut tx,
            caller.tenant,
            id,
            &store::BrandingChange {
                display_name: change.display_name.as_ref().map(|n| n.as_deref()),
                accent_color: change.accent_color.as_ref().map(|c| c.as_deref()),
                logo,
            },
        )
        .await?;
        if !found {
            return Err(Error::NotFound("client app"));
        }
        tx.commit().await?;
        let app = store::get_client_app(&self.db, caller.tenant, id).await?;
        Ok(pb::SetClientAppBrandingResponse {
            client_app: Some(client_app_to_proto(app, self.default_limit)),
        })
    }

    /// The logo the Link page shows for `app`: its media type and bytes.
    pub async fn logo(&self, app: &str) -> Result<(String, Vec<u8>)> {
        let id = ClientAppId::parse(app).ok_or(Error::NotFound("logo"))?;
        store::logo(&self.db, id)
            .await?
            .ok_or(Error::NotFound("logo"))
    }
}
