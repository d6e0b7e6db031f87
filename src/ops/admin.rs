//! `linkd admin …`: operator commands against the same database.

use crate::api::services::Services;
use crate::client_apps::rules::NewClientApp;
use crate::client_apps::store as tenancy;
use crate::kernel::ids::{ApiKeyId, ClientAppId, OrganizationId};
use crate::kernel::tenant::{Environment, Tenant};
use crate::ops::config::AdminCommand;
use anyhow::{Context as _, bail};
use secrecy::ExposeSecret;
use serde_json::json;

async fn existing_organization(api: &Services, public_id: &str) -> anyhow::Result<OrganizationId> {
    let id = OrganizationId::from_request("--organization", public_id)?;
    if !tenancy::organization_exists(api.db(), id).await? {
        bail!("organization {public_id} does not exist");
    }
    Ok(id)
}

fn print(json_output: bool, value: serde_json::Value, text: String) {
    if json_output {
        println!("{value:#}");
    } else {
        println!("{text}");
    }
}

/// Runs one operator command.
pub async fn run(api: &Services, command: AdminCommand) -> anyhow::Result<()> {
    match command {
        AdminCommand::CreateApp {
            name,
            environment,
            redirect_uris,
            webhook_url,
            organization,
            json,
        } => {
            create_app(
                api,
                name,
                environment,
                redirect_uris,
                webhook_url,
                organization,
                json,
            )
            .await
        }
        AdminCommand::CreateKey {
            organization,
            environment,
            json,
        } => create_key(api, organization, environment, json).await,
        AdminCommand::RevokeKey { key_id } => revoke_key(api, key_id).await,
        AdminCommand::RotateWebhookSecret {
            app_id,
            grace,
            json,
        } => rotate_webhook_secret(api, app_id, grace, json).await,
        AdminCommand::SetWebhookUrl {
            app_id,
            url,
            clear: _,
            json,
        } => set_webhook_url(api, app_id, url, json).await,
        AdminCommand::RotateClientSecret { app_id, json } => {
            rotate_client_secret(api, app_id, json).await
        }
        AdminCommand::ListApps { organization, json } => list_apps(api, organization, json).await,
        AdminCommand::SetOauthClient {
            app_id,
            integration,
            client_id,
            scopes,
            json,
        } => set_oauth_client(api, app_id, integration, client_id, scopes, json).await,
        AdminCommand::SetBranding {
            app_id,
            display_name,
            accent_color,
            logo,
            remove_logo,
        } => {
            let id = ClientAppId::from_request("app_id", &app_id)?;
            let Some(app) = tenancy::find_client_app(api.db(), id).await? else {
                bail!("no client app {app_id}");
            };
            let logo = logo
                .map(|path| {
                    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
                })
                .transpose()?;
            let caller = caller_of(&app);
            let set = api
                .client_apps
                .set_branding(
                    &caller,
                    crate::pb::SetClientAppBrandingRequest {
                        client_app_id: app_id.clone(),
                        display_name,
                        accent_color,
                        logo,
                        remove_logo,
                    },
                )
                .await?;
            let branding = set.client_app.and_then(|a| a.branding).unwrap_or_default();
            println!(
                "client app {app_id}: display name {:?}, accent colour {:?}, logo {}",
                branding.display_name,
                branding.accent_color,
                if branding.logo_url.is_empty() {
                    "none"
                } else {
                    &branding.logo_url
                }
            );
            Ok(())
        }
        AdminCommand::SetRateLimit { app_id, limit } => {
            let id = ClientAppId::from_request("app_id", &app_id)?;
            let policy = if limit.trim().eq_ignore_ascii_case("default") {
                None
            } else {
                Some(
                    crate::ratelimit::Policy::parse(&limit)
                        .map_err(|e| anyhow::anyhow!("--limit {e}"))?,
                )
            };
            if !crate::ratelimit::store::set_client_app_policy(api.db(), id, policy).await? {
                bail!("no client app {app_id}");
            }
            match policy {
                Some(policy) => println!("client app {app_id}: rate limit {policy}"),
                None => println!("client app {app_id}: rate limit back to the server default"),
            }
            Ok(())
        }
        AdminCommand::SetOauthRegistration {
            app_id,
            client_type,
            refresh_tokens,
            web_origins,
            clear_web_origins,
        } => {
            let id = ClientAppId::from_request("app_id", &app_id)?;
            let origins = (clear_web_origins || !web_origins.is_empty()).then_some(web_origins);
            let change = crate::client_apps::rules::OAuthRegistration::parse(
                client_type.as_deref(),
                refresh_tokens,
                origins.as_deref(),
            )?;
            if !tenancy::set_oauth_registration(
                api.db(),
                id,
                change.client_type,
                change.refresh_tokens,
                change.web_origins.as_deref(),
            )
            .await?
            {
                bail!("no client app {app_id}");
            }
            let app = tenancy::find_client_app(api.db(), id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no client app {app_id}"))?;
            println!(
                "client app {app_id}: OAuth client type {}, refresh tokens {}, web origins [{}]",
                app.oauth_client_type,
                if app.oauth_refresh_tokens {
                    "on"
                } else {
                    "off"
                },
                app.oauth_web_origins.join(", ")
            );
            Ok(())
        }
        AdminCommand::SetAccessTokenHandoff { app_id, enabled } => {
            let id = ClientAppId::from_request("app_id", &app_id)?;
            if !tenancy::set_access_token_handoff(api.db(), id, enabled).await? {
                bail!("no client app {app_id}");
            }
            println!(
                "client app {app_id}: access-token hand-off {}",
                if enabled { "enabled" } else { "disabled" }
            );
            Ok(())
        }
    }
}

/// The operator acting as the tenant that owns `app`.
fn caller_of(app: &tenancy::ClientAppRow) -> crate::auth::Caller {
    crate::auth::Caller {
        tenant: Tenant {
            organization_id: app.organization_id,
            environment: app.environment(),
        },
        only_connection: None,
    }
}

/// Creates a client app (and its organization unless given) with an API key; prints the secrets once.
async fn create_app(
    api: &Services,
    name: String,
    environment: Environment,
    redirect_uris: Vec<String>,
    webhook_url: Option<String>,
    organization: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let app = NewClientApp::parse(&name, &redirect_uris, webhook_url.as_deref())?;
    let organization_id = match organization {
        Some(public) => existing_organization(api, &public).await?,
        None => {
            let id = OrganizationId::new();
            tenancy::create_organization(api.db(), id, &app.name).await?;
            id
        }
    };
    let tenant = Tenant {
        organization_id,
        environment,
    };
    let created = api.client_apps.create_client_app(tenant, &app).await?;
    let key = crate::auth::issue_key(api.db(), tenant).await?;
    let (org, app_id) = (organization_id.to_string(), created.app.id.to_string());
    print(
        json,
        json!({
            "organizationId": org,
            "clientAppId": app_id,
            "environment": environment,
            "apiKeyId": key.id,
            "apiKey": key.key.expose_secret(),
            "webhookSecret": created.webhook_secret.expose_secret(),
            "clientSecret": created.client_secret.expose_secret(),
        }),
        format!(
            "organization    {org}\nclient app      {app_id}\nenvironment     {environment}\napi key id      {}\napi key         {}\nwebhook secret  {}\nclient secret   {}\n(the key and secrets are shown only now)",
            key.id,
            key.key.expose_secret(),
            created.webhook_secret.expose_secret(),
            created.client_secret.expose_secret()
        ),
    );
    Ok(())
}

/// Issues an API key for an existing organization.
async fn create_key(
    api: &Services,
    organization: String,
    environment: Environment,
    json: bool,
) -> anyhow::Result<()> {
    let organization_id = existing_organization(api, &organization).await?;
    let key = crate::auth::issue_key(
        api.db(),
        Tenant {
            organization_id,
            environment,
        },
    )
    .await?;
    print(
        json,
        json!({ "apiKeyId": key.id, "apiKey": key.key.expose_secret(), "environment": environment }),
        format!(
            "api key id  {}\napi key     {}\n(shown only now)",
            key.id,
            key.key.expose_secret()
        ),
    );
    Ok(())
}

/// Revokes an API key.
async fn revoke_key(api: &Services, key_id: String) -> anyhow::Result<()> {
    let id = ApiKeyId::from_request("key_id", &key_id)?;
    if !crate::auth::store::revoke_api_key(api.db(), id).await? {
        bail!("no active API key {key_id}");
    }
    println!("revoked {key_id}");
    Ok(())
}

/// Replaces an app's webhook signing secret; the previous one signs for `grace`.
async fn rotate_webhook_secret(
    api: &Services,
    app_id: String,
    grace: std::time::Duration,
    json: bool,
) -> anyhow::Result<()> {
    let id = ClientAppId::from_request("app_id", &app_id)?;
    let (secret, until) = match api
        .client_apps
        .rotate_webhook_secret(None, id, grace.as_secs() as i64)
        .await
    {
        Err(crate::kernel::error::Error::NotFound(_)) => bail!("no client app {app_id}"),
        other => other?,
    };
    print(
        json,
        json!({
            "clientAppId": app_id,
            "webhookSecret": secret.expose_secret(),
            "previousSecretExpiresAt": until.to_rfc3339(),
        }),
        format!(
            "client app      {app_id}\nwebhook secret  {}\n(shown only now; the previous secret also signs until {})",
            secret.expose_secret(),
            until.to_rfc3339()
        ),
    );
    Ok(())
}

/// Sets or clears an app's webhook URL; its breaker closes with the change.
async fn set_webhook_url(
    api: &Services,
    app_id: String,
    url: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let id = ClientAppId::from_request("app_id", &app_id)?;
    let url = crate::client_apps::rules::parse_webhook_url(url.as_deref())?;
    // The app's breaker closes with the change: events it held
    // back go to the corrected URL at once.
    let mut tx = api.db().begin().await?;
    if !tenancy::set_webhook_url(&mut *tx, id, url.as_deref()).await? {
        bail!("no client app {app_id}");
    }
    crate::webhooks::store::release_destination(&mut *tx, &crate::webhooks::app_destination(id))
        .await?;
    tx.commit().await?;
    print(
        json,
        json!({ "clientAppId": app_id, "webhookUrl": url }),
        format!(
            "client app      {app_id}\nwebhook url     {}",
            url.as_deref().unwrap_or("(none: events are skipped)")
        ),
    );
    Ok(())
}

/// Replaces an app's OAuth client secret at once.
async fn rotate_client_secret(api: &Services, app_id: String, json: bool) -> anyhow::Result<()> {
    let id = ClientAppId::from_request("app_id", &app_id)?;
    let secret = match api.client_apps.rotate_client_secret(id).await {
        Err(crate::kernel::error::Error::NotFound(_)) => bail!("no client app {app_id}"),
        other => other?,
    };
    print(
        json,
        json!({ "clientAppId": app_id, "clientSecret": secret.expose_secret() }),
        format!(
            "client app      {app_id}\nclient secret   {}\n(shown only now; the previous secret no longer works)",
            secret.expose_secret()
        ),
    );
    Ok(())
}

/// Sets an app's OAuth client at a provider, the secret read from stdin.
async fn set_oauth_client(
    api: &Services,
    app_id: String,
    integration_id: String,
    client_id: String,
    scopes: Vec<String>,
    json_output: bool,
) -> anyhow::Result<()> {
    let id = ClientAppId::from_request("app_id", &app_id)?;
    let Some(app) = tenancy::find_client_app(api.db(), id).await? else {
        bail!("no client app {app_id}");
    };
    let mut client_secret = String::new();
    std::io::stdin().read_line(&mut client_secret)?;
    let client_secret = client_secret.trim_end_matches(['\r', '\n']).to_string();
    let caller = caller_of(&app);
    let set = api
        .provider_oauth
        .set_client(
            &caller,
            crate::pb::SetProviderOAuthClientRequest {
                client_app_id: app_id.clone(),
                integration_id,
                client_id,
                client_secret,
                scopes,
            },
        )
        .await?
        .oauth_client
        .unwrap_or_default();
    print(
        json_output,
        json!({ "clientAppId": app_id, "integrationId": set.integration_id, "clientId": set.client_id, "scopes": set.scopes }),
        format!(
            "client app      {app_id}\nintegration     {}\nclient id       {}\nscopes          {}",
            set.integration_id,
            set.client_id,
            set.scopes.join(" ")
        ),
    );
    Ok(())
}

/// Lists client apps, of one organization or all.
async fn list_apps(api: &Services, organization: Option<String>, json: bool) -> anyhow::Result<()> {
    let organization_id = match organization {
        Some(public) => Some(OrganizationId::from_request("--organization", &public)?),
        None => None,
    };
    let apps = tenancy::list_all_client_apps(api.db(), organization_id).await?;
    if json {
        let apps: Vec<_> = apps
            .iter()
            .map(|a| {
                json!({
                    "clientAppId": a.id.to_string(),
                    "organizationId": a.organization_id.to_string(),
                    "environment": a.environment(),
                    "name": a.name,
                    "redirectUris": a.redirect_uris,
                    "webhookUrl": a.webhook_url,
                    "createdAt": a.created_at.to_rfc3339(),
                })
            })
            .collect();
        println!("{:#}", json!(apps));
    } else {
        for a in &apps {
            println!(
                "{}  {}  {:<10}  {}  {}",
                a.id,
                a.organization_id,
                a.environment(),
                a.name,
                a.redirect_uris.join(" ")
            );
        }
    }
    Ok(())
}
