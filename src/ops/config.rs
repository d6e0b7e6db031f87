//! Command line and environment configuration. Every setting is a flag and a
//! `LINKD_*` variable (plus the conventional `DATABASE_URL`); a bad value
//! stops start-up with one line naming the setting.

use crate::kernel::crypto::EncryptionKey;
use crate::kernel::tenant::Environment;
use clap::{Args, CommandFactory, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use url::Url;

#[derive(Debug, Parser)]
#[command(
    name = "linkd",
    version,
    about = "Account-linking service: gRPC and REST over Postgres",
    after_help = "Without a command, linkd serves: `linkd serve --help` lists the serve options.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(flatten)]
    pub shared: SharedArgs,
    #[command(flatten)]
    pub log: LogArgs,
    /// Serve options, when no subcommand is given.
    #[command(flatten)]
    pub serve: ServeArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve gRPC and REST on one listener (the default).
    Serve(Box<ServeArgs>),
    /// Apply database migrations and exit.
    Migrate,
    /// Manage organizations, client apps and API keys.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Print a fresh random encryption key for LINKD_ENCRYPTION_KEY.
    GenKey,
    /// Print the OpenAPI 3.1 document of the REST routes (as /openapi.json serves it).
    Openapi,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
pub struct SharedArgs {
    /// Postgres URL. When unset, linkd runs its own local Postgres under --data-dir.
    #[arg(long, env = "DATABASE_URL", global = true, value_parser = parse_database_url, hide_env_values = true)]
    pub database_url: Option<String>,

    /// Directory for the local Postgres cluster and development key.
    #[arg(long, env = "LINKD_DATA_DIR", default_value = ".linkd", global = true)]
    pub data_dir: PathBuf,

    /// Maximum database connections per process.
    #[arg(long, env = "LINKD_DB_MAX_CONNECTIONS", default_value_t = 16, global = true, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub db_max_connections: u32,

    /// How long a request waits for a database connection before failing
    /// with UNAVAILABLE / 503.
    #[arg(long, env = "LINKD_DB_ACQUIRE_TIMEOUT", default_value = "3s", global = true, value_parser = parse_duration)]
    pub db_acquire_timeout: Duration,

    /// What sits between linkd and Postgres: `none` (Postgres itself, or
    /// PgBouncer in session mode) or `transaction` (PgBouncer in transaction
    /// mode: no prepared-statement cache, every statement inside a
    /// transaction, about twice the round trips).
    #[arg(
        long,
        env = "LINKD_DB_POOLER",
        value_enum,
        default_value = "none",
        global = true
    )]
    pub db_pooler: DbPooler,

    /// AES-256-GCM key (base64 of 32 bytes) for secrets at rest. Required with
    /// DATABASE_URL; the local development database keeps a generated one in
    /// --data-dir.
    #[arg(
        long,
        env = "LINKD_ENCRYPTION_KEY",
        global = true,
        hide_env_values = true
    )]
    pub encryption_key: Option<EncryptionKey>,

    /// Directory of provider catalog files (`<integration>.json`) to use
    /// instead of the built-in catalog.
    #[arg(long, env = "LINKD_CATALOG_DIR", global = true)]
    pub catalog_dir: Option<PathBuf>,

    /// Older keys, comma-separated, still accepted for decryption during a
    /// key rotation.
    #[arg(
        long,
        env = "LINKD_PREVIOUS_ENCRYPTION_KEYS",
        value_delimiter = ',',
        global = true,
        hide_env_values = true
    )]
    pub previous_encryption_keys: Vec<EncryptionKey>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DbPooler {
    /// Each pooled connection is one server session.
    None,
    /// A transaction pooler may switch server connections between transactions.
    Transaction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// JSON when stderr is not a terminal, pretty otherwise.
    Auto,
    Json,
    Pretty,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
pub struct LogArgs {
    /// Log output format.
    #[arg(
        long,
        env = "LINKD_LOG_FORMAT",
        value_enum,
        default_value = "auto",
        global = true
    )]
    pub log_format: LogFormat,

    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `linkd=debug,info`.
    #[arg(long, env = "LINKD_LOG", default_value = "info", global = true)]
    pub log: String,
}

#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Serve options")]
pub struct ServeArgs {
    /// Address of the one listener for gRPC and HTTP.
    #[arg(long, env = "LINKD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Public base URL of this service, used in links sent to end users.
    /// Defaults to `http://<listen>`.
    #[arg(long, env = "LINKD_PUBLIC_URL", value_parser = parse_http_url)]
    pub public_url: Option<Url>,

    /// Base URL of the app clip that claims links; `app_clip_url` is
    /// `<base>/<link id>?code=<claim code>`. Defaults to `<public URL>/appclip`.
    #[arg(long, env = "LINKD_APP_CLIP_BASE_URL", value_parser = parse_http_url)]
    pub app_clip_base_url: Option<Url>,

    /// Largest accepted request body (gRPC message or REST body), in bytes.
    #[arg(long, env = "LINKD_MAX_REQUEST_BYTES", default_value_t = 1024 * 1024, value_parser = clap::value_parser!(u64).range(1024..=64 * 1024 * 1024))]
    pub max_request_bytes: u64,

