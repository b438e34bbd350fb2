//! The one error type of the delivery-service core.
//!
//! Each variant is a distinct answer the node can give a client; the node maps
//! them onto its wire error codes. Messages never contain key material or
//! message content, only structural facts (wire formats, epochs, openmls
//! validation error names).

/// Why the delivery service refused an input.
#[derive(Debug, thiserror::Error)]
pub enum DsError {
    /// The bytes do not decode as the expected MLS structure.
    #[error("malformed input: {0}")]
    Malformed(String),
    /// The bytes decode, but as the wrong kind of message: an application
    /// message that is not a PrivateMessage, a PrivateMessage whose header
    /// content type is not application, a commit that is not a PublicMessage,
    /// a proposal handed in as a commit, ...
    #[error("wrong wire format: {0}")]
    WrongWireFormat(String),
    /// The message belongs to another group than the tracker's.
    #[error("message is for another group")]
    WrongGroup,
    /// A commit or proposal for another epoch than the current one, or an
    /// application message outside the accepted epoch window. The client
    /// recovers by fetching what it missed and retrying on `current`.
    #[error("stale epoch: the group is at epoch {current}")]
    StaleEpoch {
        /// The tracker's current epoch.
        current: u64,
    },
    /// openmls rejected the message (bad signature, invalid commit, ...).
    #[error("invalid mls: {0}")]
    InvalidMls(String),
    /// A valid MLS message that does something its sender may not: a leaf
    /// taking another identity, an external commit removing someone else.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// A well-formed input that Hush's rules do not allow (ciphersuite,
    /// credential type, handle syntax, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A bug or an openmls `LibraryError`; never the client's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

impl DsError {
    pub(crate) fn malformed(what: &str, err: impl std::fmt::Display) -> Self {
        DsError::Malformed(format!("{what}: {err}"))
    }
}
