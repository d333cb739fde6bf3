//! What every endpoint shares: JSON errors, bounded bodies, query strings.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{HeaderMap, Response, StatusCode};
use serde::Serialize;

/// A response body.
pub type Body = Full<Bytes>;

/// An error answered as `{"error": {"code", "message"}}`.
#[derive(Debug)]
pub struct ApiError {
    /// The status.
    pub status: StatusCode,
    /// A stable code (`bad_request`, `unauthorized`, ...).
    pub code: &'static str,
    /// What went wrong, for a person.
    pub message: String,
    /// Seconds a client should wait before trying again (503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with a status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), retry_after: None }
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 503 with `Retry-After`.
    pub fn unavailable(code: &'static str, message: impl Into<String>, retry_after: u64) -> ApiError {
        ApiError { retry_after: Some(retry_after), ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message) }
    }

    /// 500 (the message is logged, and said).
    pub fn internal(message: impl Into<String>) -> ApiError {
        let message = message.into();
        tracing::error!(error = %message, "request failed");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// The JSON response.
    pub fn response(&self) -> Response<Body> {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        let mut response = json_response(self.status, &body);
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert("retry-after", seconds.into());
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert("www-authenticate", hyper::header::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// A JSON response.
pub fn json_response(status: StatusCode, value: &impl Serialize) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(bytes) => bytes_response(status, "application/json", bytes),
        Err(e) => bytes_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "application/json",
            format!("{{\"error\":{{\"code\":\"internal\",\"message\":\"cannot encode the response: {e}\"}}}}")
                .into_bytes(),
        ),
    }
}

/// A response with a content type.
pub fn bytes_response(status: StatusCode, content_type: &str, bytes: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(bytes.into()));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response.headers_mut().insert("content-type", value);
    }
    response.headers_mut().insert("x-content-type-options", hyper::header::HeaderValue::from_static("nosniff"));
    response
}

/// Reads a request body of at most `max` bytes within `timeout`: 413 past
/// the size (said by `Content-Length` or found while reading), 408 past
/// the time (a client trickling its body holds no slot for long).
pub async fn read_body(body: Incoming, headers: &HeaderMap, max: usize, timeout: Duration) -> Result<Bytes, ApiError> {
    let too_large =
        || ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", format!("the request body is over {max} bytes"));
    if let Some(length) = headers.get("content-length") {
        let length: Option<u64> = length.to_str().ok().and_then(|v| v.trim().parse().ok());
        match length {
            Some(n) if n > max as u64 => return Err(too_large()),
            Some(_) => {}
            None => return Err(ApiError::bad_request("Content-Length is not a number")),
        }
    }
    match tokio::time::timeout(timeout, Limited::new(body, max).collect()).await {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            format!("the request body did not arrive within {} s", timeout.as_secs()),
        )),
        Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(too_large()),
        Ok(Err(e)) => Err(ApiError::bad_request(format!("cannot read the request body: {e}"))),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// The pairs of a query string or form body (`+` and `%XX` decoded;
/// malformed escapes and bad UTF-8 are refused). At most 64 pairs.
pub fn form_pairs(text: &str) -> Result<Vec<(String, String)>, ApiError> {
    let mut pairs = Vec::new();
    for part in text.split('&').filter(|p| !p.is_empty()) {
        if pairs.len() == 64 {
            return Err(ApiError::bad_request("more than 64 query parameters"));
        }
        let (key, value) = part.split_once('=').unwrap_or((part, ""));
        pairs.push((decode(key)?, decode(value)?));
    }
    Ok(pairs)
}

/// One `application/x-www-form-urlencoded` component, decoded.
pub fn decode(text: &str) -> Result<String, ApiError> {
    let bad = || ApiError::bad_request(format!("malformed percent-encoding in `{}`", truncate(text, 80)));
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or_else(bad)?;
                let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
                out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| ApiError::bad_request("a query parameter is not UTF-8"))
}

/// Decodes one path segment (`%XX` only: `+` is a plus in a path).
pub fn decode_segment(segment: &str) -> Result<String, ApiError> {
    decode(&segment.replace('+', "%2B"))
}

/// `text` cut to `max` characters.
pub fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding() {
        let pairs = form_pairs("query=SELECT+%3Fs%20WHERE&x&empty=").unwrap();
        assert_eq!(pairs[0], ("query".into(), "SELECT ?s WHERE".into()));
        assert_eq!(pairs[1], ("x".into(), "".into()));
        assert!(form_pairs("a=%zz").is_err());
        assert!(form_pairs("a=%4").is_err());
        assert!(form_pairs("a=%ff").is_err(), "not UTF-8");
        assert!(form_pairs(&"a=1&".repeat(65)).is_err());
        assert_eq!(decode_segment("PMID%3A1+2").unwrap(), "PMID:1+2");
        assert_eq!(truncate("ééé", 2), "éé…");
    }
}