    /// After SIGTERM/SIGINT, how long health reports NOT_SERVING while new
    /// requests are still accepted, so load balancers stop routing here.
    #[arg(long, env = "LINKD_SHUTDOWN_DRAIN_DELAY", default_value = "0s", value_parser = parse_duration)]
    pub shutdown_drain_delay: Duration,

    /// After the drain delay, how long in-flight calls and webhook
    /// deliveries may take to finish before they are cut off (a cut-off
    /// delivery is retried by another replica after its lease).
    #[arg(long, env = "LINKD_SHUTDOWN_GRACE_PERIOD", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace_period: Duration,

    /// How often every replica sweeps what has expired: links and Link
    /// sessions past their lifetime, connections whose provider session
    /// ended. Safe in several replicas at once.
    #[arg(long, env = "LINKD_EXPIRY_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub expiry_interval: Duration,

    /// How long delivered, failed and skipped events (with their delivery
    /// attempts) are kept for the events API and redelivery; the expiry
    /// sweep removes older ones. Pending events are never removed.
    #[arg(long, env = "LINKD_EVENT_RETENTION", default_value = "30days", value_parser = parse_event_retention)]
    pub event_retention: Duration,

    /// How often each active connection's connector is asked whether its
    /// session is still usable (`CheckSession`); checks are spread over
    /// the interval and shared by the replicas. Ended sessions expire the
    /// connection with `connection.expired`.
    #[arg(long, env = "LINKD_CONNECTION_CHECK_INTERVAL", default_value = "6h", value_parser = parse_check_interval)]
    pub connection_check_interval: Duration,

    /// How long before a connection's session is known to end the client
    /// is told, once, with `connection.expiring`.
    #[arg(long, env = "LINKD_CONNECTION_EXPIRY_WARNING", default_value = "7days", value_parser = parse_duration)]
    pub connection_expiry_warning: Duration,

    /// The deployment's OAuth clients at providers, for apps that set none:
    /// a JSON file `{"<integration>": {"clientId": …, "clientSecret": …,
    /// "scopes": [...]}}`, checked against the catalog at start-up.
    #[arg(long, env = "LINKD_OAUTH_CLIENTS_FILE")]
    pub oauth_clients_file: Option<PathBuf>,

    /// Provider hosts that may be private or loopback (token endpoints and
    /// APIs of OAuth integrations, for local development and tests): like
    /// LINKD_WEBHOOK_ALLOW, e.g. `127.0.0.1,api.internal`.
    #[arg(long, env = "LINKD_PROVIDER_ALLOW", default_value = "", value_parser = parse_allowlist)]
    pub provider_allow: Allow,

    /// Largest answer of a provider's API the proxy
    /// (`/v2/connections/{id}/proxy/…`) passes on, in bytes; a larger one is
    /// refused (`502`) or, when its size was not announced, cut off.
    #[arg(long, env = "LINKD_PROXY_MAX_RESPONSE_BYTES", default_value_t = 10 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1024..=1024 * 1024 * 1024))]
    pub proxy_max_response_bytes: u64,

    /// How often every replica looks for OAuth access tokens due for
    /// refreshing (a few minutes before they expire). Safe in several
    /// replicas at once: one refresh per connection at a time.
    #[arg(long, env = "LINKD_OAUTH_REFRESH_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub oauth_refresh_interval: Duration,

    /// The wait after a failed refresh (network, 5xx, 429); doubled with
    /// each failure in a row up to an hour, ±20 %, never shorter than the
    /// provider's `Retry-After`.
    #[arg(long, env = "LINKD_OAUTH_REFRESH_BACKOFF", default_value = "30s", value_parser = parse_duration)]
    pub oauth_refresh_backoff: Duration,

    /// Failed refreshes in a row after which a connection is marked
    /// refresh-exhausted (`connection.updated`) and retried only every
    /// LINKD_OAUTH_REFRESH_EXHAUSTED_RETRY (a call that needs it still tries).
    #[arg(long, env = "LINKD_OAUTH_REFRESH_ATTEMPTS", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub oauth_refresh_attempts: u32,

    /// How often the background still tries an exhausted connection.
    #[arg(long, env = "LINKD_OAUTH_REFRESH_EXHAUSTED_RETRY", default_value = "6h", value_parser = parse_duration)]
    pub oauth_refresh_exhausted_retry: Duration,

    /// Whether every OAuth authorization request must carry a PKCE S256
    /// `code_challenge` (RFC 9700 recommends it for all clients).
    #[arg(long, env = "LINKD_OAUTH_REQUIRE_PKCE", default_value_t = true, action = clap::ArgAction::Set, value_name = "true|false")]
    pub oauth_require_pkce: bool,

    /// Shortest accepted OAuth `state`; 0 makes `state` optional (as
    /// documented).
    #[arg(long, env = "LINKD_OAUTH_STATE_MIN_LENGTH", default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=1024))]
    pub oauth_state_min_length: u16,

    /// Lifetime of an OAuth authorization code (at most 10 minutes).
    #[arg(long, env = "LINKD_OAUTH_CODE_TTL", default_value = "10m", value_parser = parse_code_ttl)]
    pub oauth_code_ttl: Duration,

