//! `[cors]`: allowed origins (exact, no wildcards), methods and headers, with the answer
//! headers ready.

use std::collections::HashSet;
use std::path::Path;

use http::{HeaderValue, Method};

use super::super::file;
use super::super::{err, ConfigError, Cors};

pub(super) fn cors(cfg: &Path, c: &file::CorsSection) -> Result<Cors, ConfigError> {
    let mut origins = HashSet::new();
    for (i, o) in c.allowed_origins.iter().enumerate() {
        // no pattern: `*` anywhere would be a literal that no browser sends
        let ok = (o.starts_with("https://") || o.starts_with("http://"))
            && !o.ends_with('/')
            && !o.contains('*')
            && o.bytes().all(|b| b.is_ascii_graphic())
            && o.split("://")
                .nth(1)
                .is_some_and(|h| !h.is_empty() && !h.contains('/'));
        if !ok {
            return Err(err(
                cfg,
                format!("cors.allowed_origins[{i}]"),
                format!("{o:?}: an origin is scheme://host[:port], exactly as browsers send it (no wildcards)"),
            ));
        }
        origins.insert(o.clone());
    }
    let methods: Vec<Method> = match &c.allowed_methods {
        None => ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
            .iter()
            .map(|m| Method::from_bytes(m.as_bytes()).expect("valid method"))
            .collect(),
        Some(list) => {
            let mut out = Vec::new();
            for (i, m) in list.iter().enumerate() {
                let parsed = Method::from_bytes(m.as_bytes())
                    .ok()
                    .filter(|_| m.bytes().all(|b| b.is_ascii_uppercase()))
                    .ok_or_else(|| {
                        err(
                            cfg,
                            format!("cors.allowed_methods[{i}]"),
                            format!("{m:?} is not an upper-case HTTP method"),
                        )
                    })?;
                out.push(parsed);
            }
            out
        }
    };
    let headers: Vec<String> = match &c.allowed_headers {
        None => vec![
            "authorization".into(),
            "content-type".into(),
            "x-request-id".into(),
        ],
        Some(list) => {
            for (i, h) in list.iter().enumerate() {
                if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                    return Err(err(
                        cfg,
                        format!("cors.allowed_headers[{i}]"),
                        format!("{h:?} is not a header name"),
                    ));
                }
            }
            list.iter().map(|h| h.to_ascii_lowercase()).collect()
        }
    };
    let value = |s: String| HeaderValue::from_str(&s).unwrap_or(HeaderValue::from_static(""));
    Ok(Cors {
        allow_methods: value(
            methods
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(", "),
        ),
        allow_headers: value(headers.join(", ")),
        max_age: value(c.max_age_seconds.to_string()),
        origins,
        methods,
        headers,
    })
}
