//! gRPC adapters: authenticate from metadata, call [`Services`], map errors
//! through the one code table.

use crate::api::services::Services;
use crate::auth::{Caller, presented_key};
use crate::pb;
use tonic::{Request, Response, Status};

type Reply<T> = Result<Response<T>, Status>;

/// The bearer credential of a call: an API key, or an end user's flow token.
fn bearer<T>(req: &Request<T>) -> Option<secrecy::SecretString> {
    presented_key(&req.metadata().clone().into_headers())
}

async fn caller<T>(api: &Services, req: &Request<T>) -> Result<Caller, Status> {
    Ok(api.auth.authenticate(bearer(req).as_ref()).await?)
}

/// The `idempotency-key` metadata of a creating call.
fn idempotency_key<T>(req: &Request<T>) -> Result<Option<String>, Status> {
    Ok(req
        .metadata()
        .get("idempotency-key")
        .map(|v| crate::idempotency::store::read_key(v.as_bytes()))
        .transpose()?)
}

#[tonic::async_trait]
impl pb::link_service_server::LinkService for Services {
    async fn create_link(
        &self,
        req: Request<pb::CreateLinkRequest>,
    ) -> Reply<pb::CreateLinkResponse> {
        let caller = caller(self, &req).await?;
        let key = idempotency_key(&req)?;
        Ok(Response::new(
            self.links
                .create_link(&caller, req.into_inner(), key.as_deref())
                .await?,
        ))
    }

    async fn get_link(&self, req: Request<pb::GetLinkRequest>) -> Reply<pb::GetLinkResponse> {
        let caller = caller(self, &req).await?;
        Ok(Response::new(
            self.links.get_link(&caller, req.into_inner()).await?,
        ))
    }

    async fn list_providers(
        &self,
        req: Request<pb::ListProvidersRequest>,
    ) -> Reply<pb::ListProvidersResponse> {
        caller(self, &req).await?;
        Ok(Response::new(self.links.list_providers(req.into_inner())?))
    }

    async fn init_link_session(
        &self,
        req: Request<pb::InitLinkSessionRequest>,
    ) -> Reply<pb::InitLinkSessionResponse> {
        let caller = caller(self, &req).await?;
        let key = idempotency_key(&req)?;
        Ok(Response::new(
            self.sessions
                .init_link_session(&caller, req.into_inner(), key.as_deref())
                .await?,
        ))
    }
}

#[tonic::async_trait]
impl pb::connection_service_server::ConnectionService for Services {
    async fn list_connections(
        &self,
        req: Request<pb::ListConnectionsRequest>,
    ) -> Reply<pb::ListConnectionsResponse> {
        let caller = caller(self, &req).await?;
        Ok(Response::new(
            self.connections
                .list_connections(&caller, req.into_inner())
                .await?,
        ))
    }

    async fn get_connection(
        &self,
        req: Request<pb::GetConnectionRequest>,
    ) -> Reply<pb::GetConnectionResponse> {
        let caller = self
            .oauth
            .authenticate_connection_reader(bearer(&req).as_ref())
            .await?;
        Ok(Response::new(
            self.connections
                .get_connection(&caller, req.into_inner())
                .await?,
        ))
    }

    async fn delete_connection(
        &self,
        req: Request<pb::DeleteConnectionRequest>,
    ) -> Reply<pb::DeleteConnectionResponse> {
        let caller = caller(self, &req).await?;
        Ok(Response::new(
            self.connections
                .delete_connection(&caller, req.into_inner())
                .await?,
        ))
    }

    async fn execute_operations(
        &self,
        req: Request<pb::ExecuteOperationsRequest>,
    ) -> Reply<pb::ExecuteOperationsResponse> {
        let caller = self
            .oauth
            .authenticate_connection_reader(bearer(&req).as_ref())
            .await?;
        let key = idempotency_key(&req)?;
        Ok(Response::new(
            self.connections
                .execute_operations(&caller, req.into_inner(), key.as_deref())
                .await?,
        ))
    }