    /// Lifetime of an OAuth access token.
    #[arg(long, env = "LINKD_OAUTH_TOKEN_TTL", default_value = "1h", value_parser = parse_session_ttl)]
    pub oauth_token_ttl: Duration,

    /// How long an OAuth grant's refresh tokens work, counted from the code
    /// exchange (rotation does not extend it): then the end user logs in
    /// again.
    #[arg(long, env = "LINKD_OAUTH_REFRESH_TTL", default_value = "30d", value_parser = parse_refresh_ttl)]
    pub oauth_refresh_ttl: Duration,

    /// Webhook attempt timeout (connect to response headers).
    #[arg(long, env = "LINKD_WEBHOOK_TIMEOUT", default_value = "15s", value_parser = parse_session_ttl)]
    pub webhook_timeout: Duration,

    /// Delays before each webhook attempt, comma-separated; the first is
    /// normally 0s (at once) and the count is the number of attempts.
    #[arg(long, env = "LINKD_WEBHOOK_RETRY_SCHEDULE", default_value = "0s,5s,5m,30m,2h,5h,10h,14h,20h,24h", value_parser = parse_schedule)]
    pub webhook_retry_schedule: Schedule,

    /// How long a claimed webhook attempt may run before another replica
    /// retries it (with the same webhook-id). Must exceed the timeout.
    #[arg(long, env = "LINKD_WEBHOOK_LEASE", default_value = "60s", value_parser = parse_session_ttl)]
    pub webhook_lease: Duration,

    /// How often an idle dispatcher looks for due webhooks.
    #[arg(long, env = "LINKD_WEBHOOK_POLL_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub webhook_poll_interval: Duration,

    /// Webhook deliveries in flight per replica.
    #[arg(long, env = "LINKD_WEBHOOK_CONCURRENCY", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub webhook_concurrency: u16,

    /// Webhook deliveries in flight per replica to one destination (at most
    /// the concurrency): a destination that hangs holds no more slots.
    #[arg(long, env = "LINKD_WEBHOOK_DESTINATION_CONCURRENCY", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub webhook_destination_concurrency: u16,

    /// Failed webhook attempts in a row (error statuses, time-outs,
    /// connection errors) after which a destination's pending events wait
    /// together for the breaker's cool-down.
    #[arg(long, env = "LINKD_WEBHOOK_BREAKER_FAILURES", default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=10_000))]
    pub webhook_breaker_failures: u16,

    /// How long a destination's events wait once its breaker opens; each
    /// opening since its last delivered attempt doubles it (at most 32×).
    #[arg(long, env = "LINKD_WEBHOOK_BREAKER_COOLDOWN", default_value = "30s", value_parser = parse_session_ttl)]
    pub webhook_breaker_cooldown: Duration,

    /// Destinations the SSRF guard lets through although they are private
    /// or loopback: comma-separated host names and IP ranges (for local
    /// development and tests), e.g. `127.0.0.1,hooks.internal,10.0.0.0/8`.
    #[arg(long, env = "LINKD_WEBHOOK_ALLOW", default_value = "", value_parser = parse_allowlist)]
    pub webhook_allow: Allow,

    /// How long a Link session (`InitLinkSession`) accepts input.
    #[arg(long, env = "LINKD_LINK_SESSION_TTL", default_value = "30m", value_parser = parse_session_ttl)]
    pub link_session_ttl: Duration,

    /// The longest one provider call (a login, a second-factor code, one
    /// operation) may take before it fails as `provider_unavailable`. A
    /// flow is held by one call at a time for this long plus half again, so
    /// a replica that dies mid-call frees the flow after that.
    #[arg(long, env = "LINKD_PROVIDER_TIMEOUT", default_value = "30s", value_parser = parse_provider_timeout)]
    pub provider_timeout: Duration,

    /// How often the database is probed to drive health status.
    #[arg(long, env = "LINKD_HEALTH_CHECK_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub health_check_interval: Duration,

    /// How often each replica refreshes the webhook queue gauges
    /// (`linkd_webhook_queue_depth`, `linkd_webhook_oldest_due_seconds`).
    #[arg(long, env = "LINKD_WEBHOOK_QUEUE_STATS_INTERVAL", default_value = "1s", value_parser = parse_session_ttl)]
    pub webhook_queue_stats_interval: Duration,

    /// How long a verified API key is trusted without asking the database
    /// again: a revoked key stops working within this bound on every
    /// replica. `0s` checks every call (one more database round trip each).
    #[arg(long, env = "LINKD_API_KEY_CACHE_TTL", default_value = "5s", value_parser = parse_key_cache_ttl)]
    pub api_key_cache_ttl: Duration,

    /// Rate limit of each API key, over all replicas together: `RATE/s` or
    /// `RATE/m`, optionally `,burst=N` (the bucket's size; default two
    /// seconds' worth), or `off`. Past it calls get `429` /
    /// `RESOURCE_EXHAUSTED` with when to retry.
    #[arg(long, env = "LINKD_RATE_LIMIT_API_KEY", default_value = "100/s,burst=200", value_parser = parse_rate_limit)]
    pub rate_limit_api_key: RateLimit,

