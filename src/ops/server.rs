//! One listener for gRPC (HTTP/2, h2c), gRPC health and reflection, and the
//! REST shim (HTTP/1.1 or HTTP/2), with graceful shutdown:
//!
//! 1. the shutdown signal arrives → the webhook dispatcher claims nothing
//!    more and health reports `NOT_SERVING`;
//! 2. for the drain delay new requests are still served (load balancers and
//!    meshes notice the health change and stop routing here);
//! 3. the listener closes; in-flight calls and webhook deliveries get the
//!    grace period to finish (deliveries cut off are retried by another
//!    replica after their lease, with the same `webhook-id`).

use crate::api::health::Health;
use crate::api::rest::{self, RestState};
use crate::api::services::Services;
use crate::kernel::error::Error;
use crate::ops::config::ServeArgs;
use crate::pb;
use anyhow::Context;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt as _;
use std::future::Future;
use std::net::SocketAddr;
use tonic::server::NamedService;
use tower_http::trace::{DefaultOnResponse, TraceLayer};

pub struct Server {
    listener: tokio::net::TcpListener,
    router: axum::Router,
    health: Health,
    api: Services,
    args: ServeArgs,
}

/// Unknown route: gRPC clients get `UNIMPLEMENTED`, REST clients a JSON 404.
async fn fallback(request: Request) -> Response {
    let is_grpc = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"));
    if is_grpc {
        tonic::Status::unimplemented(format!("unknown method {}", request.uri().path()))
            .into_http::<axum::body::Body>()
            .into_response()
    } else {
        Error::NotFound("route").into_response()
    }
}

fn name<S: NamedService>(_: &S) -> &'static str {
    S::NAME
}

impl Server {
    /// Binds the listener. `public_url` for the [`Services`] depends on the bound
    /// address (port 0 in tests), so the caller builds the Services from it.
    pub async fn bind(args: &ServeArgs) -> anyhow::Result<tokio::net::TcpListener> {
        tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {} (--listen / LINKD_LISTEN)", args.listen))
    }

