//! A group of either type: classic (JoinGroup/SyncGroup, [`Group`]) or
//! KIP-848 consumer (ConsumerGroupHeartbeat, [`ConsumerGroup`]). One group
//! id is one group; an empty group changes type when a member of the other
//! protocol joins it, as Kafka allows.

use tokio::time::Instant;

use super::consumer::{ConsumerGroup, ConsumerGroupConfig};
use super::group::{Group, GroupState};
use super::saved::Saved;

pub(super) enum AnyGroup {
    Classic(Group),
    Consumer(ConsumerGroup),
}

impl AnyGroup {
    /// The classic group, if it is one.
    pub(super) fn classic(&mut self) -> Option<&mut Group> {
        match self {
            AnyGroup::Classic(g) => Some(g),
            AnyGroup::Consumer(_) => None,
        }
    }

    /// Kafka's name of the group type (ListGroups, DescribeGroups).
    pub(super) fn type_name(&self) -> &'static str {
        match self {
            AnyGroup::Classic(_) => "classic",
            AnyGroup::Consumer(_) => "consumer",
        }
    }

    /// Kafka's name of the group's state.
    pub(super) fn state_name(&self) -> &'static str {
        match self {
            AnyGroup::Classic(g) => g.state.as_str(),
            AnyGroup::Consumer(g) => g.state(),
        }
    }

    pub(super) fn is_dead(&self) -> bool {
        match self {
            AnyGroup::Classic(g) => g.state == GroupState::Dead,
            AnyGroup::Consumer(g) => g.is_dead(),
        }
    }

    /// Nothing would be lost by forgetting the group.
    pub(super) fn is_idle(&self) -> bool {
        match self {
            AnyGroup::Classic(g) => g.is_idle(),
            AnyGroup::Consumer(g) => g.is_empty() && !g.is_dead(),
        }
    }

    /// Whether DeleteGroups may remove the group.
    pub(super) fn is_empty(&self) -> bool {
        match self {
            AnyGroup::Classic(g) => g.is_empty(),
            AnyGroup::Consumer(g) => g.is_empty(),
        }
    }

    pub(super) fn mark_dead(&mut self) {
        match self {
            AnyGroup::Classic(g) => g.mark_dead(),
            AnyGroup::Consumer(g) => g.mark_dead(),
        }
    }

    pub(super) fn abort_parked(&mut self, error: i16) {
        if let AnyGroup::Classic(g) = self {
            g.abort_parked(error);
        }
    }

    /// Grows with every change worth saving.
    pub(super) fn changes(&self) -> u64 {
        match self {
            AnyGroup::Classic(g) => g.changes(),
            AnyGroup::Consumer(g) => g.changes(),
        }
    }

    /// What to save now (see [`Group::to_save`]), encoded, and the classic
    /// generation whose assignment the save completes.
    pub(super) fn to_save(&self) -> Option<(Vec<u8>, Option<i32>)> {
        match self {
            AnyGroup::Classic(g) => g.to_save().map(|(s, gen)| (s.encode(), gen)),
            AnyGroup::Consumer(g) => Some((g.to_save().encode(), None)),
        }
    }

    pub(super) fn tick(&mut self, now: Instant) {
        match self {
            AnyGroup::Classic(g) => g.tick(now),
            AnyGroup::Consumer(g) => g.tick(now),
        }
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        match self {
            AnyGroup::Classic(g) => g.next_deadline(),
            AnyGroup::Consumer(g) => g.next_deadline(),
        }
    }

    /// The group as a previous coordinator saved it.
    pub(super) fn restore(
        id: String,
        saved: Saved,
        initial_delay: std::time::Duration,
        consumer: &ConsumerGroupConfig,
        now: Instant,
    ) -> AnyGroup {
        match saved {
            Saved::Classic(s) => AnyGroup::Classic(Group::restore(id, initial_delay, s, now)),
            Saved::Consumer(s) => {
                AnyGroup::Consumer(ConsumerGroup::restore(id, consumer.clone(), s, now))
            }
        }
    }
}
