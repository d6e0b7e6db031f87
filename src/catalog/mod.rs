//! The provider catalog: which integrations exist, what they can do, and the
//! JSON Schema each operation's `arguments` must match.
//!
//! It is data (`catalog/<integration>.json`), compiled into the binary and
//! checked at start-up; `LINKD_CATALOG_DIR` loads another directory instead.
//! Any problem stops start-up with an error naming the file and entry.

pub mod formats;
pub mod oauth2;
pub mod operations;

use crate::pb;
use anyhow::{Context, anyhow, bail};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

static BUILTIN: include_dir::Dir<'_> = include_dir::include_dir!("$CARGO_MANIFEST_DIR/catalog");

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    MobileCarrier,
    Delivery,
    Creator,
    Bank,
}

impl Category {
    /// The catalog file's name of the category.
    pub const fn as_str(self) -> &'static str {
        match self {
            Category::MobileCarrier => "mobile_carrier",
            Category::Delivery => "delivery",
            Category::Creator => "creator",
            Category::Bank => "bank",
        }
    }
}

/// A field of the provider's login form.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialField {
    pub name: String,
    /// In English.
    pub label: String,
    /// The label in the Link page's other languages (`{"fr": "…"}`); a
    /// language without one shows `label`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub secret: bool,
}

impl CredentialField {
    /// The label to show in `lang`.
    pub fn label_in(&self, lang: &str) -> &str {
        self.labels.get(lang).unwrap_or(&self.label)
    }
}

/// One valid resource / action of an integration.
#[derive(Debug)]
pub struct Capability {
    pub resource: String,
    pub action: Action,
    pub description: String,
    /// The key of this operation's data in a single-operation result, e.g.
    /// `billing` for `{"billing": [...]}`.
    pub result_key: String,
    pub result_description: String,
    pub arguments_schema: serde_json::Value,
    validator: jsonschema::Validator,
}

#[derive(Debug)]
pub struct Provider {
    pub id: String,
    pub name: String,
    pub category: Category,
    /// The login form; empty for an OAuth integration.
    pub credentials: Vec<CredentialField>,
    /// How end users connect when it is not a credentials form.
    pub oauth2: Option<oauth2::OAuth2Integration>,
    pub capabilities: Vec<Capability>,
    /// A test institution that exists only in linkd's sandbox.
    pub sandbox: bool,
    /// The second-factor prompt in the Link page's other languages
    /// (`{"fr": "…"}`), shown instead of the connector's own (English)
    /// prompt in that language.
    pub second_factor_prompts: BTreeMap<String, String>,
}

/// The file format of one catalog entry.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ProviderFile {
    id: String,
    name: String,
    category: Category,
    #[serde(default)]
    credentials: Vec<CredentialField>,
    #[serde(default)]
    auth: Option<oauth2::AuthFile>,
    capabilities: Vec<CapabilityFile>,
    #[serde(default)]
    second_factor_prompt: BTreeMap<String, String>,
    #[serde(default)]
    sandbox: bool,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CapabilityFile {
    resource: String,
    action: String,
    description: String,
    result_key: String,
    result_description: String,
    arguments: serde_json::Value,
}

/// An argument that failed its schema, as a path below `arguments` and a
/// message that never contains the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgumentProblem {
    pub path: String,
    pub message: String,
}

