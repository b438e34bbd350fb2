//! Hush delivery-service core, sans-IO.
//!
//! Pure state machines the node drives: MLS group tracking from public
//! commits ([`GroupTracker`]) with Hush's leaf identity rules
//! ([`CommitEffect::check_leaf_identities`]), Welcome addressing
//! ([`check_welcome`]), KeyPackage upload rules ([`validate_key_package`]),
//! session tokens and login challenges ([`TokenKey`]), rate limits
//! ([`TokenBucket`], [`KeyedBuckets`]) and handle syntax
//! ([`validate_handle`]).
//!
//! Architecture invariants:
//! - No sockets, no threads, no clock reads: time comes in as `now_ms`.
//!   (openmls itself reads the system clock to check KeyPackage and leaf
//!   lifetimes.)
//! - Nothing here panics on input bytes; every entry point that parses
//!   returns a typed [`DsError`] / [`TokenError`].
//! - Secrets (the token key) have redacted `Debug`.

mod codec;
pub mod error;
pub mod group;
pub mod keypackage;
pub mod limits;
mod snapshot;
pub mod token;
pub mod welcome;

pub use error::DsError;
pub use group::{
    AddedMember, CommitEffect, GroupTracker, LeafChange, Member, ProposalEffect, RemovedLeaf,
};
pub use keypackage::{validate_key_package, ValidKeyPackage};
pub use limits::{KeyedBuckets, TokenBucket};
pub use token::{
    verify_ed25519, ChallengeId, ChallengeLedger, KeyFileError, SpendError, TokenClaims,
    TokenError, TokenKey, TokenKeys, TokenSecret,
};
pub use welcome::check_welcome;

/// The longest group id the service accepts (MLS allows more; nothing
/// legitimate needs it, and every table and message keys on it).
pub const MAX_GROUP_ID_BYTES: usize = 256;

/// A group id is 1 to [`MAX_GROUP_ID_BYTES`] bytes.
pub fn validate_group_id(group_id: &[u8]) -> Result<(), DsError> {
    if group_id.is_empty() || group_id.len() > MAX_GROUP_ID_BYTES {
        return Err(DsError::InvalidArgument(format!(
            "group id must be 1..={MAX_GROUP_ID_BYTES} bytes"
        )));
    }
    Ok(())
}

/// Shortest and longest handle.
pub const HANDLE_MIN: usize = 3;
pub const HANDLE_MAX: usize = 32;

/// A user handle is 3 to 32 characters of `[a-z0-9_]`.
pub fn validate_handle(handle: &str) -> Result<(), DsError> {
    let len_ok = (HANDLE_MIN..=HANDLE_MAX).contains(&handle.len());
    let chars_ok = handle
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if len_ok && chars_ok {
        Ok(())
    } else {
        Err(DsError::InvalidArgument(format!(
            "handle must be {HANDLE_MIN} to {HANDLE_MAX} characters of [a-z0-9_]"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles() {
        for ok in [
            "abc",
            "a_1",
            "user_name_2024",
            &"x".repeat(32),
            "___",
            "123",
        ] {
            assert!(validate_handle(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "ab",
            &"x".repeat(33),
            "Alice",
            "al ice",
            "al-ice",
            "al.ice",
            "élan",
            "abc\0",
            "abc\n",
            "ａｂｃ",
        ] {
            assert!(
                matches!(validate_handle(bad), Err(DsError::InvalidArgument(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn group_ids() {
        assert!(validate_group_id(b"g").is_ok());
        assert!(validate_group_id(&[7; MAX_GROUP_ID_BYTES]).is_ok());
        for bad in [&[][..], &[7; MAX_GROUP_ID_BYTES + 1][..]] {
            assert!(matches!(
                validate_group_id(bad),
                Err(DsError::InvalidArgument(_))
            ));
        }
    }
}
