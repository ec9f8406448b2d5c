//! The server's errors. Each maps to one HTTP status; bad input is always a 4xx with a message
//! that says what is wrong and what to do.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Everything that can go wrong in the server; the message is what the client or operator
/// reads, [`ServerError::status`] the HTTP status it is answered with.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The request is malformed or a value in it is invalid (400).
    #[error("{0}")]
    BadRequest(String),
    /// No credentials, or credentials that are not valid (401).
    #[error("{0}")]
    Unauthorized(String),
    /// Valid credentials whose role is too low, or a failed CSRF check (403).
    #[error("{0}")]
    Forbidden(String),
    /// The host, channel, kernel, level or file asked for does not exist (404).
    #[error("{0}")]
    NotFound(String),
    /// The thing being created exists already, or the change clashes with the state (409).
    #[error("{0}")]
    Conflict(String),
    /// Well-formed, but refused on its content, e.g. a bundle that fails checks (422).
    #[error("{0}")]
    Unprocessable(String),
    /// The request body is above its limit (413).
    #[error("{0}")]
    TooLarge(String),
    /// The change needs a key that is kept offline; an administrator must sign (503).
    #[error("{0}")]
    OfflineKey(String),
    /// Too many attempts (failed logins); answered with `Retry-After`.
    #[error("{message} (retry in {retry_after_secs} s)")]
    TooManyRequests {
        /// What was refused and why.
        message: String,
        /// Seconds until the lockout ends.
        retry_after_secs: u64,
    },
    /// The request took longer than `limits.request_timeout_secs`.
    #[error("{0}")]
    Timeout(String),
    /// More requests at once than `limits.max_concurrent_requests`.
    #[error("{0}")]
    Busy(String),
    /// Signing or reading TUF metadata or keys failed, or randomness was unavailable (500).
    #[error("TUF: {0}")]
    Tuf(String),
    /// The database failed, or holds a row that does not parse (500).
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The blob store failed (500).
    #[error("object store: {0}")]
    Blobs(String),
    /// A file in the data directory could not be read or written (500).
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// `config.toml` is missing, does not parse or has a value out of range (500).
    #[error("config {path}: {reason}")]
    Config {
        /// The config file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl ServerError {
    /// The HTTP status the error is answered with: 4xx for the caller's mistakes, 503 for
    /// `OfflineKey`/`Busy`, 500 for the server's own failures.
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