    /// Default rate limit of each client app, over all replicas together:
    /// what the app's end users and OAuth clients do without an API key
    /// (Link flow calls, token requests, calls with its access tokens).
    /// `linkd admin set-rate-limit` gives one app its own. Same syntax.
    #[arg(long, env = "LINKD_RATE_LIMIT_CLIENT_APP", default_value = "100/s,burst=200", value_parser = parse_rate_limit)]
    pub rate_limit_client_app: RateLimit,

    /// Rate limit of each Link flow (one end user's page), per replica.
    /// Same syntax.
    #[arg(long, env = "LINKD_RATE_LIMIT_FLOW", default_value = "5/s,burst=30", value_parser = parse_rate_limit)]
    pub rate_limit_flow: RateLimit,

    /// Rate limit of each client address (IPv6: each /64), per replica,
    /// for calls without any credential (OAuth authorize and token
    /// requests, link claims) and for wrong credentials; once spent, the
    /// address gets `429` for everything but API keys this replica verified
    /// recently. Same syntax.
    #[arg(long, env = "LINKD_RATE_LIMIT_CLIENT_IP", default_value = "20/s,burst=100", value_parser = parse_rate_limit)]
    pub rate_limit_client_ip: RateLimit,

    /// Header your proxy or mesh sets to the caller's address
    /// (`x-forwarded-for`: its last entry; `x-real-ip`,
    /// `x-envoy-external-address`); unset: the connection's peer address.
    /// Set it only when every request passes that proxy, or callers can
    /// choose their own address.
    #[arg(long, env = "LINKD_CLIENT_IP_HEADER")]
    pub client_ip_header: Option<http::HeaderName>,

    /// Largest `offset` a listing accepts; deeper pages are reached with
    /// `page_token`, whose cost does not grow with depth.
    #[arg(long, env = "LINKD_MAX_LIST_OFFSET", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub max_list_offset: u32,

    /// Connector processes serving integrations for production tenants:
    /// comma-separated `name=URL` (`http://` or `https://`), e.g.
    /// `carriers=http://127.0.0.1:7001`. Each serves what its `Describe`
    /// answer lists; an integration no connector serves answers
    /// `provider_unavailable` in production.
    #[arg(long, env = "LINKD_CONNECTORS", default_value = "", value_parser = parse_connectors)]
    pub connectors: ConnectorEndpoints,

    /// Bearer tokens linkd sends to connectors: comma-separated
    /// `name=TOKEN`. Secret; never logged.
    #[arg(long, env = "LINKD_CONNECTOR_TOKENS", default_value = "", hide_default_value = true, hide_env_values = true, value_parser = parse_connector_tokens)]
    pub connector_tokens: ConnectorTokens,

    /// Connectors (comma-separated names from `LINKD_CONNECTORS`) that
    /// serve sandbox tenants too, for the integrations they describe, so a
    /// team can try its connector with sandbox keys; other sandbox traffic
    /// stays on the built-in sandbox connector.
    #[arg(long, env = "LINKD_SANDBOX_CONNECTORS", default_value = "", value_parser = parse_names)]
    pub sandbox_connectors: Names,

    /// PEM file of the certificate authorities that sign `https://`
    /// connectors' certificates; without it, the web PKI roots.
    #[arg(long, env = "LINKD_CONNECTOR_TLS_CA_FILE")]
    pub connector_tls_ca_file: Option<PathBuf>,

    /// PEM certificate linkd presents to `https://` connectors (mutual
    /// TLS), with `LINKD_CONNECTOR_TLS_KEY_FILE`.
    #[arg(
        long,
        env = "LINKD_CONNECTOR_TLS_CERT_FILE",
        requires = "connector_tls_key_file"
    )]
    pub connector_tls_cert_file: Option<PathBuf>,

    /// PEM private key of `LINKD_CONNECTOR_TLS_CERT_FILE`.
    #[arg(
        long,
        env = "LINKD_CONNECTOR_TLS_KEY_FILE",
        requires = "connector_tls_cert_file"
    )]
    pub connector_tls_key_file: Option<PathBuf>,

    /// Deadline of a connector's `Login` and `SubmitSecondFactor`.
    #[arg(long, env = "LINKD_CONNECTOR_LOGIN_TIMEOUT", default_value = "30s", value_parser = parse_provider_timeout)]
    pub connector_login_timeout: Duration,

    /// Deadline of a connector's `ExecuteOperation`.
    #[arg(long, env = "LINKD_CONNECTOR_OPERATION_TIMEOUT", default_value = "30s", value_parser = parse_provider_timeout)]
    pub connector_operation_timeout: Duration,

    /// Deadline of a connector's `Describe`, `CheckSession` and `Logout`
    /// (the first two are retried within it).
    #[arg(long, env = "LINKD_CONNECTOR_CHECK_TIMEOUT", default_value = "10s", value_parser = parse_provider_timeout)]
    pub connector_check_timeout: Duration,
}

impl ServeArgs {
    pub fn public_url(&self, bound: SocketAddr) -> Url {
        self.public_url.clone().unwrap_or_else(|| {
            Url::parse(&format!("http://{bound}")).expect("socket address forms a URL")
        })
    }

