//! Reading REST request bodies: JSON objects whose wrong-typed fields become
//! violations with their documented paths, merged with the domain's own
//! findings, and the `Idempotency-Key` header.

use crate::error::{Error, FieldViolation};
use crate::validate::Violations;
use axum::http::HeaderMap;
use serde_json::{Map, Value};

/// Reads fields of a JSON object, recording a violation for each value of
/// the wrong type.
pub(super) struct Fields<'a> {
    pub object: &'a Map<String, Value>,
    pub prefix: String,
    pub problems: &'a mut Violations,
}

impl<'a> Fields<'a> {
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

    pub fn integer(&mut self, name: &str, message: &str) -> Option<i64> {
        match self.get(name)?.as_i64() {
            Some(n) => Some(n),
            None => {
                self.problems.add(self.path(name), message);
                None
            }
        }
    }

    pub fn reject_unknown(&mut self, known: &[&str]) {
        for name in self.object.keys().filter(|k| !known.contains(&k.as_str())) {
            self.problems.add(self.path(name), "is not a known field");
        }
    }
}

/// The body as JSON (an empty body is `{}`), or a 400 saying why not.
pub(super) fn json_body(body: &[u8]) -> Result<Value, Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Map::new()));
    }
    serde_json::from_slice(body)
        .map_err(|e| Error::invalid("", format!("the body is not valid JSON: {e}")))
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

/// The `Idempotency-Key` header, when given.
pub(super) fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, Error> {
    headers
        .get("idempotency-key")
        .map(|v| {
            v.to_str()
                .map_err(|_| Error::invalid("Idempotency-Key", "must be visible ASCII"))
        })
        .transpose()
}
