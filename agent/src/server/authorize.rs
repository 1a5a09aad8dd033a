//! Authorization of one call, as a pure function of the caller, the references
//! it sent and the policy: every reference validated (its namespace filled in
//! from the caller's), then checked. Audit, metrics and logs all read the
//! outcome; nothing here waits or writes.

use vaultlet_client::SecretRef;
use vaultlet_client::proto;

use super::error::{MAX_REFS, ServiceError};
use crate::identity::Caller;
use crate::policy::{Policy, Refusal};
use crate::secret::SecretId;

/// The references of an allowed call, resolved, in request order.
pub type Resolved = Vec<(SecretId, SecretRef)>;

/// Resolves `refs` for `caller` and checks each against `policy`. The texts
/// of the references (as resolved, for the audit record) come back either way.
pub fn authorize(
    caller: &Caller,
    refs: Vec<Option<proto::SecretRef>>,
    policy: &Policy,
) -> (Vec<String>, Result<Resolved, ServiceError>) {
    match refs.len() {
        0 => return (Vec::new(), Err(ServiceError::NoRefs)),
        n if n > MAX_REFS => return (Vec::new(), Err(ServiceError::TooManyRefs(n))),
        _ => {}
    }
    let mut texts = Vec::with_capacity(refs.len());
    let mut resolved = Vec::with_capacity(refs.len());
    let mut failure = None;
    for (index, r) in refs.into_iter().enumerate() {
        let r = SecretRef::from(r.unwrap_or_default()).in_namespace(&caller.namespace);
        texts.push(r.to_string());
        match check(caller, index, r, policy) {
            Ok(ok) => resolved.push(ok),
            Err(e) => failure = failure.or(Some(e)),
        }
    }
    match failure {
        Some(e) => (texts, Err(e)),
        None => (texts, Ok(resolved)),
    }
}

fn check(caller: &Caller, index: usize, r: SecretRef, policy: &Policy) -> Result<(SecretId, SecretRef), ServiceError> {
    r.validate().map_err(|error| ServiceError::InvalidRef { index, error })?;
    let id = SecretId::new(&r.namespace, &r.name);
    match policy.check(caller, &id) {
        Ok(()) => Ok((id, r)),
        Err(Refusal::Denied(denied)) => Err(ServiceError::Denied { reference: r.to_string(), denied }),
        Err(Refusal::NotReady) => Err(ServiceError::Starting),
    }
}
