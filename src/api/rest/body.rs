//! Reading REST request bodies: JSON objects (`application/json`, through
//! the input gate) whose wrong-typed and unknown fields become violations
//! with their documented paths, merged with the domain's own findings, and
//! the `Idempotency-Key` header; and listings' query parameters.

use crate::kernel::error::{Error, FieldViolation};
use crate::kernel::proto_json;
use crate::kernel::validate::Violations;
use crate::pb;
use axum::http::{HeaderMap, header};
use serde_json::{Map, Value};
use std::collections::HashMap;

/// Reads fields of a JSON object, recording a violation for each value of
/// the wrong type.
pub(super) struct Fields<'a> {
    pub object: &'a Map<String, Value>,
    pub prefix: String,
    pub problems: &'a mut Violations,
}

impl<'a> Fields<'a> {
    /// The fields of `object`, its paths prefixed with `prefix`.
    pub fn new(object: &'a Map<String, Value>, prefix: &str, problems: &'a mut Violations) -> Self {
        Fields {
            object,
            prefix: prefix.to_string(),
            problems,
        }
    }

    pub fn path(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    pub fn get(&self, name: &str) -> Option<&'a Value> {
        self.object.get(name).filter(|v| !v.is_null())
    }

    pub fn string(&mut self, name: &str) -> Option<String> {
        match self.get(name)? {
            Value::String(s) => Some(s.clone()),
            _ => {
                self.problems.add(self.path(name), "must be a string");
                None
            }
        }
    }

    pub fn boolean(&mut self, name: &str) -> Option<bool> {
        match self.get(name)? {
            Value::Bool(b) => Some(*b),
            _ => {
                self.problems.add(self.path(name), "must be a boolean");
                None
            }
        }
    }

    /// A whole number; `5.0` is one too, as JSON Schema's `integer` says.
    pub fn integer(&mut self, name: &str, message: &str) -> Option<i64> {
        let value = self.get(name)?;
        let whole = value.as_i64().or_else(|| {
            value
                .as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                .map(|f| f as i64)
        });
        match whole {
            Some(n) => Some(n),
            None => {
                self.problems.add(self.path(name), message);
                None
            }
        }
    }

    /// An array of strings (`["read", "write"]`).
    pub fn string_list(&mut self, name: &str) -> Vec<String> {
        match self.get(name) {
            None => Vec::new(),
            Some(Value::Array(items)) => {
                let mut list = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::String(s) => list.push(s.clone()),
                        _ => self
                            .problems
                            .add(format!("{}[{i}]", self.path(name)), "must be a string"),
                    }
                }
                list
            }
            Some(_) => {
                self.problems
                    .add(self.path(name), "must be an array of strings");
                Vec::new()
            }
        }
    }

    /// An object of strings (`{"username": "…"}`).
    pub fn string_map(&mut self, name: &str) -> HashMap<String, String> {
        let mut map = HashMap::new();
        match self.get(name) {
            None => {}
            Some(Value::Object(object)) => {
                for (key, value) in object {
                    match value {
                        Value::String(s) => {
                            map.insert(key.clone(), s.clone());
                        }
                        _ => self
                            .problems
                            .add(format!("{}.{key}", self.path(name)), "must be a string"),
                    }
                }
            }
            Some(_) => self.problems.add(self.path(name), "must be an object"),
        }
        map
    }

    /// Every field not in `known` is a violation (pass
    /// [`declared_fields`] of the body's schema).
    pub fn reject_unknown(&mut self, known: &[String]) {
        for name in self.object.keys().filter(|k| !known.contains(k)) {
            self.problems.add(self.path(name), "is not a known field");
        }
    }
}

/// The essence of the request's media type (`type/subtype`, lower case,
/// parameters dropped): media types compare case-insensitively (RFC 9110
/// §8.3.1).
fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let essence = value.split(';').next().unwrap_or_default().trim();
    Some(essence.to_ascii_lowercase())
}

/// Whether the request says its body is JSON (`application/json` or
/// `application/…+json`, any case, any parameters).
fn is_json(headers: &HeaderMap) -> bool {
    media_type(headers).is_some_and(|essence| {
        essence == "application/json"
            || (essence.starts_with("application/") && essence.ends_with("+json"))
    })
}

