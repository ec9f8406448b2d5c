//! The server's errors. Each maps to one HTTP status; bad input is always a 4xx with a message
//! that says what is wrong and what to do.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    OfflineKey(String),
    /// Too many attempts (failed logins); answered with `Retry-After`.
    #[error("{message} (retry in {retry_after_secs} s)")]
    TooManyRequests {
        message: String,
        retry_after_secs: u64,
    },
    /// The request took longer than `limits.request_timeout_secs`.
    #[error("{0}")]
    Timeout(String),
    /// More requests at once than `limits.max_concurrent_requests`.
    #[error("{0}")]
    Busy(String),
    #[error("TUF: {0}")]
    Tuf(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("object store: {0}")]
    Blobs(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("config {path}: {reason}")]
    Config { path: String, reason: String },
}

impl ServerError {
    pub fn status(&self) -> StatusCode {
        match self {
            ServerError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ServerError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ServerError::Forbidden(_) => StatusCode::FORBIDDEN,
            ServerError::NotFound(_) => StatusCode::NOT_FOUND,
            ServerError::Conflict(_) => StatusCode::CONFLICT,
            ServerError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ServerError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ServerError::OfflineKey(_) | ServerError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            ServerError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ServerError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            ServerError::Tuf(_)
            | ServerError::Database(_)
            | ServerError::Blobs(_)
            | ServerError::Io { .. }
            | ServerError::Config { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ServerError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            eprintln!("patchbay-server: error: {self}");
        }
        let retry_after = match &self {
            ServerError::TooManyRequests {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            ServerError::Busy(_) => Some(1),
            _ => None,
        };
        let mut response = (
            status,
            axum::Json(patchbay_core::protocol::ErrorBody {
                error: self.to_string(),
            }),
        )
            .into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}
