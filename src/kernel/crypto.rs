//! Encryption at rest: AES-256-GCM with a key ring.
//!
//! Ciphertext layout: `version (1) | key id (4) | nonce (12) | ciphertext+tag`.
//! The key id is the first four bytes of SHA-256 of the key, so data written
//! under an old key still decrypts while it is listed in
//! `LINKD_PREVIOUS_ENCRYPTION_KEYS`. Every value is bound to where it lives
//! (associated data such as `client_apps.webhook_secret:app_…`), so a
//! ciphertext copied into another row does not decrypt.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use anyhow::{Context, anyhow, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::kernel::ids::{ClientAppId, ConnectionId, FlowId, LinkId};
use crate::kernel::tenant::Tenant;

const VERSION: u8 = 1;
const HEADER: usize = 1 + 4 + 12;

/// A 32-byte key, parsed from base64. Its `Debug` never shows the bytes.
#[derive(Clone)]
pub struct EncryptionKey([u8; 32]);

impl std::fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EncryptionKey(id={})", hex::encode(self.id()))
    }
}

impl std::str::FromStr for EncryptionKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = STANDARD.decode(s.trim()).map_err(|_| {
            "must be 32 bytes encoded as standard base64 (generate one with `linkd gen-key`)"
                .to_string()
        })?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| format!("must decode to 32 bytes, got {}", b.len()))?;
        Ok(EncryptionKey(key))
    }
}

impl EncryptionKey {
    pub fn generate() -> Self {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        EncryptionKey(key)
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    fn id(&self) -> [u8; 4] {
        let digest = Sha256::digest(self.0);
        [digest[0], digest[1], digest[2], digest[3]]
    }
}

/// What a ciphertext holds, bound into it as associated data: a value sealed
/// for one field of one row never opens as another field or another row's.
/// The one list of what linkd encrypts at rest; the strings are stored
/// ciphertexts' contract and never change.
#[derive(Debug, Clone, Copy)]
pub enum Sealed<'a> {
    /// A client app's webhook signing secret.
    WebhookSecret(ClientAppId),
    /// A client app's rotated-out webhook secret, during its grace period.
    PreviousWebhookSecret(ClientAppId),
    /// A link's operation arguments (card numbers and other secrets).
    LinkArguments(LinkId),
    /// The provider session a flow holds between login and its end.
    FlowSession(FlowId),
    /// The provider session a connection keeps.
    ConnectionSession(ConnectionId),
    /// A client app's OAuth client secret at a provider.
    ProviderClientSecret {
        app: ClientAppId,
        integration: &'a str,
    },
    /// The PKCE verifier of one authorization request sent to a provider,
    /// by the SHA-256 of its `state`.
    AuthorizationVerifier(&'a [u8]),
    /// A finished request's response kept for its idempotency key.
    IdempotentResponse {
        tenant: Tenant,
        operation: &'a str,
        key: &'a str,
    },
}

impl Sealed<'_> {
    fn associated_data(&self) -> String {
        // Ids render in their public form except where the first stored
        // values used the bare UUID (flows, tenants); both are fixed now.
        match self {
            Sealed::WebhookSecret(app) => format!("client_apps.webhook_secret:{app}"),
            Sealed::PreviousWebhookSecret(app) => {
                format!("client_apps.previous_webhook_secret:{app}")
            }
            Sealed::LinkArguments(link) => format!("links.arguments:{link}"),
            Sealed::FlowSession(flow) => format!("flows.session:{}", flow.uuid()),
            Sealed::ConnectionSession(connection) => format!("connections.session:{connection}"),
            Sealed::ProviderClientSecret { app, integration } => {
                format!("provider_oauth_clients.secret:{app}:{integration}")
            }
            Sealed::AuthorizationVerifier(state_hash) => {
                format!("flow_authorizations.verifier:{}", hex::encode(state_hash))
            }
            Sealed::IdempotentResponse {
                tenant,
                operation,
                key,
            } => format!(
                "idempotency_keys.response:{}:{}:{operation}:{key}",
                tenant.organization_id.uuid(),
                tenant.environment
            ),
        }
    }
}

/// Encrypts with the current key; decrypts with any key of the ring. Cheap
/// to clone (each service holds one).
#[derive(Clone)]
pub struct Cipher {
    current: ([u8; 4], Aes256Gcm),
    previous: std::sync::Arc<[([u8; 4], Aes256Gcm)]>,
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cipher")
            .field("current", &hex::encode(self.current.0))
            .field("previous", &self.previous.len())
            .finish()
    }
}

impl Cipher {
    pub fn new(current: &EncryptionKey, previous: &[EncryptionKey]) -> Self {
        let entry = |k: &EncryptionKey| (k.id(), Aes256Gcm::new(&k.0.into()));
        Cipher {
            current: entry(current),
            previous: previous.iter().map(entry).collect(),
        }
    }

    pub fn encrypt(&self, plaintext: &[u8], what: Sealed<'_>) -> Vec<u8> {
        self.encrypt_bound(plaintext, &what.associated_data())
    }

    pub fn decrypt(&self, data: &[u8], what: Sealed<'_>) -> anyhow::Result<Vec<u8>> {
        self.decrypt_bound(data, &what.associated_data())
    }

    pub fn decrypt_string(&self, data: &[u8], what: Sealed<'_>) -> anyhow::Result<String> {
        String::from_utf8(self.decrypt(data, what)?).context("decrypted value is not UTF-8")
    }