/// Whether the request says its body is a form
/// (`application/x-www-form-urlencoded`, any case, any parameters).
pub(super) fn is_form(headers: &HeaderMap) -> bool {
    media_type(headers).is_some_and(|essence| essence == "application/x-www-form-urlencoded")
}

/// The body as a JSON object, through the input gate: `415` unless it is
/// `application/json`, `400` unless it parses to an object with no
/// unstorable string. An endpoint that takes fields needs a body (`{}` for
/// all defaults), so a request that lost its body is not acted on.
pub(super) fn json_object(headers: &HeaderMap, body: &[u8]) -> Result<Map<String, Value>, Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::invalid(
            "",
            "the body must be a JSON object (send {} for the defaults)",
        ));
    }
    if !is_json(headers) {
        return Err(Error::UnsupportedMediaType {
            expected: "application/json",
        });
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| Error::invalid("", format!("the body is not valid JSON: {e}")))?;
    crate::api::gate::check_json(&value)?;
    match value {
        Value::Object(object) => Ok(object),
        _ => Err(Error::invalid("", "the body must be a JSON object")),
    }
}

/// The fields the OpenAPI schema `B` of a request body declares: all that
/// its handler accepts, so the document and the check of unknown fields
/// cannot disagree. Read from the schema once per type.
pub(super) fn declared_fields<B: utoipa::PartialSchema + 'static>() -> &'static [String] {
    use std::any::TypeId;
    use std::sync::{LazyLock, RwLock};
    static DECLARED: LazyLock<RwLock<HashMap<TypeId, &'static [String]>>> =
        LazyLock::new(Default::default);
    if let Some(fields) = DECLARED
        .read()
        .expect("declared fields lock")
        .get(&TypeId::of::<B>())
    {
        return fields;
    }
    let fields: Vec<String> = match B::schema() {
        utoipa::openapi::RefOr::T(utoipa::openapi::Schema::Object(object)) => {
            object.properties.keys().cloned().collect()
        }
        _ => panic!("a request body schema is an object"),
    };
    DECLARED
        .write()
        .expect("declared fields lock")
        .entry(TypeId::of::<B>())
        .or_insert_with(|| fields.leak())
}

/// A body that takes no fields: nothing, or `{}`.
#[derive(utoipa::ToSchema)]
pub(super) struct NoFields {}

/// Reads a JSON object body with `read`; its type problems and any field
/// its schema `B` does not declare are reported together, before anything
/// is done. An endpoint that takes no fields ([`NoFields`]) also accepts no
/// body.
pub(super) fn read_object<B: utoipa::PartialSchema + 'static, T>(
    headers: &HeaderMap,
    body: &[u8],
    read: impl FnOnce(&mut Fields<'_>) -> T,
) -> Result<T, Error> {
    let known = declared_fields::<B>();
    let object = if known.is_empty() && body.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        json_object(headers, body)?
    };
    let mut problems = Violations::new();
    let mut fields = Fields::new(&object, "", &mut problems);
    fields.reject_unknown(known);
    let read = read(&mut fields);
    problems.finish()?;
    Ok(read)
}

/// Type problems first; then the domain's own findings for every other path
/// (a field with the wrong type is reported once).
pub(super) fn merge_violations<T>(type_problems: Violations, domain: Result<T, Error>) -> Error {
    let mut all: Vec<FieldViolation> = type_problems.into_vec();
    let typed: Vec<String> = all.iter().map(|v| v.path.clone()).collect();
    if let Err(err) = domain {
        all.extend(
            err.violations()
                .iter()
                .filter(|v| {
                    !typed
                        .iter()
                        .any(|t| v.path == *t || v.path.starts_with(&format!("{t}.")))
                })
                .cloned(),
        );
    }
    Error::Validation(all)
}

