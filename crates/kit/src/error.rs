//! [`ApiError`]: the one place where errors become HTTP statuses and the `{"error": …}` body.
//!
//! Caller mistakes (4xx) are logged at debug level only; server faults (5xx) log their detail and
//! tell the client only what it can act on.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mlmesh_protocol::ErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{message}")]
    TooManyRequests { message: String, retry_after_s: u64 },
    /// Not able to serve right now (not ready, shutting down, dependency down).
    #[error("{0}")]
    Unavailable(String),
    /// An upstream service failed to answer properly.
    #[error("{0}")]
    BadGateway(String),
    /// An upstream service did not answer in time.
    #[error("{0}")]
    GatewayTimeout(String),
    /// A bug or an environment fault; the detail is logged, not sent.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn bad_request(msg: impl Into<String>) -> Self {
        Self::BadRequest(msg.into())
    }
    pub fn not_found(msg: impl Into<String>) -> Self {
        Self::NotFound(msg.into())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::BadGateway(_) => StatusCode::BAD_GATEWAY,
            Self::GatewayTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Maps a status chosen elsewhere (e.g. by an axum rejection) to the matching variant.
    pub fn from_status(status: StatusCode, message: impl Into<String>) -> Self {
        let message = message.into();
        match status {
            StatusCode::UNAUTHORIZED => Self::Unauthorized(message),
            StatusCode::FORBIDDEN => Self::Forbidden(message),
            StatusCode::NOT_FOUND => Self::NotFound(message),
            StatusCode::METHOD_NOT_ALLOWED => Self::MethodNotAllowed(message),
            StatusCode::CONFLICT => Self::Conflict(message),
            StatusCode::PAYLOAD_TOO_LARGE => Self::PayloadTooLarge(message),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Self::UnsupportedMediaType(message),
            StatusCode::SERVICE_UNAVAILABLE => Self::Unavailable(message),
            StatusCode::BAD_GATEWAY => Self::BadGateway(message),
            StatusCode::GATEWAY_TIMEOUT => Self::GatewayTimeout(message),
            s if s.is_server_error() => Self::Internal(message),
            _ => Self::BadRequest(message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match &self {
            Self::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                "internal error; the server log has the detail".to_string()
            }
            other => {
                tracing::debug!(status = status.as_u16(), error = %other, "request rejected");
                other.to_string()
            }
        };
        let mut response = (status, axum::Json(ErrorBody { error: message })).into_response();
        if let Self::TooManyRequests { retry_after_s, .. } = self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s.max(1)));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip() {
        for status in [
            400u16, 401, 403, 404, 405, 409, 413, 415, 502, 503, 504, 500,
        ] {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(ApiError::from_status(status, "x").status(), status);
        }
        assert_eq!(
            ApiError::from_status(StatusCode::UNPROCESSABLE_ENTITY, "x").status(),
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn rate_limit_sets_retry_after() {
        let response = ApiError::TooManyRequests {
            message: "slow down".into(),
            retry_after_s: 3,
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
    }
}
