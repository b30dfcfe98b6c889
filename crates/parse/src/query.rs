//! Query parameters as the gateway checks them: names and values are compared after URL
//! decoding (`%63ollectionId` is `collectionId`, `+` is a space), so a parameter given twice in
//! two spellings is still given twice.

use std::borrow::Cow;

/// What a query string holds for one parameter name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Param<'q> {
    Absent,
    Once(Cow<'q, str>),
    /// Given more than once, or in a form another parser reads as the same name (another case,
    /// `name[…]`, `name.…`): ambiguous, since the backend might read either.
    Repeated,
}

/// Looks `name` up in the raw query string (without the `?`). Borrows unless the value is
/// encoded. A raw `;` is not a separator here; callers refuse it where it matters
/// ([`ambiguous_separator`]).
pub fn param<'q>(query: &'q [u8], name: &str) -> Param<'q> {
    let mut found = None;
    for (k, v) in form_urlencoded::parse(query) {
        if *k == *name {
            if found.is_some() {
                return Param::Repeated;
            }
            found = Some(v);
        } else if alias_of(&k, name) {
            return Param::Repeated;
        }
    }
    found.map_or(Param::Absent, Param::Once)
}

/// A key that some backend parser reads as `name`: the same letters in another case (ASP.NET),
/// or `name[…]` / `name.…` (qs-style nesting: `collectionId[$ne]=1` becomes an object).
fn alias_of(key: &str, name: &str) -> bool {
    let (k, n) = (key.as_bytes(), name.as_bytes());
    k.len() >= n.len()
        && k[..n.len()].eq_ignore_ascii_case(n)
        && matches!(k.get(n.len()), None | Some(b'[' | b'.'))
}

/// A raw `;` in a query string: some backends split parameters on it, others do not, so what
/// the gateway checks might not be what the backend reads.
pub fn ambiguous_separator(query: &[u8]) -> bool {
    query.contains(&b';')
}

/// Exactly 24 hex characters (either case): a Vivreal object id.
pub fn is_object_id(v: &str) -> bool {
    v.len() == 24 && v.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_one_name_are_one_name() {
        assert_eq!(param(b"a=1&b=2", "a"), Param::Once("1".into()));
        assert_eq!(param(b"b=2", "a"), Param::Absent);
        assert_eq!(param(b"a=1&a=2", "a"), Param::Repeated);
        assert_eq!(param(b"a=1&%61=2", "a"), Param::Repeated);
        assert_eq!(
            param(b"collectionId=1&%63ollectionId=2", "collectionId"),
            Param::Repeated
        );
        assert_eq!(param(b"a+b=1&a%20b=2", "a b"), Param::Repeated);
        assert_eq!(param(b"a=%41", "a"), Param::Once("A".into()));
        assert_eq!(param(b"a", "a"), Param::Once("".into()));
        assert_eq!(param(b"", "a"), Param::Absent);
        assert_eq!(param(b"a=1&A=2", "a"), Param::Repeated);
        assert_eq!(param(b"A=1", "a"), Param::Repeated);
        assert_eq!(param(b"id=1&id%5B%24ne%5D=2", "id"), Param::Repeated);
        assert_eq!(param(b"id[]=1", "id"), Param::Repeated);
        assert_eq!(param(b"id.x=1", "id"), Param::Repeated);
        assert_eq!(param(b"idx=1&id=2", "id"), Param::Once("2".into()));
        assert!(ambiguous_separator(b"a=1;a=2"));
        assert!(!ambiguous_separator(b"a=1%3Ba=2"));
    }

    #[test]
    fn object_ids() {
        assert!(is_object_id("0123456789abcdefABCDEF01"));
        assert!(!is_object_id("0123456789abcdefABCDEF0"));
        assert!(!is_object_id("0123456789abcdefABCDEF0g"));
    }
}
