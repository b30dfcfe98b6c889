//! The admin API's changes to groups: `PUT /groups/<id>/status` and
//! `DELETE /groups/<id>/keys/<hash>`, as overrides (saved before they take effect) or, with
//! fleet tenants, in Redis's tenants table.

use http::Method;
use serde_json::json;

use super::{change_failed, fleet_change_failed, ok, with_version, AdminApp, Answer};
use crate::error::GatewayError;
use crate::overrides::{ChangeError, Changed, OverrideChange};

impl AdminApp {
    /// An override change; it may wait for Redis (a few seconds at most), so this worker
    /// thread is marked as blocking meanwhile.
    pub(super) fn change_overrides(&self, change: &OverrideChange) -> Result<Changed, ChangeError> {
        tokio::task::block_in_place(|| self.gw.change_overrides(change))
    }

    /// A change written to the fleet's tenants in Redis is applied here at once (the others
    /// apply it when Redis announces it).
    fn apply_fleet_change(&self) {
        // on a thread of its own: the reload frees the old snapshot once no one holds it, and
        // this request still does
        let gw = self.gw.clone();
        let _ = std::thread::Builder::new()
            .name("vivgate-reload".into())
            .spawn(move || {
                if let Err(e) = gw.reload() {
                    tracing::error!("reload after a fleet change failed: {e}");
                }
            });
    }

    /// `PUT /groups/<id>/status` with `{"status": "frozen"}`, and
    /// `DELETE /groups/<id>/keys/<sha256:hex>`: saved as overrides, in force for the next request.
    pub(super) fn group_change(
        &self,
        method: Method,
        rest: &str,
        body: &[u8],
        caller: &str,
    ) -> Answer {
        let snap = self.gw.snapshot();
        let (id, what) = rest.split_once('/').unwrap_or((rest, ""));
        let Some(group) = snap.group(id) else {
            return Err(GatewayError::NotFound("Unknown group"));
        };
        match (method, what) {
            (Method::PUT, "status") => {
                #[derive(serde::Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Body {
                    status: crate::config::GroupStatus,
                }
                let Ok(Body { status }) = serde_json::from_slice::<Body>(body) else {
                    return Err(GatewayError::Invalid(
                        "Body must be {\"status\": \"active\" | \"frozen\" | \"deactivated\"}"
                            .into(),
                    ));
                };
                if let Some(url) = &snap.tenants_url {
                    // fleet tenants: the change goes to Redis, and every instance applies it
                    return match crate::fleet::set_status(url, id, status) {
                        Ok(version) => {
                            self.audit(
                                caller,
                                format!("PUT /groups/{id}/status"),
                                format!("group {id}: status {status} in the fleet's tenants (Redis version {version})"),
                                true,
                            );
                            self.apply_fleet_change();
                            ok(json!({"group": id, "status": status, "version": version}))
                        }
                        Err(e) => Err(fleet_change_failed(e, "Unknown group")),
                    };
                }
                // the status the tenants file gives: no override (a later change of the file
                // decides again), rather than one that pins it
                let from_file = status == group.status;
                let change = if from_file {
                    OverrideChange::Remove(id.to_string())
                } else {
                    OverrideChange::Status {
                        group: id.to_string(),
                        status,
                    }
                };
                match self.change_overrides(&change) {
                    Ok(c) => {
                        let what = if from_file {
                            format!("group {id}: status {status} (the tenants file's: override removed)")
                        } else {
                            format!("group {id}: status {status} (override)")
                        };
                        self.audit(caller, format!("PUT /groups/{id}/status"), what, true);
                        ok(with_version(
                            json!({"group": id, "status": status, "override": !from_file}),
                            &c,
                        ))
                    }
                    Err(e) => Err(change_failed(e)),
                }
            }
            (Method::DELETE, k) if k.starts_with("keys/") => {
                let raw = &k["keys/".len()..];
                let text = if raw.starts_with("sha256:") {
                    raw.to_string()
                } else {
                    format!("sha256:{raw}")
                };
                let Ok(hash) = crate::keys::parse_key_hash(&text) else {
                    return Err(GatewayError::Invalid(
                        "The key is given as sha256:<64 lowercase hex>".into(),
                    ));
                };
                if snap.group_for(&hash).is_none_or(|g| g.id != group.id) {
                    return Err(GatewayError::NotFound("This group has no such key"));
                }
                if let Some(url) = &snap.tenants_url {
                    return match crate::fleet::revoke_key(url, id, &text) {
                        Ok(version) => {
                            self.audit(
                                caller,
                                format!("DELETE /groups/{id}/keys"),
                                format!("group {id}: key {} revoked in the fleet's tenants (Redis version {version})", crate::keys::fingerprint(&hash)),
                                true,
                            );
                            self.apply_fleet_change();
                            ok(json!({"group": id, "revoked": text, "version": version}))
                        }
                        Err(e) => Err(fleet_change_failed(e, "This group has no such key")),
                    };
                }
                let change = OverrideChange::Revoke {
                    key: crate::keys::format_key_hash(&hash),
                    group: id.to_string(),
                };
                match self.change_overrides(&change) {
                    Ok(c) => {
                        self.audit(
                            caller,
                            format!("DELETE /groups/{id}/keys"),
                            format!(
                                "group {id}: key {} revoked",
                                crate::keys::fingerprint(&hash)
                            ),
                            true,
                        );
                        ok(with_version(json!({"group": id, "revoked": text}), &c))
                    }
                    Err(e) => Err(change_failed(e)),
                }
            }
            _ => Err(GatewayError::NoRoute),
        }
    }
}
