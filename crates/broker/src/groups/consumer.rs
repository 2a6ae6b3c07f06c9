//! The in-memory state machine of one KIP-848 consumer group (group type
//! `consumer`, served by ConsumerGroupHeartbeat).
//!
//! Pure and synchronous like [`super::group::Group`]: every transition
//! takes `now` and runs under the group's mutex.
//!
//! Semantics follow Kafka's new group coordinator:
//! - A **group epoch** grows whenever membership, a subscription or the
//!   subscribed topics' partition counts change. The **target assignment**
//!   is recomputed by the group's assignor ([`Assignor`]) at the group
//!   epoch and stamped with it.
//! - Each member has a **member epoch** and moves to the target epoch by
//!   incremental reconciliation: first it gives up the partitions it must
//!   lose (state `UnrevokedPartitions`, epoch unchanged, until a heartbeat
//!   shows it no longer owns them), then it takes the new partitions that
//!   nobody else still owns (state `UnreleasedPartitions` while some are
//!   still held elsewhere) and its epoch becomes the target epoch. A
//!   partition is never owned by two members; the others keep consuming.
//! - A heartbeat with an epoch above the member's, or below it other than
//!   the previous epoch with owned partitions it still holds, is fenced
//!   (FENCED_MEMBER_EPOCH); the client gives up its partitions and joins
//!   again with epoch 0.
//! - Static members (`group.instance.id`) leave with epoch -2 and keep
//!   their assignment for the session timeout; a new member with the same
//!   instance id takes it over without a rebalance.
//! - A member silent for the session timeout, or that does not give up
//!   partitions within its rebalance timeout, is removed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use kafka_protocol::ResponseError;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use uuid::Uuid;

use super::assignors::{Assignment, Assignor};

/// While a member is moving to the target assignment, heartbeats come at
/// least this often, so partitions given up by one member reach the next
/// within a fraction of a second rather than a heartbeat interval (Kafka's
/// default interval is 5 s).
const RECONCILING_INTERVAL: Duration = Duration::from_millis(500);

/// Longest accepted regular expression subscription, in bytes.
const MAX_REGEX_LEN: usize = 1000;

/// Consumer-group settings (Kafka `group.consumer.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerGroupConfig {
    /// A member that sends no heartbeat for this long is removed
    /// (`group.consumer.session.timeout.ms`, 45000).
    pub session_timeout: Duration,
    /// How often members heartbeat once stable
    /// (`group.consumer.heartbeat.interval.ms`, 5000).
    pub heartbeat_interval: Duration,
    /// Most members one group may have (`group.consumer.max.size`);
    /// joins beyond it get GROUP_MAX_SIZE_REACHED.
    pub max_size: usize,
}

impl Default for ConsumerGroupConfig {
    fn default() -> Self {
        ConsumerGroupConfig {
            session_timeout: Duration::from_secs(45),
            heartbeat_interval: Duration::from_secs(5),
            max_size: 10_000,
        }
    }
}

/// The topics members may subscribe to, as of one read of the topic store.
#[derive(Debug, Default)]
pub(super) struct TopicsView {
    /// Grows with every read that differed from the previous one.
    pub version: u64,
    /// Name → (id, partition count).
    pub by_name: BTreeMap<String, (Uuid, i32)>,
}

/// The topic list as last read, shared by every consumer group of a
/// coordinator.
#[derive(Debug, Default)]
pub(super) struct TopicsCache {
    pub view: Option<(Instant, std::sync::Arc<TopicsView>)>,
}

/// Where a member is in moving to its target assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum MemberState {
    /// Holds its target assignment at the target epoch.
    Stable,
    /// Must give up partitions before it moves on.
    UnrevokedPartitions,
    /// At the target epoch, waiting for partitions other members still own.
    UnreleasedPartitions,
}

/// One member as saved and described.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct MemberRecord {
    pub id: String,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: u64,
    pub topic_names: Vec<String>,
    pub topic_regex: Option<String>,
    pub assignor: Option<String>,
    pub epoch: i32,
    pub previous_epoch: i32,
    pub state: MemberState,
    pub assigned: Assignment,
    pub revoking: Assignment,
    /// A member using the classic protocol (JoinGroup/SyncGroup/Heartbeat)
    /// in a consumer group: see [`super::migration`].
    #[serde(default)]
    pub classic: Option<ClassicMember>,
}

impl MemberRecord {
    /// A member joining: epoch 0, no partitions, no subscription yet.
    pub(super) fn joining(id: &str, client_id: &str, client_host: &str) -> Self {
        MemberRecord {
            id: id.to_string(),
            instance_id: None,
            rack_id: None,
            client_id: client_id.to_string(),
            client_host: client_host.to_string(),
            rebalance_timeout_ms: 0,
            topic_names: Vec::new(),
            topic_regex: None,
            assignor: None,
            epoch: 0,
            previous_epoch: -1,
            state: MemberState::Stable,
            assigned: Assignment::new(),
            revoking: Assignment::new(),
            classic: None,
        }
    }
}

