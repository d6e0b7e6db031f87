//! Whose data a request touches: an organization in one environment.

use crate::kernel::ids::OrganizationId;
use crate::pb;

crate::kernel::names::stored_names! {
    /// The environment an API key, a client app and everything they create
    /// belong to. Keys of one environment never see data of the other.
    #[derive(clap::ValueEnum)]
    pub enum Environment: pb::Environment {
        Sandbox = "sandbox",
        Production = "production",
    }
}

/// Whose data a request may touch: every store query is scoped to one
/// organization and one environment, taken from the caller's API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tenant {
    pub organization_id: OrganizationId,
    pub environment: Environment,
}
