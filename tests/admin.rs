//! The operator API: health (503 once a stop begins), usage per group and month, reload, and the
//! admin token.

mod common;

use std::net::SocketAddr;

use common::*;

const TOKEN_HASH: &str = "sha256:16175223c8ddce5ace0493c948569c211b03c4c6bb3d3e484434999448cffe01"; // "admin-secret"

async fn with_admin(token: bool) -> (Harness, SocketAddr) {
    let h = Harness::start_with(move |c| {
        let token = if token {
            format!("token = \"{TOKEN_HASH}\"\n")
        } else {
            String::new()
        };
        c + &format!("\n[admin]\nlisten = \"127.0.0.1:0\"\n{token}")
    })
    .await;
    let addr = h
        .admin_addr
        .expect("the runner reports the admin listener's port");
    (h, addr)
}

async fn admin(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> Resp {
    let auth = token
        .map(|t| format!("\nAuthorization: Bearer {t}"))
        .unwrap_or_default();
    Client::connect(addr)
        .await
        .request(
            &format!("{method} {path} HTTP/1.1\nHost: localhost\nContent-Length: 0{auth}"),
            b"",
        )
        .await
}

#[track_caller]
fn assert_success(r: &Resp) -> serde_json::Value {
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["success"], true);
    assert!(v["error"].is_null());
    v["data"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_reports_exactly_what_was_served() {
    let (h, a) = with_admin(true).await;
    for _ in 0..3 {
        assert_eq!(
            h.get("/tenant/integrationObjects?type=x", Some("key-tiny"))
                .await
                .status,
            200
        );
    }
    assert_eq!(
        h.get("/cdn/x?size=1234", Some("key-tiny")).await.status,
        200
    );
    h.wait_bytes("key-tiny", 1234).await;
    for _ in 0..7 {
        assert_eq!(
            h.get(
                "/tenant/integrationObjects?type=x",
                Some("key-tiny-overage")
            )
            .await
            .status,
            200
        );
    }
    assert_envelope(
        &h.get("/tenant/integrationObjects", Some("key-pro")).await,
        400,
        "type",
    );

    let d = assert_success(&admin(a, "GET", "/usage", Some("admin-secret")).await);
    assert_eq!(d["month"], "2026-11");
    let groups = d["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 6);
    let find = |id: &str| groups.iter().find(|g| g["id"] == id).unwrap().clone();
    let tiny = find(group_id("key-tiny"));
    assert_eq!(
        tiny,
        serde_json::json!({"id": group_id("key-tiny"), "tier": "tiny", "status": "active",
            "status_override": false, "overage_billing": false, "calls": 4, "calls_limit": 5, "bytes": 1234, "bytes_limit": 1500,
            "calls_overage": 0, "bytes_overage": 0})
    );
    let over = find(group_id("key-tiny-overage"));
    assert_eq!(
        (over["calls"].as_u64(), over["calls_overage"].as_u64()),
        (Some(7), Some(2))
    );
    assert_eq!(
        find(group_id("key-pro"))["calls"],
        0,
        "a rejected request is free"
    );

    let one = assert_success(
        &admin(
            a,
            "GET",
            &format!("/usage/{}", group_id("key-tiny")),
            Some("admin-secret"),
        )
        .await,
    );
    assert_eq!(one["group"], tiny);
    let past = assert_success(&admin(a, "GET", "/usage?month=2026-10", Some("admin-secret")).await);
    assert_eq!(past["month"], "2026-10");
    assert!(past["groups"]
        .as_array()
        .unwrap()
        .iter()
        .all(|g| g["calls"] == 0));
    assert_envelope(
        &admin(a, "GET", "/usage?month=2026-1", Some("admin-secret")).await,
        400,
        "YYYY-MM",
    );
    let one_past = assert_success(
        &admin(
            a,
            "GET",
            &format!("/usage/{}?month=2026-10", group_id("key-tiny")),
            Some("admin-secret"),
        )
        .await,
    );
    assert_eq!(
        (
            one_past["month"].as_str(),
            one_past["group"]["calls"].as_u64()
        ),
        (Some("2026-10"), Some(0))
    );
    assert_envelope(
        &admin(a, "GET", "/usage/nope", Some("admin-secret")).await,
        404,
        "Unknown group",
    );
    assert_envelope(
        &admin(a, "DELETE", "/usage", Some("admin-secret")).await,
        405,
        "Method not allowed",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_filtered_sorted_and_paged_by_the_server() {
    let (h, a) = with_admin(false).await;
    let p = "/tenant/integrationObjects?type=x";
    for (key, n) in [("key-pro", 3), ("key-free", 5), ("key-tiny-overage", 1)] {
        for _ in 0..n {
            assert_eq!(h.get(p, Some(key)).await.status, 200);
        }
    }
    let list = |q: String| async move {
        let d = assert_success(&admin(a, "GET", &format!("/usage?{q}"), None).await);
        let ids: Vec<String> = d["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["id"].as_str().unwrap().to_string())
            .collect();
        (d, ids)
    };
    let (pro, free, over) = (
        group_id("key-pro"),
        group_id("key-free"),
        group_id("key-tiny-overage"),
    );

    // by calls, most first, two a page
    let (d, ids) = list("sort=calls:desc&limit=2".into()).await;
    assert_eq!(ids, [free, pro]);
    assert_eq!(
        (
            d["total"].as_u64(),
            d["offset"].as_u64(),
            d["limit"].as_u64(),
            d["sort"].as_str()
        ),
        (Some(6), Some(0), Some(2), Some("calls:desc"))
    );
    assert_eq!(d["groups"][0]["calls"], 5);
    let (_, ids) = list("sort=calls:desc&limit=2&offset=2".into()).await;
    assert_eq!(ids[0], over);
    let (_, ids) = list("sort=calls:desc&limit=2&offset=6".into()).await;
    assert!(ids.is_empty());

    // every group once across the pages, in id order by default
    let mut all = Vec::new();
    for offset in [0, 4] {
        all.extend(list(format!("limit=4&offset={offset}")).await.1);
    }
    let mut sorted = all.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!((all.len(), all.clone()), (6, sorted));

    // the share of the quota used: tiny-overage (1 of 5) above pro (3 of a large limit)
    let (_, ids) = list("sort=calls_used:desc&limit=1".into()).await;
    assert_eq!(ids, [over]);

    // filters: part of the id, the tier, the status in force
    let (d, ids) = list(format!("q={}", pro[18..].to_uppercase())).await;
    assert_eq!((d["total"].as_u64(), ids), (Some(1), vec![pro.to_string()]));
    let mut tiny = vec![group_id("key-tiny"), group_id("key-tiny-overage")];
    tiny.sort_unstable_by(|a, b| b.cmp(a));
    let (_, ids) = list("tier=tiny&sort=id:desc".into()).await;
    assert_eq!(ids, tiny);
    let (_, ids) = list("status=deactivated".into()).await;
    assert_eq!(ids, [group_id("key-deactivated")]);
    let (_, ids) = list("status=frozen".into()).await;
    assert_eq!(ids, [group_id("key-frozen")]);

    for (q, why) in [
        ("limit=501", "limit must be 1 to 500"),
        ("sort=nope", "sort must be one of id, tier"),
        ("status=paused", "status must be"),
        ("page=2", "unknown parameter"),
    ] {
        assert_envelope(
            &admin(a, "GET", &format!("/usage?{q}"), None).await,
            400,
            why,
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_guards_everything_but_healthz() {
    let (h, a) = with_admin(true).await;
    assert_eq!(
        assert_success(&admin(a, "GET", "/healthz", None).await)["status"],
        "serving"
    );
    for token in [None, Some("wrong"), Some("")] {
        for (m, p) in [
            ("GET", "/usage"),
            ("POST", "/reload"),
            ("GET", "/usage/x"),
            ("GET", "/nothing"),
            ("GET", "/metrics"),
            ("GET", "/overrides"),
            ("DELETE", "/overrides/x"),
            ("PUT", "/groups/aaaaaaaaaaaaaaaaaaaaaa01/status"),
            ("DELETE", "/groups/aaaaaaaaaaaaaaaaaaaaaa03/keys/x"),
            ("GET", "/healthz/../usage"),
        ] {
            let r = admin(a, m, p, token).await;
            assert_eq!(r.status, 401, "{m} {p} with {token:?}");
            assert_eq!(r.json()["error"], "Missing or invalid admin token");
            assert_eq!(r.json()["success"], false);
        }
    }
    assert_envelope(
        &admin(a, "GET", "/nothing", Some("admin-secret")).await,
        404,
        "Not found",
    );
    // the stop begins: health says so, the rest still answers
    h.gw.begin_stop();
    let r = admin(a, "GET", "/healthz", None).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "Stopping");
    assert_success(&admin(a, "GET", "/usage", Some("admin-secret")).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_reload_applies_or_says_why_not() {
    let (h, a) = with_admin(false).await;
    assert_eq!(
        admin(a, "GET", "/usage", None).await.status,
        200,
        "no token: open on loopback"
    );
    let hash = vivgate::keys::format_key_hash(&vivgate::keys::hash_key(b"key-pro"));
    h.write_tenants(&tenants_toml().replace(
        &hash,
        &vivgate::keys::format_key_hash(&vivgate::keys::hash_key(b"k2")),
    ));
    let d = assert_success(&admin(a, "POST", "/reload", None).await);
    assert_eq!(d["reloaded"], true);
    assert_eq!(d["changes"]["keys"], serde_json::json!([7, 7]));
    assert_eq!(d["changes"]["groups_changed"], serde_json::json!([]));
    assert_envelope(
        &h.get("/tenant/integrationObjects?type=x", Some("key-pro"))
            .await,
        401,
        "Invalid",
    );
    assert_eq!(
        h.get("/tenant/integrationObjects?type=x", Some("k2"))
            .await
            .status,
        200
    );

    h.write_tenants("[[groups]]\nid = \"g\"\ntier = \"gold\"\nstatus = \"active\"\n");
    let r = admin(a, "POST", "/reload", None).await;
    assert_envelope(&r, 400, "groups[0].tier: unknown tier \"gold\"");
    assert_eq!(
        h.get("/tenant/integrationObjects?type=x", Some("k2"))
            .await
            .status,
        200,
        "old config kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_answers_503_on_healthz_as_soon_as_a_stop_begins() {
    let h = Harness::start().await;
    let (port, admin_port) = (free_port().await, free_port().await);
    let config = h.binary_config(
        "admin.toml",
        port,
        "grace_period_seconds = 2",
        &format!("[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n[usage]\nstore = \"memory\""),
    );
    let mut child = spawn_binary(&config, &[], &[], port).await;
    let a: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    wait_for("the admin listener", || async {
        tokio::net::TcpStream::connect(a).await.is_ok()
    })
    .await;
    assert_eq!(admin(a, "GET", "/healthz", None).await.status, 200);
    let start = std::time::Instant::now();
    signal(&child.0, libc::SIGTERM);
    wait_for("healthz to answer 503", || async {
        admin(a, "GET", "/healthz", None).await.status == 503
    })
    .await;
    let seen = start.elapsed();
    assert!(
        seen < std::time::Duration::from_millis(1500),
        "503 only after {seen:?}"
    );
    assert_eq!(
        child.0.try_wait().unwrap(),
        None,
        "still draining when healthz says 503"
    );
    wait_exit(&mut child, None, std::time::Duration::from_secs(10)).await;
}

async fn admin_body(addr: SocketAddr, method: &str, path: &str, body: &str) -> Resp {
    Client::connect(addr)
        .await
        .request(
            &format!("{method} {path} HTTP/1.1\nHost: localhost\nContent-Type: application/json\nContent-Length: {}", body.len()),
            body.as_bytes(),
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_overrides_and_revocations_win_over_the_tenants_file() {
    let (h, a) = with_admin(false).await;
    let pro = group_id("key-pro");
    let p = "/tenant/integrationObjects?type=x";
    assert_eq!(h.get(p, Some("key-pro")).await.status, 200);

    let r = admin_body(
        a,
        "PUT",
        &format!("/groups/{pro}/status"),
        r#"{"status": "frozen"}"#,
    )
    .await;
    assert_eq!(
        assert_success(&r),
        serde_json::json!({"group": pro, "status": "frozen", "override": true})
    );
    assert_envelope(&h.get(p, Some("key-pro")).await, 400, "frozen");
    assert_eq!(
        h.get("/v1/usage", Some("key-pro")).await.json()["data"]["status"],
        "frozen"
    );

    // revoke the rotated key of the tiny group; its other key keeps working
    let rotated = vivgate::keys::format_key_hash(&vivgate::keys::hash_key(b"key-rotated"));
    let tiny = group_id("key-tiny");
    let r = admin(a, "DELETE", &format!("/groups/{tiny}/keys/{rotated}"), None).await;
    assert_eq!(assert_success(&r)["revoked"], rotated);
    assert_envelope(
        &h.get(p, Some("key-rotated")).await,
        401,
        "Invalid or revoked",
    );
    assert_eq!(h.get(p, Some("key-tiny")).await.status, 200);

    // a reload of the (unchanged) tenants file does not undo them
    h.gw.reload().unwrap();
    assert_envelope(&h.get(p, Some("key-pro")).await, 400, "frozen");
    assert_envelope(
        &h.get(p, Some("key-rotated")).await,
        401,
        "Invalid or revoked",
    );
    let o = assert_success(&admin(a, "GET", "/overrides", None).await);
    assert_eq!(o["status"][pro], "frozen");
    assert_eq!(
        o["revoked_keys"],
        serde_json::json!([{"key": rotated, "group": tiny}])
    );
    let usage = assert_success(&admin(a, "GET", &format!("/usage/{pro}"), None).await);
    assert_eq!(usage["group"]["status"], "frozen");

    // refusals
    assert_envelope(
        &admin_body(
            a,
            "PUT",
            &format!("/groups/{pro}/status"),
            r#"{"status": "paused"}"#,
        )
        .await,
        400,
        "Body must be",
    );
    assert_envelope(
        &admin_body(a, "PUT", "/groups/nope/status", r#"{"status": "frozen"}"#).await,
        404,
        "Unknown group",
    );
    let pro_key = vivgate::keys::format_key_hash(&vivgate::keys::hash_key(b"key-pro"));
    assert_envelope(
        &admin(a, "DELETE", &format!("/groups/{tiny}/keys/{pro_key}"), None).await,
        404,
        "no such key",
    );
    assert_envelope(
        &admin(a, "DELETE", &format!("/groups/{tiny}/keys/abc"), None).await,
        400,
        "sha256:",
    );
    assert_envelope(
        &admin(a, "DELETE", "/overrides/nothing", None).await,
        404,
        "No such override",
    );

    // removing the overrides gives the tenants file its say again
    assert_success(&admin(a, "DELETE", &format!("/overrides/{pro}"), None).await);
    assert_eq!(h.get(p, Some("key-pro")).await.status, 200);
    assert_success(&admin(a, "DELETE", &format!("/overrides/{rotated}"), None).await);
    assert_eq!(h.get(p, Some("key-rotated")).await.status, 200);
    assert_eq!(
        assert_success(&admin(a, "GET", "/overrides", None).await),
        serde_json::json!({"status": {}, "revoked_keys": []})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overrides_survive_a_restart_with_the_embedded_store() {
    let h = Harness::start().await;
    let (port, admin_port) = (free_port().await, free_port().await);
    let config = h.binary_config(
        "admin.toml",
        port,
        "grace_period_seconds = 1",
        &format!("[admin]\nlisten = \"127.0.0.1:{admin_port}\""),
    );
    let a: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let g: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let p = "/tenant/integrationObjects?type=x";
    for round in 0..2 {
        let mut child = spawn_binary(&config, &[], &[], port).await;
        wait_for("the admin listener", || async {
            tokio::net::TcpStream::connect(a).await.is_ok()
        })
        .await;
        let rotated = vivgate::keys::format_key_hash(&vivgate::keys::hash_key(b"key-rotated"));
        if round == 0 {
            assert_eq!(
                Client::connect(g)
                    .await
                    .get(p, Some("key-pro"))
                    .await
                    .status,
                200
            );
            let r = admin_body(
                a,
                "PUT",
                &format!("/groups/{}/status", group_id("key-pro")),
                r#"{"status": "deactivated"}"#,
            )
            .await;
            assert_success(&r);
            let r = admin(
                a,
                "DELETE",
                &format!("/groups/{}/keys/{rotated}", group_id("key-tiny")),
                None,
            )
            .await;
            assert_success(&r);
        }
        assert_envelope(
            &Client::connect(g).await.get(p, Some("key-pro")).await,
            403,
            "deactivated",
        );
        assert_envelope(
            &Client::connect(g).await.get(p, Some("key-rotated")).await,
            401,
            "Invalid or revoked",
        );
        assert_eq!(
            Client::connect(g)
                .await
                .get(p, Some("key-tiny"))
                .await
                .status,
            200
        );
        let status = wait_exit(
            &mut child,
            Some(libc::SIGTERM),
            std::time::Duration::from_secs(15),
        )
        .await;
        assert!(status.success(), "a graceful stop exits 0: {status:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_answers_rejections_usage_and_reloads() {
    let (h, a) = with_admin(true).await;
    let p = "/tenant/integrationObjects?type=x";
    for _ in 0..5 {
        assert_eq!(h.get(p, Some("key-tiny")).await.status, 200);
    }
    assert_eq!(h.get(p, Some("key-tiny")).await.status, 402);
    assert_eq!(h.get(p, None).await.status, 401);
    assert_eq!(h.get("/nope", Some("key-pro")).await.status, 404);
    assert_eq!(h.get("/cdn/x?size=300", Some("key-pro")).await.status, 200);
    h.wait_bytes("key-pro", 300).await;
    h.gw.reload().unwrap();
    h.write_tenants("not toml");
    assert!(h.gw.reload().is_err());

    let r = admin(a, "GET", "/metrics", None).await;
    assert_eq!(r.status, 401, "metrics need the token too");
    let expected = [
        "vivgate_requests_total{route=\"/tenant/integrationObjects\",status=\"200\"} 5",
        "vivgate_requests_total{route=\"/tenant/integrationObjects\",status=\"402\"} 1",
        "vivgate_requests_total{route=\"none\",status=\"401\"} 1",
        "vivgate_requests_total{route=\"none\",status=\"404\"} 1",
        "vivgate_requests_total{route=\"/cdn/\",status=\"200\"} 1",
        "vivgate_rejections_total{reason=\"quota_calls\"} 1",
        "vivgate_rejections_total{reason=\"missing_key\"} 1",
        "vivgate_rejections_total{reason=\"no_route\"} 1",
        "vivgate_upstream_response_seconds_count{route=\"/cdn/\"} 1",
        "vivgate_upstream_response_seconds_count{route=\"/tenant/integrationObjects\"} 5",
        "vivgate_usage_calls{tier=\"tiny\"} 5",
        "vivgate_usage_calls{tier=\"pro\"} 1",
        "vivgate_usage_bytes{tier=\"pro\"} 300",
        "vivgate_reloads_total{result=\"ok\"} 1",
        "vivgate_reloads_total{result=\"refused\"} 1",
    ];
    // requests are counted when the gateway logs them, just after the client has the answer
    let mut text = String::new();
    for _ in 0..100 {
        let r = admin(a, "GET", "/metrics", Some("admin-secret")).await;
        assert_eq!(r.status, 200);
        assert!(r.header("content-type").unwrap().starts_with("text/plain"));
        text = r.text();
        if expected.iter().all(|line| text.lines().any(|l| l == *line)) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    for line in expected {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_the_tenants_file_gives_removes_the_override() {
    let (h, a) = with_admin(false).await;
    let pro = group_id("key-pro");
    let p = "/tenant/integrationObjects?type=x";
    let put = |status: &'static str| async move {
        admin_body(
            a,
            "PUT",
            &format!("/groups/{pro}/status"),
            &format!(r#"{{"status": "{status}"}}"#),
        )
        .await
    };
    assert_success(&put("frozen").await);
    assert_envelope(&h.get(p, Some("key-pro")).await, 400, "frozen");

    // "active" is what the tenants file says: the override goes instead of pinning "active"
    assert_eq!(
        assert_success(&put("active").await),
        serde_json::json!({"group": pro, "status": "active", "override": false})
    );
    assert_eq!(h.get(p, Some("key-pro")).await.status, 200);
    assert_eq!(
        assert_success(&admin(a, "GET", "/overrides", None).await),
        serde_json::json!({"status": {}, "revoked_keys": []})
    );

    // so a later freeze in the tenants file is in force after a reload
    let frozen = tenants_toml().replace(
        &format!("id = \"{pro}\"\ntier = \"pro\"\nstatus = \"active\""),
        &format!("id = \"{pro}\"\ntier = \"pro\"\nstatus = \"frozen\""),
    );
    assert_ne!(frozen, tenants_toml(), "the fixture's pro group is active");
    h.write_tenants(&frozen);
    assert_success(&admin(a, "POST", "/reload", None).await);
    assert_envelope(&h.get(p, Some("key-pro")).await, 400, "frozen");

    // and PUT "active" now overrides the file; PUT "frozen" (the file's) removes that again
    assert_eq!(assert_success(&put("active").await)["override"], true);
    assert_eq!(h.get(p, Some("key-pro")).await.status, 200);
    assert_eq!(assert_success(&put("frozen").await)["override"], false);
    assert_envelope(&h.get(p, Some("key-pro")).await, 400, "frozen");

    // every change is in the audit list, newest first
    let audit = assert_success(&admin(a, "GET", "/audit", None).await);
    assert_eq!(audit["instance"], "this instance");
    let changes: Vec<String> = audit["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            format!(
                "{} | {}",
                c["endpoint"].as_str().unwrap(),
                c["change"].as_str().unwrap()
            )
        })
        .collect();
    let status = format!("PUT /groups/{pro}/status");
    assert_eq!(changes.len(), 5, "{changes:#?}");
    assert_eq!(
        changes[0],
        format!("{status} | group {pro}: status frozen (the tenants file's: override removed)")
    );
    assert_eq!(
        changes[1],
        format!("{status} | group {pro}: status active (override)")
    );
    assert!(
        changes[2].starts_with("POST /reload | configuration reloaded"),
        "{}",
        changes[2]
    );
    assert_eq!(
        changes[4],
        format!("{status} | group {pro}: status frozen (override)")
    );
    let first = &audit["changes"][4];
    assert!(first["caller"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(first["ok"], true);
    assert!(first["at_ms"].as_i64().unwrap() > 1_700_000_000_000);
}

async fn admin_with(addr: SocketAddr, method: &str, path: &str, headers: &str) -> Resp {
    Client::connect(addr)
        .await
        .request(
            &format!("{method} {path} HTTP/1.1\n{headers}\nContent-Length: 0"),
            b"",
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_refuses_rebinding_and_cross_site_changes() {
    let h = Harness::start_with(|c| {
        c + "\n[admin]\nlisten = \"127.0.0.1:0\"\nhosts = [\"Admin.Internal\"]\n"
    })
    .await;
    let a = h.admin_addr.unwrap();
    let own = format!("Host: {a}");

    // DNS rebinding: a page of another name pointed at 127.0.0.1 sends its own Host
    for host in [
        "evil.example",
        &format!("evil.example:{}", a.port()),
        "127.0.0.2",
        "localhost.evil.example",
    ] {
        let r = admin_with(a, "GET", "/usage", &format!("Host: {host}")).await;
        assert_envelope(&r, 403, "host name is not allowed for the admin API");
    }
    for host in [
        own.as_str(),
        "Host: localhost",
        "Host: admin.internal:8443",
        "Host: 127.0.0.1",
    ] {
        let r = admin_with(a, "GET", "/usage", host).await;
        assert_success(&r);
    }
    // a health probe may send any name: /healthz tells nothing
    assert_success(&admin_with(a, "GET", "/healthz", "Host: lb.internal").await);

    // a cross-site form POST needs no preflight: refused when its Origin is not the listener
    let pro = group_id("key-pro");
    for (method, path) in [
        ("POST", "/reload".to_string()),
        ("DELETE", format!("/overrides/{pro}")),
    ] {
        for origin in [
            "http://evil.example",
            "null",
            &format!("http://127.0.0.1:{}", a.port() + 1),
        ] {
            let r = admin_with(a, method, &path, &format!("{own}\nOrigin: {origin}")).await;
            assert_envelope(&r, 403, "Cross-site requests to the admin API are refused");
        }
    }
    let r = Client::connect(a)
        .await
        .request(
            &format!("PUT /groups/{pro}/status HTTP/1.1\n{own}\nOrigin: http://evil.example\nContent-Type: text/plain\nContent-Length: 20"),
            br#"{"status": "frozen"}"#,
        )
        .await;
    assert_envelope(&r, 403, "Cross-site");
    assert_eq!(
        h.get("/tenant/integrationObjects?type=x", Some("key-pro"))
            .await
            .status,
        200
    );
    // nothing was changed, so nothing is in the audit list
    let audit = assert_success(&admin_with(a, "GET", "/audit", &own).await);
    assert_eq!(audit["changes"], serde_json::json!([]));

    // the console's own requests carry its origin
    let r = admin_with(a, "POST", "/reload", &format!("{own}\nOrigin: http://{a}")).await;
    assert_eq!(assert_success(&r)["reloaded"], true);
    // and a script sends none
    assert_success(&admin_with(a, "POST", "/reload", &own).await);
    let audit = assert_success(&admin_with(a, "GET", "/audit", &own).await);
    assert_eq!(audit["changes"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_and_bytes_are_kept_per_day_for_each_group_and_the_gateway() {
    use vivgate::usage::UsageStore;
    let (h, a) = with_admin(false).await;
    let (tiny, pro) = (group_id("key-tiny"), group_id("key-pro"));
    let p = "/tenant/integrationObjects?type=x";
    // the harness's clock: 2026-11-15
    for _ in 0..3 {
        assert_eq!(h.get(p, Some("key-tiny")).await.status, 200);
    }
    assert_eq!(
        h.get("/cdn/x?size=1234", Some("key-tiny")).await.status,
        200
    );
    h.wait_bytes("key-tiny", 1234).await;
    h.gw.store().flush().unwrap();
    h.clock
        .set(vivgate::clock::utc_ms(2026, 11, 16, 9, 0, 0, 0));
    for _ in 0..2 {
        assert_eq!(h.get(p, Some("key-pro")).await.status, 200);
    }
    h.gw.store().flush().unwrap();

    let day = |days: &serde_json::Value, d: usize| {
        let v = &days[d - 1];
        assert_eq!(v["day"], d);
        (v["calls"].as_u64().unwrap(), v["bytes"].as_u64().unwrap())
    };
    let d = assert_success(&admin(a, "GET", &format!("/usage/{tiny}?by=day"), None).await);
    assert_eq!(d["month"], "2026-11");
    assert_eq!(d["group"]["calls"], 4);
    let days = &d["days"];
    assert_eq!(days.as_array().unwrap().len(), 30);
    assert_eq!(
        (day(days, 15), day(days, 16), day(days, 14)),
        ((4, 1234), (0, 0), (0, 0))
    );
    let d = assert_success(&admin(a, "GET", &format!("/usage/{pro}?by=day"), None).await);
    assert_eq!((day(&d["days"], 15), day(&d["days"], 16)), ((0, 0), (2, 0)));
    // without by=day, no days
    let d = assert_success(&admin(a, "GET", &format!("/usage/{pro}"), None).await);
    assert!(d.get("days").is_none());

    // the whole gateway
    let d = assert_success(&admin(a, "GET", "/days", None).await);
    assert_eq!(
        (day(&d["days"], 15), day(&d["days"], 16)),
        ((4, 1234), (2, 0))
    );
    // the previous month's days are kept (none here); older months have none
    let d = assert_success(&admin(a, "GET", "/days?month=2026-10", None).await);
    assert_eq!(d["days"].as_array().unwrap().len(), 31);
    let d = assert_success(
        &admin(
            a,
            "GET",
            &format!("/usage/{pro}?month=2026-09&by=day"),
            None,
        )
        .await,
    );
    assert!(d["days"].is_null());
    assert_envelope(
        &admin(a, "GET", &format!("/usage/{pro}?by=week"), None).await,
        400,
        "by must be day",
    );
    assert_envelope(
        &admin(a, "POST", "/days", None).await,
        405,
        "Method not allowed",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_shows_the_last_minutes_from_the_counters() {
    let (h, a) = with_admin(false).await;
    // the first sample (the starting point) is taken as the listener starts
    wait_for("the first traffic sample", || async {
        !assert_success(&admin(a, "GET", "/traffic", None).await)["current"].is_null()
    })
    .await;
    let p = "/tenant/integrationObjects?type=x";
    for _ in 0..3 {
        assert_eq!(h.get(p, Some("key-pro")).await.status, 200);
    }
    assert_envelope(&h.get(p, Some("nope")).await, 401, "Invalid or revoked");
    // a sample may be taken meanwhile (every 5 s): the samples and the current interval
    // together hold the traffic
    let total = |d: &serde_json::Value, f: &dyn Fn(&serde_json::Value) -> Option<u64>| {
        let mut parts: Vec<serde_json::Value> = d["samples"].as_array().unwrap().clone();
        parts.push(d["current"].clone());
        parts.iter().map(|x| f(x).unwrap_or(0)).sum::<u64>()
    };
    let mut d = serde_json::Value::Null;
    for _ in 0..100 {
        d = assert_success(&admin(a, "GET", "/traffic", None).await);
        if total(&d, &|x| x["requests"].as_u64()) >= 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        (d["interval_seconds"].as_u64(), d["kept"].as_u64()),
        (Some(5), Some(180))
    );
    assert_eq!(total(&d, &|x| x["requests"].as_u64()), 4, "{d}");
    assert_eq!(
        total(&d, &|x| x["rejections"]["invalid_key"].as_u64()),
        1,
        "{d}"
    );
    let route = "/tenant/integrationObjects";
    for (field, want) in [("requests", 3), ("errors", 0), ("upstream", 3)] {
        assert_eq!(
            total(&d, &|x| x["routes"][route][field].as_u64()),
            want,
            "{field}: {d}"
        );
    }
    // the latencies of the last interval with backend answers
    let mut parts: Vec<serde_json::Value> = d["samples"].as_array().unwrap().clone();
    parts.push(d["current"].clone());
    let last = parts
        .iter()
        .rev()
        .map(|x| &x["routes"][route])
        .find(|r| r["upstream"].as_u64() > Some(0))
        .unwrap();
    let (p50, p99) = (
        last["p50_ms"].as_f64().unwrap(),
        last["p99_ms"].as_f64().unwrap(),
    );
    assert!(p50 > 0.0 && p50 <= p99 && p99 < 10_000.0, "{d}");
}
