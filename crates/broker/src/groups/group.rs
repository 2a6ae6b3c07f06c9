//! The in-memory state machine of one classic consumer group.
//!
//! Pure and synchronous: every transition takes `now` and runs under the
//! group's mutex, so it never awaits. Requests that must wait for a phase to
//! complete (JoinGroup until every member rejoined, a follower's SyncGroup
//! until the leader's assignment arrives) get a `oneshot` receiver; the
//! transition that completes the phase answers every parked sender.
//!
//! Semantics follow Apache Kafka's classic `GroupCoordinator`: states
//! Empty → PreparingRebalance → CompletingRebalance → Stable, generation
//! ids, protocol election by vote, the first member to join leads, static
//! membership fences the replaced member id, and members whose session
//! deadline passes are evicted (which starts a rebalance).

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::ResponseError;
use tokio::sync::oneshot;
use tokio::time::Instant;
use uuid::Uuid;

use super::saved::{SavedGroup, SavedMember};

pub(super) const NONE: i16 = 0;

/// How long a new group's first rebalance waits after the latest join for
/// another member (bounded by `group.initial.rebalance.delay.ms`): longer
/// than the gap between processes started together, short enough that a
/// lone consumer's first one-second poll still gets records.
pub(super) const INITIAL_QUIET: Duration = Duration::from_millis(400);

pub(super) fn code(e: ResponseError) -> i16 {
    e.code()
}

/// Group state, as Kafka names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl GroupState {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

/// One member as listed to the leader in a JoinGroup answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct JoinMember {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub metadata: Bytes,
}

/// Version-independent JoinGroup answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct JoinOutcome {
    pub error: i16,
    pub generation_id: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: String,
    pub member_id: String,
    pub members: Vec<JoinMember>,
}

impl JoinOutcome {
    pub(super) fn error(error: i16, member_id: impl Into<String>) -> Self {
        JoinOutcome {
            error,
            generation_id: -1,
            protocol_type: None,
            protocol_name: None,
            leader: String::new(),
            member_id: member_id.into(),
            members: Vec::new(),
        }
    }
}

/// Version-independent SyncGroup answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SyncOutcome {
    pub error: i16,
    pub assignment: Bytes,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
}

impl SyncOutcome {
    pub(super) fn error(error: i16) -> Self {
        SyncOutcome {
            error,
            assignment: Bytes::new(),
            protocol_type: None,
            protocol_name: None,
        }
    }
}

/// An answer that is ready now or will be sent when a phase completes.
pub(super) enum Reply<T> {
    Now(T),
    Wait(oneshot::Receiver<T>),
}

/// A decoded JoinGroup request.
#[derive(Debug, Clone)]
pub(super) struct JoinParams {
    pub member_id: String,
    pub instance_id: Option<String>,
    /// JoinGroup v4+: an unknown member first gets MEMBER_ID_REQUIRED.
    pub require_known_member_id: bool,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
}

/// A decoded SyncGroup request.
#[derive(Debug, Clone)]
pub(super) struct SyncParams {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub generation_id: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub assignments: Vec<(String, Bytes)>,
}

/// One member of the group.
pub(super) struct Member {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
    awaiting_join: Option<oneshot::Sender<JoinOutcome>>,
    awaiting_sync: Option<oneshot::Sender<SyncOutcome>>,
    deadline: Instant,
}

impl Member {
    fn supports(&self, protocol: &str) -> bool {
        self.protocols.iter().any(|(n, _)| n == protocol)
    }

    /// Metadata this member sent for `protocol` (empty if none).
    pub(super) fn metadata(&self, protocol: Option<&str>) -> Bytes {
        protocol
            .and_then(|p| self.protocols.iter().find(|(n, _)| n == p))
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }

    fn parked(&self) -> bool {
        self.awaiting_join.is_some() || self.awaiting_sync.is_some()
    }

    fn update(&mut self, p: &JoinParams, now: Instant) {
        self.client_id.clone_from(&p.client_id);
        self.client_host.clone_from(&p.client_host);
        self.session_timeout = p.session_timeout;
        self.rebalance_timeout = p.rebalance_timeout;
        self.protocols.clone_from(&p.protocols);
        self.deadline = now + p.session_timeout;
    }
}