    /// What request handling needs from these settings, for a server bound
    /// to `bound`.
    pub fn settings(&self, bound: SocketAddr) -> crate::api::services::Settings {
        crate::api::services::Settings {
            public_url: self.public_url(bound),
            app_clip_base_url: self.app_clip_base_url.clone(),
            session_ttl: self.link_session_ttl,
            provider_timeout: self.provider_timeout,
            api_key_cache_ttl: self.api_key_cache_ttl,
            rate_limits: crate::ratelimit::RateLimitSettings {
                api_key: self.rate_limit_api_key.0,
                client_app: self.rate_limit_client_app.0,
                flow: self.rate_limit_flow.0,
                client_ip: self.rate_limit_client_ip.0,
            },
            max_list_offset: i64::from(self.max_list_offset),
            oauth: crate::oauth::OAuthSettings {
                require_pkce: self.oauth_require_pkce,
                state_min_length: usize::from(self.oauth_state_min_length),
                code_ttl: self.oauth_code_ttl,
                token_ttl: self.oauth_token_ttl,
                refresh_ttl: self.oauth_refresh_ttl,
            },
            webhooks: crate::webhooks::WebhookSettings {
                timeout: self.webhook_timeout,
                schedule: self.webhook_retry_schedule.0.clone(),
                lease: self.webhook_lease,
                poll_interval: self.webhook_poll_interval,
                queue_stats_interval: self.webhook_queue_stats_interval,
                concurrency: usize::from(self.webhook_concurrency),
                per_destination: usize::from(
                    self.webhook_destination_concurrency
                        .min(self.webhook_concurrency),
                ),
                breaker: crate::webhooks::store::BreakerSettings {
                    failures: i32::from(self.webhook_breaker_failures),
                    cooldown: self.webhook_breaker_cooldown,
                    give_up_after: self.webhook_retry_schedule.0.iter().sum(),
                },
                allow: std::sync::Arc::new(self.webhook_allow.0.clone()),
            },
            provider_oauth: crate::api::services::ProviderOAuthConfig {
                clients_file: self.oauth_clients_file.clone(),
                allow: std::sync::Arc::new(self.provider_allow.0.clone()),
                refresh: crate::connections::tokens::RefreshSettings {
                    backoff: self.oauth_refresh_backoff,
                    attempts: self.oauth_refresh_attempts,
                    exhausted_retry: self.oauth_refresh_exhausted_retry,
                },
                max_proxy_response_bytes: self.proxy_max_response_bytes,
            },
            connectors: crate::api::services::ConnectorSettings {
                remotes: self
                    .connectors
                    .0
                    .iter()
                    .map(|(name, url)| crate::connectors::RemoteSettings {
                        name: name.clone(),
                        endpoint: url.to_string(),
                        token: self.connector_tokens.0.get(name).cloned(),
                        serves_sandbox: self.sandbox_connectors.0.contains(name),
                    })
                    .collect(),
                tls: crate::connectors::remote::TlsFiles {
                    ca: self.connector_tls_ca_file.clone(),
                    identity: self
                        .connector_tls_cert_file
                        .clone()
                        .zip(self.connector_tls_key_file.clone()),
                },
                deadlines: crate::connectors::remote::Deadlines {
                    login: self.connector_login_timeout,
                    operation: self.connector_operation_timeout,
                    check: self.connector_check_timeout,
                },
            },
        }
    }

