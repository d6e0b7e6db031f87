//! The OpenAPI 3.1 document of the REST shim. It is not written by hand:
//! every route is registered through `utoipa_axum`'s `routes!`, which takes
//! the method and path from the handler's `#[utoipa::path]` annotation, so a
//! route cannot be served without being in the document. The JSON types the
//! handlers serialize derive `ToSchema`.

use crate::kernel::error::Reason;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, RefOr, ResponseBuilder, Schema};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};

/// Security scheme of the API-key routes.
pub const API_KEY: &str = "api_key";
/// Security scheme of the routes that also take a linkd OAuth access token
/// for the one connection they name.
pub const CONNECTION_TOKEN: &str = "connection_token";
/// Security scheme of the end-user flow routes (`lft_…` flow token).
pub const FLOW_TOKEN: &str = "flow_token";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "linkd",
        description = "Account linking: link intents, Link sessions, connections and the Access API, \
                       the end-user flow, OAuth, webhook events. The same RPCs as the gRPC services \
                       (see proto/), in the documented REST shapes. Every error is `Error` \
                       (`code` is the gRPC `ErrorInfo.reason`), except the OAuth token endpoint's, \
                       which follow RFC 6749. No string anywhere may contain NUL (U+0000): it is \
                       refused as `VALIDATION_FAILED` naming the field.",
        license(name = "Apache-2.0")
    ),
    paths(super::connections::proxy),
    modifiers(&SecuritySchemes),
    components(schemas(super::ErrorBody, super::OAuthErrorBody)),
    tags(
        (name = "link sessions", description = "Start a Link session for an end user"),
        (name = "links", description = "Link intents (app clip / hosted page)"),
        (name = "connections", description = "Connections and the Access API"),
        (name = "flow", description = "The end-user flow the Link page drives (flow token)"),
        (name = "oauth", description = "linkd as an OAuth 2.0 authorization server"),
        (name = "client apps", description = "Client apps, their branding and provider OAuth clients"),
        (name = "events", description = "Webhook events and redelivery"),
        (name = "providers", description = "The provider catalog"),
        (name = "operations", description = "Probes, metrics and this document"),
    )
)]
pub struct ApiDoc;

/// The machine-readable reason; the README's error table says what each means.
pub struct ErrorCode;

impl PartialSchema for ErrorCode {
    fn schema() -> RefOr<Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some(Reason::ALL.iter().fold(
                "The gRPC `google.rpc.ErrorInfo.reason` of the same error:\n".to_string(),
                |text, r| format!("{text}\n- `{}`: {}", r.as_str(), r.description()),
            )))
            .enum_values(Some(Reason::ALL.iter().map(|r| r.as_str())))
            .into()
    }
}

impl ToSchema for ErrorCode {}

/// An id's schema that also takes the empty string: an optional field or
/// query parameter given as `""` reads as not given.
fn empty_or<T: PartialSchema>() -> RefOr<Schema> {
    let mut schema = T::schema();
    if let RefOr::T(Schema::Object(object)) = &mut schema
        && let Some(pattern) = object.pattern.take()
    {
        let bare = pattern.trim_start_matches('^').trim_end_matches('$');
        object.pattern = Some(format!("^({bare})?$"));
    }
    schema
}

macro_rules! empty_or {
    ($($name:ident => $id:ty),* $(,)?) => {$(
        #[doc = concat!("`", stringify!($id), "` or the empty string.")]
        pub struct $name;

        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                empty_or::<$id>()
            }
        }

        impl ToSchema for $name {}
    )*};
}

empty_or! {
    EmptyOrClientAppId => crate::kernel::ids::ClientAppId,
    EmptyOrConnectionId => crate::kernel::ids::ConnectionId,
    EmptyOrLinkId => crate::kernel::ids::LinkId,
}

/// The authorize endpoint's JSON `400`: its own refusals, or the one error
/// shape of a query the input gate refuses before the endpoint reads it.
pub struct AuthorizeBadRequest;

