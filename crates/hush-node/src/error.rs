//! The node's one error type towards clients: a wire [`ErrorCode`] plus a
//! message that never contains client payloads.

use hush_ds::{DsError, TokenError};
use hush_proto::v1;
use hush_proto::ErrorCode;
use hush_store::StoreError;

/// An error a client sees.
#[derive(Clone, Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub stale_epoch: Option<v1::StaleEpoch>,
    /// For RATE_LIMITED: when a retry can succeed (0: unknown).
    pub retry_after_ms: u64,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            stale_epoch: None,
            retry_after_ms: 0,
        }
    }

    /// RATE_LIMITED with a retry-after hint (also in the message).
    pub fn rate_limited(what: &str, retry_after_ms: u64) -> Self {
        Self {
            retry_after_ms,
            ..Self::new(
                ErrorCode::RateLimited,
                format!("{what}; retry after {retry_after_ms} ms"),
            )
        }
    }

    pub fn stale(current_epoch: u64, head_seq: u64) -> Self {
        Self {
            code: ErrorCode::StaleEpoch,
            message: format!("group is at epoch {current_epoch}; sync to seq {head_seq} and retry"),
            stale_epoch: Some(v1::StaleEpoch {
                current_epoch,
                head_seq,
            }),
            retry_after_ms: 0,
        }
    }

    pub fn internal(context: &str, err: impl std::fmt::Display) -> Self {
        tracing::error!(context, error = %err, "internal error");
        Self::new(ErrorCode::Internal, format!("{context} failed"))
    }

    /// An error another node answered with, passed on unchanged.
    pub fn from_proto(e: v1::Error) -> Self {
        Self {
            code: ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Internal),
            message: e.message,
            stale_epoch: e.stale_epoch,
            retry_after_ms: e.retry_after_ms,
        }
    }

    pub fn to_proto(&self) -> v1::Error {
        v1::Error {
            code: self.code as i32,
            message: self.message.clone(),
            stale_epoch: self.stale_epoch,
            retry_after_ms: self.retry_after_ms,
        }
    }

    /// The label used in metrics and logs.
    pub fn code_name(&self) -> &'static str {
        self.code.as_str_name()
    }

    /// HTTP status for the HTTP endpoints.
    pub fn http_status(&self) -> u16 {
        use ErrorCode as C;
        match self.code {
            C::Malformed | C::InvalidArgument | C::InvalidMls | C::WrongWireFormat => 400,
            C::BadToken | C::TokenExpired | C::Unauthenticated => 401,
            C::BadOrigin | C::Forbidden | C::NotMember => 403,
            C::UnknownGroup | C::NotFound | C::NoKeyPackage => 404,
            C::AlreadyExists | C::StaleEpoch => 409,
            C::TooLarge => 413,
            C::RateLimited | C::TooManyConnections => 429,
            C::Unavailable => 503,
            C::Internal | C::Unspecified => 500,
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code_name(), self.message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::AlreadyExists => ApiError::new(ErrorCode::AlreadyExists, "already exists"),
            StoreError::NotFound => ApiError::new(ErrorCode::NotFound, "not found"),
            StoreError::EpochConflict {
                current_epoch,
                head_seq,
            } => ApiError::stale(current_epoch, head_seq),
            StoreError::Fenced { .. } => {
                tracing::warn!(error = %e, "store refused write");
                ApiError::new(ErrorCode::Unavailable, "group owner changed; retry")
            }
            StoreError::Unavailable(_) => {
                tracing::warn!(error = %e, "store unavailable");
                ApiError::new(ErrorCode::Unavailable, "the store is unavailable; retry")
            }
            StoreError::Backend(_) => ApiError::internal("store", e),
        }
    }
}

impl From<DsError> for ApiError {
    fn from(e: DsError) -> Self {
        match e {
            DsError::Malformed(m) => ApiError::new(ErrorCode::Malformed, m),
            DsError::WrongWireFormat(m) => ApiError::new(ErrorCode::WrongWireFormat, m),
            DsError::WrongGroup => {
                ApiError::new(ErrorCode::InvalidArgument, "message is for another group")
            }
            DsError::StaleEpoch { current } => ApiError {
                code: ErrorCode::StaleEpoch,
                message: format!("group is at epoch {current}"),
                stale_epoch: Some(v1::StaleEpoch {
                    current_epoch: current,
                    head_seq: 0,
                }),
                retry_after_ms: 0,
            },
            DsError::InvalidMls(m) => ApiError::new(ErrorCode::InvalidMls, m),
            DsError::Forbidden(m) => ApiError::new(ErrorCode::Forbidden, m),
            DsError::InvalidArgument(m) => ApiError::new(ErrorCode::InvalidArgument, m),
            DsError::Internal(m) => ApiError::internal("mls", m),
        }
    }
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::Expired => ApiError::new(ErrorCode::TokenExpired, "token expired"),
            TokenError::Malformed | TokenError::BadSignature | TokenError::ExpiryTooFar => {
                ApiError::new(ErrorCode::BadToken, "bad token")
            }
        }
    }
}
