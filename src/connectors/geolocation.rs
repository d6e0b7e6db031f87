//! Where the connector's proxy should appear to be: the end user's region.

use crate::kernel::validate::Violations;
use crate::pb;

/// A proxy location: an ISO 3166-1 alpha-2 country and optionally an
/// ISO 3166-2 subdivision of it (without the country prefix).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Geolocation {
    pub country: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

impl Geolocation {
    /// Checks a requested location, normalising codes to upper case.
    pub fn parse(v: &mut Violations, country: &str, state: Option<&str>) -> Option<Self> {
        let country = country.trim().to_ascii_uppercase();
        if country.is_empty() {
            v.add(
                "geolocation.country",
                "is required when geolocation is given",
            );
            return None;
        }
        if country.len() != 2 || rust_iso3166::from_alpha2(&country).is_none() {
            v.add(
                "geolocation.country",
                "must be an ISO 3166-1 alpha-2 country code such as US",
            );
            return None;
        }
        let state = match state.map(str::trim) {
            None | Some("") => None,
            Some(state) => {
                let state = state.to_ascii_uppercase();
                let code = format!("{country}-{state}");
                if state.len() > 3 || rust_iso3166::iso3166_2::from_code(&code).is_none() {
                    v.add(
                        "geolocation.state",
                        format!(
                            "must be an ISO 3166-2 subdivision code of {country} without the country prefix, such as CA for US-CA"
                        ),
                    );
                    return None;
                }
                Some(state)
            }
        };
        Some(Geolocation { country, state })
    }

    pub fn to_proto(&self) -> pb::Geolocation {
        pb::Geolocation {
            country: self.country.clone(),
            state: self.state.clone(),
        }
    }
}