impl Capability {
    /// Names of the arguments whose values are secret (card numbers and
    /// CVVs), for a connector to keep out of its logs.
    pub fn secret_arguments(&self) -> Vec<String> {
        self.arguments_schema["properties"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, schema)| {
                matches!(
                    schema["format"].as_str(),
                    Some(crate::catalog::formats::CARD_NUMBER | crate::catalog::formats::CARD_CVV)
                )
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// `arguments` safe to show in a debug trace: a value whose schema format
    /// is `card-number` keeps its last four digits, a `card-cvv` is removed.
    pub fn redact_arguments(&self, arguments: &serde_json::Value) -> serde_json::Value {
        let Some(object) = arguments.as_object() else {
            return serde_json::Value::Null;
        };
        let format_of = |name: &str| {
            self.arguments_schema["properties"][name]["format"]
                .as_str()
                .unwrap_or_default()
        };
        object
            .iter()
            .map(|(name, value)| {
                let shown = match (format_of(name), value.as_str()) {
                    (crate::catalog::formats::CARD_NUMBER, Some(number)) => {
                        serde_json::json!(format!(
                            "•••• {}",
                            &number[number.len().saturating_sub(4)..]
                        ))
                    }
                    (crate::catalog::formats::CARD_CVV, _) => serde_json::json!("[redacted]"),
                    _ => value.clone(),
                };
                (name.clone(), shown)
            })
            .collect()
    }

    /// Checks `arguments` (absent → `{}`) against the schema; every problem.
    pub fn check_arguments(&self, arguments: &serde_json::Value) -> Vec<ArgumentProblem> {
        self.validator
            .iter_errors(arguments)
            .map(|error| {
                let path = error
                    .instance_path()
                    .into_iter()
                    .map(|segment| match segment {
                        jsonschema::paths::LocationSegment::Property(p) => format!(".{p}"),
                        jsonschema::paths::LocationSegment::Index(i) => format!("[{i}]"),
                    })
                    .collect::<String>();
                let (path, message) = match error.kind() {
                    jsonschema::error::ValidationErrorKind::Required { property } => (
                        format!("{path}.{}", property.as_str().unwrap_or_default()),
                        "is required".to_string(),
                    ),
                    jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected } => {
                        (
                            path,
                            format!("unknown argument(s): {}", unexpected.join(", ")),
                        )
                    }
                    jsonschema::error::ValidationErrorKind::Format { format } => (
                        path,
                        crate::catalog::formats::format_message(format).to_string(),
                    ),
                    _ => (path, error.masked().to_string()),
                };
                ArgumentProblem { path, message }
            })
            .collect()
    }
}

fn valid_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= crate::kernel::validate::limits::ID
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.starts_with(|c: char| c.is_ascii_lowercase())
}

/// Why `schema` cannot be an operation's arguments schema, if it cannot.
pub fn check_arguments_schema(schema: &serde_json::Value) -> anyhow::Result<()> {
    compile_schema(schema).map(drop)
}

fn compile_schema(schema: &serde_json::Value) -> anyhow::Result<jsonschema::Validator> {
    jsonschema::meta::validate(schema)
        .map_err(|e| anyhow!("arguments is not a valid JSON Schema: {e}"))?;
    if schema.get("type").and_then(|t| t.as_str()) != Some("object") {
        bail!("arguments schema must have \"type\": \"object\"");
    }
    crate::catalog::formats::register_formats(jsonschema::options())
        .should_validate_formats(true)
        .build(schema)
        .map_err(|e| anyhow!("arguments schema does not compile: {e}"))
}

