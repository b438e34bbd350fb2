//! KeyPackage upload rules.

use openmls::prelude::tls_codec::DeserializeBytes as _;
use openmls::prelude::tls_codec::Serialize as _;
use openmls::prelude::{
    BasicCredential, CredentialType, KeyPackageIn, MlsMessageBodyIn, ProtocolVersion,
};
use openmls_rust_crypto::RustCrypto;

use crate::codec::{body_kind, decode_message, tls_decode};
use crate::error::DsError;

/// The only ciphersuite Hush accepts (defined with the decoders in `codec.rs`,
/// which `group.rs` shares; named here too because this is where the crate
/// has always exported it).
pub use crate::codec::HUSH_CIPHERSUITE;

/// What the directory needs to know about an accepted KeyPackage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidKeyPackage {
    /// `KeyPackageRef` (RFC 9420 §5.2): how a Welcome and an Add name it.
    pub hash_ref: Vec<u8>,
    /// BasicCredential identity, `<user_id>/<device_id>` in Hush.
    pub identity: Vec<u8>,
    /// The leaf's signature public key.
    pub signature_key: Vec<u8>,
    /// Carries the `last_resort` extension (may be handed out repeatedly).
    pub last_resort: bool,
}

/// Validates an uploaded KeyPackage: an MLSMessage wrapping one, or a bare
/// TLS-encoded KeyPackage. Checks ciphersuite, credential type, signatures,
/// lifetime and the rest of `KeyPackageIn::validate`.
///
/// The lifetime check inside openmls reads the system clock; that is the
/// one clock read behind this crate's API.
pub fn validate_key_package(bytes: &[u8]) -> Result<ValidKeyPackage, DsError> {
    let kp_in = decode(bytes)?;

    // The ciphersuite sits right after the protocol version in the encoding;
    // check it before validating so other suites get a clear error.
    let encoded = kp_in
        .tls_serialize_detached()
        .map_err(|e| DsError::Internal(format!("re-encoding key package: {e}")))?;
    let suite = encoded
        .get(2..4)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or_else(|| DsError::Malformed("key package too short".into()))?;
    if suite != u16::from(HUSH_CIPHERSUITE) {
        return Err(DsError::InvalidArgument(format!(
            "unsupported ciphersuite 0x{suite:04x}; only \
             MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519 (0x0001) is accepted"
        )));
    }

    let crypto = RustCrypto::default();
    let kp = kp_in
        .validate(&crypto, ProtocolVersion::Mls10)
        .map_err(|e| DsError::InvalidMls(format!("key package: {e}")))?;
    let leaf = kp.leaf_node();
    if leaf.credential().credential_type() != CredentialType::Basic {
        return Err(DsError::InvalidArgument(
            "only basic credentials are accepted".into(),
        ));
    }
    let identity = BasicCredential::try_from(leaf.credential().clone())
        .map_err(|e| DsError::InvalidArgument(format!("credential: {e}")))?
        .identity()
        .to_vec();
    let hash_ref = kp
        .hash_ref(&crypto)
        .map_err(|e| DsError::Internal(format!("key package ref: {e}")))?;
    Ok(ValidKeyPackage {
        hash_ref: hash_ref.as_slice().to_vec(),
        identity,
        signature_key: leaf.signature_key().as_slice().to_vec(),
        last_resort: kp.last_resort(),
    })
}

fn decode(bytes: &[u8]) -> Result<KeyPackageIn, DsError> {
    match decode_message(bytes) {
        Ok(body) => match body {
            MlsMessageBodyIn::KeyPackage(kp) => Ok(kp),
            other => Err(DsError::WrongWireFormat(format!(
                "expected a KeyPackage, got {}",
                body_kind(&other)
            ))),
        },
        // Not an MLSMessage: try a bare KeyPackage.
        Err(_) => tls_decode("KeyPackage (bare or in an MLSMessage)", || {
            KeyPackageIn::tls_deserialize_exact_bytes(bytes)
        }),
    }
}
