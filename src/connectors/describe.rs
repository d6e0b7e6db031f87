//! Whether a connector's `Describe` answer agrees with linkd's catalog:
//! same credential fields, only capabilities the catalog has, schemas that
//! compile. A conflicting integration is refused; what is wrong is said in
//! one sentence for the log line that names it.

use crate::catalog::{Action, Catalog};
use crate::connector_pb as cpb;
use crate::kernel::proto_json;
use std::collections::BTreeSet;

pub fn check(catalog: &Catalog, integration: &cpb::Integration) -> Result<(), String> {
    let id = &integration.integration_id;
    let provider = catalog
        .provider(id)
        .ok_or_else(|| format!("{id:?} is not in linkd's catalog"))?;
    let described: BTreeSet<&str> = integration
        .credential_fields
        .iter()
        .map(|f| f.name.as_str())
        .collect();
    let expected: BTreeSet<&str> = provider
        .credentials
        .iter()
        .map(|f| f.name.as_str())
        .collect();
    if described != expected {
        return Err(format!(
            "its credential fields {described:?} are not the catalog's {expected:?}"
        ));
    }
    if integration.capabilities.is_empty() {
        return Err("it describes no capabilities".into());
    }
    for capability in &integration.capabilities {
        let action = match capability.action() {
            cpb::OperationAction::Read => Action::Read,
            cpb::OperationAction::Write => Action::Write,
            cpb::OperationAction::Unspecified => {
                return Err(format!(
                    "capability {:?} has no action",
                    capability.resource
                ));
            }
        };
        if catalog
            .capability(id, &capability.resource, action)
            .is_none()
        {
            return Err(format!(
                "capability {} {} is not in the catalog",
                capability.resource,
                action.as_str()
            ));
        }
        if let Some(schema) = &capability.arguments_schema {
            crate::catalog::check_arguments_schema(&proto_json::from_struct(schema)).map_err(
                |err| {
                    format!(
                        "capability {} {}: {err}",
                        capability.resource,
                        action.as_str()
                    )
                },
            )?;
        }
    }
    Ok(())
}