/// One classic group.
pub(super) struct Group {
    pub id: String,
    pub state: GroupState,
    pub generation_id: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: Option<String>,
    pub members: Vec<Member>,
    static_members: HashMap<String, String>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, with their expiry.
    pending: HashMap<String, Instant>,
    join_deadline: Option<Instant>,
    /// During a new group's first rebalance: when it completes at the
    /// latest (`group.initial.rebalance.delay.ms` after it began).
    initial_delay_until: Option<Instant>,
    initial_delay: Duration,
    /// Grows whenever what [`Group::to_save`] returns changes, so the
    /// coordinator saves each change once.
    changes: u64,
    /// The generation whose leader assignment is being saved: its members'
    /// SyncGroup answers wait until the save ends (Kafka answers them only
    /// once the group record is written).
    saving: Option<i32>,
}

impl Group {
    pub(super) fn new(id: String, initial_delay: Duration) -> Self {
        Group {
            id,
            state: GroupState::Empty,
            generation_id: 0,
            protocol_type: None,
            protocol_name: None,
            leader: None,
            members: Vec::new(),
            static_members: HashMap::new(),
            pending: HashMap::new(),
            join_deadline: None,
            initial_delay_until: None,
            initial_delay,
            changes: 0,
            saving: None,
        }
    }

    /// The group as a previous coordinator saved it: Stable with its
    /// members (each with a fresh session), or Empty at its generation.
    pub(super) fn restore(
        id: String,
        initial_delay: Duration,
        saved: SavedGroup,
        now: Instant,
    ) -> Self {
        let mut g = Group::new(id, initial_delay);
        g.generation_id = saved.generation_id;
        g.protocol_type = saved.protocol_type;
        g.protocol_name = saved.protocol_name;
        g.leader = saved.leader;
        for m in saved.members {
            if let Some(instance) = &m.instance_id {
                g.static_members.insert(instance.clone(), m.id.clone());
            }
            g.members.push(Member {
                id: m.id,
                instance_id: m.instance_id,
                client_id: m.client_id,
                client_host: m.client_host,
                session_timeout: m.session_timeout,
                rebalance_timeout: m.rebalance_timeout,
                protocols: g
                    .protocol_name
                    .iter()
                    .map(|p| (p.clone(), m.metadata.clone()))
                    .collect(),
                assignment: m.assignment,
                awaiting_join: None,
                awaiting_sync: None,
                deadline: now + m.session_timeout,
            });
        }
        if !g.members.is_empty() {
            g.state = GroupState::Stable;
            if !g.leader.as_deref().is_some_and(|l| g.has_member(l)) {
                g.leader = g.members.first().map(|m| m.id.clone());
            }
        }
        g
    }

    /// How many saveable changes the group went through.
    pub(super) fn changes(&self) -> u64 {
        self.changes
    }

    /// What to save now, if the group is in a state Kafka records: Stable
    /// (or its assignment being saved) with members, or Empty. Mid-rebalance
    /// the previous record stays. Also returns the generation whose
    /// assignment this save completes, if any.
    pub(super) fn to_save(&self) -> Option<(SavedGroup, Option<i32>)> {
        let saving = self
            .saving
            .filter(|g| *g == self.generation_id && self.state == GroupState::CompletingRebalance);
        if !(matches!(self.state, GroupState::Stable | GroupState::Empty) || saving.is_some()) {
            return None;
        }
        let protocol = self.protocol_name.as_deref();
        let members = self
            .members
            .iter()
            .map(|m| SavedMember {
                id: m.id.clone(),
                instance_id: m.instance_id.clone(),
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                session_timeout: m.session_timeout,
                rebalance_timeout: m.rebalance_timeout,
                metadata: m.metadata(protocol),
                assignment: m.assignment.clone(),
            })
            .collect();
        let saved = SavedGroup {
            generation_id: self.generation_id,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            leader: self.leader.clone(),
            members,
        };
        Some((saved, saving))
    }