    /// Checks settings that depend on each other.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.webhook_lease <= self.webhook_timeout {
            anyhow::bail!(
                "invalid configuration: --webhook-lease / LINKD_WEBHOOK_LEASE must exceed --webhook-timeout / LINKD_WEBHOOK_TIMEOUT"
            );
        }
        let configured = |name: &String| self.connectors.0.iter().any(|(n, _)| n == name);
        if let Some(name) = self.sandbox_connectors.0.iter().find(|n| !configured(n)) {
            anyhow::bail!(
                "invalid configuration: LINKD_SANDBOX_CONNECTORS names {name:?}, which LINKD_CONNECTORS does not configure"
            );
        }
        if let Some(name) = self.connector_tokens.0.keys().find(|n| !configured(n)) {
            anyhow::bail!(
                "invalid configuration: LINKD_CONNECTOR_TOKENS has a token for {name:?}, which LINKD_CONNECTORS does not configure"
            );
        }
        Ok(())
    }
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create a client app and an API key for its environment.
    CreateApp {
        /// Display name shown to end users.
        #[arg(long)]
        name: String,
        #[arg(long, value_enum)]
        environment: Environment,
        /// Allowed redirect URI (repeat for several; the first is the default).
        #[arg(long = "redirect-uri", required = true)]
        redirect_uris: Vec<String>,
        /// Default webhook URL.
        #[arg(long)]
        webhook_url: Option<String>,
        /// Organization (`org_…`); a new one is created when omitted.
        #[arg(long)]
        organization: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Create another API key for an organization and environment.
    CreateKey {
        #[arg(long)]
        organization: String,
        #[arg(long, value_enum)]
        environment: Environment,
        #[arg(long)]
        json: bool,
    },
    /// Revoke an API key by its id (`key_…`).
    RevokeKey { key_id: String },
    /// Replace a client app's webhook signing secret; the previous one keeps
    /// signing next to the new one for the grace period.
    RotateWebhookSecret {
        app_id: String,
        /// How long the previous secret keeps signing (0s to 7d).
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        grace: Duration,
        #[arg(long)]
        json: bool,
    },
    /// Point a client app's webhooks at a new URL (or none). Its pending
    /// events go to the new URL, and those its circuit breaker held back are
    /// sent at once.
    SetWebhookUrl {
        app_id: String,
        /// The new http(s) webhook URL.
        #[arg(long, required_unless_present = "clear", conflicts_with = "clear")]
        url: Option<String>,
        /// Remove the app's webhook URL (its events are then skipped).
        #[arg(long)]
        clear: bool,
        #[arg(long)]
        json: bool,
    },
    /// Issue a new OAuth client secret for a client app (`app_…`); the old
    /// one stops working at once.
    RotateClientSecret {
        app_id: String,
        #[arg(long)]
        json: bool,
    },
    /// Set the OAuth client a client app (`app_…`) uses at an OAuth
    /// integration's provider. The secret is read from stdin (one line) so
    /// it stays out of shell history and process lists.
    SetOauthClient {
        app_id: String,
        /// An OAuth integration of the catalog, e.g. `twitch`.
        #[arg(long)]
        integration: String,
        /// The client id the provider issued.
        #[arg(long)]
        client_id: String,
        /// A scope to request (repeatable); none: the integration's defaults.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Set how the Link page presents a client app (`app_…`): the name it
    /// shows, its accent colour, its logo (a PNG, JPEG or WebP file of at
    /// most 256 KiB, stored and served by linkd). Unset flags keep their value.
    SetBranding {
        app_id: String,
        /// Name shown to end users (empty: the app's name).
        #[arg(long)]
        display_name: Option<String>,
        /// Accent colour, `#rrggbb` (empty: linkd's blue).
        #[arg(long)]
        accent_color: Option<String>,
        /// Logo image file.
        #[arg(long, conflicts_with = "remove_logo")]
        logo: Option<PathBuf>,
        /// Remove the logo.
        #[arg(long)]
        remove_logo: bool,
    },
    /// Allow or forbid a client app (`app_…`) to read connections' provider
    /// access tokens (GetConnectionAccessToken). Off by default.
    SetAccessTokenHandoff {
        app_id: String,
        /// `true` or `false`.
        #[arg(long, action = clap::ArgAction::Set, value_name = "true|false")]
        enabled: bool,
    },
    /// Set how a client app (`app_…`) acts as an OAuth client of linkd's
    /// authorization server; options left out keep their setting.
    SetOauthRegistration {
        app_id: String,
        /// `confidential` (authenticates with its client secret, the
        /// default) or `public` (a native or single-page app: sends only its
        /// client_id, token_endpoint_auth_method `none`, PKCE required).
        #[arg(long, value_name = "confidential|public")]
        client_type: Option<String>,
        /// Whether its grants get refresh tokens (on by default).
        #[arg(long, action = clap::ArgAction::Set, value_name = "true|false")]
        refresh_tokens: Option<bool>,
        /// A browser origin (`https://app.example`) its JavaScript may call
        /// the token, revocation and introspection endpoints from (CORS);
        /// repeat for several. Replaces the registered list.
        #[arg(long = "web-origin", value_name = "ORIGIN")]
        web_origins: Vec<String>,
        /// Remove every registered web origin.
        #[arg(long, conflicts_with = "web_origins")]
        clear_web_origins: bool,
    },
    /// Give a client app (`app_…`) its own rate limit for the calls made
    /// on its behalf without an API key (Link flows, token requests, its
    /// access tokens), or put it back on `LINKD_RATE_LIMIT_CLIENT_APP`.
    /// Every replica applies it from its next lease (within a second).
    SetRateLimit {
        app_id: String,
        /// `RATE/s` or `RATE/m` with an optional `,burst=N`
        /// (`500/s,burst=1000`), or `default`.
        #[arg(long, value_name = "RATE|default")]
        limit: String,
    },
    /// List client apps.
    ListApps {
        /// Only this organization (`org_…`).
        #[arg(long)]
        organization: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 3s, 1m)"))
}

fn parse_http_url(s: &str) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| format!("not a valid URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err("must be an absolute http:// or https:// URL".into());
    }
    Ok(url)
}

fn parse_database_url(s: &str) -> Result<String, String> {
    let url = Url::parse(s).map_err(|_| "not a valid URL".to_string())?;
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        return Err("must be a postgres:// URL".into());
    }
    Ok(s.to_string())
}

impl Cli {
    /// Parses arguments; on a bad value prints one line naming the setting
    /// (flag and environment variable) without echoing the value, and exits 2.
    pub fn parse_or_exit() -> Self {
        use clap::FromArgMatches as _;
        match Cli::shown_command()
            .try_get_matches()
            .and_then(|matches| Cli::from_arg_matches(&matches))
        {
            Ok(cli) => cli,
            Err(err) => exit_with_config_error(err),
        }
    }

    /// The command as `--help` shows it: at the top, only the global
    /// options and the commands (the serve options, also accepted there,
    /// are listed by `linkd serve --help`).
    pub fn shown_command() -> clap::Command {
        Cli::command().mut_args(|arg| {
            let kept = arg.is_global_set() || matches!(arg.get_id().as_str(), "help" | "version");
            if kept { arg } else { arg.hide(true) }
        })
    }
}

