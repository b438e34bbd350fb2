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
    /// No server answers at this URL (refused, timed out, no such host).
    #[error("cannot reach {url}: is hush-node running? ({reason})")]
    Unreachable {
        /// The server URL.
        url: String,
        /// What the network said, in a few words ("connection refused").
        reason: String,
    },
    /// A handle that the server does not know.
    #[error("no user named {0}")]
    NoSuchUser(String),
    /// The group exists locally, but this device is no longer in it.
    #[error("you {} {name}", if *.left { "left" } else { "were removed from" })]
    NoLongerMember {
        /// The group's display name.
        name: String,
        /// True when this device left by itself.
        left: bool,
    },
    /// A command that needs an account was run on a home without one.
    #[error("no account in {}: run `hush register HANDLE` or `hush device link CODE` first, or check --home / HUSH_HOME", home.display())]
    NoAccount {
        /// The home directory looked at.
        home: std::path::PathBuf,
    },
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
    #[error("ambiguous: {query:?} matches {}: use the id prefix of the one you mean (e.g. {:?})",
        candidates.iter().map(|(name, id)| format!("{name} (id {}…)", short_id(id))).collect::<Vec<_>>().join(", "),
        candidates.first().map(|(_, id)| short_id(id)).unwrap_or_default())]
    AmbiguousGroup {
        /// What the user typed.
        query: String,
        /// Display name and hex id of each matching group.
        candidates: Vec<(String, String)>,
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
            ClientError::Unreachable { .. } => "UNREACHABLE",
            ClientError::NoSuchUser(_) => "NOT_FOUND",
            ClientError::NoLongerMember { .. } => "NOT_MEMBER",
            ClientError::NoAccount { .. } => "NOT_REGISTERED",
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
            ClientError::WebSocket(_)
            | ClientError::Disconnected(_)
            | ClientError::Http(_)
            | ClientError::Unreachable { .. } => true,
            ClientError::Server { code, .. } => {
                matches!(
                    code,
                    ErrorCode::Unavailable | ErrorCode::Internal | ErrorCode::RateLimited
                )
            }
            _ => false,
        }
    }

    /// This error with the handle it concerns named: the server's
    /// NOT_FOUND about a user becomes [`ClientError::NoSuchUser`].
    pub fn for_user(self, handle: &str) -> Self {
        match self {
            ClientError::Server {
                code: ErrorCode::NotFound,
                ..
            } => ClientError::NoSuchUser(handle.to_string()),
            other => other,
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

/// The first 8 hex digits of a group id: enough to pick it.
pub fn short_id(hex_id: &str) -> String {
    hex_id.chars().take(8).collect()
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
            query: "work".into(),
            candidates: vec![
                ("work".into(), "ab01ab01ab01".into()),
                ("work".into(), "cd02cd02cd02".into()),
            ],
        };
        assert_eq!(amb.code(), "AMBIGUOUS_GROUP");
        assert_eq!(
            amb.to_string(),
            "ambiguous: \"work\" matches work (id ab01ab01…), work (id cd02cd02…): \
             use the id prefix of the one you mean (e.g. \"ab01ab01\")"
        );
        assert_eq!(
            ClientError::NoLongerMember {
                name: "friends".into(),
                left: false
            }
            .to_string(),
            "you were removed from friends"
        );
        assert_eq!(
            ClientError::Unreachable {
                url: "http://127.0.0.1:9".into(),
                reason: "connection refused".into()
            }
            .to_string(),
            "cannot reach http://127.0.0.1:9: is hush-node running? (connection refused)"
        );
        assert!(ClientError::Disconnected("eof".into()).is_transient());
        assert!(!ClientError::NotRegistered.is_transient());
    }
}
