//! Step 6a: the tier's `burst_per_second`, if it has one: requests past it in one second get a
//! 429 and are not charged. An estimate per one-second window (pingora-limits), not a quota.

use crate::abuse::Burst;
use crate::config::Group;
use crate::error::GatewayError;

pub fn admit(burst: &Burst, group: &Group) -> Result<(), GatewayError> {
    match group.tier.burst_per_second {
        Some(n) if !burst.admit(&group.id, n) => Err(GatewayError::BurstLimited(n)),
        _ => Ok(()),
    }
}