    /// The save of `generation`'s assignment ended. On success the group
    /// becomes Stable and every parked SyncGroup gets its assignment; on
    /// failure they get `Err(code)` and the group rebalances, as in Kafka.
    /// Nothing happens if the group moved on meanwhile.
    pub(super) fn assignment_saved(
        &mut self,
        generation: i32,
        result: Result<(), i16>,
        now: Instant,
    ) {
        if self.saving != Some(generation)
            || self.generation_id != generation
            || self.state != GroupState::CompletingRebalance
        {
            return;
        }
        self.saving = None;
        match result {
            Ok(()) => {
                self.state = GroupState::Stable;
                let outcomes: Vec<SyncOutcome> = self
                    .members
                    .iter()
                    .map(|m| self.sync_ok(m.assignment.clone()))
                    .collect();
                for (m, outcome) in self.members.iter_mut().zip(outcomes) {
                    if let Some(tx) = m.awaiting_sync.take() {
                        let _ = tx.send(outcome);
                        m.deadline = now + m.session_timeout;
                    }
                }
            }
            Err(error) => {
                for m in &mut self.members {
                    m.assignment = Bytes::new();
                    if let Some(tx) = m.awaiting_sync.take() {
                        let _ = tx.send(SyncOutcome::error(error));
                        m.deadline = now + m.session_timeout;
                    }
                }
                self.prepare_rebalance(now);
                self.maybe_complete_join(now);
            }
        }
    }

    /// Empty, with no member, no join in progress and no pending member id:
    /// nothing would be lost by forgetting the group.
    pub(super) fn is_idle(&self) -> bool {
        self.state == GroupState::Empty
            && self.members.is_empty()
            && self.pending.is_empty()
            && self.join_deadline.is_none()
    }

    fn member_index(&self, id: &str) -> Option<usize> {
        self.members.iter().position(|m| m.id == id)
    }

    pub(super) fn has_member(&self, id: &str) -> bool {
        self.member_index(id).is_some()
    }

    /// Whether a request naming `member_id` (and maybe an instance id) may
    /// act for the group: `Some(error)` if not.
    fn validate_member(&self, member_id: &str, instance_id: Option<&str>) -> Option<i16> {
        if self.is_fenced(member_id, instance_id) {
            return Some(code(ResponseError::FencedInstanceId));
        }
        if !self.has_member(member_id) {
            return Some(code(ResponseError::UnknownMemberId));
        }
        None
    }

    fn is_fenced(&self, member_id: &str, instance_id: Option<&str>) -> bool {
        instance_id
            .and_then(|i| self.static_members.get(i))
            .is_some_and(|mapped| mapped != member_id)
    }

    fn supports_protocols(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if self.members.is_empty() {
            return !protocol_type.is_empty() && !protocols.is_empty();
        }
        self.protocol_type.as_deref() == Some(protocol_type)
            && protocols
                .iter()
                .any(|(n, _)| self.members.iter().all(|m| m.supports(n)))
    }

    fn current_outcome(&self, member_id: &str) -> JoinOutcome {
        let is_leader = self.leader.as_deref() == Some(member_id);
        JoinOutcome {
            error: NONE,
            generation_id: self.generation_id,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            leader: self.leader.clone().unwrap_or_default(),
            member_id: member_id.to_string(),
            members: if is_leader {
                self.member_list()
            } else {
                Vec::new()
            },
        }
    }

    fn member_list(&self) -> Vec<JoinMember> {
        let protocol = self.protocol_name.as_deref();
        self.members
            .iter()
            .map(|m| JoinMember {
                member_id: m.id.clone(),
                group_instance_id: m.instance_id.clone(),
                metadata: m.metadata(protocol),
            })
            .collect()
    }

    // ---- JoinGroup -------------------------------------------------------

