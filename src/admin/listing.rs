//! `GET /usage`: the month's groups with their usage and limits, filtered, sorted and paged by
//! the server (the console shows 100,000 groups a page at a time).
//!
//! `month=YYYY-MM` (default: this month), `q=` (part of the group id, any case), `tier=`,
//! `status=` (the status in force), `sort=<column>[:desc]` (default `id`), `offset=`,
//! `limit=` (at most [`MAX_LIMIT`]; without it, every group: the billing export).
//! A sort by a usage column reads every matching group's usage (one pass of the store); a sort
//! by id, tier or status reads only the page's.

use std::cmp::Ordering;

use serde_json::{json, Value};

use crate::clock::Month;
use crate::config::{Group, GroupStatus};
use crate::error::GatewayError;
use crate::overrides::Overrides;
use crate::usage::{Usage, UsageStore};

/// The largest page.
pub const MAX_LIMIT: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Column {
    Id,
    Tier,
    Status,
    Calls,
    CallsLimit,
    /// calls / calls_limit
    CallsUsed,
    Bytes,
    BytesLimit,
    BytesUsed,
    CallsOverage,
    BytesOverage,
}

impl Column {
    const ALL: [(&'static str, Column); 11] = [
        ("id", Column::Id),
        ("tier", Column::Tier),
        ("status", Column::Status),
        ("calls", Column::Calls),
        ("calls_limit", Column::CallsLimit),
        ("calls_used", Column::CallsUsed),
        ("bytes", Column::Bytes),
        ("bytes_limit", Column::BytesLimit),
        ("bytes_used", Column::BytesUsed),
        ("calls_overage", Column::CallsOverage),
        ("bytes_overage", Column::BytesOverage),
    ];

    fn parse(s: &str) -> Option<Column> {
        Self::ALL.iter().find(|(n, _)| *n == s).map(|(_, c)| *c)
    }

    fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, c)| *c == self)
            .map_or("id", |(n, _)| n)
    }

    fn needs_usage(self) -> bool {
        !matches!(
            self,
            Column::Id | Column::Tier | Column::Status | Column::CallsLimit | Column::BytesLimit
        )
    }
}

/// A `GET /usage` query, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Listing {
    pub month: Month,
    q: Option<String>,
    tier: Option<String>,
    status: Option<GroupStatus>,
    sort: Column,
    desc: bool,
    offset: usize,
    limit: Option<usize>,
}

fn invalid(why: &str) -> GatewayError {
    GatewayError::Invalid(why.into())
}

impl Listing {
    pub fn parse(query: &str, now: Month) -> Result<Listing, GatewayError> {
        let mut l = Listing {
            month: now,
            q: None,
            tier: None,
            status: None,
            sort: Column::Id,
            desc: false,
            offset: 0,
            limit: None,
        };
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match &*k {
                "month" => {
                    l.month =
                        super::parse_month(&v).ok_or_else(|| invalid("month must be YYYY-MM"))?
                }
                "q" if !v.is_empty() => l.q = Some(v.to_lowercase()),
                "tier" if !v.is_empty() => l.tier = Some(v.into_owned()),
                "status" if !v.is_empty() => {
                    l.status = Some(
                        serde_json::from_value(Value::String(v.into_owned()))
                            .map_err(|_| invalid("status must be active, frozen or deactivated"))?,
                    )
                }
                "sort" => {
                    let (name, dir) = v.split_once(':').unwrap_or((&v, "asc"));
                    l.sort = Column::parse(name).ok_or_else(|| {
                        let names: Vec<&str> = Column::ALL.iter().map(|(n, _)| *n).collect();
                        GatewayError::Invalid(format!(
                            "sort must be one of {}, with :asc or :desc",
                            names.join(", ")
                        ))
                    })?;
                    l.desc = match dir {
                        "asc" => false,
                        "desc" => true,
                        _ => {
                            return Err(invalid(
                                "sort must be <column>, <column>:asc or <column>:desc",
                            ))
                        }
                    };
                }
                "offset" => {
                    l.offset = v
                        .parse()
                        .map_err(|_| invalid("offset must be a whole number"))?
                }
                "limit" => {
                    let n: usize = v
                        .parse()
                        .map_err(|_| invalid("limit must be a whole number"))?;
                    if n == 0 || n > MAX_LIMIT {
                        return Err(GatewayError::Invalid(format!(
                            "limit must be 1 to {MAX_LIMIT}"
                        )));
                    }
                    l.limit = Some(n);
                }
                "q" | "tier" | "status" => {}
                _ => return Err(GatewayError::Invalid(format!("unknown parameter {k:?}"))),
            }
        }
        Ok(l)
    }
}

/// One group of the listing.
struct Row<'a> {
    group: &'a Group,
    status: GroupStatus,
    /// The status comes from an admin override, not the tenants.
    overridden: bool,
    usage: Usage,
}

impl Row<'_> {
    fn json(&self) -> Value {
        row_json(self.group, self.status, self.overridden, &self.usage)
    }
}

