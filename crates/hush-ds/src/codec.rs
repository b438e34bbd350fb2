//! Decoding untrusted MLS bytes, and the one ciphersuite Hush accepts.
//!
//! This is the leaf both the group tracker (`group.rs`) and the KeyPackage
//! rules (`keypackage.rs`) decode through, so neither imports the other. It
//! owns one invariant: no input bytes can panic the caller. Every tls_codec
//! decoder runs inside [`tls_decode`], which turns a panic inside the
//! decoder into [`DsError::Malformed`], and a decoder must consume its whole
//! input.

use openmls::messages::group_info::VerifiableGroupInfo;
use openmls::prelude::tls_codec::{self, DeserializeBytes as _};
use openmls::prelude::{Ciphersuite, MlsMessageBodyIn, MlsMessageIn};

use crate::error::DsError;

/// The only ciphersuite Hush accepts, for key packages and groups.
pub const HUSH_CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

/// Decodes MLSMessage bytes; the whole input must be consumed.
pub(crate) fn decode_message(bytes: &[u8]) -> Result<MlsMessageBodyIn, DsError> {
    tls_decode("MLSMessage", || {
        MlsMessageIn::tls_deserialize_exact_bytes(bytes)
    })
    .map(MlsMessageIn::extract)
}

/// Decodes an MLSMessage that must hold a GroupInfo.
pub(crate) fn decode_group_info(bytes: &[u8]) -> Result<VerifiableGroupInfo, DsError> {
    match decode_message(bytes)? {
        MlsMessageBodyIn::GroupInfo(gi) => Ok(gi),
        other => Err(DsError::WrongWireFormat(format!(
            "expected a GroupInfo, got {}",
            body_kind(&other)
        ))),
    }
}

/// Runs a tls_codec decoder on untrusted bytes.
///
/// tls_codec 0.5 has a `debug_assert_eq!` in `VLBytes` decoding that fires
/// on truncated input (release builds return `Err`). So that a debug or
/// test build of the node cannot be crashed by a short frame either, a
/// panic inside the decoder is turned into `Malformed`. (The default panic
/// hook still prints it; setting `debug-assertions = false` for tls_codec in
/// the workspace dev profile silences that.)
pub(crate) fn tls_decode<T>(
    what: &str,
    decode: impl FnOnce() -> Result<T, tls_codec::Error> + std::panic::UnwindSafe,
) -> Result<T, DsError> {
    match std::panic::catch_unwind(decode) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(DsError::malformed(what, e)),
        Err(_) => Err(DsError::Malformed(format!("{what}: truncated input"))),
    }
}

/// The name of an MLSMessage body's kind, for error messages.
pub(crate) fn body_kind(body: &MlsMessageBodyIn) -> &'static str {
    match body {
        MlsMessageBodyIn::PublicMessage(_) => "PublicMessage",
        MlsMessageBodyIn::PrivateMessage(_) => "PrivateMessage",
        MlsMessageBodyIn::Welcome(_) => "Welcome",
        MlsMessageBodyIn::GroupInfo(_) => "GroupInfo",
        MlsMessageBodyIn::KeyPackage(_) => "KeyPackage",
        #[allow(unreachable_patterns)]
        _ => "another MLSMessage type",
    }
}