    pub(super) fn join(&mut self, p: JoinParams, now: Instant) -> Reply<JoinOutcome> {
        if self.state == GroupState::Dead {
            return Reply::Now(JoinOutcome::error(
                code(ResponseError::CoordinatorNotAvailable),
                p.member_id,
            ));
        }
        if !self.supports_protocols(&p.protocol_type, &p.protocols) {
            return Reply::Now(JoinOutcome::error(
                code(ResponseError::InconsistentGroupProtocol),
                p.member_id,
            ));
        }
        self.extend_initial_quiet(now);
        if p.member_id.is_empty() {
            self.join_unknown(p, now)
        } else {
            self.join_known(p, now)
        }
    }

    /// A join during a new group's first rebalance: wait for another quiet
    /// period ([`INITIAL_QUIET`]), within the initial delay, so that members
    /// starting together (the processes of one deployment) settle in one
    /// rebalance while a lone member waits only the quiet period.
    fn extend_initial_quiet(&mut self, now: Instant) {
        if self.state != GroupState::PreparingRebalance {
            return;
        }
        if let Some(cap) = self.initial_delay_until {
            self.join_deadline = Some((now + INITIAL_QUIET).min(cap));
        }
    }

    fn join_unknown(&mut self, p: JoinParams, now: Instant) -> Reply<JoinOutcome> {
        let prefix = p.instance_id.as_deref().unwrap_or(&p.client_id);
        let new_id = format!("{prefix}-{}", Uuid::new_v4());
        if let Some(instance) = &p.instance_id {
            if let Some(old_id) = self.static_members.get(instance).cloned() {
                return self.replace_static_member(&old_id, new_id, p, now);
            }
            return self.add_member_and_rebalance(new_id, p, now);
        }
        if p.require_known_member_id {
            self.pending.insert(new_id.clone(), now + p.session_timeout);
            return Reply::Now(JoinOutcome::error(
                code(ResponseError::MemberIdRequired),
                new_id,
            ));
        }
        self.add_member_and_rebalance(new_id, p, now)
    }

    fn join_known(&mut self, p: JoinParams, now: Instant) -> Reply<JoinOutcome> {
        if self.pending.contains_key(&p.member_id) {
            if p.instance_id.is_some() {
                return Reply::Now(JoinOutcome::error(
                    code(ResponseError::UnknownMemberId),
                    p.member_id,
                ));
            }
            let id = p.member_id.clone();
            return self.add_member_and_rebalance(id, p, now);
        }
        if let Some(err) = self.validate_member(&p.member_id, p.instance_id.as_deref()) {
            return Reply::Now(JoinOutcome::error(err, p.member_id));
        }
        let Some(idx) = self.member_index(&p.member_id) else {
            return Reply::Now(JoinOutcome::error(
                code(ResponseError::UnknownMemberId),
                p.member_id,
            ));
        };
        let is_leader = self.leader.as_deref() == Some(p.member_id.as_str());
        let unchanged = self.members[idx].protocols == p.protocols;
        match self.state {
            GroupState::PreparingRebalance => self.update_member_and_wait(idx, &p, now),
            GroupState::CompletingRebalance if unchanged => {
                // The member lost its JoinGroup answer: send it again.
                self.members[idx].update(&p, now);
                Reply::Now(self.current_outcome(&p.member_id))
            }
            GroupState::Stable if unchanged && !is_leader => {
                self.members[idx].update(&p, now);
                Reply::Now(self.current_outcome(&p.member_id))
            }
            GroupState::CompletingRebalance | GroupState::Stable => {
                self.update_member_and_wait(idx, &p, now)
            }
            GroupState::Empty | GroupState::Dead => Reply::Now(JoinOutcome::error(
                code(ResponseError::UnknownMemberId),
                p.member_id,
            )),
        }
    }

    fn update_member_and_wait(
        &mut self,
        idx: usize,
        p: &JoinParams,
        now: Instant,
    ) -> Reply<JoinOutcome> {
        let (tx, rx) = oneshot::channel();
        let member = &mut self.members[idx];
        member.update(p, now);
        // A duplicate join replaces the older parked one (dropping it makes
        // that request answer REBALANCE_IN_PROGRESS).
        member.awaiting_join = Some(tx);
        self.maybe_prepare_rebalance(now);
        self.maybe_complete_join(now);
        Reply::Wait(rx)
    }