fn parse_provider(file_name: &str, contents: &str) -> anyhow::Result<Provider> {
    let file: ProviderFile = serde_json::from_str(contents).context("not a valid catalog entry")?;
    let expected_name = format!("{}.json", file.id);
    if !valid_identifier(&file.id) {
        bail!(
            "id {:?} must be lowercase letters, digits and _ (at most 64)",
            file.id
        );
    }
    if file_name != expected_name {
        bail!("entry {:?} must live in {expected_name}", file.id);
    }
    if file.name.trim().is_empty() {
        bail!("entry {}: name is empty", file.id);
    }
    let oauth2 = match file.auth {
        Some(oauth2::AuthFile::OAuth2(auth)) => {
            if !file.credentials.is_empty() {
                bail!(
                    "entry {}: an oauth2 integration has no credential fields",
                    file.id
                );
            }
            Some(auth.check().with_context(|| format!("entry {}", file.id))?)
        }
        None if file.credentials.is_empty() => {
            bail!(
                "entry {}: at least one credential field is needed (or auth of type oauth2)",
                file.id
            );
        }
        None => None,
    };
    let mut capabilities: Vec<Capability> = Vec::new();
    for (i, cap) in file.capabilities.into_iter().enumerate() {
        let entry = format!(
            "entry {}: capabilities[{i}] ({} {})",
            file.id, cap.resource, cap.action
        );
        let action = Action::parse(&cap.action)
            .ok_or_else(|| anyhow!("{entry}: action must be read or write"))?;
        if !valid_identifier(&cap.resource) || !valid_identifier(&cap.result_key) {
            bail!("{entry}: resource and resultKey must be identifiers");
        }
        if capabilities
            .iter()
            .any(|c| c.resource == cap.resource && c.action == action)
        {
            bail!("{entry}: listed twice");
        }
        let validator = compile_schema(&cap.arguments).with_context(|| entry.clone())?;
        capabilities.push(Capability {
            resource: cap.resource,
            action,
            description: cap.description,
            result_key: cap.result_key,
            result_description: cap.result_description,
            arguments_schema: cap.arguments,
            validator,
        });
    }
    if capabilities.is_empty() {
        bail!("entry {}: no capabilities", file.id);
    }
    let translated = file
        .credentials
        .iter()
        .flat_map(|c| c.labels.iter())
        .chain(&file.second_factor_prompt);
    for (lang, text) in translated {
        if lang == "en" || !crate::kernel::lang::LANGUAGES.contains(&lang.as_str()) {
            bail!(
                "entry {}: translations are for {} (English is the text itself), not {lang:?}",
                file.id,
                crate::kernel::lang::LANGUAGES[1..].join(", ")
            );
        }
        if text.trim().is_empty() || text.chars().count() > 200 {
            bail!(
                "entry {}: the {lang} translation must be 1 to 200 characters",
                file.id
            );
        }
    }
    Ok(Provider {
        id: file.id,
        name: file.name,
        category: file.category,
        credentials: file.credentials,
        oauth2,
        capabilities,
        second_factor_prompts: file.second_factor_prompt,
        sandbox: file.sandbox,
    })
}

/// The integrations linkd knows: the catalog files, checked at start-up,
/// and the integrations connectors described that no file has (added while
/// running, checked the same way). Entries are never removed or replaced.
#[derive(Debug)]
pub struct Catalog {
    providers: RwLock<BTreeMap<String, Arc<Provider>>>,
}

impl Catalog {
    /// The catalog compiled into the binary.
    pub fn builtin() -> anyhow::Result<Self> {
        Self::from_files(BUILTIN.files().map(|f| {
            (
                f.path().display().to_string(),
                f.contents_utf8().map(str::to_string).unwrap_or_default(),
            )
        }))
    }

    /// Every `*.json` file of `dir`.
    pub fn load_dir(dir: &Path) -> anyhow::Result<Self> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir)
            .with_context(|| format!("reading catalog directory {}", dir.display()))?
        {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "json") {
                let contents = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                files.push((
                    path.file_name().unwrap().to_string_lossy().into_owned(),
                    contents,
                ));
            }
        }
        Self::from_files(files).with_context(|| format!("catalog {}", dir.display()))
    }

    fn from_files(files: impl IntoIterator<Item = (String, String)>) -> anyhow::Result<Self> {
        let mut providers = BTreeMap::new();
        for (name, contents) in files {
            if !name.ends_with(".json") {
                continue;
            }
            let provider =
                parse_provider(&name, &contents).with_context(|| format!("catalog file {name}"))?;
            providers.insert(provider.id.clone(), Arc::new(provider));
        }
        if providers.is_empty() {
            bail!("the catalog has no integrations");
        }
        Ok(Catalog {
            providers: RwLock::new(providers),
        })
    }

    /// Adds an integration a connector described, given as a catalog file's
    /// JSON, after the same checks as a file. Refused when the entry is
    /// invalid or its id is taken.
    pub fn add_described(&self, entry: &serde_json::Value) -> anyhow::Result<Arc<Provider>> {
        let id = entry["id"].as_str().unwrap_or_default();
        let provider = Arc::new(parse_provider(&format!("{id}.json"), &entry.to_string())?);
        let mut providers = self.providers.write().expect("catalog lock");
        if providers.contains_key(&provider.id) {
            bail!("the catalog already has {id:?}");
        }
        providers.insert(provider.id.clone(), provider.clone());
        Ok(provider)
    }

    /// Integrations ordered by id.
    pub fn providers(&self) -> Vec<Arc<Provider>> {
        self.providers
            .read()
            .expect("catalog lock")
            .values()
            .cloned()
            .collect()
    }

    pub fn provider(&self, id: &str) -> Option<Arc<Provider>> {
        self.providers
            .read()
            .expect("catalog lock")
            .get(id)
            .cloned()
    }
}