/// One group's usage and limits as the admin API shows it.
pub(super) fn row_json(g: &Group, status: GroupStatus, overridden: bool, u: &Usage) -> Value {
    json!({
        "id": &*g.id,
        "tier": &*g.tier.name,
        "status": status,
        "status_override": overridden,
        "overage_billing": g.overage_billing,
        "calls": u.calls,
        "calls_limit": g.tier.api_calls,
        "bytes": u.bytes,
        "bytes_limit": g.tier.cdn_bytes,
        "calls_overage": u.calls_overage,
        "bytes_overage": u.bytes_overage,
    })
}

/// `used / limit`, comparable without floats (a limit of 0 is unlimited: last).
fn share(used: u64, limit: u64) -> (bool, u128) {
    if limit == 0 {
        return (true, 0);
    }
    (false, (used as u128) * 1_000_000_000 / limit as u128)
}

fn compare(a: &Row, b: &Row, by: Column, desc: bool) -> Ordering {
    let (ga, gb) = (a.group, b.group);
    let (ua, ub) = (&a.usage, &b.usage);
    let first = match by {
        Column::Id => Ordering::Equal,
        Column::Tier => ga.tier.name.cmp(&gb.tier.name),
        Column::Status => a.status.as_str().cmp(b.status.as_str()),
        Column::Calls => ua.calls.cmp(&ub.calls),
        Column::CallsLimit => ga.tier.api_calls.cmp(&gb.tier.api_calls),
        Column::CallsUsed => {
            share(ua.calls, ga.tier.api_calls).cmp(&share(ub.calls, gb.tier.api_calls))
        }
        Column::Bytes => ua.bytes.cmp(&ub.bytes),
        Column::BytesLimit => ga.tier.cdn_bytes.cmp(&gb.tier.cdn_bytes),
        Column::BytesUsed => {
            share(ua.bytes, ga.tier.cdn_bytes).cmp(&share(ub.bytes, gb.tier.cdn_bytes))
        }
        Column::CallsOverage => ua.calls_overage.cmp(&ub.calls_overage),
        Column::BytesOverage => ua.bytes_overage.cmp(&ub.bytes_overage),
    };
    let first = if desc { first.reverse() } else { first };
    // ties in id order (ascending either way), so pages never overlap
    first.then_with(|| {
        let by_id = ga.id.cmp(&gb.id);
        if desc && by == Column::Id {
            by_id.reverse()
        } else {
            by_id
        }
    })
}

/// The listing's answer: `{"month", "total", "offset", "limit", "sort", "tiers", "groups": […]}`.
pub(super) fn list(
    l: &Listing,
    tiers: Vec<&str>,
    groups: &[Group],
    overrides: &Overrides,
    store: &impl UsageStore,
) -> Result<Value, String> {
    let mut rows: Vec<Row> = groups
        .iter()
        .filter(|g| {
            l.q.as_ref()
                .is_none_or(|q| g.id.to_lowercase().contains(q.as_str()))
        })
        .filter(|g| l.tier.as_ref().is_none_or(|t| *g.tier.name == **t))
        .map(|g| Row {
            group: g,
            status: overrides.status_of(g),
            overridden: overrides.status.contains_key(&*g.id),
            usage: Usage::default(),
        })
        .filter(|r| l.status.is_none_or(|s| r.status == s))
        .collect();
    let total = rows.len();
    let fill = |rows: &mut [Row]| -> Result<(), String> {
        let ids: Vec<&str> = rows.iter().map(|r| &*r.group.id).collect();
        let usages = store.usage_many(&ids, l.month)?;
        for (r, u) in rows.iter_mut().zip(usages) {
            r.usage = u;
        }
        Ok(())
    };
    if l.sort.needs_usage() {
        fill(&mut rows)?;
    }
    let ordering = |a: &Row, b: &Row| compare(a, b, l.sort, l.desc);
    let start = l.offset.min(total);
    let end = l
        .limit
        .map_or(total, |n| start.saturating_add(n).min(total));
    if end < total {
        // only the rows up to the page's end need to be in order
        rows.select_nth_unstable_by(end, ordering);
        rows.truncate(end);
    }
    rows.sort_unstable_by(ordering);
    let page = &mut rows[start..];
    if !l.sort.needs_usage() {
        fill(page)?;
    }
    Ok(json!({
        "month": l.month.to_string(),
        "total": total,
        "offset": l.offset,
        "limit": l.limit,
        "sort": format!("{}:{}", l.sort.name(), if l.desc { "desc" } else { "asc" }),
        "tiers": tiers,
        "groups": page.iter().map(Row::json).collect::<Vec<_>>(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_parse_strictly() {
        let now = Month::from_ym(2026, 12);
        let l = Listing::parse(
            "sort=calls_used:desc&offset=500&limit=50&q=AbC&tier=pro&status=frozen",
            now,
        )
        .unwrap();
        assert_eq!(l.sort, Column::CallsUsed);
        assert!(l.desc);
        assert_eq!((l.offset, l.limit), (500, Some(50)));
        assert_eq!(l.q.as_deref(), Some("abc"));
        assert_eq!(l.status, Some(GroupStatus::Frozen));
        assert_eq!(Listing::parse("", now).unwrap().limit, None);
        for bad in [
            "limit=0",
            "limit=501",
            "limit=x",
            "offset=-1",
            "sort=nope",
            "sort=calls:up",
            "status=paused",
            "month=2026-13",
            "page=2",
        ] {
            assert!(Listing::parse(bad, now).is_err(), "{bad}");
        }
    }
}