    fn add_member_and_rebalance(
        &mut self,
        id: String,
        p: JoinParams,
        now: Instant,
    ) -> Reply<JoinOutcome> {
        self.pending.remove(&id);
        let (tx, rx) = oneshot::channel();
        if self.members.is_empty() {
            self.protocol_type = Some(p.protocol_type.clone());
        }
        if self.leader.is_none() {
            self.leader = Some(id.clone());
        }
        if let Some(instance) = &p.instance_id {
            self.static_members.insert(instance.clone(), id.clone());
        }
        self.members.push(Member {
            id,
            instance_id: p.instance_id,
            client_id: p.client_id,
            client_host: p.client_host,
            session_timeout: p.session_timeout,
            rebalance_timeout: p.rebalance_timeout,
            protocols: p.protocols,
            assignment: Bytes::new(),
            awaiting_join: Some(tx),
            awaiting_sync: None,
            deadline: now + p.session_timeout,
        });
        self.maybe_prepare_rebalance(now);
        self.maybe_complete_join(now);
        Reply::Wait(rx)
    }

    fn replace_static_member(
        &mut self,
        old_id: &str,
        new_id: String,
        p: JoinParams,
        now: Instant,
    ) -> Reply<JoinOutcome> {
        let Some(idx) = self.member_index(old_id) else {
            if let Some(instance) = &p.instance_id {
                self.static_members.remove(instance);
            }
            return self.add_member_and_rebalance(new_id, p, now);
        };
        let fenced = code(ResponseError::FencedInstanceId);
        let member = &mut self.members[idx];
        if let Some(tx) = member.awaiting_join.take() {
            let _ = tx.send(JoinOutcome::error(fenced, old_id));
        }
        if let Some(tx) = member.awaiting_sync.take() {
            let _ = tx.send(SyncOutcome::error(fenced));
        }
        let unchanged = member.protocols == p.protocols;
        member.id.clone_from(&new_id);
        member.update(&p, now);
        if let Some(instance) = &p.instance_id {
            self.static_members.insert(instance.clone(), new_id.clone());
        }
        if self.leader.as_deref() == Some(old_id) {
            self.leader = Some(new_id.clone());
        }
        // The saved record must name the new member id, or a coordinator
        // move would bring back the fenced one.
        self.changes += 1;
        let is_leader = self.leader.as_deref() == Some(new_id.as_str());
        match self.state {
            GroupState::Stable if unchanged && !is_leader => {
                Reply::Now(self.current_outcome(&new_id))
            }
            GroupState::Stable
            | GroupState::CompletingRebalance
            | GroupState::PreparingRebalance => self.update_member_and_wait(idx, &p, now),
            GroupState::Empty | GroupState::Dead => Reply::Now(JoinOutcome::error(
                code(ResponseError::UnknownMemberId),
                new_id,
            )),
        }
    }

    fn maybe_prepare_rebalance(&mut self, now: Instant) {
        if matches!(
            self.state,
            GroupState::Stable | GroupState::CompletingRebalance | GroupState::Empty
        ) {
            self.prepare_rebalance(now);
        }
    }

    fn prepare_rebalance(&mut self, now: Instant) {
        self.saving = None;
        if self.state == GroupState::CompletingRebalance {
            let err = code(ResponseError::RebalanceInProgress);
            for m in &mut self.members {
                if let Some(tx) = m.awaiting_sync.take() {
                    let _ = tx.send(SyncOutcome::error(err));
                    m.deadline = now + m.session_timeout;
                }
            }
        }
        let timeout = self
            .members
            .iter()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or_default();
        if self.state == GroupState::Empty
            && self.generation_id == 0
            && !self.initial_delay.is_zero()
        {
            let cap = now + self.initial_delay.min(timeout);
            self.initial_delay_until = Some(cap);
            self.join_deadline = Some((now + INITIAL_QUIET).min(cap));
        } else {
            self.join_deadline = Some(now + timeout);
        }
        self.state = GroupState::PreparingRebalance;
    }