/// What a classic member in a consumer group brought with its JoinGroup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct ClassicMember {
    pub session_timeout_ms: u64,
    /// The protocol (client-side assignor name) it is answered under.
    pub protocol: String,
    /// The version of its subscription, used for its assignment too.
    pub version: i16,
}

/// One member: its record plus the timers that are not saved.
#[derive(Debug)]
pub(super) struct Member {
    pub r: MemberRecord,
    pub(super) deadline: Instant,
    pub(super) revoke_deadline: Option<Instant>,
    /// A static member that left with epoch -2 and may come back.
    left: bool,
    /// The assignment last sent to the member.
    pub(super) sent: Option<Assignment>,
}

impl Member {
    /// A member with a fresh session.
    pub(super) fn new(r: MemberRecord, session: Duration, now: Instant) -> Self {
        Member {
            r,
            deadline: now + session,
            revoke_deadline: None,
            left: false,
            sent: None,
        }
    }
}

/// The group as a coordinator saves it (see [`super::saved`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct SavedConsumerGroup {
    pub epoch: i32,
    pub target_epoch: i32,
    pub members: Vec<MemberRecord>,
    pub target: BTreeMap<String, Assignment>,
    pub topics: BTreeMap<String, (Uuid, i32)>,
}

/// A decoded ConsumerGroupHeartbeat.
#[derive(Debug, Clone, Default)]
pub(super) struct Beat {
    pub member_id: String,
    pub epoch: i32,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub rebalance_timeout_ms: i32,
    pub topic_names: Option<Vec<String>>,
    pub topic_regex: Option<String>,
    pub assignor: Option<String>,
    pub owned: Option<Assignment>,
    pub client_id: String,
    pub client_host: String,
}

/// A heartbeat's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct BeatAnswer {
    pub member_id: String,
    pub epoch: i32,
    pub interval: Duration,
    /// The member's assignment, when it changed or the client asked anew.
    pub assignment: Option<Assignment>,
}

/// A refused heartbeat: Kafka's error code and a message for the client.
pub(super) type Refusal = (i16, String);

fn refuse(e: ResponseError, message: impl Into<String>) -> Refusal {
    (e.code(), message.into())
}

fn code(e: ResponseError) -> i16 {
    e.code()
}

/// One consumer group.
#[derive(Debug)]
pub(super) struct ConsumerGroup {
    pub id: String,
    pub epoch: i32,
    pub target_epoch: i32,
    pub members: BTreeMap<String, Member>,
    pub(super) static_members: HashMap<String, String>,
    pub target: BTreeMap<String, Assignment>,
    /// The subscribed topics as of the last refresh: a change bumps the
    /// group epoch.
    pub topics: BTreeMap<String, (Uuid, i32)>,
    /// The [`TopicsView::version`] `topics` was computed from.
    topics_version: u64,
    /// Compiled subscriptions by expression; `None`: invalid.
    regexes: HashMap<String, Option<regex::Regex>>,
    pub(super) config: ConsumerGroupConfig,
    pub(super) changes: u64,
    dead: bool,
}

impl ConsumerGroup {
    pub(super) fn new(id: String, config: ConsumerGroupConfig) -> Self {
        ConsumerGroup {
            id,
            epoch: 0,
            target_epoch: 0,
            members: BTreeMap::new(),
            static_members: HashMap::new(),
            target: BTreeMap::new(),
            topics: BTreeMap::new(),
            topics_version: 0,
            regexes: HashMap::new(),
            config,
            changes: 0,
            dead: false,
        }
    }

    /// The group as a previous coordinator saved it, every member with a
    /// fresh session.
    pub(super) fn restore(
        id: String,
        config: ConsumerGroupConfig,
        saved: SavedConsumerGroup,
        now: Instant,
    ) -> Self {
        let mut g = ConsumerGroup::new(id, config);
        g.epoch = saved.epoch;
        g.target_epoch = saved.target_epoch;
        g.target = saved.target;
        g.topics = saved.topics;
        for r in saved.members {
            if let Some(i) = &r.instance_id {
                g.static_members.insert(i.clone(), r.id.clone());
            }
            let revoke_deadline = (r.state == MemberState::UnrevokedPartitions)
                .then(|| now + Duration::from_millis(r.rebalance_timeout_ms));
            let session = g.session_of(&r);
            let mut m = Member::new(r, session, now);
            m.revoke_deadline = revoke_deadline;
            g.members.insert(m.r.id.clone(), m);
        }
        g
    }

    pub(super) fn to_save(&self) -> SavedConsumerGroup {
        SavedConsumerGroup {
            epoch: self.epoch,
            target_epoch: self.target_epoch,
            members: self.members.values().map(|m| m.r.clone()).collect(),
            target: self.target.clone(),
            topics: self.topics.clone(),
        }
    }

    /// A member's session timeout: the group's, or what a classic member
    /// asked for in its JoinGroup.
    pub(super) fn session_of(&self, r: &MemberRecord) -> Duration {
        r.classic.as_ref().map_or(self.config.session_timeout, |c| {
            Duration::from_millis(c.session_timeout_ms)
        })
    }

