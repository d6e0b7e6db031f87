//! The input gate both surfaces pass before any handler runs: no string in
//! a request (JSON body, query parameter, form field, protobuf message)
//! may hold a character Postgres `text` and `jsonb` refuse, so such input
//! is a validation error naming the field instead of a database error.
//! Paths are the documented JSON paths on both surfaces
//! (`operations[1].arguments.cvv`).
//!
//! The gRPC side checks the raw message in [`GatedCodec`], which also turns
//! a message that does not decode into `INVALID_ARGUMENT` (tonic's default
//! is `INTERNAL`, but a malformed message is the caller's fault).

use crate::kernel::error::{Error, FieldViolation};
use prost_reflect::{DescriptorPool, DynamicMessage, MapKey, ReflectMessage as _, Value as Field};
use serde_json::Value;
use std::marker::PhantomData;
use std::sync::LazyLock;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

const NUL_MESSAGE: &str = "must not contain NUL (U+0000) characters";

/// Whether Postgres can store `s` as `text`: UTF-8 (guaranteed by the
/// type) without NUL.
pub fn storable(s: &str) -> bool {
    !s.contains('\0')
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// A violation at `path`, or at `path` itself when a key under it is bad
/// (the key cannot be shown as a path).
fn refuse(path: String, found: &mut Vec<FieldViolation>) {
    found.push(FieldViolation {
        path,
        message: NUL_MESSAGE.into(),
    });
}

/// Every string (and object key) of a JSON body that Postgres would refuse.
pub fn check_json(body: &Value) -> Result<(), Error> {
    let mut found = Vec::new();
    walk_json(body, "", &mut found);
    finish(found)
}

fn walk_json(value: &Value, path: &str, found: &mut Vec<FieldViolation>) {
    match value {
        Value::String(s) if !storable(s) => refuse(path.to_string(), found),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                walk_json(item, &format!("{path}[{i}]"), found);
            }
        }
        Value::Object(object) => {
            for (key, item) in object {
                if storable(key) {
                    walk_json(item, &join(path, key), found);
                } else {
                    refuse(path.to_string(), found);
                }
            }
        }
        _ => {}
    }
}

/// Query parameters or form fields, by name.
pub fn check_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<(), Error> {
    let mut found = Vec::new();
    for (name, value) in pairs {
        if !storable(name) {
            refuse(String::new(), &mut found);
        } else if !storable(value) {
            refuse(name.to_string(), &mut found);
        }
    }
    finish(found)
}

fn finish(found: Vec<FieldViolation>) -> Result<(), Error> {
    if found.is_empty() {
        Ok(())
    } else {
        Err(Error::Validation(found))
    }
}

/// The contract's descriptors, for reading messages field by field.
static DESCRIPTORS: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(crate::pb::FILE_DESCRIPTOR_SET)
        .expect("the built descriptor set decodes")
});

/// Every string of a protobuf message that Postgres would refuse; `bytes`
/// is the encoded message of type `full_name`.
fn check_message(full_name: &str, bytes: &[u8]) -> Result<(), Error> {
    let Some(descriptor) = DESCRIPTORS.get_message_by_name(full_name) else {
        return Ok(());
    };
    let message = DynamicMessage::decode(descriptor, bytes).map_err(|e| malformed(full_name, e))?;
    let mut found = Vec::new();
    walk_message(&message, "", &mut found);
    finish(found)
}

fn walk_message(message: &DynamicMessage, path: &str, found: &mut Vec<FieldViolation>) {
    let name = message.descriptor().full_name().to_string();
    for (field, value) in message.fields() {
        match name.as_str() {
            // Well-known JSON types keep their JSON paths: a Struct's keys,
            // a ListValue's indexes, a Value's content.
            "google.protobuf.Struct" | "google.protobuf.Value" | "google.protobuf.ListValue" => {
                walk_field(value, path, found)
            }
            _ => walk_field(value, &join(path, field.json_name()), found),
        }
    }
}

fn walk_field(value: &Field, path: &str, found: &mut Vec<FieldViolation>) {
    match value {
        Field::String(s) if !storable(s) => refuse(path.to_string(), found),
        Field::Message(message) => walk_message(message, path, found),
        Field::List(items) => {
            for (i, item) in items.iter().enumerate() {
                walk_field(item, &format!("{path}[{i}]"), found);
            }
        }
        Field::Map(entries) => {
            for (key, item) in entries {
                match key {
                    MapKey::String(key) if !storable(key) => refuse(path.to_string(), found),
                    MapKey::String(key) => walk_field(item, &join(path, key), found),
                    _ => walk_field(item, path, found),
                }
            }
        }
        _ => {}
    }
}

fn malformed(full_name: &str, err: impl std::fmt::Display) -> Error {
    Error::invalid(
        "",
        format!("the request is not a valid {full_name} message: {err}"),
    )
}

/// The gRPC codec of every linkd service: prost encoding, and a decoder
/// that passes each incoming message through the gate.
#[derive(Debug, Clone)]
pub struct GatedCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for GatedCodec<T, U> {
    fn default() -> Self {
        GatedCodec(PhantomData)
    }
}

impl<T, U> Codec for GatedCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + prost::Name + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = GatedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        GatedDecoder(PhantomData)
    }
}

/// Decodes `U`, refusing malformed messages and unstorable strings with
/// `INVALID_ARGUMENT` and the field's path.
#[derive(Debug)]
pub struct GatedDecoder<U>(PhantomData<U>);

impl<U: prost::Message + prost::Name + Default> Decoder for GatedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        use prost::bytes::Buf as _;
        let bytes = buf.copy_to_bytes(buf.remaining());
        // A NUL inside a string is a zero byte in the encoding; most
        // messages have none, and skip the field-by-field reading.
        if bytes.contains(&0) {
            check_message(&U::full_name(), &bytes).map_err(Status::from)?;
        }
        U::decode(bytes)
            .map(Some)
            .map_err(|e| Status::from(malformed(&U::full_name(), e)))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn paths(result: Result<(), Error>) -> Vec<String> {
        result
            .err()
            .map(|e| e.violations().iter().map(|v| v.path.clone()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn json_paths_name_every_bad_string() {
        let body = json!({
            "externalUserId": "a\u{0}b",
            "operations": [{ "arguments": { "ok": "fine", "cvv": "1\u{0}" } }],
            "fine": ["x", 1, null],
        });
        let mut found = paths(check_json(&body));
        found.sort();
        assert_eq!(found, ["externalUserId", "operations[0].arguments.cvv"]);
        assert!(check_json(&json!({ "a": ["b", { "c": "d" }] })).is_ok());
    }

    #[test]
    fn protobuf_paths_match_the_json_ones() {
        use prost::Message as _;
        let request = crate::pb::CreateLinkRequest {
            external_user_id: Some("x\u{0}".into()),
            operations: vec![crate::pb::Operation {
                resource: "paymentMethod".into(),
                arguments: Some(crate::kernel::proto_json::to_struct(
                    &json!({ "cvv": "1\u{0}" }),
                )),
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut found = paths(check_message(
            "linkd.v1.CreateLinkRequest",
            &request.encode_to_vec(),
        ));
        found.sort();
        assert_eq!(found, ["externalUserId", "operations[0].arguments.cvv"]);
    }

    #[test]
    fn query_pairs_name_the_parameter() {
        assert_eq!(
            paths(check_pairs([
                ("status", "active"),
                ("clientReferenceId", "\u{0}")
            ])),
            ["clientReferenceId"]
        );
    }
}
