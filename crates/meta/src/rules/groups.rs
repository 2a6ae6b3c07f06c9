//! Group-coordinator fencing: a broker acts for a group under the claim it
//! took (node id and an epoch the store increments on every claim). A write
//! made under a claim that is no longer the group's current one is refused
//! with [`MetaError::Fenced`], so a coordinator that lost the group cannot
//! overwrite what the new one decided.

use crate::{GroupClaim, MetaError, Result};

/// Whether a write under `claim` may go ahead, given the group's `current`
/// claim row as `(node_id, epoch)` (`None` = no claim row).
pub fn check_claim(group: &str, claim: GroupClaim, current: Option<(i32, i64)>) -> Result<()> {
    if current == Some((claim.node_id, claim.epoch)) {
        Ok(())
    } else {
        Err(fenced(group, claim))
    }
}

/// The error for a write under a claim that is not the group's current one.
pub fn fenced(group: &str, claim: GroupClaim) -> MetaError {
    MetaError::Fenced {
        group: group.to_owned(),
        node_id: claim.node_id,
        epoch: claim.epoch,
    }
}
