//! Link intents: the rules of `CreateLink`, and how links are rendered.

use crate::catalog::Catalog;
use crate::catalog::operations::check_operations;
pub use crate::catalog::operations::{MAX_OPERATIONS, Operation, OperationRequest};
use crate::client_apps::rules::{check_redirect_uri, is_web_url};
use crate::kernel::error::Error;
use crate::kernel::validate::{Violations, limits};

/// Default link lifetime: 4 hours.
pub const DEFAULT_EXPIRES_IN_SECS: i64 = 4 * 60 * 60;
/// Longest link lifetime: 30 days.
pub const MAX_EXPIRES_IN_SECS: i64 = 30 * 24 * 60 * 60;

crate::kernel::names::stored_names! {
    /// The lifecycle of a link.
    pub enum LinkStatus {
        Pending = "pending",
        Claimed = "claimed",
        Awaiting2fa = "awaiting_2fa",
        /// Logged in; the operations are running.
        Processing = "processing",
        Completed = "completed",
        Failed = "failed",
        Expired = "expired",
        Cancelled = "cancelled",
    }
}

/// What `CreateLink` asks for, as given (either surface converts to it).
#[derive(Debug, Clone, Default)]
pub struct LinkRequest<'a> {
    pub integration_id: &'a str,
    pub operations: Vec<OperationRequest<'a>>,
    pub webhook_url: Option<&'a str>,
    pub return_url: Option<&'a str>,
    pub external_user_id: Option<&'a str>,
    pub debug: bool,
    pub expires_in: Option<i64>,
}

/// A checked `CreateLink` request.
#[derive(Debug)]
pub struct NewLink {
    pub integration_id: String,
    pub operations: Vec<Operation>,
    /// Arguments per operation (`{}` when none), kept only encrypted.
    pub arguments: Vec<serde_json::Value>,
    pub webhook_url: Option<String>,
    pub return_url: Option<String>,
    pub external_user_id: Option<String>,
    pub debug: bool,
    pub expires_in_secs: i64,
}

impl NewLink {
    /// Checks every field of the request against the documented rules and
    /// the catalog, reporting every problem at once. Paths use the JSON names
    /// (`webhookUrl`, `operations[1].arguments.cvv`) on both surfaces.
    pub fn parse(req: &LinkRequest<'_>, catalog: &Catalog) -> Result<Self, Error> {
        let mut v = Violations::new();
        let integration_known = if v.require_len("integrationId", req.integration_id, limits::ID) {
            let known = catalog.provider(req.integration_id).is_some();
            if !known {
                v.add(
                    "integrationId",
                    "is not a known integration (see GET /v1/providers)",
                );
            }
            known
        } else {
            false
        };

        let (operations, arguments) = check_operations(
            &mut v,
            catalog,
            req.integration_id,
            integration_known,
            &req.operations,
        );

        if let Some(url) = req.webhook_url
            && v.max_len("webhookUrl", url, limits::URL)
            && !is_web_url(url)
        {
            v.add("webhookUrl", "must be a valid URL");
        }
        if let Some(url) = req.return_url
            && v.max_len("returnUrl", url, limits::URL)
            && let Err(why) = check_redirect_uri(url)
        {
            v.add(
                "returnUrl",
                format!("must be a valid https:// URL or app scheme: {why}"),
            );
        }
        if let Some(id) = req.external_user_id {
            v.max_len("externalUserId", id, limits::REFERENCE);
        }
        let expires_in_secs = req.expires_in.unwrap_or(DEFAULT_EXPIRES_IN_SECS);
        if expires_in_secs <= 0 {
            v.add("expiresIn", "must be a positive integer");
        } else if expires_in_secs > MAX_EXPIRES_IN_SECS {
            v.add(
                "expiresIn",
                format!("must be at most {MAX_EXPIRES_IN_SECS} seconds (30 days)"),
            );
        }
        v.finish()?;
        Ok(NewLink {
            integration_id: req.integration_id.to_string(),
            operations,
            arguments,
            webhook_url: req.webhook_url.map(str::to_string),
            return_url: req.return_url.map(str::to_string),
            external_user_id: req.external_user_id.map(str::to_string),
            debug: req.debug,
            expires_in_secs,
        })
    }
}

/// `return_url` with `linkId` appended, keeping any query it had.
pub fn return_url_with_link_id(return_url: &str, link_id: &str) -> String {
    match url::Url::parse(return_url) {
        Ok(mut url) => {
            url.query_pairs_mut().append_pair("linkId", link_id);
            url.to_string()
        }
        Err(_) => return_url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_url_keeps_its_query() {
        assert_eq!(
            return_url_with_link_id("https://your-app.com/done", "link_1"),
            "https://your-app.com/done?linkId=link_1"
        );
        assert_eq!(
            return_url_with_link_id("https://a.example/done?x=1&y=%20", "link_1"),
            "https://a.example/done?x=1&y=%20&linkId=link_1"
        );
        assert_eq!(
            return_url_with_link_id("myapp://callback", "link_1"),
            "myapp://callback?linkId=link_1"
        );
    }
}
