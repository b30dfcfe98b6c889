//! The fuzz targets' seed corpora (`fuzz/seeds/<target>/`, made from the adversarial test
//! payloads) replayed through the same invariants, as regression tests in the normal run.

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/seeds")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let result = std::panic::catch_unwind(|| check(&data));
        assert!(result.is_ok(), "{} fails its invariant", path.display());
        n += 1;
    }
    assert!(n >= 5, "{target}: only {n} seeds");
}

#[test]
fn path_seeds() {
    replay("path", vivgate_parse::invariants::path);
}

#[test]
fn query_seeds() {
    replay("query", vivgate_parse::invariants::query);
}

#[test]
fn auth_seeds() {
    replay("auth", vivgate_parse::invariants::auth);
}

#[test]
fn json_seeds() {
    replay("json", vivgate_parse::invariants::json);
}

#[test]
fn head_seeds() {
    replay("head", vivgate_parse::invariants::head);
}

#[test]
fn chunked_seeds() {
    replay("chunked", vivgate_parse::invariants::chunked);
}

#[test]
fn response_seeds() {
    replay("response", vivgate_parse::invariants::response);
    // the seeds named bad-* are heads a backend must not get away with
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/response");
    let mut bad = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if !path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("bad-")
        {
            continue;
        }
        let data = std::fs::read(&path).unwrap();
        let limits = vivgate_parse::response::ResponseLimits {
            max_bytes: 4096,
            max_headers: 32,
        };
        let r = vivgate_parse::response::parse_response_head(&data, false, limits);
        assert!(r.is_err(), "{} is accepted: {r:?}", path.display());
        bad += 1;
    }
    assert!(bad >= 5, "only {bad} bad-* seeds");
}