impl PartialSchema for AuthorizeBadRequest {
    fn schema() -> RefOr<Schema> {
        utoipa::openapi::schema::OneOfBuilder::new()
            .item(utoipa::openapi::Ref::from_schema_name(
                <super::oauth::AuthorizeRefusal as ToSchema>::name(),
            ))
            .item(utoipa::openapi::Ref::from_schema_name(
                <super::ErrorBody as ToSchema>::name(),
            ))
            .into()
    }
}

impl ToSchema for AuthorizeBadRequest {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        for (name, schema) in [
            (
                <super::oauth::AuthorizeRefusal as ToSchema>::name(),
                <super::oauth::AuthorizeRefusal as PartialSchema>::schema(),
            ),
            (
                <super::ErrorBody as ToSchema>::name(),
                <super::ErrorBody as PartialSchema>::schema(),
            ),
        ] {
            schemas.push((name.into_owned(), schema));
        }
        <super::oauth::AuthorizeRefusal as ToSchema>::schemas(schemas);
    }
}

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = |description: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(description))
                    .build(),
            )
        };
        components.add_security_scheme(
            API_KEY,
            bearer("A client app tenant's API key (`Authorization: Bearer …`)."),
        );
        components.add_security_scheme(
            CONNECTION_TOKEN,
            bearer("A linkd OAuth access token, valid for its own connection only."),
        );
        components.add_security_scheme(
            FLOW_TOKEN,
            bearer("The flow token (`lft_…`) a claim or the Link page's URL gave."),
        );
    }
}

/// Completes the document once every route is in it: an operation that does
/// not say otherwise answers its errors as `Error`, and an annotation that
/// serves several methods (the proxy) gets one operation id per method.
pub fn finish(openapi: &mut utoipa::openapi::OpenApi) {
    {
        let retry_after = utoipa::openapi::header::HeaderBuilder::new()
            .schema(Some(u64::schema()))
            .description(Some(
                "Seconds to wait before trying again; sent with `UNAVAILABLE` (503).",
            ))
            .build();
        let error = ResponseBuilder::new()
            .description("Any error; `code` says which (see the README's error table).")
            .header("Retry-After", retry_after)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(utoipa::openapi::Ref::from_schema_name("Error")))
                    .build(),
            )
            .build();
        for item in openapi.paths.paths.values_mut() {
            let operations: [(&str, &mut Option<Operation>); 5] = [
                ("Get", &mut item.get),
                ("Post", &mut item.post),
                ("Put", &mut item.put),
                ("Delete", &mut item.delete),
                ("Patch", &mut item.patch),
            ];
            let operations: Vec<_> = operations
                .into_iter()
                .filter_map(|(method, operation)| Some((method, operation.as_mut()?)))
                .collect();
            let shared_id = operations.len() > 1
                && operations
                    .windows(2)
                    .all(|pair| pair[0].1.operation_id == pair[1].1.operation_id);
            for (method, operation) in operations {
                if shared_id && let Some(id) = &mut operation.operation_id {
                    id.push_str(method);
                }
                operation
                    .responses
                    .responses
                    .entry("default".to_string())
                    .or_insert_with(|| error.clone().into());
            }
        }
    }
}

/// The document as `/openapi.json` serves it and `openapi.json` keeps it.
pub fn document_json(document: &utoipa::openapi::OpenApi) -> String {
    let mut json = document
        .to_pretty_json()
        .expect("the OpenAPI document serializes");
    json.push('\n');
    json
}

#[cfg(test)]
mod tests {
    /// The provider callback's annotation repeats the path providers are
    /// sent back to; the two must not drift.
    #[test]
    fn the_provider_callback_is_documented_where_providers_return() {
        let document = super::super::openapi_document();
        let callback = format!("/{}", crate::provider_oauth::CALLBACK_PATH);
        assert!(document.paths.paths.contains_key(&callback), "{callback}");
    }
}
