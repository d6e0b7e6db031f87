//! The access tokens of OAuth connections: when each is due for refreshing.

use crate::connectors::oauth_session::OAuthTokens;
use chrono::{DateTime, Utc};
use rand::Rng as _;

/// How long before expiry a token is refreshed: this, or half its lifetime
/// when that is shorter, less up to a tenth at random so that tokens issued
/// together are not all refreshed in the same second.
pub const REFRESH_LEAD: chrono::Duration = chrono::Duration::minutes(5);

/// When the refresher should take these tokens; `None` when they cannot be
/// refreshed (no refresh token) or never expire.
pub fn refresh_due(tokens: &OAuthTokens) -> Option<DateTime<Utc>> {
    tokens.refresh_token.as_ref()?;
    let expires_at = tokens.expires_at?;
    let lifetime = expires_at - tokens.obtained_at;
    let lead = REFRESH_LEAD.min(lifetime / 2);
    let jitter_ms = rand::rng().random_range(0..=(lead.num_milliseconds() / 10).max(0));
    Some(expires_at - lead - chrono::Duration::milliseconds(jitter_ms))
}

/// The stored times of a connection's tokens.
pub fn token_times(tokens: &OAuthTokens) -> super::store::TokenTimes {
    super::store::TokenTimes {
        obtained_at: Some(tokens.obtained_at),
        expires_at: tokens.expires_at,
        refresh_due_at: refresh_due(tokens),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(lifetime_secs: i64, refresh: bool) -> OAuthTokens {
        let now = Utc::now();
        OAuthTokens {
            access_token: "a".into(),
            token_type: "Bearer".into(),
            refresh_token: refresh.then(|| "r".into()),
            scope: None,
            expires_at: Some(now + chrono::Duration::seconds(lifetime_secs)),
            refresh_expires_at: None,
            obtained_at: now,
        }
    }

    #[test]
    fn refreshed_ahead_of_expiry_spread_a_little() {
        let hour = tokens(3600, true);
        let due = refresh_due(&hour).unwrap();
        let ahead = hour.expires_at.unwrap() - due;
        assert!(
            ahead >= REFRESH_LEAD && ahead <= REFRESH_LEAD + REFRESH_LEAD / 10,
            "{ahead}"
        );
        // A short-lived token: half its lifetime ahead.
        let short = tokens(60, true);
        let ahead = short.expires_at.unwrap() - refresh_due(&short).unwrap();
        assert!(ahead >= chrono::Duration::seconds(30) && ahead <= chrono::Duration::seconds(33));
        assert_eq!(refresh_due(&tokens(60, false)), None);
    }
}
