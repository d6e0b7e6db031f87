//! Collecting every invalid field of a request before answering, so a client
//! sees all its mistakes at once.

use crate::kernel::error::{Error, FieldViolation};

/// Per-field length caps shared by every API. Longer values are rejected, not
/// truncated.
pub mod limits {
    /// Identifiers chosen by linkd or by the catalog (`integrationId`, `resource`).
    pub const ID: usize = 64;
    /// URLs (`webhookUrl`, `returnUrl`, `redirectUrl`).
    pub const URL: usize = 2048;
    /// Free-form client identifiers (`externalUserId`, `clientReferenceId`).
    pub const REFERENCE: usize = 255;
    /// Names of apps and organizations.
    pub const NAME: usize = 200;
}

#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldViolation {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Adds a violation when `value` is empty or longer than `max` characters.
    /// Returns whether the value passed.
    pub fn require_len(&mut self, path: &str, value: &str, max: usize) -> bool {
        if value.is_empty() {
            self.add(path, "is required");
            false
        } else {
            self.max_len(path, value, max)
        }
    }

    /// Adds a violation when `value` is longer than `max` characters.
    pub fn max_len(&mut self, path: &str, value: &str, max: usize) -> bool {
        if value.chars().count() > max {
            self.add(path, format!("must be at most {max} characters"));
            false
        } else {
            true
        }
    }

    pub fn into_vec(self) -> Vec<FieldViolation> {
        self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(())` when nothing was wrong, else one error listing everything.
    pub fn finish(self) -> Result<(), Error> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Error::Validation(self.0))
        }
    }
}