    async fn get_connection_access_token(
        &self,
        req: Request<pb::GetConnectionAccessTokenRequest>,
    ) -> Reply<pb::GetConnectionAccessTokenResponse> {
        let caller = caller(self, &req).await?;
        Ok(Response::new(
            self.connections
                .access_token(&caller, req.into_inner())
                .await?,
        ))
    }

    type ProxyStream = std::pin::Pin<
        Box<dyn futures_util::Stream<Item = Result<pb::ProxyResponse, Status>> + Send>,
    >;

    async fn proxy(&self, req: Request<pb::ProxyRequest>) -> Reply<Self::ProxyStream> {
        use futures_util::StreamExt as _;
        let caller = self
            .oauth
            .authenticate_connection_reader(bearer(&req).as_ref())
            .await?;
        let req = req.into_inner();
        let mut headers = http::HeaderMap::new();
        let mut problems = crate::kernel::validate::Violations::new();
        for (i, header) in req.headers.iter().enumerate() {
            match (
                http::HeaderName::from_bytes(header.name.as_bytes()),
                http::HeaderValue::from_str(&header.value),
            ) {
                (Ok(name), Ok(value)) => {
                    headers.append(name, value);
                }
                _ => problems.add(
                    format!("headers[{i}]"),
                    "must be a valid header name and a value of visible ASCII",
                ),
            }
        }
        problems.finish()?;
        let answer = self
            .connections
            .proxy(
                &caller,
                crate::connections::proxy::ProxyCall {
                    connection_id: req.connection_id,
                    method: req.method,
                    path: req.path,
                    query: req.query,
                    headers,
                    body: req.body.into(),
                },
            )
            .await?;
        let head = pb::ProxyResponse {
            status: i32::from(answer.status.as_u16()),
            headers: answer
                .headers
                .iter()
                .filter_map(|(name, value)| {
                    Some(pb::ProxyHeader {
                        name: name.as_str().to_string(),
                        value: value.to_str().ok()?.to_string(),
                    })
                })
                .collect(),
            body: Vec::new(),
        };
        let body = answer.body.map(|chunk| match chunk {
            Ok(bytes) => Ok(pb::ProxyResponse {
                body: bytes.to_vec(),
                ..Default::default()
            }),
            Err(crate::connections::proxy::BodyError::TooLarge) => Err(Status::resource_exhausted(
                "the provider's answer is larger than LINKD_PROXY_MAX_RESPONSE_BYTES",
            )),
            Err(err) => Err(Status::unavailable(err.to_string())),
        });
        Ok(Response::new(Box::pin(
            futures_util::stream::once(std::future::ready(Ok(head))).chain(body),
        )))
    }

    async fn reset_sandbox_login(
        &self,
        req: Request<pb::ResetSandboxLoginRequest>,
    ) -> Reply<pb::ResetSandboxLoginResponse> {
        let caller = caller(self, &req).await?;
        Ok(Response::new(
            self.connections
                .reset_sandbox_login(&caller, req.into_inner())
                .await?,
        ))
    }

    async fn list_operation_runs(
        &self,
        req: Request<pb::ListOperationRunsRequest>,
    ) -> Reply<pb::ListOperationRunsResponse> {
        let caller = self
            .oauth
            .authenticate_connection_reader(bearer(&req).as_ref())
            .await?;
        Ok(Response::new(
            self.connections
                .list_operation_runs(&caller, req.into_inner())
                .await?,
        ))
    }
}

#[tonic::async_trait]
impl pb::authorize_service_server::AuthorizeService for Services {
    async fn authorize(&self, req: Request<pb::AuthorizeRequest>) -> Reply<pb::AuthorizeResponse> {
        self.oauth
            .authorize(req.into_inner())
            .await
            .map(Response::new)
            .map_err(|err| crate::kernel::error::Error::from(err).into())
    }

