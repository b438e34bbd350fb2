//! Welcome checks: the Welcome a commit carries must be a Welcome, and it
//! must be addressed to exactly the members the commit adds.
//!
//! A Welcome lists its `EncryptedGroupSecrets` by the `KeyPackageRef` of
//! each new member's KeyPackage (RFC 9420, section 12.4.3.1). The server
//! cannot decrypt them, but it can compare those references with the
//! KeyPackages the commit's Add proposals consumed: a Welcome for someone
//! else, or for more or fewer devices than the commit adds, would put a
//! useless (or foreign) item into the added devices' inboxes.

use std::collections::BTreeSet;

use openmls::prelude::MlsMessageBodyIn;

use crate::codec::{body_kind, decode_message, HUSH_CIPHERSUITE};
use crate::group::AddedMember;

use crate::error::DsError;

/// Checks `welcome` (MLSMessage bytes) against the members a commit added:
/// it decodes as a Welcome (`Malformed` / `WrongWireFormat` otherwise), in
/// Hush's ciphersuite, and its group secrets are encrypted to exactly the
/// added members' KeyPackageRefs, each once (`InvalidArgument` otherwise).
pub fn check_welcome(welcome: &[u8], added: &[AddedMember]) -> Result<(), DsError> {
    let welcome = match decode_message(welcome)? {
        MlsMessageBodyIn::Welcome(w) => w,
        other => {
            return Err(DsError::WrongWireFormat(format!(
                "expected a Welcome, got {}",
                body_kind(&other)
            )))
        }
    };
    if welcome.ciphersuite() != HUSH_CIPHERSUITE {
        return Err(DsError::InvalidArgument(format!(
            "welcome ciphersuite {:?} is not the group's",
            welcome.ciphersuite()
        )));
    }
    let mut addressed = BTreeSet::new();
    for secrets in welcome.secrets() {
        if !addressed.insert(secrets.new_member().as_slice().to_vec()) {
            return Err(DsError::InvalidArgument(
                "welcome lists a new member twice".into(),
            ));
        }
    }
    let added: BTreeSet<Vec<u8>> = added.iter().map(|a| a.key_package_ref.clone()).collect();
    if addressed != added {
        return Err(DsError::InvalidArgument(format!(
            "welcome is addressed to {} key package(s) that are not exactly the {} the commit adds",
            addressed.len(),
            added.len()
        )));
    }
    Ok(())
}
