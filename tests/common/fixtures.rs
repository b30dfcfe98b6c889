//! What every test config has: the groups and their keys, the tenants file, the gateway config.

use std::net::SocketAddr;

use vivgate::keys::{format_key_hash, hash_key};

pub const OID: &str = "651f0c2ab4e8a90012345678";

/// Groups every test config has: (key, group id, tier, status, overage).
pub const GROUPS: [(&str, &str, &str, &str, bool); 7] = [
    (
        "key-pro",
        "aaaaaaaaaaaaaaaaaaaaaa01",
        "pro",
        "active",
        false,
    ),
    (
        "key-free",
        "aaaaaaaaaaaaaaaaaaaaaa02",
        "free",
        "active",
        false,
    ),
    (
        "key-tiny",
        "aaaaaaaaaaaaaaaaaaaaaa03",
        "tiny",
        "active",
        false,
    ),
    (
        "key-tiny-overage",
        "aaaaaaaaaaaaaaaaaaaaaa04",
        "tiny",
        "active",
        true,
    ),
    (
        "key-frozen",
        "aaaaaaaaaaaaaaaaaaaaaa05",
        "pro",
        "frozen",
        false,
    ),
    (
        "key-deactivated",
        "aaaaaaaaaaaaaaaaaaaaaa06",
        "pro",
        "deactivated",
        false,
    ),
    ("key-rotated", "aaaaaaaaaaaaaaaaaaaaaa03", "", "", false), // a second key of the tiny group
];

pub fn group_id(key: &str) -> &'static str {
    GROUPS.iter().find(|g| g.0 == key).map(|g| g.1).unwrap()
}

/// The tenants file for [`GROUPS`].
pub fn tenants_toml() -> String {
    let mut out = String::new();
    for (key, id, tier, status, overage) in GROUPS {
        if tier.is_empty() {
            continue;
        }
        let mut keys = vec![format_key_hash(&hash_key(key.as_bytes()))];
        for (k2, id2, t2, ..) in GROUPS {
            if id2 == id && t2.is_empty() {
                keys.push(format_key_hash(&hash_key(k2.as_bytes())));
            }
        }
        let keys: Vec<String> = keys.iter().map(|k| format!("{k:?}")).collect();
        out.push_str(&format!(
            "[[groups]]\nid = \"{id}\"\ntier = \"{tier}\"\nstatus = \"{status}\"\noverage_billing = {overage}\nkeys = [{}]\n\n",
            keys.join(", ")
        ));
    }
    out
}

/// The shared config (`tests/fixtures/vivgate.toml`, also the demo's) routed to `backend`, with
/// the `dead` upstream at `dead`.
pub fn config_toml(backend: SocketAddr, dead: SocketAddr) -> String {
    include_str!("../fixtures/vivgate.toml")
        .replace("{backend}", &backend.to_string())
        .replace("{offline}", &dead.to_string())
}
