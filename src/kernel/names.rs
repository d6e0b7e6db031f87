//! Enums stored by name: one table per enum says each variant's name, and
//! from it come `as_str`, `parse`, `Display`, `Serialize` and the `sqlx`
//! mapping to a `text` column (a `CHECK` constraint keeps the column to
//! these names), and its OpenAPI schema. A row with a name the enum does not know fails to decode
//! instead of being guessed.

/// Declares an enum whose variants are stored as the given names, and,
/// after a `:`, the generated protobuf enum whose variants have the same
/// identifiers (its `UNSPECIFIED` maps to no variant):
///
/// ```text
/// crate::kernel::names::stored_names! {
///     /// The environment.
///     pub enum Environment: pb::Environment { Sandbox = "sandbox", Production = "production" }
/// }
/// ```
macro_rules! stored_names {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident: $pb:path {
            $( $(#[$vmeta:meta])* $variant:ident = $stored:literal ),+ $(,)?
        }
    ) => {
        crate::kernel::names::stored_names! {
            $(#[$meta])*
            $vis enum $name { $( $(#[$vmeta])* $variant = $stored ),+ }
        }

        impl $name {
            pub fn to_proto(self) -> $pb {
                match self {
                    $( $name::$variant => <$pb>::$variant ),+
                }
            }

            /// The variant of a proto value; `None` for `UNSPECIFIED`.
            pub fn from_proto(value: $pb) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.to_proto() == value)
            }
        }
    };
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $stored:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stored (and rendered) name.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $stored ),+
                }
            }

            /// Every name, comma-separated, for an error listing what is
            /// accepted.
            pub fn names() -> String {
                Self::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", ")
            }

            /// The variant stored as `name`.
            pub fn parse(name: &str) -> Option<Self> {
                match name {
                    $( $stored => Some($name::$variant), )+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let name = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
                Self::parse(&name).ok_or_else(|| {
                    serde::de::Error::custom(format!("must be one of {}", Self::names()))
                })
            }
        }

        /// In the OpenAPI document: a string, one of the names.
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .enum_values(Some([$($stored),+]))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}

        impl sqlx::postgres::PgHasArrayType for $name {
            fn array_type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::postgres::PgHasArrayType>::array_type_info()
            }
        }

        impl sqlx::Type<sqlx::Postgres> for $name {
            fn type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::Type<sqlx::Postgres>>::type_info()
            }

            fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <&str as sqlx::Type<sqlx::Postgres>>::compatible(ty)
            }
        }

        impl<'r> sqlx::Decode<'r, sqlx::Postgres> for $name {
            fn decode(
                value: sqlx::postgres::PgValueRef<'r>,
            ) -> Result<Self, sqlx::error::BoxDynError> {
                let stored = <&str as sqlx::Decode<sqlx::Postgres>>::decode(value)?;
                $name::parse(stored).ok_or_else(|| {
                    format!("unknown {} {stored:?}", stringify!($name)).into()
                })
            }
        }

        impl sqlx::Encode<'_, sqlx::Postgres> for $name {
            fn encode_by_ref(
                &self,
                buf: &mut sqlx::postgres::PgArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<sqlx::Postgres>>::encode_by_ref(&self.as_str(), buf)
            }
        }
    };
}

// Callers name it `crate::kernel::names::stored_names!`.
pub(crate) use stored_names;

#[cfg(test)]
mod tests {
    stored_names! {
        enum Light { Red = "red", Amber = "amber-ish" }
    }

    #[test]
    fn names_round_trip_and_strangers_are_refused() {
        for light in Light::ALL {
            assert_eq!(Light::parse(light.as_str()), Some(*light));
        }
        assert_eq!(Light::Amber.to_string(), "amber-ish");
        assert_eq!(Light::parse("Amber"), None);
        assert_eq!(Light::parse(""), None);
        assert_eq!(Light::names(), "red, amber-ish");
    }
}
