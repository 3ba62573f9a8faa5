//! Strict JSON input: the body must be `application/json`, within the size
//! limit, well formed, with no unknown fields and the right types. Each way
//! it can be wrong has its own code.

use crate::error::ApiError;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

pub struct StrictJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for StrictJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(StrictJson(v)),
            Err(rejection) => Err(reject(rejection)),
        }
    }
}

fn reject(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::JsonSyntaxError(e) => ApiError::bad_request(
            "malformed_json",
            format!("the body is not valid JSON: {}", source_text(&e)),
        ),
        JsonRejection::JsonDataError(e) => ApiError::invalid(format!(
            "the body does not fit the schema: {}",
            source_text(&e)
        )),
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as application/json",
        ),
        JsonRejection::BytesRejection(e) => body_rejection(e),
        other => ApiError::bad_request("invalid_body", other.body_text()),
    }
}

/// A body that could not be read: too large (413 `body_too_large`) or cut
/// off (400 `unreadable_body`).
pub fn body_rejection(e: axum::extract::rejection::BytesRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "the request body is too large",
        )
    } else {
        ApiError::bad_request("unreadable_body", "the request body could not be read")
    }
}

/// The innermost error text (serde's message with its line and column).
fn source_text(e: &dyn std::error::Error) -> String {
    let mut inner: &dyn std::error::Error = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    inner.to_string()
}
