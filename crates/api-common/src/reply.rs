//! Replies, and the one place errors become HTTP.

use std::convert::Infallible;

use http::{HeaderValue, StatusCode};
use serde_json::json;
use syncgate_core::Error;

/// Every route answers with this.
pub type Reply = warp::reply::Response;

/// A JSON reply of anything serializable (a `Value`, or a typed body that skips building one).
pub fn json_reply<T: serde::Serialize + ?Sized>(status: u16, body: &T) -> Reply {
    match serde_json::to_vec(body) {
        Ok(bytes) => bytes_reply(status, "application/json", bytes),
        Err(e) => error_reply(&Error::Internal(format!("encoding a reply: {e}"))),
    }
}

/// A reply with the given content type.
pub fn bytes_reply(status: u16, content_type: &str, bytes: Vec<u8>) -> Reply {
    let mut r = Reply::new(bytes.into());
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    if let Ok(v) = HeaderValue::from_str(content_type) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r
}

/// The JSON error body `{"error","reason"}` with the error's status. Internal errors are
/// logged with detail and answered generically.
pub fn error_reply(e: &Error) -> Reply {
    let (status, name) = e.status();
    let reason = e.public_reason();
    let mut r = json_reply(status, &json!({"error": name, "reason": reason}));
    if let Error::TooManyRequests { retry_after, .. } = e {
        r.headers_mut()
            .insert(http::header::RETRY_AFTER, HeaderValue::from(*retry_after));
    }
    r
}

/// Adds a header (ignoring values that are not valid header text).
pub fn with_header(mut r: Reply, name: &'static str, value: &str) -> Reply {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().append(name, v);
    }
    r
}

/// Turns any warp rejection into the JSON error body. Routes never reject (they answer errors
/// themselves), so this only sees what warp itself refuses.
pub async fn recover(rej: warp::Rejection) -> Result<Reply, Infallible> {
    let e = if rej.is_not_found() {
        Error::not_found("unknown URL")
    } else if rej.find::<warp::reject::MethodNotAllowed>().is_some() {
        Error::MethodNotAllowed("Method not allowed on this URL".into())
    } else if rej.find::<warp::reject::PayloadTooLarge>().is_some() {
        Error::TooLarge("The request body is too large".into())
    } else if rej.find::<warp::reject::UnsupportedMediaType>().is_some() {
        Error::BadContentType("Unsupported Content-Type".into())
    } else if rej.find::<warp::reject::InvalidQuery>().is_some()
        || rej.find::<warp::reject::InvalidHeader>().is_some()
    {
        Error::bad("Invalid query string or header")
    } else {
        Error::bad(format!("The request could not be handled: {rej:?}"))
    };
    Ok(error_reply(&e))
}