fn exit_with_config_error(err: clap::Error) -> ! {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        err.kind(),
        ErrorKind::ValueValidation | ErrorKind::InvalidValue
    ) {
        err.exit();
    }
    let arg = match err.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(arg)) => arg.clone(),
        _ => err.exit(),
    };
    let long = arg.split_whitespace().next().unwrap_or(&arg).to_string();
    let env = Cli::command()
        .get_subcommands()
        .flat_map(|s| s.get_arguments().cloned().collect::<Vec<_>>())
        .chain(Cli::command().get_arguments().cloned())
        .find(|a| a.get_long().is_some_and(|l| format!("--{l}") == long))
        .and_then(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()));
    let setting = match env {
        Some(env) => format!("{long} / {env}"),
        None => long,
    };
    let reason = std::error::Error::source(&err)
        .map(|s| s.to_string())
        .unwrap_or_else(|| "invalid value".into());
    eprintln!("linkd: invalid configuration: {setting}: {reason}");
    std::process::exit(2);
}

fn parse_session_ttl(s: &str) -> Result<Duration, String> {
    let ttl = parse_duration(s)?;
    if !(Duration::from_secs(1)..=Duration::from_secs(24 * 60 * 60)).contains(&ttl) {
        return Err("must be between 1s and 24h".into());
    }
    Ok(ttl)
}

fn parse_check_interval(s: &str) -> Result<Duration, String> {
    let interval = parse_duration(s)?;
    if interval < Duration::from_secs(1) {
        return Err("must be at least 1s".into());
    }
    Ok(interval)
}

fn parse_provider_timeout(s: &str) -> Result<Duration, String> {
    let timeout = parse_duration(s)?;
    if !(Duration::from_secs(1)..=Duration::from_secs(10 * 60)).contains(&timeout) {
        return Err("must be between 1s and 10m".into());
    }
    Ok(timeout)
}

fn parse_key_cache_ttl(s: &str) -> Result<Duration, String> {
    let ttl = parse_duration(s)?;
    if ttl > Duration::from_secs(60) {
        return Err("must be at most 60s (it bounds how long a revoked key still works)".into());
    }
    Ok(ttl)
}

/// A rate-limit policy, or `off`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit(pub Option<crate::ratelimit::Policy>);

fn parse_rate_limit(s: &str) -> Result<RateLimit, String> {
    if s.trim().eq_ignore_ascii_case("off") {
        return Ok(RateLimit(None));
    }
    crate::ratelimit::Policy::parse(s).map(|p| RateLimit(Some(p)))
}

fn parse_event_retention(s: &str) -> Result<Duration, String> {
    let retention = parse_duration(s)?;
    if retention < Duration::from_secs(60 * 60) {
        return Err("must be at least 1h".into());
    }
    Ok(retention)
}

fn parse_code_ttl(s: &str) -> Result<Duration, String> {
    let ttl = parse_duration(s)?;
    if !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&ttl) {
        return Err("must be between 1s and 10m (RFC 6749 §4.1.2)".into());
    }
    Ok(ttl)
}

fn parse_refresh_ttl(s: &str) -> Result<Duration, String> {
    let ttl = parse_duration(s)?;
    if !(Duration::from_secs(60)..=Duration::from_secs(365 * 24 * 60 * 60)).contains(&ttl) {
        return Err("must be between 1m and 365d".into());
    }
    Ok(ttl)
}

/// Delays of the webhook retry schedule.
#[derive(Debug, Clone)]
pub struct Schedule(pub Vec<Duration>);

fn parse_schedule(s: &str) -> Result<Schedule, String> {
    let delays = s
        .split(',')
        .map(|d| parse_duration(d.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    if delays.is_empty() || delays.len() > 50 {
        return Err("must list 1 to 50 delays, e.g. 0s,5s,5m".into());
    }
    Ok(Schedule(delays))
}

/// The SSRF guard's allowlist.
#[derive(Debug, Clone)]
pub struct Allow(pub crate::kernel::ssrf::Allowlist);

/// `LINKD_CONNECTORS`: connector names and their endpoints, in order.
#[derive(Debug, Clone, Default)]
pub struct ConnectorEndpoints(pub Vec<(String, Url)>);

/// `LINKD_CONNECTOR_TOKENS`: a bearer token per connector name.
#[derive(Clone, Default)]
pub struct ConnectorTokens(pub std::collections::BTreeMap<String, secrecy::SecretString>);

impl std::fmt::Debug for ConnectorTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// A comma-separated list of names.
#[derive(Debug, Clone, Default)]
pub struct Names(pub Vec<String>);

fn valid_connector_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// Splits `name=value,name=value`, refusing a repeated or malformed name.
fn pairs(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (name, value) = item
            .split_once('=')
            .ok_or_else(|| "each entry must be name=value".to_string())?;
        let name = name.trim();
        if !valid_connector_name(name) {
            return Err(format!(
                "connector name {name:?} must be 1 to 64 lowercase letters, digits, - or _"
            ));
        }
        if out.iter().any(|(n, _)| n == name) {
            return Err(format!("connector {name:?} is given twice"));
        }
        out.push((name.to_string(), value.trim().to_string()));
    }
    Ok(out)
}

fn parse_connectors(s: &str) -> Result<ConnectorEndpoints, String> {
    pairs(s)?
        .into_iter()
        .map(|(name, url)| {
            let parsed = Url::parse(&url)
                .map_err(|err| format!("connector {name:?}: {url:?} is not a URL: {err}"))?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
                return Err(format!(
                    "connector {name:?}: {url:?} must be an http:// or https:// URL with a host"
                ));
            }
            Ok((name, parsed))
        })
        .collect::<Result<_, _>>()
        .map(ConnectorEndpoints)
}