    async fn exchange_code(
        &self,
        req: Request<pb::ExchangeCodeRequest>,
    ) -> Reply<pb::ExchangeCodeResponse> {
        Ok(Response::new(
            self.oauth.exchange_code(req.into_inner(), None).await?,
        ))
    }

    async fn revoke_token(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Reply<pb::RevokeTokenResponse> {
        Ok(Response::new(
            self.oauth.revoke_token(req.into_inner(), None).await?,
        ))
    }

    async fn introspect_token(
        &self,
        req: Request<pb::IntrospectTokenRequest>,
    ) -> Reply<pb::IntrospectTokenResponse> {
        Ok(Response::new(
            self.oauth.introspect_token(req.into_inner(), None).await?,
        ))
    }
}

#[tonic::async_trait]
impl pb::link_flow_service_server::LinkFlowService for Services {
    async fn claim_link(&self, req: Request<pb::ClaimLinkRequest>) -> Reply<pb::ClaimLinkResponse> {
        Ok(Response::new(
            self.links.claim_link(req.into_inner()).await?,
        ))
    }

    async fn get_flow(&self, req: Request<pb::GetFlowRequest>) -> Reply<pb::GetFlowResponse> {
        let flow = self.flows.get_flow(bearer(&req).as_ref()).await?;
        Ok(Response::new(pb::GetFlowResponse { flow: Some(flow) }))
    }

    async fn select_integration(
        &self,
        req: Request<pb::SelectIntegrationRequest>,
    ) -> Reply<pb::SelectIntegrationResponse> {
        let token = bearer(&req);
        let flow = self
            .sessions
            .select_integration(token.as_ref(), req.into_inner())
            .await?;
        Ok(Response::new(pb::SelectIntegrationResponse {
            flow: Some(flow),
        }))
    }

    async fn approve_access(
        &self,
        req: Request<pb::ApproveAccessRequest>,
    ) -> Reply<pb::ApproveAccessResponse> {
        let flow = self.sessions.approve_access(bearer(&req).as_ref()).await?;
        Ok(Response::new(pb::ApproveAccessResponse {
            flow: Some(flow),
        }))
    }

    async fn submit_credentials(
        &self,
        req: Request<pb::SubmitCredentialsRequest>,
    ) -> Reply<pb::SubmitCredentialsResponse> {
        let token = bearer(&req);
        let flow = self
            .flows
            .submit_credentials(token.as_ref(), req.into_inner())
            .await?;
        Ok(Response::new(pb::SubmitCredentialsResponse {
            flow: Some(flow),
        }))
    }

    async fn submit_second_factor(
        &self,
        req: Request<pb::SubmitSecondFactorRequest>,
    ) -> Reply<pb::SubmitSecondFactorResponse> {
        let token = bearer(&req);
        let flow = self
            .flows
            .submit_second_factor(token.as_ref(), req.into_inner())
            .await?;
        Ok(Response::new(pb::SubmitSecondFactorResponse {
            flow: Some(flow),
        }))
    }

    async fn cancel_flow(
        &self,
        req: Request<pb::CancelFlowRequest>,
    ) -> Reply<pb::CancelFlowResponse> {
        let token = bearer(&req);
        let flow = self
            .flows
            .cancel_flow(token.as_ref(), req.into_inner())
            .await?;
        Ok(Response::new(pb::CancelFlowResponse { flow: Some(flow) }))
    }

    async fn start_provider_authorization(
        &self,
        req: Request<pb::StartProviderAuthorizationRequest>,
    ) -> Reply<pb::StartProviderAuthorizationResponse> {
        let token = bearer(&req);
        Ok(Response::new(
            self.flows
                .start_provider_authorization(token.as_ref(), req.into_inner())
                .await?,
        ))
    }
}

#[tonic::async_trait]
impl pb::client_app_service_server::ClientAppService for Services {
    async fn list_client_apps(
        &self,
        req: Request<pb::ListClientAppsRequest>,
    ) -> Reply<pb::ListClientAppsResponse> {
        let caller = caller(self, &req).await?;
        Ok(Response::new(
            self.client_apps.list_client_apps(&caller).await?,
        ))
    }

