//! Standard Webhooks signatures: `v1,<base64 HMAC-SHA256 of
//! "{id}.{timestamp}.{body}">`, one per active secret, space-separated, so a
//! rotated secret and its successor both sign during rotation.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Shortest accepted secret, in bytes (Standard Webhooks: 24 to 64).
pub const MIN_SECRET_BYTES: usize = 24;

/// A decoded `whsec_…` secret. `Debug` does not show it.
pub struct SigningSecret(Vec<u8>);

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningSecret([redacted])")
    }
}

impl SigningSecret {
    /// Parses `whsec_<base64>`; `None` when malformed or shorter than
    /// [`MIN_SECRET_BYTES`].
    pub fn parse(secret: &str) -> Option<Self> {
        let bytes = STANDARD.decode(secret.strip_prefix("whsec_")?).ok()?;
        (bytes.len() >= MIN_SECRET_BYTES).then_some(SigningSecret(bytes))
    }
}

/// The `webhook-signature` header value for one message.
pub fn signature_header(
    secrets: &[SigningSecret],
    message_id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    secrets
        .iter()
        .map(|secret| {
            let mut mac =
                Hmac::<Sha256>::new_from_slice(&secret.0).expect("HMAC accepts any key length");
            mac.update(format!("{message_id}.{timestamp}.").as_bytes());
            mac.update(body);
            format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_independent_implementation_verifies_each_signature() {
        let old = crate::client_apps::rules::generate_webhook_secret();
        let new = crate::client_apps::rules::generate_webhook_secret();
        let secrets = [
            SigningSecret::parse(&old).unwrap(),
            SigningSecret::parse(&new).unwrap(),
        ];
        let body = br#"{"type":"connection.created","data":{"x":1}}"#;
        let timestamp = chrono::Utc::now().timestamp();
        let header = signature_header(&secrets, "evt_1", timestamp, body);
        assert_eq!(header.split(' ').count(), 2);
        let mut headers = http::HeaderMap::new();
        headers.insert("webhook-id", "evt_1".parse().unwrap());
        headers.insert("webhook-timestamp", timestamp.to_string().parse().unwrap());
        headers.insert("webhook-signature", header.parse().unwrap());
        for secret in [&old, &new] {
            let webhook = standardwebhooks::Webhook::new(secret).unwrap();
            webhook.verify(body, &headers).expect("signature verifies");
        }
        let stranger = crate::client_apps::rules::generate_webhook_secret();
        assert!(
            standardwebhooks::Webhook::new(&stranger)
                .unwrap()
                .verify(body, &headers)
                .is_err()
        );
    }

    #[test]
    fn short_or_malformed_secrets_are_refused() {
        assert!(SigningSecret::parse("whsec_c2hvcnQ=").is_none());
        assert!(SigningSecret::parse("not-a-secret").is_none());
        assert!(
            SigningSecret::parse(&crate::client_apps::rules::generate_webhook_secret()).is_some()
        );
    }
}
