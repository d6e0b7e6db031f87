//! The languages the Link page speaks, and the one rule for a `lang`
//! parameter (InitLinkSession, OAuth authorize).

/// Languages the Link page speaks; `en` is the default.
pub const LANGUAGES: [&str; 2] = ["en", "fr"];
/// The documented message for a `lang` that is not an ISO 639-1 code.
pub const LANG_MESSAGE: &str = "The field Lang must be a valid ISO-639-1 two letter code.";
/// Checks `lang`: `None` → the default. Errors carry the message to show.
pub fn parse_lang(lang: Option<&str>) -> Result<&'static str, String> {
    match lang {
        None | Some("") => Ok("en"),
        Some(code) => {
            let lower = code.to_ascii_lowercase();
            if code.len() != 2
                || !code.bytes().all(|b| b.is_ascii_alphabetic())
                || isolang::Language::from_639_1(&lower).is_none()
            {
                return Err(LANG_MESSAGE.to_string());
            }
            LANGUAGES
                .into_iter()
                .find(|l| *l == lower)
                .ok_or_else(|| format!("The field Lang must be one of: {}.", LANGUAGES.join(", ")))
        }
    }
}
