//! The client's error type. One enum for the SDK: every failure a command can
//! hit maps to a stable, machine-readable [`ClientError::code`] (the server's
//! closed `ErrorCode` list for server errors, a few client-side codes for the
//! rest) and a one-line human message.

use hush_proto::v1::{self, StaleEpoch};
use hush_proto::ErrorCode;

/// Errors of the Hush client SDK.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an `Error` (HTTP body or WebSocket frame).
    #[error("server error {}: {message}", code.as_str_name())]
    Server {
        /// The server's error code.
        code: ErrorCode,
        /// Human-readable detail from the server.
        message: String,
        /// Set when `code == STALE_EPOCH`.
        stale_epoch: Option<StaleEpoch>,
        /// The server's hint with RATE_LIMITED: wait this long (ms).
        retry_after_ms: Option<u64>,
    },
    /// The HTTP request could not be made or its answer could not be read.
    #[error("http: {0}")]
    Http(String),
    /// The WebSocket could not be opened or broke.
    #[error("websocket: {0}")]
    WebSocket(String),
    /// The connection closed before an answer arrived.
    #[error("disconnected: {0}")]
    Disconnected(String),
    /// The server sent something this client does not understand.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The local state database failed.
    #[error("state database: {0}")]
    Db(#[from] rusqlite::Error),
    /// The MLS library rejected an operation or a message.
    #[error("mls: {0}")]
    Mls(String),
    /// The home directory has no identity yet (run `hush register` or
    /// `hush device link`).
    #[error("not registered: run `hush register HANDLE` or `hush device link CODE` first")]
    NotRegistered,
    /// The home directory already holds an identity.
    #[error("already registered as {0}")]
    AlreadyRegistered(String),
    /// No local group matches the given name, id or prefix.
    #[error("no group matches {0:?}")]
    GroupNotFound(String),
    /// Several local groups match the given name or prefix.
    #[error("{query:?} is ambiguous: matches {}", candidates.join(", "))]
    AmbiguousGroup {
        /// What the user typed.
        query: String,
        /// Hex ids of the matching groups.
        candidates: Vec<String>,
    },
    /// A bad argument given to the SDK (handle syntax, empty text, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A local I/O failure (home directory, terminal).
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// Retries were exhausted (for example commits that kept losing the
    /// epoch race).
    #[error("gave up: {0}")]
    GaveUp(String),
    /// Something signed as one device does not authenticate against the
    /// device keys pinned from the directory, or the server attributes it to
    /// another device: refused.
    #[error("refused as forged: {0}")]
    Forged(String),
    /// A device of this user is not pinned yet: ask the directory, then try
    /// again. The client handles it; it reaches callers only if the
    /// connection broke meanwhile.
    #[error("the directory has not been asked about {0} yet")]
    NeedDirectory(String),
}

/// Result alias of the SDK.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

impl ClientError {
    /// A stable machine-readable code: the server's `ErrorCode` name for
    /// server errors (`STALE_EPOCH`, `NOT_FOUND`, ...), otherwise one of
    /// `HTTP`, `WEBSOCKET`, `DISCONNECTED`, `PROTOCOL`, `DB`, `MLS`,
    /// `NOT_REGISTERED`, `ALREADY_REGISTERED`, `GROUP_NOT_FOUND`,
    /// `AMBIGUOUS_GROUP`, `INVALID_ARGUMENT`, `IO`, `GAVE_UP`, `FORGED`,
    /// `NEED_DIRECTORY`.
    pub fn code(&self) -> &'static str {
        match self {
            ClientError::Server { code, .. } => code.as_str_name(),
            ClientError::Http(_) => "HTTP",
            ClientError::WebSocket(_) => "WEBSOCKET",
            ClientError::Disconnected(_) => "DISCONNECTED",
            ClientError::Protocol(_) => "PROTOCOL",
            ClientError::Db(_) => "DB",
            ClientError::Mls(_) => "MLS",
            ClientError::NotRegistered => "NOT_REGISTERED",
            ClientError::AlreadyRegistered(_) => "ALREADY_REGISTERED",
            ClientError::GroupNotFound(_) => "GROUP_NOT_FOUND",
            ClientError::AmbiguousGroup { .. } => "AMBIGUOUS_GROUP",
            ClientError::InvalidArgument(_) => "INVALID_ARGUMENT",
            ClientError::Io(_) => "IO",
            ClientError::GaveUp(_) => "GAVE_UP",
            ClientError::Forged(_) => "FORGED",
            ClientError::NeedDirectory(_) => "NEED_DIRECTORY",
        }
    }

    /// The server error code, if this is a server error.
    pub fn server_code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// True for errors after which reconnecting may help.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::WebSocket(_) | ClientError::Disconnected(_) | ClientError::Http(_) => true,
            ClientError::Server { code, .. } => {
                matches!(
                    code,
                    ErrorCode::Unavailable | ErrorCode::Internal | ErrorCode::RateLimited
                )
            }
            _ => false,
        }
    }

    /// Wraps an MLS library error with what the client was doing.
    pub(crate) fn mls(context: &str, err: impl std::fmt::Display) -> Self {
        ClientError::Mls(format!("{context}: {err}"))
    }

    /// Wraps a TLS (de)serialization error with what the client was doing.
    pub(crate) fn codec(context: &str, err: impl std::fmt::Display) -> Self {
        ClientError::Protocol(format!("{context}: {err}"))
    }
}

impl From<v1::Error> for ClientError {
    fn from(e: v1::Error) -> Self {
        ClientError::Server {
            code: e.error_code(),
            message: e.message,
            stale_epoch: e.stale_epoch,
            retry_after_ms: (e.retry_after_ms > 0).then_some(e.retry_after_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_keep_their_wire_code() {
        let mut wire = v1::Error::new(ErrorCode::StaleEpoch, "epoch moved");
        wire.stale_epoch = Some(StaleEpoch {
            current_epoch: 4,
            head_seq: 9,
        });
        let e = ClientError::from(wire);
        assert_eq!(e.code(), "STALE_EPOCH");
        assert_eq!(e.server_code(), Some(ErrorCode::StaleEpoch));
        match &e {
            ClientError::Server { stale_epoch, .. } => {
                assert_eq!(stale_epoch.as_ref().map(|s| s.head_seq), Some(9))
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(e.to_string(), "server error STALE_EPOCH: epoch moved");
    }

    #[test]
    fn unknown_server_code_maps_to_unspecified() {
        let wire = v1::Error {
            code: 999,
            message: "x".into(),
            ..Default::default()
        };
        assert_eq!(ClientError::from(wire).code(), "ERROR_CODE_UNSPECIFIED");
    }

    #[test]
    fn client_side_codes_are_stable() {
        assert_eq!(ClientError::NotRegistered.code(), "NOT_REGISTERED");
        assert_eq!(
            ClientError::GroupNotFound("x".into()).code(),
            "GROUP_NOT_FOUND"
        );
        let amb = ClientError::AmbiguousGroup {
            query: "ab".into(),
            candidates: vec!["ab01".into(), "ab02".into()],
        };
        assert_eq!(amb.code(), "AMBIGUOUS_GROUP");
        assert!(amb.to_string().contains("ab01, ab02"));
        assert!(ClientError::Disconnected("eof".into()).is_transient());
        assert!(!ClientError::NotRegistered.is_transient());
    }
}