    pub async fn new(
        listener: tokio::net::TcpListener,
        api: Services,
        args: ServeArgs,
    ) -> anyhow::Result<Self> {
        args.check()?;
        let max = args.max_request_bytes as usize;
        let (reporter, health_service) = tonic_health::server::health_reporter();

        // One copy of the services behind every surface.
        let shared = std::sync::Arc::new(api.clone());
        let link = pb::link_service_server::LinkServiceServer::from_arc(shared.clone())
            .max_decoding_message_size(max);
        let connection =
            pb::connection_service_server::ConnectionServiceServer::from_arc(shared.clone())
                .max_decoding_message_size(max);
        let authorize =
            pb::authorize_service_server::AuthorizeServiceServer::from_arc(shared.clone())
                .max_decoding_message_size(max);
        let flow = pb::link_flow_service_server::LinkFlowServiceServer::from_arc(shared.clone())
            .max_decoding_message_size(max);
        let client_app =
            pb::client_app_service_server::ClientAppServiceServer::from_arc(shared.clone())
                .max_decoding_message_size(max);
        let event = pb::event_service_server::EventServiceServer::from_arc(shared.clone())
            .max_decoding_message_size(max);
        let health = Health::new(
            reporter,
            vec![
                name(&link),
                name(&connection),
                name(&authorize),
                name(&flow),
                name(&client_app),
                name(&event),
            ],
        );

        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("building the reflection service")?;
        let reflection_alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .context("building the reflection service")?;

        let mut grpc = tonic::service::Routes::builder();
        grpc.add_service(health_service)
            .add_service(reflection)
            .add_service(reflection_alpha)
            .add_service(link)
            .add_service(connection)
            .add_service(authorize)
            .add_service(flow)
            .add_service(client_app)
            .add_service(event);

        let router = grpc
            .routes()
            .into_axum_router()
            .merge(rest::router(
                RestState {
                    api: shared,
                    health: health.clone(),
                },
                max,
            ))
            .merge(crate::api::web::router())
            .fallback(fallback)
            .layer(axum::middleware::from_fn_with_state(
                crate::api::throttle::Throttle {
                    auth: api.auth.clone(),
                    limits: api.auth.limits().clone(),
                    client_ip_header: args.client_ip_header.clone(),
                },
                crate::api::throttle::Throttle::limit,
            ))
            // Outside the limits: while the database is down, calls are
            // refused before they cost a token.
            .layer(axum::middleware::from_fn_with_state(
                health.clone(),
                Health::fail_fast_while_database_down,
            ))
            // Outside the fail-fast gate, so its refusals are counted too.
            .layer(axum::middleware::from_fn_with_state(
                api.requests.clone(),
                crate::api::metrics::RequestMetrics::record,
            ))
            .layer(
                TraceLayer::new_for_http()
                    .make_span_with(crate::ops::telemetry::request_span)
                    // One line per request at debug: at info it would cost
                    // every call a formatted log line.
                    .on_response(DefaultOnResponse::new().level(tracing::Level::DEBUG)),
            );

        Ok(Server {
            listener,
            router,
            health,
            api,
            args,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// Serves until `shutdown` resolves, then drains as described above.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Server {
            listener,
            router,
            health,
            api,
            args,
        } = self;
        let probe = health.spawn_database_probe(api.db().clone(), args.health_check_interval);
        let expiry = crate::ops::jobs::spawn_expiry(
            api.db().clone(),
            api.jobs.clone(),
            args.expiry_interval,
            args.event_retention,
            args.connection_expiry_warning,
        );
        let checks = crate::ops::jobs::spawn_connection_checks(
            api.connections.clone(),
            api.jobs.clone(),
            args.connection_check_interval,
        );
        let refresher = crate::ops::jobs::spawn_token_refresher(
            api.connections.clone(),
            api.jobs.clone(),
            args.oauth_refresh_interval,
        );
        let dispatcher = crate::webhooks::Dispatcher::spawn(api.deliveries.clone())?;
        // Dropping the handle would not stop it: aborted with the others.
        let describer = api.spawn_connector_describer();
        let stop_describing = move || {
            if let Some(describer) = &describer {
                describer.abort();
            }
        };
        let (stop_accepting, stop_accepting_rx) = tokio::sync::oneshot::channel::<()>();
        let serve = tokio::spawn(
            axum::serve(
                listener.tap_io(set_nodelay),
                router.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move {
                let _ = stop_accepting_rx.await;
            })
            .into_future(),
        );
        tokio::pin!(serve);

        tokio::select! {
            result = &mut serve => {
                probe.abort();
                expiry.abort();
                checks.abort();
                refresher.abort();
                stop_describing();
                dispatcher.abort();
                return result.context("server task failed")?.context("server failed");
            }
            () = shutdown => {}
        }
        tracing::info!(
            drain_delay = ?args.shutdown_drain_delay,
            grace_period = ?args.shutdown_grace_period,
            "shutdown requested; reporting NOT_SERVING"
        );
        probe.abort();
        expiry.abort();
        checks.abort();
        // Refreshes under way are tasks of their own, finished below.
        refresher.abort();
        stop_describing();
        // No new webhook claims from here on (before health reports
        // NOT_SERVING, so an observer of that claims nothing more); the
        // deliveries in flight finish below, beside the calls.
        dispatcher.stop_claiming();
        health.start_draining().await;
        tokio::time::sleep(args.shutdown_drain_delay).await;
        let _ = stop_accepting.send(());
        let (served, (), ()) = tokio::join!(
            tokio::time::timeout(args.shutdown_grace_period, &mut serve),
            dispatcher.finish(args.shutdown_grace_period),
            api.connections.finish_refreshes(args.shutdown_grace_period),
        );
        match served {
            Ok(result) => {
                result
                    .context("server task failed")?
                    .context("server failed")?;
                tracing::info!("in-flight calls finished; stopped");
            }
            Err(_) => {
                serve.abort();
                tracing::warn!("grace period over; cutting off the calls still running");
            }
        }
        Ok(())
    }
}

/// Every accepted connection (gRPC and REST share it) is sent without
/// Nagle's delay: otherwise a response's later segments wait for the client's
/// delayed ACK, and every gRPC call takes ~40 ms whatever it does.
fn set_nodelay(stream: &mut tokio::net::TcpStream) {
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(error = %err, "cannot set TCP_NODELAY on an accepted connection");
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