    pub(super) fn changes(&self) -> u64 {
        self.changes
    }

    pub(super) fn is_dead(&self) -> bool {
        self.dead
    }

    pub(super) fn mark_dead(&mut self) {
        self.dead = true;
        self.members.clear();
        self.static_members.clear();
    }

    /// No members: nothing would be lost by forgetting the group.
    pub(super) fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Kafka's name of the group state.
    pub(super) fn state(&self) -> &'static str {
        if self.dead {
            "Dead"
        } else if self.members.is_empty() {
            "Empty"
        } else if self.epoch > self.target_epoch {
            "Assigning"
        } else if self
            .members
            .values()
            .any(|m| m.r.epoch != self.target_epoch || m.r.state != MemberState::Stable)
        {
            "Reconciling"
        } else {
            "Stable"
        }
    }

    /// The assignor the group uses: the one most members name (ties: by
    /// name), else `uniform`.
    pub(super) fn assignor(&self) -> Assignor {
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for m in self.members.values() {
            if let Some(a) = &m.r.assignor {
                *votes.entry(a.as_str()).or_default() += 1;
            }
        }
        votes
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
            .and_then(|(name, _)| Assignor::from_name(name))
            .unwrap_or(Assignor::Uniform)
    }

    /// Topics named by every member's subscription.
    pub(super) fn subscribed_names(&self) -> BTreeSet<String> {
        self.topics.keys().cloned().collect()
    }

    /// One heartbeat (ConsumerGroupHeartbeat). `topics` is a recent read
    /// of the topic store.
    pub(super) fn heartbeat(
        &mut self,
        b: Beat,
        topics: &TopicsView,
        now: Instant,
    ) -> Result<BeatAnswer, Refusal> {
        if self.dead {
            return Err(refuse(ResponseError::NotCoordinator, ""));
        }
        if let Some(a) = &b.assignor {
            if Assignor::from_name(a).is_none() {
                return Err(refuse(
                    ResponseError::UnsupportedAssignor,
                    format!("assignor {a} is not supported; use uniform or range"),
                ));
            }
        }
        if let Some(re) = b.topic_regex.as_deref().filter(|r| !r.is_empty()) {
            if self.compiled(re).is_none() {
                return Err(refuse(
                    ResponseError::InvalidRegularExpression,
                    format!("subscribed topic regex {re:?} is not valid"),
                ));
            }
        }
        let mut bump = false;
        match b.epoch {
            -1 | -2 => return self.leave(&b, now),
            0 => bump = self.join(&b, now)?,
            e if e > 0 => self.check_member(&b)?,
            e => {
                return Err(refuse(
                    ResponseError::InvalidRequest,
                    format!("member epoch {e} is not valid"),
                ))
            }
        }
        if let Some(m) = self.members.get_mut(&b.member_id) {
            m.deadline = now + self.config.session_timeout;
            m.r.client_id.clone_from(&b.client_id);
            m.r.client_host.clone_from(&b.client_host);
            if b.rack_id.is_some() {
                m.r.rack_id.clone_from(&b.rack_id);
            }
            if let Ok(ms) = u64::try_from(b.rebalance_timeout_ms) {
                m.r.rebalance_timeout_ms = ms;
            }
            if let Some(mut names) = b.topic_names.clone() {
                names.sort();
                names.dedup();
                if names != m.r.topic_names {
                    m.r.topic_names = names;
                    bump = true;
                }
            }
            if let Some(re) = &b.topic_regex {
                let re = Some(re.clone()).filter(|r| !r.is_empty());
                if re != m.r.topic_regex {
                    m.r.topic_regex = re;
                    bump = true;
                }
            }
            if b.assignor.is_some() && b.assignor != m.r.assignor {
                m.r.assignor.clone_from(&b.assignor);
                bump = true;
            }
        }
        self.advance(topics, bump);
        self.reconcile(&b.member_id, b.owned.as_ref(), now);
        let Some(m) = self.members.get_mut(&b.member_id) else {
            return Err(refuse(ResponseError::UnknownMemberId, ""));
        };
        let changed = m.sent.as_ref() != Some(&m.r.assigned);
        let assignment = (changed || b.epoch == 0 || b.owned.is_some() && b.topic_names.is_some())
            .then(|| m.r.assigned.clone());
        if assignment.is_some() {
            m.sent = Some(m.r.assigned.clone());
        }
        let reconciling = m.r.state != MemberState::Stable || m.r.epoch != self.target_epoch;
        let interval = if reconciling {
            self.config.heartbeat_interval.min(RECONCILING_INTERVAL)
        } else {
            self.config.heartbeat_interval
        };
        Ok(BeatAnswer {
            member_id: m.r.id.clone(),
            epoch: m.r.epoch,
            interval,
            assignment,
        })
    }

    /// Bring the group to its newest epoch: the subscribed topics as
    /// `topics` has them, a new group epoch if they or the membership
    /// changed (`changed`), and the target assignment of that epoch.
    pub(super) fn advance(&mut self, topics: &TopicsView, changed: bool) {
        if self.refresh_topics(topics, changed) || changed {
            self.bump();
        }
        if self.epoch > self.target_epoch {
            self.compute_target();
        }
    }

    pub(super) fn bump(&mut self) {
        self.epoch = self.epoch.saturating_add(1);
        self.changes += 1;
    }

    fn compiled(&mut self, re: &str) -> Option<&regex::Regex> {
        if !self.regexes.contains_key(re) {
            // Kafka matches the whole topic name (RE2J syntax, which the
            // `regex` crate shares, linear time), within a size budget.
            let compiled = (re.len() <= MAX_REGEX_LEN)
                .then(|| {
                    regex::RegexBuilder::new(&format!("^(?:{re})$"))
                        .size_limit(1 << 20)
                        .dfa_size_limit(1 << 20)
                        .build()
                        .ok()
                })
                .flatten();
            if self.regexes.len() >= 64 {
                self.regexes.clear();
            }
            self.regexes.insert(re.to_string(), compiled);
        }
        self.regexes.get(re).and_then(Option::as_ref)
    }

    /// The topics `member` subscribes to that exist, by name.
    fn resolve(&mut self, member: &MemberRecord, topics: &TopicsView) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = member
            .topic_names
            .iter()
            .filter(|n| topics.by_name.contains_key(*n))
            .cloned()
            .collect();
        if let Some(re) = member.topic_regex.clone() {
            if let Some(re) = self.compiled(&re).cloned() {
                out.extend(
                    topics
                        .by_name
                        .keys()
                        .filter(|n| !crate::topics::is_internal_topic(n) && re.is_match(n))
                        .cloned(),
                );
            }
        }
        out
    }

    /// Recompute the subscribed topics if the topics changed since the
    /// last time (or `force`); true if they differ now.
    pub(super) fn refresh_topics(&mut self, topics: &TopicsView, force: bool) -> bool {
        if !force && topics.version == self.topics_version {
            return false;
        }
        self.topics_version = topics.version;
        let records: Vec<MemberRecord> = self.members.values().map(|m| m.r.clone()).collect();
        let mut subscribed = BTreeMap::new();
        for r in &records {
            for name in self.resolve(r, topics) {
                if let Some(info) = topics.by_name.get(&name) {
                    subscribed.insert(name, *info);
                }
            }
        }
        if subscribed == self.topics {
            return false;
        }
        self.topics = subscribed;
        true
    }

    /// A new target assignment at the group epoch.
    pub(super) fn compute_target(&mut self) {
        let by_name: BTreeMap<String, (Uuid, i32)> = self.topics.clone();
        let mut subscriptions: BTreeMap<String, BTreeSet<Uuid>> = BTreeMap::new();
        let view = TopicsView {
            version: self.topics_version,
            by_name: by_name.clone(),
        };
        let records: Vec<MemberRecord> = self.members.values().map(|m| m.r.clone()).collect();
        for r in &records {
            let ids = self
                .resolve(r, &view)
                .iter()
                .filter_map(|n| by_name.get(n).map(|(id, _)| *id))
                .collect();
            subscriptions.insert(r.id.clone(), ids);
        }
        let partitions: BTreeMap<Uuid, i32> = by_name.values().copied().collect();
        self.target = self
            .assignor()
            .assign(&subscriptions, &partitions, &self.target);
        self.target_epoch = self.epoch;
        self.changes += 1;
    }

    /// A member joins (epoch 0). `Ok(true)`: membership changed (a new
    /// member, or one starting over); `Ok(false)`: a static member took
    /// over its instance's place.
    fn join(&mut self, b: &Beat, now: Instant) -> Result<bool, Refusal> {
        if b.member_id.is_empty() {
            return Err(refuse(ResponseError::InvalidRequest, "member id is empty"));
        }
        if b.rebalance_timeout_ms < 0 {
            return Err(refuse(
                ResponseError::InvalidRequest,
                "rebalance timeout must be given when joining",
            ));
        }
        if b.topic_names.is_none() && b.topic_regex.as_deref().is_none_or(str::is_empty) {
            return Err(refuse(
                ResponseError::InvalidRequest,
                "subscribed topic names or regex must be given when joining",
            ));
        }
        if b.owned.as_ref().is_some_and(|o| !o.is_empty()) {
            return Err(refuse(
                ResponseError::InvalidRequest,
                "owned partitions must be empty when joining",
            ));
        }
        if let Some(instance) = &b.instance_id {
            if let Some(old) = self.static_members.get(instance).cloned() {
                if old != b.member_id {
                    let left = self.members.get(&old).is_some_and(|m| m.left);
                    if !left {
                        return Err(refuse(
                            ResponseError::UnreleasedInstanceId,
                            format!("instance id {instance} is in use by member {old}"),
                        ));
                    }
                    // Take over the departed static member's place: same
                    // epoch, same assignment, no rebalance.
                    if let Some(mut m) = self.members.remove(&old) {
                        m.r.id.clone_from(&b.member_id);
                        m.left = false;
                        m.sent = None;
                        m.deadline = now + self.config.session_timeout;
                        if let Some(t) = self.target.remove(&old) {
                            self.target.insert(b.member_id.clone(), t);
                        }
                        self.members.insert(b.member_id.clone(), m);
                    }
                    self.static_members
                        .insert(instance.clone(), b.member_id.clone());
                    self.changes += 1;
                    return Ok(false);
                }
            }
        }
        // The same member id joining again lost its state (it was fenced
        // or restarted): it starts over, owning nothing.
        if self.members.remove(&b.member_id).is_some() {
            self.target.remove(&b.member_id);
        } else if self.members.len() >= self.config.max_size {
            return Err(refuse(
                ResponseError::GroupMaxSizeReached,
                format!("group has {} members, the most allowed", self.members.len()),
            ));
        }
        if let Some(instance) = &b.instance_id {
            self.static_members
                .insert(instance.clone(), b.member_id.clone());
        }
        let r = MemberRecord {
            instance_id: b.instance_id.clone(),
            rack_id: b.rack_id.clone(),
            rebalance_timeout_ms: u64::try_from(b.rebalance_timeout_ms).unwrap_or(0),
            ..MemberRecord::joining(&b.member_id, &b.client_id, &b.client_host)
        };
        self.members.insert(
            b.member_id.clone(),
            Member::new(r, self.config.session_timeout, now),
        );
        Ok(true)
    }

    /// A heartbeat of a member already in the group: is it who it says?
    fn check_member(&self, b: &Beat) -> Result<(), Refusal> {
        let Some(m) = self.members.get(&b.member_id) else {
            return Err(refuse(
                ResponseError::UnknownMemberId,
                format!("member {} is not in the group", b.member_id),
            ));
        };
        if m.r.classic.is_some() {
            return Err(refuse(
                ResponseError::UnknownMemberId,
                format!("member {} uses the classic protocol", b.member_id),
            ));
        }
        if let Some(i) = &b.instance_id {
            if self.static_members.get(i) != Some(&b.member_id) {
                return Err(refuse(
                    ResponseError::FencedInstanceId,
                    format!("instance id {i} belongs to another member"),
                ));
            }
        }
        let stale = m.left
            || b.epoch > m.r.epoch
            || (b.epoch < m.r.epoch
                && (b.epoch != m.r.previous_epoch
                    || !b.owned.as_ref().is_some_and(|o| subset(o, &m.r.assigned))));
        if stale {
            return Err(refuse(
                ResponseError::FencedMemberEpoch,
                format!(
                    "member epoch {} is fenced; the member's epoch is {}",
                    b.epoch, m.r.epoch
                ),
            ));
        }
        Ok(())
    }

    fn leave(&mut self, b: &Beat, now: Instant) -> Result<BeatAnswer, Refusal> {
        let known = self.members.contains_key(&b.member_id);
        if !known {
            return Err(refuse(
                ResponseError::UnknownMemberId,
                format!("member {} is not in the group", b.member_id),
            ));
        }
        if let Some(i) = &b.instance_id {
            if self.static_members.get(i) != Some(&b.member_id) {
                return Err(refuse(
                    ResponseError::FencedInstanceId,
                    format!("instance id {i} belongs to another member"),
                ));
            }
        }
        let is_static = self
            .members
            .get(&b.member_id)
            .is_some_and(|m| m.r.instance_id.is_some());
        if b.epoch == -2 && is_static {
            // Away for a moment (a restart): the assignment waits for it
            // until the session timeout.
            if let Some(m) = self.members.get_mut(&b.member_id) {
                m.left = true;
                m.deadline = now + self.config.session_timeout;
            }
        } else {
            self.remove_member(&b.member_id);
        }
        Ok(BeatAnswer {
            member_id: b.member_id.clone(),
            epoch: b.epoch,
            interval: Duration::ZERO,
            assignment: None,
        })
    }

    /// Remove a member, freeing its partitions, and assign anew.
    pub(super) fn remove_member(&mut self, id: &str) {
        let Some(m) = self.members.remove(id) else {
            return;
        };
        if let Some(i) = &m.r.instance_id {
            if self.static_members.get(i).map(String::as_str) == Some(id) {
                self.static_members.remove(i);
            }
        }
        self.target.remove(id);
        self.bump();
        if !self.members.is_empty() {
            self.compute_target();
        }
    }

    /// Partitions owned (assigned or being revoked) by members other than
    /// `except`.
    pub(super) fn owned_elsewhere(&self, except: &str) -> BTreeSet<(Uuid, i32)> {
        self.members
            .values()
            .filter(|m| m.r.id != except)
            .flat_map(|m| {
                m.r.assigned
                    .iter()
                    .chain(m.r.revoking.iter())
                    .flat_map(|(t, ps)| ps.iter().map(move |p| (*t, *p)))
            })
            .collect()
    }

    /// Move `member` toward its target assignment as far as it can go now
    /// (Kafka's `CurrentAssignmentBuilder`).
    pub(super) fn reconcile(&mut self, member: &str, owned: Option<&Assignment>, now: Instant) {
        let Some(m) = self.members.get(member) else {
            return;
        };
        let (state, epoch) = (m.r.state, m.r.epoch);
        let advance = match state {
            MemberState::Stable => epoch != self.target_epoch,
            MemberState::UnrevokedPartitions => {
                // Done once a heartbeat shows none of them owned.
                owned.is_some_and(|o| disjoint(o, &m.r.revoking))
            }
            MemberState::UnreleasedPartitions => true,
        };
        if !advance {
            return;
        }
        let target = self.target.get(member).cloned().unwrap_or_default();
        let elsewhere = self.owned_elsewhere(member);
        let target_epoch = self.target_epoch;
        let Some(m) = self.members.get_mut(member) else {
            return;
        };
        let before = m.r.clone();
        m.r.revoking.clear();
        let mut keep = Assignment::new();
        let mut revoke = Assignment::new();
        for (t, ps) in &m.r.assigned {
            for p in ps {
                let into = if target.get(t).is_some_and(|s| s.contains(p)) {
                    &mut keep
                } else {
                    &mut revoke
                };
                into.entry(*t).or_default().insert(*p);
            }
        }
        if !revoke.is_empty() {
            m.r.assigned = keep;
            m.r.revoking = revoke;
            m.r.state = MemberState::UnrevokedPartitions;
            m.revoke_deadline = Some(now + Duration::from_millis(m.r.rebalance_timeout_ms));
        } else {
            let mut assigned = keep;
            let mut unreleased = false;
            for (t, ps) in &target {
                for p in ps {
                    if assigned.get(t).is_some_and(|s| s.contains(p)) {
                        continue;
                    }
                    if elsewhere.contains(&(*t, *p)) {
                        unreleased = true;
                    } else {
                        assigned.entry(*t).or_default().insert(*p);
                    }
                }
            }
            m.r.assigned = assigned;
            m.r.state = if unreleased {
                MemberState::UnreleasedPartitions
            } else {
                MemberState::Stable
            };
            m.revoke_deadline = None;
            if m.r.epoch != target_epoch {
                m.r.previous_epoch = m.r.epoch;
                m.r.epoch = target_epoch;
            }
        }
        if m.r != before {
            self.changes += 1;
        }
    }

    /// Remove members whose session or revocation time ran out.
    pub(super) fn tick(&mut self, now: Instant) {
        if self.dead {
            return;
        }
        let expired: Vec<(String, &'static str)> = self
            .members
            .values()
            .filter_map(|m| {
                if m.deadline <= now {
                    Some((m.r.id.clone(), "session expired"))
                } else if m.revoke_deadline.is_some_and(|d| d <= now) {
                    Some((m.r.id.clone(), "did not revoke partitions in time"))
                } else {
                    None
                }
            })
            .collect();
        for (id, why) in expired {
            tracing::info!(group = %self.id, member = %id, why, "removing consumer group member");
            self.remove_member(&id);
        }
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.members
            .values()
            .flat_map(|m| std::iter::once(m.deadline).chain(m.revoke_deadline))
            .min()
    }

    /// Whether an offset commit (or fetch) by `member_id` at `epoch` may
    /// proceed. A negative epoch is a simple commit, allowed only while the
    /// group has no members. `version`: the OffsetCommit version (commits
    /// below v9 cannot carry a member epoch).
    pub(super) fn validate_commit(
        &self,
        member_id: &str,
        epoch: i32,
        version: Option<i16>,
    ) -> Result<(), i16> {
        if self.dead {
            return Err(code(ResponseError::CoordinatorNotAvailable));
        }
        if epoch < 0 && member_id.is_empty() && self.members.is_empty() {
            return Ok(());
        }
        let Some(m) = self.members.get(member_id) else {
            return Err(code(ResponseError::UnknownMemberId));
        };
        if m.r.classic.is_some() {
            // A classic member commits under its generation (its epoch).
            return if epoch == m.r.epoch {
                Ok(())
            } else {
                Err(code(ResponseError::IllegalGeneration))
            };
        }
        if version.is_some_and(|v| v < 9) {
            return Err(code(ResponseError::UnsupportedVersion));
        }
        if epoch != m.r.epoch {
            return Err(code(ResponseError::StaleMemberEpoch));
        }
        Ok(())
    }

    /// Each member's record and target, for ConsumerGroupDescribe.
    pub(super) fn described(&self) -> Vec<(&MemberRecord, Assignment)> {
        self.members
            .values()
            .map(|m| (&m.r, self.target.get(&m.r.id).cloned().unwrap_or_default()))
            .collect()
    }
}