fn parse_connector_tokens(s: &str) -> Result<ConnectorTokens, String> {
    pairs(s)?
        .into_iter()
        .map(|(name, token)| {
            if token.is_empty() {
                return Err(format!("connector {name:?}: the token is empty"));
            }
            Ok((name, secrecy::SecretString::from(token)))
        })
        .collect::<Result<_, _>>()
        .map(ConnectorTokens)
}

fn parse_names(s: &str) -> Result<Names, String> {
    let names: Vec<String> = s
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .collect();
    if let Some(bad) = names.iter().find(|n| !valid_connector_name(n)) {
        return Err(format!(
            "connector name {bad:?} must be 1 to 64 lowercase letters, digits, - or _"
        ));
    }
    Ok(Names(names))
}

fn parse_allowlist(s: &str) -> Result<Allow, String> {
    crate::kernel::ssrf::Allowlist::parse(s).map(Allow)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults the README's configuration table documents.
    #[test]
    fn defaults_are_the_documented_ones() {
        let cli = Cli::try_parse_from(["linkd"]).unwrap();
        let serve = cli.serve;
        let secs = Duration::from_secs;
        assert_eq!(
            serve.webhook_retry_schedule.0,
            [0, 5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400].map(secs),
            "0s,5s,5m,30m,2h,5h,10h,14h,20h,24h"
        );
        assert_eq!(serve.webhook_timeout, secs(15));
        assert_eq!(serve.webhook_lease, secs(60));
        assert_eq!(serve.webhook_concurrency, 64);
        assert_eq!(serve.webhook_destination_concurrency, 32);
        assert_eq!(serve.provider_timeout, secs(30));
        assert_eq!(serve.link_session_ttl, secs(30 * 60));
        assert_eq!(serve.oauth_code_ttl, secs(600));
        assert_eq!(serve.oauth_token_ttl, secs(3600));
        assert_eq!(serve.oauth_refresh_ttl, secs(30 * 24 * 3600));
        assert_eq!(serve.api_key_cache_ttl, secs(5));
        assert_eq!(serve.max_list_offset, 10_000);
        assert!(serve.connectors.0.is_empty());
        assert_eq!(serve.connector_login_timeout, secs(30));
        assert_eq!(serve.connector_operation_timeout, secs(30));
        assert_eq!(serve.connector_check_timeout, secs(10));
        assert_eq!(serve.connection_check_interval, secs(6 * 3600));
        assert_eq!(serve.connection_expiry_warning, secs(7 * 24 * 3600));
    }

    fn serve(args: &[&str]) -> Result<ServeArgs, String> {
        let cli = Cli::try_parse_from([&["linkd"], args].concat()).map_err(|e| e.to_string())?;
        cli.serve.check().map_err(|e| e.to_string())?;
        Ok(cli.serve)
    }

    #[test]
    fn connectors_are_named_endpoints_with_optional_tokens_and_sandbox_routes() {
        let serve = serve(&[
            "--connectors",
            "carriers=http://127.0.0.1:7001, banks=https://banks.mesh.local",
            "--connector-tokens",
            "banks=s3cret",
            "--sandbox-connectors",
            "carriers",
        ])
        .unwrap();
        let settings = serve.settings("127.0.0.1:8080".parse().unwrap()).connectors;
        let remotes: Vec<_> = settings
            .remotes
            .iter()
            .map(|r| {
                (
                    r.name.as_str(),
                    r.endpoint.as_str(),
                    r.token.is_some(),
                    r.serves_sandbox,
                )
            })
            .collect();
        assert_eq!(
            remotes,
            [
                ("carriers", "http://127.0.0.1:7001/", false, true),
                ("banks", "https://banks.mesh.local/", true, false),
            ]
        );
        assert!(
            !format!("{:?}", serve.connector_tokens).contains("s3cret"),
            "tokens never show in Debug"
        );
    }

    #[test]
    fn connector_settings_that_cannot_work_are_refused_naming_the_connector() {
        for (args, expected) in [
            (["--connectors", "carriers"].as_slice(), "name=value"),
            (&["--connectors", "Bad Name=http://x"], "\"Bad Name\""),
            (&["--connectors", "a=ftp://x"], "http:// or https://"),
            (&["--connectors", "a=http://x,a=http://y"], "given twice"),
            (
                &["--sandbox-connectors", "carriers"],
                "\"carriers\", which LINKD_CONNECTORS",
            ),
            (
                &["--connector-tokens", "carriers=t"],
                "token for \"carriers\"",
            ),
            (
                &["--connectors", "a=http://x", "--connector-tokens", "a="],
                "token is empty",
            ),
        ] {
            let err = serve(args).unwrap_err();
            assert!(err.contains(expected), "{args:?}: {err}");
        }
    }
}
