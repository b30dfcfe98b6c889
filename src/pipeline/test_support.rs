//! What the pipeline's unit tests share.

use crate::config::Snapshot;
use crate::keys::hash_key;

/// Routes `/x` (GET, POST), prefixes `/cdn/` (GET) and `/cdn/private/` (DELETE); group `g1`
/// (free, active, key `k1`) and `g2` (pro, frozen, key `k2`).
pub fn snapshot() -> Snapshot {
    let key = crate::keys::format_key_hash(&hash_key(b"k1"));
    let frozen = crate::keys::format_key_hash(&hash_key(b"k2"));
    crate::config::load_from_str(
        std::path::Path::new("c.toml"),
        r#"tenants = "t.toml"
[upstreams.a]
servers = ["127.0.0.1:1"]
[[routes]]
path = "/x"
methods = ["GET", "POST"]
upstream = "a"
[[routes]]
prefix = "/cdn/"
methods = ["GET"]
upstream = "a"
[[routes]]
prefix = "/cdn/private/"
methods = ["DELETE"]
upstream = "a"
"#,
        std::path::Path::new("t.toml"),
        &format!(
            "[[groups]]\nid = \"g1\"\ntier = \"free\"\nstatus = \"active\"\nkeys = [\"{key}\"]\n\
             [[groups]]\nid = \"g2\"\ntier = \"pro\"\nstatus = \"frozen\"\nkeys = [\"{frozen}\"]\n"
        ),
    )
    .unwrap()
}
