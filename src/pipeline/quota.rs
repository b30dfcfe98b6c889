//! Step 7: the group's monthly quota of each meter of the route, for the month of the quota
//! check (`State::month`). Bandwidth is checked before calls so a bandwidth refusal does not
//! spend a call: bytes used ≥ the tier's limit is a 402 (one response may overshoot), and a call
//! is taken from the quota (402 when it is used up, 503 when a shared store cannot answer and
//! its outage policy refuses). Groups with overage billing are never refused.
//!
//! Also the `RateLimit-Policy` / `RateLimit` headers every answer to an authenticated, routed
//! request carries.

use http::header::HeaderValue;

use super::State;
use crate::clock::{format_utc, Month};
use crate::error::GatewayError;
use crate::usage::{Meter, Store, Take, UsageStore};

/// Step 7: bandwidth, then a call; what was taken goes to `st.take`.
pub async fn take(store: &Store, st: &mut State) -> Result<(), GatewayError> {
    let (Some(group), Some(route), Some(month)) = (&st.group, &st.route, st.month) else {
        return Err(GatewayError::Internal);
    };
    let tier = &group.tier;
    if route.meters.bytes {
        let used = store.bytes_used(&group.id, month);
        st.bytes_used = Some(used);
        if used >= tier.cdn_bytes && !group.overage_billing {
            st.quota_refused = Some(Meter::Bytes);
            return Err(GatewayError::QuotaExceeded(Meter::Bytes, reset_at(month)));
        }
    }
    if route.meters.calls {
        match store
            .take_call(
                &group.id,
                month,
                tier.api_calls,
                group.overage_billing,
                &tier.name,
            )
            .await
        {
            Take::Refused => {
                st.quota_refused = Some(Meter::Calls);
                return Err(GatewayError::QuotaExceeded(Meter::Calls, reset_at(month)));
            }
            Take::Unavailable => return Err(GatewayError::UsageUnavailable),
            t => st.take = Some(t),
        }
    }
    Ok(())
}

/// `RateLimit-Policy` and `RateLimit` for the route's meters, or `None` when the request was
/// not authenticated to a routed path. `served` is the response body size, if known.
pub fn rate_limit_headers(
    store: &Store,
    st: &State,
    served: Option<u64>,
) -> Option<(HeaderValue, HeaderValue)> {
    let (group, route, month) = (st.group.as_ref()?, st.route.as_ref()?, st.month?);
    let tier = &group.tier;
    let policy = tier.policy(route.meters)?.clone();
    let t = month.seconds_until_end(st.now_ms);
    // built on the stack (two items of at most 62 bytes each), copied once into the value
    let mut state = [0u8; 160];
    let mut len = 0;
    let mut num = itoa::Buffer::new();
    let mut push = |name: &str, r: u64| {
        let first = len == 0;
        let mut put = |b: &[u8]| {
            state[len..len + b.len()].copy_from_slice(b);
            len += b.len();
        };
        if !first {
            put(b", ");
        }
        put(name.as_bytes());
        put(b";r=");
        put(num.format(r).as_bytes());
        put(b";t=");
        put(num.format(t).as_bytes());
    };
    if route.meters.calls {
        let r = match st.take {
            Some(Take::Admitted { remaining, .. }) => remaining,
            _ if st.quota_refused == Some(Meter::Calls) => 0,
            _ => {
                let used = store.usage(&group.id, month).calls;
                tier.api_calls.saturating_sub(used)
            }
        };
        push("\"monthly-calls\"", r);
    }
    if route.meters.bytes {
        let used = st
            .bytes_used
            .unwrap_or_else(|| store.bytes_used(&group.id, month));
        let r = tier
            .cdn_bytes
            .saturating_sub(used.saturating_add(served.unwrap_or(0)));
        push("\"monthly-bytes\"", r);
    }
    Some((policy, HeaderValue::from_bytes(&state[..len]).ok()?))
}

/// When `month`'s quota resets: `2026-12-01T00:00:00Z`.
pub fn reset_at(month: Month) -> String {
    format_utc(month.next().start_ms())
}
