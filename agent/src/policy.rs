//! May this caller read this secret? Default deny, except in development mode.

use crate::identity::Caller;
use crate::secret::SecretId;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

pub enum Policy {
    /// Development mode: everything is readable.
    AllowAll,
}

impl Policy {
    pub fn check(&self, _caller: &Caller, _id: &SecretId) -> Result<(), Denied> {
        match self {
            Policy::AllowAll => Ok(()),
        }
    }
}