/// A creating call's body as its request, converted by `convert` (which
/// also reports wrong-typed and unknown fields), and the `Idempotency-Key`.
/// When any field had the wrong type nothing runs: the type problems are
/// answered together with what `rules` finds in the other fields.
pub(super) fn creating_request<R>(
    headers: &HeaderMap,
    body: &[u8],
    convert: impl FnOnce(&Map<String, Value>) -> (R, Violations),
    rules: impl FnOnce(&R) -> Result<(), Error>,
) -> Result<(R, Option<String>), Error> {
    let object = json_object(headers, body)?;
    let (req, type_problems) = convert(&object);
    if !type_problems.is_empty() {
        return Err(merge_violations(type_problems, rules(&req)));
    }
    Ok((req, idempotency_key(headers)?))
}

/// Reads a listing's query parameters into its request: each parameter in
/// `known` (camelCase, snake_case) is handed to `set` under its camelCase
/// name; an unknown one, and whatever `set` records, is a violation.
pub(super) fn list_query<R: Default>(
    params: &[(String, String)],
    known: &[(&'static str, &'static str)],
    mut set: impl FnMut(&mut R, &'static str, &str, &mut Violations),
) -> Result<R, Error> {
    let mut v = Violations::new();
    let mut req = R::default();
    for (name, value) in params {
        match known
            .iter()
            .find(|(camel, snake)| name == camel || name == snake)
        {
            Some((canonical, _)) => set(&mut req, canonical, value, &mut v),
            None => v.add(name.clone(), "is not a known query parameter"),
        }
    }
    v.finish()?;
    Ok(req)
}

/// An integer query parameter, or a violation naming it.
pub(super) fn integer(v: &mut Violations, name: &'static str, value: &str) -> Option<i32> {
    match value.parse() {
        Ok(n) => Some(n),
        Err(_) => {
            v.add(name, "must be an integer");
            None
        }
    }
}

/// The `Idempotency-Key` header, when given.
pub(super) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Error> {
    headers
        .get("idempotency-key")
        .map(|v| crate::idempotency::store::read_key(v.as_bytes()))
        .transpose()
}

/// One operation to run: a `resource` and `action` the integration
/// offers (`GET /v1/providers`), with the arguments its schema asks for.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = OperationRequest)]
#[allow(dead_code)] // A schema only: `operations_field` reads the body.
pub(super) struct OperationBody {
    #[schema(min_length = 1, max_length = 64)]
    resource: String,
    action: OperationAction,
    /// As the operation's `argumentsSchema` says; `{}` when it takes none.
    #[schema(value_type = Option<Object>)]
    arguments: Option<serde_json::Value>,
}

/// What an operation does.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub(super) enum OperationAction {
    Read,
    Write,
}

/// The `operations` array of a body (`POST /v1/links`,
/// `POST /v2/connections/{id}/operations`) as proto operations; wrong
/// types are problems at `operations[i]…` paths, the rules check the rest.
pub(super) fn operations_field(
    object: &Map<String, Value>,
    problems: &mut Violations,
) -> Vec<pb::Operation> {
    let mut operations = Vec::new();
    match object.get("operations").filter(|v| !v.is_null()) {
        None => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let mut op = pb::Operation::default();
                match item.as_object() {
                    None => problems.add(format!("operations[{i}]"), "must be an object"),
                    Some(object) => {
                        let mut fields =
                            Fields::new(object, &format!("operations[{i}]."), problems);
                        fields.reject_unknown(declared_fields::<OperationBody>());
                        op.resource = fields.string("resource").unwrap_or_default();
                        match fields.string("action").as_deref() {
                            Some("read") => op.set_action(pb::OperationAction::Read),
                            Some("write") => op.set_action(pb::OperationAction::Write),
                            Some(_) => fields
                                .problems
                                .add(format!("operations[{i}].action"), "must be read or write"),
                            None => {}
                        }
                        match fields.get("arguments") {
                            None => {}
                            Some(args @ Value::Object(_)) => {
                                op.arguments = Some(proto_json::to_struct(args))
                            }
                            Some(_) => fields
                                .problems
                                .add(format!("operations[{i}].arguments"), "must be an object"),
                        }
                    }
                }
                operations.push(op);
            }
        }
        Some(_) => problems.add("operations", "must be an array"),
    }
    operations
}