    fn encrypt_bound(&self, plaintext: &[u8], associated_data: &str) -> Vec<u8> {
        let (key_id, cipher) = &self.current;
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: associated_data.as_bytes(),
                },
            )
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut out = Vec::with_capacity(HEADER + sealed.len());
        out.push(VERSION);
        out.extend_from_slice(key_id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    fn decrypt_bound(&self, data: &[u8], associated_data: &str) -> anyhow::Result<Vec<u8>> {
        if data.len() < HEADER || data[0] != VERSION {
            bail!("ciphertext has an unknown format");
        }
        let key_id = &data[1..5];
        let cipher = std::iter::once(&self.current)
            .chain(self.previous.iter())
            .find(|(id, _)| id == key_id)
            .map(|(_, c)| c)
            .ok_or_else(|| {
                anyhow!(
                    "ciphertext was written with key {} which is not configured",
                    hex::encode(key_id)
                )
            })?;
        cipher
            .decrypt(
                &Nonce::from(
                    <[u8; 12]>::try_from(&data[5..HEADER]).expect("header length checked"),
                ),
                Payload {
                    msg: &data[HEADER..],
                    aad: associated_data.as_bytes(),
                },
            )
            .map_err(|_| anyhow!("ciphertext failed authentication"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::ids::OrganizationId;
    use uuid::Uuid;

    #[test]
    fn round_trip_binds_context_and_supports_rotation() {
        let old = EncryptionKey::generate();
        let new = EncryptionKey::generate();
        let (row_1, row_2) = (ClientAppId::new(), ClientAppId::new());
        let sealed_old = Cipher::new(&old, &[]).encrypt(b"whsec_x", Sealed::WebhookSecret(row_1));

        let ring = Cipher::new(&new, std::slice::from_ref(&old));
        assert_eq!(
            ring.decrypt(&sealed_old, Sealed::WebhookSecret(row_1))
                .unwrap(),
            b"whsec_x"
        );
        assert!(
            ring.decrypt(&sealed_old, Sealed::WebhookSecret(row_2))
                .is_err(),
            "another row's value must not decrypt"
        );
        assert!(
            ring.decrypt(&sealed_old, Sealed::PreviousWebhookSecret(row_1))
                .is_err(),
            "another field's value must not decrypt"
        );

        let sealed_new = ring.encrypt(b"secret", Sealed::WebhookSecret(row_1));
        assert_ne!(
            sealed_new[1..5],
            sealed_old[1..5],
            "new data uses the current key"
        );
        assert!(
            Cipher::new(&old, &[])
                .decrypt(&sealed_new, Sealed::WebhookSecret(row_1))
                .is_err()
        );
    }

    /// Ciphertexts already stored were bound to these strings: changing one
    /// makes every such value unreadable.
    #[test]
    fn associated_data_is_the_stored_contract() {
        let id = Uuid::parse_str("0192f3c4-0000-7000-8000-000000000001").unwrap();
        let tenant = Tenant {
            organization_id: OrganizationId::from_uuid(id),
            environment: crate::kernel::tenant::Environment::Sandbox,
        };
        let hex = "0192f3c4000070008000000000000001";
        let cases = [
            (
                Sealed::WebhookSecret(ClientAppId::from_uuid(id)),
                format!("client_apps.webhook_secret:app_{hex}"),
            ),
            (
                Sealed::PreviousWebhookSecret(ClientAppId::from_uuid(id)),
                format!("client_apps.previous_webhook_secret:app_{hex}"),
            ),
            (
                Sealed::LinkArguments(LinkId::from_uuid(id)),
                format!("links.arguments:link_{hex}"),
            ),
            (
                Sealed::FlowSession(FlowId::from_uuid(id)),
                "flows.session:0192f3c4-0000-7000-8000-000000000001".into(),
            ),
            (
                Sealed::ConnectionSession(ConnectionId::from_uuid(id)),
                format!("connections.session:conn_{hex}"),
            ),
            (
                Sealed::ProviderClientSecret {
                    app: ClientAppId::from_uuid(id),
                    integration: "twitch",
                },
                format!("provider_oauth_clients.secret:app_{hex}:twitch"),
            ),
            (
                Sealed::AuthorizationVerifier(&[0xab, 0x01]),
                "flow_authorizations.verifier:ab01".into(),
            ),
            (
                Sealed::IdempotentResponse {
                    tenant,
                    operation: "CreateLink",
                    key: "k-1",
                },
                "idempotency_keys.response:0192f3c4-0000-7000-8000-000000000001:sandbox:CreateLink:k-1"
                    .into(),
            ),
        ];
        for (sealed, stored) in cases {
            assert_eq!(sealed.associated_data(), stored);
        }
    }

    #[test]
    fn key_parsing_explains_problems_without_echoing_input() {
        let err = "c2hvcnQ=".parse::<EncryptionKey>().unwrap_err();
        assert!(err.contains("32 bytes"), "{err}");
        let err = "not base64!!".parse::<EncryptionKey>().unwrap_err();
        assert!(!err.contains("not base64"), "{err}");
        let key = EncryptionKey::generate();
        assert!(key.to_base64().parse::<EncryptionKey>().is_ok());
        assert!(!format!("{key:?}").contains(&key.to_base64()));
    }
}