impl Provider {
    /// How end users log in here, as the API says it.
    pub fn login_method(&self) -> pb::LoginMethod {
        if self.oauth2.is_some() {
            pb::LoginMethod::Oauth2
        } else {
            pb::LoginMethod::Credentials
        }
    }

    pub fn capability(&self, resource: &str, action: Action) -> Option<&Capability> {
        self.capabilities
            .iter()
            .find(|c| c.resource == resource && c.action == action)
    }
}

/// What an operation does to its resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Read,
    Write,
}

impl Action {
    pub const fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Write => "write",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "read" => Some(Action::Read),
            "write" => Some(Action::Write),
            _ => None,
        }
    }

    pub fn to_proto(self) -> pb::OperationAction {
        match self {
            Action::Read => pb::OperationAction::Read,
            Action::Write => pb::OperationAction::Write,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalog_has_the_documented_integrations() {
        let catalog = Catalog::builtin().unwrap();
        for id in ["tmobile", "att", "verizon", "ubereats"] {
            let p = catalog
                .provider(id)
                .unwrap_or_else(|| panic!("{id} missing"));
            assert!(
                catalog
                    .provider(id)
                    .unwrap()
                    .capability("paymentMethod", Action::Read)
                    .is_some(),
                "{id}"
            );
            assert!(
                catalog
                    .provider(id)
                    .unwrap()
                    .capability("paymentMethod", Action::Write)
                    .is_some(),
                "{id}"
            );
            assert!(!p.credentials.is_empty());
        }
        for id in ["tmobile", "att", "verizon"] {
            let provider = catalog.provider(id).unwrap();
            let bill = provider
                .capability("mobileBillingStatement", Action::Read)
                .unwrap();
            assert_eq!(bill.result_key, "billing");
        }
        assert!(
            catalog
                .provider("ubereats")
                .unwrap()
                .capability("orderHistory", Action::Read)
                .is_some()
        );
        assert_eq!(
            catalog
                .providers()
                .into_iter()
                .filter(|p| p.category == Category::Creator && p.oauth2.is_none())
                .count(),
            1
        );
        let banks: Vec<_> = catalog
            .providers()
            .into_iter()
            .filter(|p| p.category == Category::Bank && p.oauth2.is_none())
            .collect();
        assert_eq!(banks.len(), 2);
        for bank in banks {
            assert!(
                catalog
                    .provider(&bank.id)
                    .unwrap()
                    .capability("accounts", Action::Read)
                    .is_some()
            );
            assert!(
                catalog
                    .provider(&bank.id)
                    .unwrap()
                    .capability("transactions", Action::Read)
                    .is_some()
            );
        }
    }

    #[test]
    fn shipped_oauth_integrations_use_the_providers_endpoints() {
        let catalog = Catalog::builtin().unwrap();
        for (id, category, host) in [
            ("twitch", Category::Creator, "id.twitch.tv"),
            ("patreon", Category::Creator, "www.patreon.com"),
            ("monzo", Category::Bank, "auth.monzo.com"),
            ("uber", Category::Delivery, "auth.uber.com"),
        ] {
            let provider = catalog.provider(id).unwrap();
            let oauth = provider.oauth2.as_ref().unwrap();
            assert_eq!(provider.category, category, "{id}");
            assert_eq!(oauth.authorization_url.host_str(), Some(host), "{id}");
            assert_eq!(oauth.token_url.scheme(), "https", "{id}");
            assert!(provider.credentials.is_empty(), "{id}");
        }
    }

    #[test]
    fn an_entry_is_either_a_form_or_oauth() {
        let both = r#"{"id":"acme","name":"Acme","category":"bank","credentials":[{"name":"u","label":"U"}],
            "auth":{"type":"oauth2","authorizationUrl":"https://a.example/auth","tokenUrl":"https://a.example/token","clientAuthentication":"basic","apiBaseUrl":"https://a.example/api"},
            "capabilities":[{"resource":"accounts","action":"read","description":"d","resultKey":"accounts","resultDescription":"r","arguments":{"type":"object"}}]}"#;
        let msg = format!(
            "{:#}",
            Catalog::from_files([("acme.json".to_string(), both.to_string())]).unwrap_err()
        );
        assert!(msg.contains("no credential fields"), "{msg}");
        let neither = both.replace(r#""credentials":[{"name":"u","label":"U"}],"#, "");
        let neither = neither.replace(
            r#""auth":{"type":"oauth2","authorizationUrl":"https://a.example/auth","tokenUrl":"https://a.example/token","clientAuthentication":"basic","apiBaseUrl":"https://a.example/api"},"#,
            "",
        );
        let msg = format!(
            "{:#}",
            Catalog::from_files([("acme.json".to_string(), neither)]).unwrap_err()
        );
        assert!(msg.contains("at least one credential field"), "{msg}");
        let bad_url = both
            .replace(r#""credentials":[{"name":"u","label":"U"}],"#, "")
            .replace("https://a.example/token", "ftp://a.example/token");
        let msg = format!(
            "{:#}",
            Catalog::from_files([("acme.json".to_string(), bad_url)]).unwrap_err()
        );
        assert!(
            msg.contains("acme.json") && msg.contains("auth.tokenUrl"),
            "{msg}"
        );
    }

    #[test]
    fn card_arguments_are_checked_without_echoing_them() {
        let catalog = Catalog::builtin().unwrap();
        let tmobile = catalog.provider("tmobile").unwrap();
        let write = tmobile.capability("paymentMethod", Action::Write).unwrap();
        let ok = serde_json::json!({"cardNumber": "4111111111111111", "expirationDate": "12/99", "cvv": "123", "nameOnCard": "John Doe", "billingZip": "10001"});
        assert_eq!(write.check_arguments(&ok), []);
        let bad = serde_json::json!({"cardNumber": "4111111111111112", "expirationDate": "01/20", "cvv": "12", "billingZip": "x", "extra": 1});
        let problems = write.check_arguments(&bad);
        let paths: Vec<_> = problems.iter().map(|p| p.path.as_str()).collect();
        for expected in [".cardNumber", ".expirationDate", ".cvv", ".billingZip", ""] {
            assert!(paths.contains(&expected), "{expected} in {paths:?}");
        }
        for p in &problems {
            assert!(
                !p.message.contains("4111111111111112") && !p.message.contains("\"12\""),
                "{p:?}"
            );
        }
        let missing = write.check_arguments(&serde_json::json!({}));
        assert!(
            missing
                .iter()
                .any(|p| p.path == ".cardNumber" && p.message == "is required")
        );
    }

    #[test]
    fn invalid_entries_name_the_file_and_entry() {
        let broken = r#"{"id":"acme","name":"Acme","category":"bank","credentials":[{"name":"u","label":"U"}],
            "capabilities":[{"resource":"accounts","action":"delete","description":"d","resultKey":"accounts","resultDescription":"r","arguments":{"type":"object"}}]}"#;
        let err = Catalog::from_files([("acme.json".to_string(), broken.to_string())]).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("acme.json")
                && msg.contains("capabilities[0]")
                && msg.contains("read or write"),
            "{msg}"
        );

        let bad_schema = broken.replace("delete", "read").replace(
            r#"{"type":"object"}"#,
            r#"{"type":"object","properties":{"a":{"type":"nope"}}}"#,
        );
        let msg = format!(
            "{:#}",
            Catalog::from_files([("acme.json".to_string(), bad_schema)]).unwrap_err()
        );
        assert!(
            msg.contains("acme.json") && msg.contains("JSON Schema"),
            "{msg}"
        );

        let misnamed = broken.replace("delete", "read");
        let msg = format!(
            "{:#}",
            Catalog::from_files([("other.json".to_string(), misnamed)]).unwrap_err()
        );
        assert!(msg.contains("acme.json"), "{msg}");
    }
}
