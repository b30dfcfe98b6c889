//! Step 0a: browser clients. With `[cors]`, an allowed `Origin` is noted for every answer's
//! headers, and a preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is
//! answered here, without a key and unmetered: 204 when the origin, the method and the headers
//! asked for are allowed, else a 403.

use http::header;

use super::{Request, State};
use crate::config::Cors;
use crate::error::GatewayError;

/// Notes that answers vary by `Origin`, and an allowed `Origin` (one header, listed).
pub fn note_origin(req: &Request<'_>, cors: &Cors, st: &mut State) {
    st.cors_vary = true;
    let mut origins = req.headers.get_all(header::ORIGIN).iter();
    if let (Some(origin), None) = (origins.next(), origins.next()) {
        if origin.to_str().is_ok_and(|o| cors.origins.contains(o)) {
            st.cors_origin = Some(origin.clone());
        }
    }
}

/// Whether the request is a preflight (`Ok(true)`: an allowed one, to answer with 204); a
/// preflight that is not allowed is a [`GatewayError::CorsRefused`]. Its path has passed step 0.
pub fn preflight(req: &Request<'_>, cors: &Cors, st: &State) -> Result<bool, GatewayError> {
    if *req.method != http::Method::OPTIONS || !req.headers.contains_key(header::ORIGIN) {
        return Ok(false);
    }
    let Some(asked) = req.headers.get(header::ACCESS_CONTROL_REQUEST_METHOD) else {
        return Ok(false);
    };
    let method_ok = cors
        .methods
        .iter()
        .any(|m| m.as_str().as_bytes() == asked.as_bytes());
    let headers_ok = req
        .headers
        .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .iter()
        .all(|v| {
            v.to_str().is_ok_and(|list| {
                list.split(',')
                    .map(|h| h.trim().to_ascii_lowercase())
                    .filter(|h| !h.is_empty())
                    .all(|h| cors.headers.contains(&h))
            })
        });
    if st.cors_origin.is_some() && method_ok && headers_ok {
        Ok(true)
    } else {
        Err(GatewayError::CorsRefused)
    }
}
