//! Every answer the gateway writes itself, in one shape: a status, the headers its kind needs,
//! and a body in Vivreal's envelope (`{"success": false, "data": null, "error": "…"}` for a
//! refusal, `{"success": true, "data": …, "error": null}` for the gateway's own data). The
//! transports only add what they know (request id, RateLimit, CORS, `Connection`) and write it:
//! to a pingora session, as raw HTTP/1 bytes in the front, or as the admin API's response.

use http::header::{self, HeaderName, HeaderValue};

use crate::error::{envelope, GatewayError, RetryAfter};

/// One answer, before the transport's own headers.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    /// Besides `Content-Type` and `Content-Length`.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Reply {
    /// The envelope for `e`, with the `Allow` and `Retry-After` it needs. `until_reset`: the
    /// seconds until the quota resets, for a 402.
    pub fn error(e: &GatewayError, until_reset: impl FnOnce() -> u64) -> Reply {
        let mut headers = Vec::new();
        if let Some(allow) = e.allow().and_then(|a| HeaderValue::from_str(a).ok()) {
            headers.push((header::ALLOW, allow));
        }
        match e.retry_after() {
            Some(RetryAfter::Seconds(s)) => headers.push((header::RETRY_AFTER, s.into())),
            Some(RetryAfter::QuotaReset) => {
                headers.push((header::RETRY_AFTER, until_reset().into()))
            }
            None => {}
        }
        Reply {
            status: e.status(),
            headers,
            content_type: "application/json",
            body: envelope(&e.message()),
        }
    }

    /// The success envelope around `data`.
    pub fn success(data: &serde_json::Value) -> Reply {
        let data = serde_json::to_string(data).unwrap_or_else(|_| "null".into());
        let mut body = Vec::with_capacity(40 + data.len());
        body.extend_from_slice(br#"{"success": true, "data": "#);
        body.extend_from_slice(data.as_bytes());
        body.extend_from_slice(br#", "error": null}"#);
        Reply {
            status: 200,
            headers: Vec::new(),
            content_type: "application/json",
            body,
        }
    }

    /// Anything else the gateway serves itself (the admin API's metrics text).
    pub fn other(status: u16, content_type: &'static str, body: Vec<u8>) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            content_type,
            body,
        }
    }

    /// Adds a header.
    pub fn with(mut self, name: HeaderName, value: HeaderValue) -> Reply {
        self.headers.push((name, value));
        self
    }

    /// As an `http` response (the admin API).
    pub fn into_response(self) -> http::Response<Vec<u8>> {
        let mut b = http::Response::builder()
            .status(self.status)
            .header(header::CONTENT_TYPE, self.content_type)
            .header(header::CONTENT_LENGTH, self.body.len());
        for (n, v) in self.headers {
            b = b.header(n, v);
        }
        b.body(self.body).unwrap_or_default()
    }

    /// The head as pingora writes it (the proxy), with room for the transport's headers.
    pub fn response_header(&self) -> pingora::Result<pingora::http::ResponseHeader> {
        let mut resp = pingora::http::ResponseHeader::build(self.status, Some(8))?;
        resp.insert_header(header::CONTENT_TYPE, self.content_type)?;
        resp.insert_header(header::CONTENT_LENGTH, self.body.len())?;
        for (n, v) in &self.headers {
            resp.append_header(n.clone(), v.clone())?;
        }
        Ok(resp)
    }

    /// Raw HTTP/1.1 bytes, head and body (the front), with `extra` header lines (each ending
    /// in CRLF) after the reply's own.
    pub fn http1(&self, extra: &[u8]) -> Vec<u8> {
        use std::io::Write as _;
        let status = http::StatusCode::from_u16(self.status).unwrap_or(http::StatusCode::OK);
        let mut out = Vec::with_capacity(256 + self.body.len());
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\n",
            status.as_str(),
            status.canonical_reason().unwrap_or("")
        );
        if !self.body.is_empty() || self.status != 204 {
            let _ = write!(
                out,
                "content-type: {}\r\ncontent-length: {}\r\n",
                self.content_type,
                self.body.len()
            );
        }
        for (n, v) in &self.headers {
            out.extend_from_slice(n.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(extra);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_envelopes_have_one_style() {
        let e = Reply::error(&GatewayError::MissingKey, || 0);
        assert_eq!(
            e.body,
            br#"{"success": false, "data": null, "error": "Missing Authorization header"}"#
        );
        let ok = Reply::success(&serde_json::json!({"status": "serving"}));
        assert_eq!(
            ok.body,
            br#"{"success": true, "data": {"status":"serving"}, "error": null}"#
        );
        let v: serde_json::Value = serde_json::from_slice(&ok.body).unwrap();
        assert_eq!(v["data"]["status"], "serving");
    }

    #[test]
    fn each_refusal_carries_its_headers() {
        let r = Reply::error(&GatewayError::MethodNotAllowed("GET, HEAD".into()), || 0);
        assert_eq!(
            (r.status, &r.headers[0].1),
            (405, &HeaderValue::from_static("GET, HEAD"))
        );
        let q = GatewayError::QuotaExceeded(crate::usage::Meter::Calls, "x".into());
        let r = Reply::error(&q, || 42);
        assert_eq!(
            r.headers,
            vec![(header::RETRY_AFTER, HeaderValue::from(42u64))]
        );
        let r = Reply::error(&GatewayError::TooManyConnections, || 0);
        assert_eq!(
            r.headers,
            vec![(header::RETRY_AFTER, HeaderValue::from(1u64))]
        );
        let raw = r.http1(b"connection: close\r\n");
        let text = String::from_utf8(raw).unwrap();
        assert!(text
            .starts_with("HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"));
        assert!(text.contains("retry-after: 1\r\nconnection: close\r\n\r\n{\"success\": false"));
    }
}
