//! What every concern shares and nothing else owns: the error table, typed
//! ids, the tenant, encryption, validation and paging. The kernel imports no
//! concern.

pub mod crypto;
pub mod db;
pub mod error;
pub mod ids;
pub mod paging;
pub mod tenant;
pub mod time;
pub mod validate;