fn subset(a: &Assignment, b: &Assignment) -> bool {
    a.iter()
        .all(|(t, ps)| ps.is_empty() || b.get(t).is_some_and(|s| ps.is_subset(s)))
}

fn disjoint(a: &Assignment, b: &Assignment) -> bool {
    b.iter()
        .all(|(t, ps)| a.get(t).is_none_or(|s| s.is_disjoint(ps)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(topics: &[(&str, u128, i32)]) -> TopicsView {
        TopicsView {
            version: 1,
            by_name: topics
                .iter()
                .map(|(n, id, p)| (n.to_string(), (Uuid::from_u128(*id), *p)))
                .collect(),
        }
    }

    fn join(id: &str, topics: &[&str]) -> Beat {
        Beat {
            member_id: id.into(),
            epoch: 0,
            rebalance_timeout_ms: 30_000,
            topic_names: Some(topics.iter().map(|t| t.to_string()).collect()),
            owned: Some(Assignment::new()),
            ..Beat::default()
        }
    }

    fn beat(id: &str, epoch: i32, owned: &Assignment) -> Beat {
        Beat {
            member_id: id.into(),
            epoch,
            rebalance_timeout_ms: -1,
            owned: Some(owned.clone()),
            ..Beat::default()
        }
    }

    fn size(a: &Assignment) -> usize {
        a.values().map(BTreeSet::len).sum()
    }

    /// Heartbeat every member (acknowledging what it was told) until
    /// nothing changes; returns each member's (epoch, assignment).
    fn settle(
        g: &mut ConsumerGroup,
        v: &TopicsView,
        held: &mut BTreeMap<String, (i32, Assignment)>,
        now: Instant,
    ) {
        for _ in 0..10 {
            let ids: Vec<String> = held.keys().cloned().collect();
            for id in ids {
                let (epoch, owned) = held[&id].clone();
                let a = g
                    .heartbeat(beat(&id, epoch, &owned), v, now)
                    .expect("heartbeat");
                let owned = a.assignment.unwrap_or(owned);
                held.insert(id, (a.epoch, owned));
            }
        }
    }

    fn no_overlap(held: &BTreeMap<String, (i32, Assignment)>) {
        let mut seen = BTreeSet::new();
        for (_, a) in held.values() {
            for (t, ps) in a {
                for p in ps {
                    assert!(
                        seen.insert((*t, *p)),
                        "partition {t}/{p} owned twice: {held:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn three_members_split_six_partitions_and_a_fourth_takes_only_what_moves() {
        let now = Instant::now();
        let v = view(&[("t", 1, 6)]);
        let mut g = ConsumerGroup::new("g".into(), ConsumerGroupConfig::default());
        let mut held = BTreeMap::new();
        for id in ["a", "b", "c"] {
            let a = g.heartbeat(join(id, &["t"]), &v, now).expect("join");
            held.insert(id.to_string(), (a.epoch, a.assignment.unwrap_or_default()));
            no_overlap(&held);
        }
        settle(&mut g, &v, &mut held, now);
        no_overlap(&held);
        assert!(held.values().all(|(_, a)| size(a) == 2), "{held:?}");
        assert_eq!(g.state(), "Stable");
        let before = held.clone();

        let a = g.heartbeat(join("d", &["t"]), &v, now).expect("join");
        held.insert("d".into(), (a.epoch, a.assignment.unwrap_or_default()));
        settle(&mut g, &v, &mut held, now);
        no_overlap(&held);
        assert_eq!(held.values().map(|(_, a)| size(a)).sum::<usize>(), 6);
        // Six over four members is 2, 2, 1, 1: only the newcomer's one moved.
        let lost: usize = ["a", "b", "c"]
            .iter()
            .map(|m| size(&before[*m].1) - size(&held[*m].1))
            .sum();
        assert_eq!(lost, 1);
        assert_eq!(g.state(), "Stable");
        assert!(held.values().all(|(e, _)| *e == g.epoch));
    }

    #[test]
    fn a_partition_waits_until_its_previous_owner_revokes_it() {
        let now = Instant::now();
        let v = view(&[("t", 1, 2)]);
        let mut g = ConsumerGroup::new("g".into(), ConsumerGroupConfig::default());
        let a = g.heartbeat(join("a", &["t"]), &v, now).expect("join");
        let a_owned = a.assignment.unwrap_or_default();
        assert_eq!(size(&a_owned), 2);
        let b = g.heartbeat(join("b", &["t"]), &v, now).expect("join");
        // b is at the new epoch but gets nothing while a still owns both.
        assert_eq!(size(&b.assignment.clone().unwrap_or_default()), 0);
        // a learns it must give one up; its epoch stays.
        let a2 = g
            .heartbeat(beat("a", a.epoch, &a_owned), &v, now)
            .expect("hb");
        assert_eq!(a2.epoch, a.epoch);
        let kept = a2.assignment.expect("revocation is sent");
        assert_eq!(size(&kept), 1);
        // Still nothing for b until a acknowledges.
        let b2 = g
            .heartbeat(beat("b", b.epoch, &Assignment::new()), &v, now)
            .expect("hb");
        assert!(b2.assignment.is_none_or(|x| x.is_empty()));
        let a3 = g
            .heartbeat(beat("a", a.epoch, &kept), &v, now)
            .expect("ack");
        assert_eq!(a3.epoch, g.epoch);
        let b3 = g
            .heartbeat(beat("b", b.epoch, &Assignment::new()), &v, now)
            .expect("hb");
        assert_eq!(size(&b3.assignment.expect("assigned")), 1);
    }

    #[test]
    fn epochs_are_fenced() {
        let now = Instant::now();
        let v = view(&[("t", 1, 2)]);
        let mut g = ConsumerGroup::new("g".into(), ConsumerGroupConfig::default());
        let a = g.heartbeat(join("a", &["t"]), &v, now).expect("join");
        let owned = a.assignment.unwrap_or_default();
        let err = g
            .heartbeat(beat("a", a.epoch + 1, &owned), &v, now)
            .expect_err("refused");
        assert_eq!(err.0, code(ResponseError::FencedMemberEpoch));
        let err = g
            .heartbeat(beat("x", 3, &owned), &v, now)
            .expect_err("refused");
        assert_eq!(err.0, code(ResponseError::UnknownMemberId));
        assert_eq!(
            g.validate_commit("a", a.epoch + 1, Some(9)),
            Err(code(ResponseError::StaleMemberEpoch))
        );
        assert_eq!(g.validate_commit("a", a.epoch, Some(9)), Ok(()));
        assert_eq!(
            g.validate_commit("", -1, Some(9)),
            Err(code(ResponseError::UnknownMemberId))
        );
    }

    #[test]
    fn a_static_member_comes_back_to_its_partitions() {
        let now = Instant::now();
        let v = view(&[("t", 1, 4)]);
        let mut g = ConsumerGroup::new("g".into(), ConsumerGroupConfig::default());
        let mut held = BTreeMap::new();
        for (id, inst) in [("a", "ia"), ("b", "ib")] {
            let mut j = join(id, &["t"]);
            j.instance_id = Some(inst.into());
            let a = g.heartbeat(j, &v, now).expect("join");
            held.insert(id.to_string(), (a.epoch, a.assignment.unwrap_or_default()));
        }
        settle(&mut g, &v, &mut held, now);
        let epoch = g.epoch;
        let mut leave = beat("a", -2, &Assignment::new());
        leave.instance_id = Some("ia".into());
        assert_eq!(g.heartbeat(leave, &v, now).expect("leave").epoch, -2);
        // Another process with the same instance id gets a's place.
        let mut j = join("a2", &["t"]);
        j.instance_id = Some("ia".into());
        let back = g.heartbeat(j, &v, now).expect("rejoin");
        assert_eq!(back.assignment.expect("assignment"), held["a"].1);
        assert_eq!(g.epoch, epoch, "no rebalance");
        // While a2 is in, a third process with that id is refused.
        let mut j = join("a3", &["t"]);
        j.instance_id = Some("ia".into());
        let err = g.heartbeat(j, &v, now).expect_err("refused");
        assert_eq!(err.0, code(ResponseError::UnreleasedInstanceId));
    }

    #[test]
    fn silent_members_go_and_their_partitions_move() {
        let now = Instant::now();
        let v = view(&[("t", 1, 2)]);
        let mut g = ConsumerGroup::new("g".into(), ConsumerGroupConfig::default());
        let mut held = BTreeMap::new();
        for id in ["a", "b"] {
            let a = g.heartbeat(join(id, &["t"]), &v, now).expect("join");
            held.insert(id.to_string(), (a.epoch, a.assignment.unwrap_or_default()));
        }
        settle(&mut g, &v, &mut held, now);
        let later = now + Duration::from_secs(30);
        let (e, o) = held["a"].clone();
        g.heartbeat(beat("a", e, &o), &v, later).expect("a stays");
        g.tick(now + Duration::from_secs(50));
        assert!(!g.members.contains_key("b"));
        held.remove("b");
        settle(&mut g, &v, &mut held, now + Duration::from_secs(50));
        assert_eq!(size(&held["a"].1), 2);
    }

    #[test]
    fn regex_subscriptions_follow_new_topics() {
        let now = Instant::now();
        let mut g = ConsumerGroup::new("g".into(), ConsumerGroupConfig::default());
        let mut j = join("a", &[]);
        j.topic_names = None;
        j.topic_regex = Some("orders-.*".into());
        let v1 = view(&[("orders-eu", 1, 1), ("payments", 2, 1)]);
        let a = g.heartbeat(j, &v1, now).expect("join");
        assert_eq!(a.assignment.expect("a").len(), 1);
        let mut v2 = view(&[("orders-eu", 1, 1), ("orders-us", 3, 2), ("payments", 2, 1)]);
        v2.version = 2;
        let owned: Assignment = [(Uuid::from_u128(1), BTreeSet::from([0]))].into();
        let a2 = g
            .heartbeat(beat("a", a.epoch, &owned), &v2, now)
            .expect("hb");
        assert_eq!(size(&a2.assignment.expect("grew")), 3);
        let mut bad = join("b", &[]);
        bad.topic_names = None;
        bad.topic_regex = Some("(".into());
        assert_eq!(
            g.heartbeat(bad, &v2, now).expect_err("refused").0,
            code(ResponseError::InvalidRegularExpression)
        );
    }
}
