//! What a connector's `Describe` answer does to the catalog. An integration
//! the catalog has must agree with it (same credential fields, only
//! capabilities the catalog has, schemas that compile); one it does not
//! have is added from the answer, checked like a catalog file. A
//! conflicting integration is refused; what is wrong is said in one
//! sentence for the log line that names it.

use crate::catalog::{Action, Catalog};
use crate::connector_pb as cpb;
use crate::kernel::proto_json;
use serde_json::{Value, json};
use std::collections::BTreeSet;

/// Checks (and, when new, adds) one described integration.
pub fn admit(catalog: &Catalog, integration: &cpb::Integration) -> Result<(), String> {
    let id = &integration.integration_id;
    let Some(provider) = catalog.provider(id) else {
        return catalog
            .add_described(&catalog_entry(integration)?)
            .map(drop)
            .map_err(|err| format!("{err:#}"));
    };
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
        let action = action(capability)?;
        if provider.capability(&capability.resource, action).is_none() {
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

fn action(capability: &cpb::Capability) -> Result<Action, String> {
    match capability.action() {
        cpb::OperationAction::Read => Ok(Action::Read),
        cpb::OperationAction::Write => Ok(Action::Write),
        cpb::OperationAction::Unspecified => Err(format!(
            "capability {:?} has no action",
            capability.resource
        )),
    }
}

/// The described integration as a catalog file would spell it.
fn catalog_entry(integration: &cpb::Integration) -> Result<Value, String> {
    let capabilities = integration
        .capabilities
        .iter()
        .map(|c| {
            Ok(json!({
                "resource": c.resource,
                "action": action(c)?.as_str(),
                "description": c.description,
                "resultKey": c.result_key,
                "resultDescription": c.result_description,
                "arguments": c.arguments_schema.as_ref().map_or(
                    json!({"type": "object", "additionalProperties": false, "properties": {}}),
                    proto_json::from_struct,
                ),
            }))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(json!({
        "id": integration.integration_id,
        "name": integration.name,
        "category": integration.category,
        "credentials": integration.credential_fields.iter().map(|f| json!({
            "name": f.name,
            "label": f.label,
            "secret": f.secret,
        })).collect::<Vec<_>>(),
        "capabilities": capabilities,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capability(resource: &str, action: cpb::OperationAction) -> cpb::Capability {
        cpb::Capability {
            resource: resource.into(),
            action: action as i32,
            result_key: "data".into(),
            ..Default::default()
        }
    }

    fn verizon() -> cpb::Integration {
        cpb::Integration {
            integration_id: "verizon".into(),
            credential_fields: ["username", "password"]
                .map(|name| cpb::CredentialField {
                    name: name.into(),
                    ..Default::default()
                })
                .into(),
            capabilities: vec![capability("paymentMethod", cpb::OperationAction::Read)],
            ..Default::default()
        }
    }

    #[test]
    fn a_known_integration_must_agree_with_the_catalog() {
        let catalog = Catalog::builtin().unwrap();
        assert_eq!(admit(&catalog, &verizon()), Ok(()));

        let mut other_fields = verizon();
        other_fields.credential_fields.pop();
        let err = admit(&catalog, &other_fields).unwrap_err();
        assert!(err.contains("credential fields"), "{err}");

        let mut unknown = verizon();
        unknown.capabilities = vec![capability("simCard", cpb::OperationAction::Write)];
        assert_eq!(
            admit(&catalog, &unknown).unwrap_err(),
            "capability simCard write is not in the catalog"
        );

        let mut bad_schema = verizon();
        bad_schema.capabilities[0].arguments_schema =
            Some(proto_json::to_struct(&json!({ "type": "array" })));
        let err = admit(&catalog, &bad_schema).unwrap_err();
        assert!(err.contains("\"type\": \"object\""), "{err}");

        let mut no_action = verizon();
        no_action.capabilities = vec![capability(
            "paymentMethod",
            cpb::OperationAction::Unspecified,
        )];
        assert!(
            admit(&catalog, &no_action)
                .unwrap_err()
                .contains("no action")
        );
    }

    #[test]
    fn a_new_integration_joins_the_catalog_after_the_files_checks() {
        let catalog = Catalog::builtin().unwrap();
        let mut acme = verizon();
        acme.integration_id = "acmemobile".into();
        acme.name = "Acme Mobile".into();
        acme.category = "satellite".into();
        let err = admit(&catalog, &acme).unwrap_err();
        assert!(err.contains("not a valid catalog entry"), "{err}");
        assert!(
            catalog.provider("acmemobile").is_none(),
            "nothing half-added"
        );

        acme.category = "mobile_carrier".into();
        acme.capabilities[0].arguments_schema = Some(proto_json::to_struct(&json!({
            "type": "object", "properties": { "months": { "type": "integer" } }
        })));
        assert_eq!(admit(&catalog, &acme), Ok(()));
        let added = catalog.provider("acmemobile").unwrap();
        assert_eq!(added.name, "Acme Mobile");
        let read = added.capability("paymentMethod", Action::Read).unwrap();
        assert!(read.check_arguments(&json!({ "months": "x" })).len() == 1);
        // Described again (the describer's next round): now it must agree.
        assert_eq!(admit(&catalog, &acme), Ok(()));
    }
}
