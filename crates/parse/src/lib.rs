//! The parsers that see hostile input first, kept free of the proxy so they can be fuzzed on
//! their own (`fuzz/`): the HTTP/1 request head and its framing ([`head`]), a chunked body's
//! framing ([`chunked`]), the request path ([`path`]), the query string ([`query`]), the
//! `Authorization` header ([`auth`]) and JSON bodies ([`json`]).

pub mod auth;
pub mod chunked;
pub mod head;
pub mod invariants;
pub mod json;
pub mod path;
pub mod query;
pub mod response;

/// RFC 3986 unreserved characters and sub-delimiters: the base every request-target class of
/// the parsers (path literal, target, authority) extends.
pub(crate) const fn unreserved_or_sub_delim(c: u8) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
        )
}