    async fn get_client_app(
        &self,
        req: Request<pb::GetClientAppRequest>,
    ) -> Reply<pb::GetClientAppResponse> {
        let caller = caller(self, &req).await?;
        Ok(Response::new(
            self.client_apps
                .get_client_app(&caller, req.into_inner())
                .await?,
        ))
    }

    async fn rotate_webhook_secret(
        &self,
        req: Request<pb::RotateWebhookSecretRequest>,
    ) -> Reply<pb::RotateWebhookSecretResponse> {
        let caller = caller(self, &req).await?;
        Ok(Response::new(
            self.client_apps
                .rotate_webhook_secret_for(&caller, req.into_inner())
                .await?,
        ))
    }

    async fn set_client_app_branding(
        &self,
        req: Request<pb::SetClientAppBrandingRequest>,
    ) -> Reply<pb::SetClientAppBrandingResponse> {
        let caller = caller(self, &req).await?;
        Ok(Response::new(
            self.client_apps
                .set_branding(&caller, req.into_inner())
                .await?,
        ))
    }

    async fn set_provider_o_auth_client(
        &self,
        req: Request<pb::SetProviderOAuthClientRequest>,
    ) -> Reply<pb::SetProviderOAuthClientResponse> {
        let caller = caller(self, &req).await?;
        Ok(Response::new(
            self.provider_oauth
                .set_client(&caller, req.into_inner())
                .await?,
        ))
    }

    async fn list_provider_o_auth_clients(
        &self,
        req: Request<pb::ListProviderOAuthClientsRequest>,
    ) -> Reply<pb::ListProviderOAuthClientsResponse> {
        let caller = caller(self, &req).await?;
        Ok(Response::new(
            self.provider_oauth
                .list_clients(&caller, req.into_inner())
                .await?,
        ))
    }

    async fn delete_provider_o_auth_client(
        &self,
        req: Request<pb::DeleteProviderOAuthClientRequest>,
    ) -> Reply<pb::DeleteProviderOAuthClientResponse> {
        let caller = caller(self, &req).await?;
        Ok(Response::new(
            self.provider_oauth
                .delete_client(&caller, req.into_inner())
                .await?,
        ))
    }
}

#[tonic::async_trait]
impl pb::event_service_server::EventService for Services {
    async fn list_events(
        &self,
        req: Request<pb::ListEventsRequest>,
    ) -> Reply<pb::ListEventsResponse> {
        let caller = caller(self, &req).await?;
        Ok(Response::new(
            self.events.list_events(&caller, req.into_inner()).await?,
        ))
    }

    async fn get_event(&self, req: Request<pb::GetEventRequest>) -> Reply<pb::GetEventResponse> {
        let caller = caller(self, &req).await?;
        Ok(Response::new(
            self.events.get_event(&caller, req.into_inner()).await?,
        ))
    }

    async fn redeliver_event(
        &self,
        req: Request<pb::RedeliverEventRequest>,
    ) -> Reply<pb::RedeliverEventResponse> {
        let caller = caller(self, &req).await?;
        Ok(Response::new(
            self.events
                .redeliver_event(&caller, req.into_inner())
                .await?,
        ))
    }

    async fn redeliver_failed_events(
        &self,
        req: Request<pb::RedeliverFailedEventsRequest>,
    ) -> Reply<pb::RedeliverFailedEventsResponse> {
        let caller = caller(self, &req).await?;
        Ok(Response::new(
            self.events
                .redeliver_failed_events(&caller, req.into_inner())
                .await?,
        ))
    }
}
