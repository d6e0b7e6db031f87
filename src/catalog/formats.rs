//! Checks a card form needs, exposed as JSON Schema formats so catalog
//! schemas declare them (`"format": "card-number"`). Messages never contain
//! the value: card numbers and CVVs must not reach errors or logs.

use chrono::Datelike;

pub const CARD_NUMBER: &str = "card-number";
pub const CARD_EXPIRY: &str = "card-expiry";
pub const CARD_CVV: &str = "card-cvv";
pub const ZIP_CODE: &str = "zip-code";

/// 12 to 19 digits passing the Luhn check.
pub fn is_card_number(s: &str) -> bool {
    let digits: Vec<u32> = s.chars().filter_map(|c| c.to_digit(10)).collect();
    if digits.len() != s.len() || !(12..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                if d * 2 > 9 { d * 2 - 9 } else { d * 2 }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// `MM/YY`, valid through the end of that month, not before the current one.
pub fn is_unexpired(s: &str, today: chrono::NaiveDate) -> bool {
    let Some((mm, yy)) = s.split_once('/') else {
        return false;
    };
    if mm.len() != 2 || yy.len() != 2 {
        return false;
    }
    let (Ok(month), Ok(year)) = (mm.parse::<u32>(), yy.parse::<i32>()) else {
        return false;
    };
    if !(1..=12).contains(&month) {
        return false;
    }
    (2000 + year, month) >= (today.year(), today.month())
}

pub fn is_cvv(s: &str) -> bool {
    (3..=4).contains(&s.len()) && s.chars().all(|c| c.is_ascii_digit())
}

/// US ZIP: `12345` or `12345-6789`.
pub fn is_zip_code(s: &str) -> bool {
    let (five, plus4) = s.split_once('-').map_or((s, None), |(a, b)| (a, Some(b)));
    five.len() == 5
        && five.chars().all(|c| c.is_ascii_digit())
        && plus4.is_none_or(|p| p.len() == 4 && p.chars().all(|c| c.is_ascii_digit()))
}

/// Adds the card formats to a validator's options.
pub fn register_formats(options: jsonschema::ValidationOptions) -> jsonschema::ValidationOptions {
    options
        .with_format(CARD_NUMBER, is_card_number)
        .with_format(CARD_EXPIRY, |s: &str| {
            is_unexpired(s, chrono::Utc::now().date_naive())
        })
        .with_format(CARD_CVV, is_cvv)
        .with_format(ZIP_CODE, is_zip_code)
}

/// The message for a value that fails `format`; never includes the value.
pub fn format_message(format: &str) -> &'static str {
    match format {
        CARD_NUMBER => "must be a valid card number (12 to 19 digits passing the Luhn check)",
        CARD_EXPIRY => "must be an expiry date MM/YY that is not in the past",
        CARD_CVV => "must be 3 or 4 digits",
        ZIP_CODE => "must be a ZIP code (12345 or 12345-6789)",
        "date" => "must be a date YYYY-MM-DD",
        "date-time" => "must be an RFC 3339 date-time",
        _ => "has the wrong format",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_and_lengths() {
        assert!(is_card_number("4111111111111111"));
        assert!(is_card_number("5555555555554444"));
        assert!(is_card_number("378282246310005"));
        assert!(!is_card_number("4111111111111112"));
        assert!(!is_card_number("4111 1111 1111 1111"));
        assert!(!is_card_number("0"));
    }

    #[test]
    fn expiry_is_inclusive_of_the_current_month() {
        let today = chrono::NaiveDate::from_ymd_opt(2026, 11, 21).unwrap();
        assert!(is_unexpired("11/26", today));
        assert!(is_unexpired("01/27", today));
        assert!(!is_unexpired("10/26", today));
        assert!(!is_unexpired("13/30", today));
        assert!(!is_unexpired("1/30", today));
        assert!(!is_unexpired("12-28", today));
    }

    #[test]
    fn cvv_and_zip() {
        assert!(is_cvv("123") && is_cvv("1234") && !is_cvv("12") && !is_cvv("12a"));
        assert!(
            is_zip_code("10001")
                && is_zip_code("10001-1234")
                && !is_zip_code("1000")
                && !is_zip_code("ABCDE")
        );
    }
}
