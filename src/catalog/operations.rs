//! Operations as requests name them (`resource`, `action`, `arguments`),
//! checked against an integration's capabilities and argument schemas, and
//! their results shaped as the API documents: the rules a link intent and
//! the Access API share.

use super::{Action, Catalog, Provider};
use crate::kernel::proto_json;
use crate::kernel::validate::{Violations, limits};
use crate::pb;
use serde_json::{Value, json};

/// Most operations one link or Access API call may carry.
pub const MAX_OPERATIONS: usize = 10;

/// One checked operation.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Operation {
    pub resource: String,
    pub action: Action,
}

/// One requested operation, as given.
#[derive(Debug, Clone)]
pub struct OperationRequest<'a> {
    pub resource: &'a str,
    /// `None`: not given (or not read/write).
    pub action: Option<Action>,
    /// `{}` when not given.
    pub arguments: serde_json::Value,
}

/// Checks each operation against the catalog (when the integration is
/// known) and its arguments against the capability's schema; returns the
/// operations that name an action and every operation's arguments.
pub fn check_operations(
    v: &mut Violations,
    catalog: &Catalog,
    integration_id: &str,
    integration_known: bool,
    requests: &[OperationRequest<'_>],
) -> (Vec<Operation>, Vec<serde_json::Value>) {
    if requests.is_empty() {
        v.add("operations", "must contain at least one operation");
    } else if requests.len() > MAX_OPERATIONS {
        v.add(
            "operations",
            format!("must contain at most {MAX_OPERATIONS} operations"),
        );
    }
    let mut operations = Vec::new();
    let mut arguments = Vec::new();
    let provider = catalog.provider(integration_id);
    for (i, op) in requests.iter().enumerate().take(MAX_OPERATIONS) {
        let path = format!("operations[{i}]");
        let resource_ok = v.require_len(&format!("{path}.resource"), op.resource, limits::ID);
        let action = op.action;
        if action.is_none() {
            v.add(format!("{path}.action"), "is required: read or write");
        }
        let args = op.arguments.clone();
        if let (true, true, Some(action)) = (integration_known, resource_ok, action) {
            match provider
                .as_ref()
                .and_then(|p| p.capability(op.resource, action))
            {
                None => v.add(
                    path.clone(),
                    format!(
                        "{} {} {} is not a valid combination (see GET /v1/providers)",
                        integration_id,
                        op.resource,
                        action.as_str()
                    ),
                ),
                Some(capability) => {
                    for problem in capability.check_arguments(&args) {
                        v.add(format!("{path}.arguments{}", problem.path), problem.message);
                    }
                }
            }
        }
        if let Some(action) = action {
            operations.push(Operation {
                resource: op.resource.to_string(),
                action,
            });
        }
        arguments.push(args);
    }
    (operations, arguments)
}

/// The result of the operations: flat for one, wrapped for several.
pub fn shape_result(provider: &Provider, operations: &[Operation], data: Vec<Value>) -> Value {
    if let ([op], [only]) = (operations, data.as_slice()) {
        let key = provider
            .capabilities
            .iter()
            .find(|c| c.resource == op.resource && c.action == op.action)
            .map_or(op.resource.as_str(), |c| c.result_key.as_str());
        return json!({ key: only });
    }
    let wrapped: Vec<Value> = operations
        .iter()
        .zip(data)
        .map(|(op, data)| json!({ "resource": op.resource, "action": op.action, "data": data }))
        .collect();
    json!({ "operations": wrapped })
}

/// The rules' view of the operations of a request (`CreateLink`,
/// `ExecuteOperations`).
pub fn requests_from_proto(operations: &[pb::Operation]) -> Vec<OperationRequest<'_>> {
    operations
        .iter()
        .map(|op| OperationRequest {
            resource: &op.resource,
            action: match op.action() {
                pb::OperationAction::Read => Some(Action::Read),
                pb::OperationAction::Write => Some(Action::Write),
                pb::OperationAction::Unspecified => None,
            },
            arguments: op.arguments.as_ref().map_or_else(
                || serde_json::Value::Object(Default::default()),
                proto_json::from_struct,
            ),
        })
        .collect()
}

/// What a caller sees of checked operations: resource and action, never
/// arguments.
pub fn summaries(operations: &[Operation]) -> Vec<pb::OperationSummary> {
    operations
        .iter()
        .map(|op| pb::OperationSummary {
            resource: op.resource.clone(),
            action: op.action.to_proto() as i32,
        })
        .collect()
}
