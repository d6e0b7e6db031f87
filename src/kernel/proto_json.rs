//! Conversions between JSON values and `google.protobuf.Struct`/`Value`.

use prost_types::value::Kind;
use serde_json::Value as Json;

pub fn to_proto_value(json: &Json) -> prost_types::Value {
    let kind = match json {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(*b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Json::String(s) => Kind::StringValue(s.clone()),
        Json::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.iter().map(to_proto_value).collect(),
        }),
        Json::Object(_) => Kind::StructValue(to_struct(json)),
    };
    prost_types::Value { kind: Some(kind) }
}

/// A JSON object as a `Struct`; any other JSON gives an empty one.
pub fn to_struct(json: &Json) -> prost_types::Struct {
    prost_types::Struct {
        fields: json
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), to_proto_value(v)))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

pub fn from_proto_value(value: &prost_types::Value) -> Json {
    match &value.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(b)) => Json::Bool(*b),
        // Integral values come back as integers so schemas with
        // "type": "integer" accept what JSON clients sent.
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 9.0e15 => Json::from(*n as i64),
        Some(Kind::NumberValue(n)) => {
            serde_json::Number::from_f64(*n).map_or(Json::Null, Json::Number)
        }
        Some(Kind::StringValue(s)) => Json::String(s.clone()),
        Some(Kind::ListValue(list)) => {
            Json::Array(list.values.iter().map(from_proto_value).collect())
        }
        Some(Kind::StructValue(s)) => from_struct(s),
    }
}

pub fn from_struct(s: &prost_types::Struct) -> Json {
    Json::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), from_proto_value(v)))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_json_objects() {
        let json = serde_json::json!({"a": 1, "b": [true, null, "x", 2.5], "c": {"d": -3}});
        assert_eq!(from_struct(&to_struct(&json)), json);
    }
}