    fn maybe_complete_join(&mut self, now: Instant) {
        if self.state == GroupState::PreparingRebalance
            && self.pending.is_empty()
            && self.members.iter().all(|m| m.awaiting_join.is_some())
            && (self.initial_delay_until.is_none() || self.join_deadline.is_some_and(|t| now >= t))
        {
            self.complete_join(now);
        }
    }

    fn complete_join(&mut self, now: Instant) {
        let missing: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.awaiting_join.is_none())
            .map(|m| m.id.clone())
            .collect();
        for id in missing {
            self.remove_member(&id, code(ResponseError::UnknownMemberId));
        }
        self.join_deadline = None;
        self.initial_delay_until = None;
        self.saving = None;
        self.generation_id = self.generation_id.wrapping_add(1);
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.protocol_name = None;
            self.leader = None;
            self.changes += 1;
            return;
        }
        if !self.leader.as_deref().is_some_and(|l| self.has_member(l)) {
            self.leader = self.members.first().map(|m| m.id.clone());
        }
        self.protocol_name = self.select_protocol();
        self.state = GroupState::CompletingRebalance;
        let all = self.member_list();
        let leader = self.leader.clone().unwrap_or_default();
        for m in &mut self.members {
            m.assignment = Bytes::new();
            m.deadline = now + m.session_timeout;
            if let Some(tx) = m.awaiting_join.take() {
                let _ = tx.send(JoinOutcome {
                    error: NONE,
                    generation_id: self.generation_id,
                    protocol_type: self.protocol_type.clone(),
                    protocol_name: self.protocol_name.clone(),
                    leader: leader.clone(),
                    member_id: m.id.clone(),
                    members: if m.id == leader {
                        all.clone()
                    } else {
                        Vec::new()
                    },
                });
            }
        }
    }

    /// A protocol every member supports; each member votes for its most
    /// preferred candidate, ties go to the leader's preference order.
    fn select_protocol(&self) -> Option<String> {
        let leader = self
            .leader
            .as_deref()
            .and_then(|l| self.member_index(l))
            .and_then(|i| self.members.get(i))
            .or_else(|| self.members.first())?;
        let candidates: Vec<&str> = leader
            .protocols
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| self.members.iter().all(|m| m.supports(n)))
            .collect();
        let mut votes = vec![0usize; candidates.len()];
        for m in &self.members {
            if let Some(pos) = m
                .protocols
                .iter()
                .find_map(|(n, _)| candidates.iter().position(|c| c == n))
            {
                votes[pos] += 1;
            }
        }
        let mut best: Option<(usize, usize)> = None;
        for (i, v) in votes.iter().enumerate() {
            if best.is_none_or(|(_, bv)| *v > bv) {
                best = Some((i, *v));
            }
        }
        best.map(|(i, _)| candidates[i].to_string())
            .or_else(|| leader.protocols.first().map(|(n, _)| n.clone()))
    }

    /// Drop a member, answering its parked requests with `error`. Does not
    /// start a rebalance.
    fn remove_member(&mut self, id: &str, error: i16) {
        let Some(idx) = self.member_index(id) else {
            return;
        };
        let m = self.members.remove(idx);
        if let Some(tx) = m.awaiting_join {
            let _ = tx.send(JoinOutcome::error(error, id));
        }
        if let Some(tx) = m.awaiting_sync {
            let _ = tx.send(SyncOutcome::error(error));
        }
        if let Some(instance) = &m.instance_id {
            if self.static_members.get(instance).is_some_and(|v| v == id) {
                self.static_members.remove(instance);
            }
        }
        if self.leader.as_deref() == Some(id) {
            self.leader = self
                .members
                .iter()
                .find(|m| m.awaiting_join.is_some())
                .or_else(|| self.members.first())
                .map(|m| m.id.clone());
        }
    }

    fn remove_member_and_update(&mut self, id: &str, now: Instant) {
        self.remove_member(id, code(ResponseError::UnknownMemberId));
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                self.prepare_rebalance(now);
                self.maybe_complete_join(now);
            }
            GroupState::PreparingRebalance => self.maybe_complete_join(now),
            GroupState::Empty | GroupState::Dead => {}
        }
    }

    // ---- SyncGroup / Heartbeat / LeaveGroup --------------------------------

    pub(super) fn sync(&mut self, p: SyncParams, now: Instant) -> Reply<SyncOutcome> {
        if self.state == GroupState::Dead {
            return Reply::Now(SyncOutcome::error(code(
                ResponseError::CoordinatorNotAvailable,
            )));
        }
        if let Some(err) = self.validate_member(&p.member_id, p.instance_id.as_deref()) {
            return Reply::Now(SyncOutcome::error(err));
        }
        if p.generation_id != self.generation_id {
            return Reply::Now(SyncOutcome::error(code(ResponseError::IllegalGeneration)));
        }
        let inconsistent = p
            .protocol_type
            .as_ref()
            .is_some_and(|t| Some(t) != self.protocol_type.as_ref())
            || p.protocol_name
                .as_ref()
                .is_some_and(|n| Some(n) != self.protocol_name.as_ref());
        if inconsistent {
            return Reply::Now(SyncOutcome::error(code(
                ResponseError::InconsistentGroupProtocol,
            )));
        }
        let Some(idx) = self.member_index(&p.member_id) else {
            return Reply::Now(SyncOutcome::error(code(ResponseError::UnknownMemberId)));
        };
        match self.state {
            GroupState::Empty | GroupState::Dead => {
                Reply::Now(SyncOutcome::error(code(ResponseError::UnknownMemberId)))
            }
            GroupState::PreparingRebalance => {
                Reply::Now(SyncOutcome::error(code(ResponseError::RebalanceInProgress)))
            }
            GroupState::Stable => {
                let m = &mut self.members[idx];
                m.deadline = now + m.session_timeout;
                let assignment = m.assignment.clone();
                Reply::Now(self.sync_ok(assignment))
            }
            GroupState::CompletingRebalance => {
                let (tx, rx) = oneshot::channel();
                let m = &mut self.members[idx];
                m.awaiting_sync = Some(tx);
                m.deadline = now + m.session_timeout;
                if self.leader.as_deref() == Some(p.member_id.as_str()) {
                    for m in &mut self.members {
                        m.assignment = p
                            .assignments
                            .iter()
                            .find(|(id, _)| *id == m.id)
                            .map(|(_, a)| a.clone())
                            .unwrap_or_default();
                    }
                    // Stable once saved: see `assignment_saved`.
                    self.saving = Some(self.generation_id);
                    self.changes += 1;
                }
                Reply::Wait(rx)
            }
        }
    }

    fn sync_ok(&self, assignment: Bytes) -> SyncOutcome {
        SyncOutcome {
            error: NONE,
            assignment,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
        }
    }

    pub(super) fn heartbeat(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation_id: i32,
        now: Instant,
    ) -> i16 {
        match self.state {
            GroupState::Dead => return code(ResponseError::CoordinatorNotAvailable),
            GroupState::Empty => return code(ResponseError::UnknownMemberId),
            GroupState::PreparingRebalance
            | GroupState::CompletingRebalance
            | GroupState::Stable => {}
        }
        if let Some(err) = self.validate_member(member_id, instance_id) {
            return err;
        }
        if generation_id != self.generation_id {
            return code(ResponseError::IllegalGeneration);
        }
        if let Some(idx) = self.member_index(member_id) {
            let m = &mut self.members[idx];
            m.deadline = now + m.session_timeout;
        }
        match self.state {
            GroupState::PreparingRebalance => code(ResponseError::RebalanceInProgress),
            GroupState::CompletingRebalance
            | GroupState::Stable
            | GroupState::Empty
            | GroupState::Dead => NONE,
        }
    }

    /// One member leaves. An empty `member_id` with an instance id is a
    /// static member leaving by instance (LeaveGroup v3+).
    pub(super) fn leave(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        now: Instant,
    ) -> i16 {
        if self.state == GroupState::Dead {
            return code(ResponseError::CoordinatorNotAvailable);
        }
        if member_id.is_empty() {
            let Some(id) = instance_id
                .and_then(|i| self.static_members.get(i))
                .cloned()
            else {
                return code(ResponseError::UnknownMemberId);
            };
            self.remove_member_and_update(&id, now);
            return NONE;
        }
        if self.pending.remove(member_id).is_some() {
            self.maybe_complete_join(now);
            return NONE;
        }
        if let Some(err) = self.validate_member(member_id, instance_id) {
            return err;
        }
        self.remove_member_and_update(member_id, now);
        NONE
    }

    /// Whether an OffsetCommit may proceed (`Err(code)` if not). A negative
    /// generation is a simple commit, allowed only while the group is Empty.
    pub(super) fn validate_commit(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation_id: i32,
        now: Instant,
    ) -> Result<(), i16> {
        if self.state == GroupState::Dead {
            return Err(code(ResponseError::CoordinatorNotAvailable));
        }
        if self.is_fenced(member_id, instance_id) {
            return Err(code(ResponseError::FencedInstanceId));
        }
        if generation_id < 0 && self.state == GroupState::Empty {
            return Ok(());
        }
        let Some(idx) = self.member_index(member_id) else {
            return Err(code(ResponseError::UnknownMemberId));
        };
        if generation_id != self.generation_id {
            return Err(code(ResponseError::IllegalGeneration));
        }
        match self.state {
            GroupState::CompletingRebalance => Err(code(ResponseError::RebalanceInProgress)),
            GroupState::Stable
            | GroupState::PreparingRebalance
            | GroupState::Empty
            | GroupState::Dead => {
                let m = &mut self.members[idx];
                m.deadline = now + m.session_timeout;
                Ok(())
            }
        }
    }

    // ---- timers -------------------------------------------------------------

    /// Expire pending member ids and silent members, and finish a join phase
    /// whose deadline passed.
    pub(super) fn tick(&mut self, now: Instant) {
        if self.state == GroupState::Dead {
            return;
        }
        let before = self.pending.len();
        self.pending.retain(|_, deadline| *deadline > now);
        if self.pending.len() != before {
            self.maybe_complete_join(now);
        }
        let expired: Vec<String> = self
            .members
            .iter()
            .filter(|m| !m.parked() && m.deadline <= now)
            .map(|m| m.id.clone())
            .collect();
        for id in expired {
            tracing::info!(group = %self.id, member = %id, "member session expired");
            self.remove_member_and_update(&id, now);
        }
        if self.state == GroupState::PreparingRebalance
            && self.join_deadline.is_some_and(|d| d <= now)
        {
            // A first rebalance still has time and a member that was just
            // given its id: wait for its join rather than rebalance again.
            match self.initial_delay_until {
                Some(cap) if now < cap && !self.pending.is_empty() => {
                    self.join_deadline = Some((now + INITIAL_QUIET).min(cap));
                }
                _ => self.complete_join(now),
            }
        }
    }

    /// When [`Group::tick`] next has something to do.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let members = self
            .members
            .iter()
            .filter(|m| !m.parked())
            .map(|m| m.deadline);
        let join = if self.state == GroupState::PreparingRebalance {
            self.join_deadline
        } else {
            None
        };
        members
            .chain(self.pending.values().copied())
            .chain(join)
            .min()
    }

    /// Answer every parked request with `error` (coordinator shutting down).
    pub(super) fn abort_parked(&mut self, error: i16) {
        for m in &mut self.members {
            if let Some(tx) = m.awaiting_join.take() {
                let _ = tx.send(JoinOutcome::error(error, m.id.clone()));
            }
            if let Some(tx) = m.awaiting_sync.take() {
                let _ = tx.send(SyncOutcome::error(error));
            }
        }
    }

    /// Whether DeleteGroups may remove the group.
    pub(super) fn is_empty(&self) -> bool {
        self.state == GroupState::Empty && self.members.is_empty()
    }

    pub(super) fn mark_dead(&mut self) {
        self.abort_parked(code(ResponseError::CoordinatorNotAvailable));
        self.members.clear();
        self.pending.clear();
        self.static_members.clear();
        self.state = GroupState::Dead;
    }
}
