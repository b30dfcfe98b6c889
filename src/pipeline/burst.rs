//! Step 6a: the tier's `burst_per_second`, if it has one: requests past it in one second get a
//! 429 and are not charged. An estimate per one-second window (pingora-limits), not a quota.

use super::State;
use crate::abuse::Burst;
use crate::error::GatewayError;

/// For the group the checks identified (`st.group`).
pub fn admit(burst: &Burst, st: &State) -> Result<(), GatewayError> {
    let Some(group) = &st.group else {
        return Err(GatewayError::Internal);
    };
    match group.tier.burst_per_second {
        Some(n) if !burst.admit(&group.id, n) => Err(GatewayError::BurstLimited(n)),
        _ => Ok(()),
    }
}
