//! The classic Kafka consumer-group coordinator.
//!
//! Owns group membership (JoinGroup, SyncGroup, Heartbeat, LeaveGroup),
//! group listing/description/deletion and committed offsets (OffsetCommit,
//! OffsetFetch, OffsetDelete). Membership is served from memory on the
//! broker that coordinates the group and saved in the [`GroupStore`] as
//! Kafka records it: when a generation's assignment is complete (members get
//! their SyncGroup answer only after the save) and when the group empties
//! (see [`saved`]). A coordinator that first sees a group claims it and
//! loads what was saved, so after a restart or a move a stable group's
//! heartbeats and commits of its current generation go on working and
//! nobody rebalances. Committed offsets are durable in the store before a
//! commit is acknowledged.
//!
//! Several brokers: each group has one coordinator, chosen by the cluster
//! view ([`GroupCoordinator::set_owner_check`]); the others answer
//! NOT_COORDINATOR. Before it serves a group, the coordinator claims it in
//! the metadata store ([`tributary_meta::GroupStore::claim_group`]), and every offset commit
//! carries that claim. When another broker claims the group — because the
//! live broker list changed and the views disagreed for a moment — the old
//! coordinator's commits fail in the store, it drops the group and answers
//! NOT_COORDINATOR, so a stale coordinator can never commit.
//!
//! Contract: every handler takes the decoded request and its API version and
//! returns the response struct for that version. Handlers never panic and
//! never fail; problems become Kafka error codes in the response. The
//! versions really handled are in the router's table
//! ([`crate::router::api_table`]).
//!
//! Each group is a [`group::Group`] state machine behind its own
//! `std::sync::Mutex` (never held across `.await`, poisoning recovered) plus
//! one timer task that evicts members whose session expired and finishes a
//! join phase whose rebalance timeout passed. Timers use `tokio::time`, so
//! tests can pause time.

mod assignors;
mod consumer;
mod consumer_api;
mod group;
mod kind;
mod migration;
mod offsets;
mod saved;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{
    DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest, DescribeGroupsResponse,
    GroupId, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse,
    LeaveGroupRequest, LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse, SyncGroupRequest,
    SyncGroupResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tributary_meta::{Clock, GroupClaim, GroupStore, MetaError, TopicStore, TransactionStore};
use tributary_runtime::{Background, Chain, Tick};

use crate::error::group_meta_error_code;

pub use consumer::ConsumerGroupConfig;
use group::{
    code, Group, GroupState, JoinOutcome, JoinParams, Reply, SyncOutcome, SyncParams, NONE,
};
use kind::AnyGroup;

/// Coordinator settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    /// Smallest accepted session timeout (Kafka `group.min.session.timeout.ms`, default 6000).
    pub min_session_timeout_ms: i32,
    /// Largest accepted session timeout (Kafka `group.max.session.timeout.ms`, default 1800000).
    pub max_session_timeout_ms: i32,
    /// The longest a brand-new group's first rebalance waits for more
    /// members (Kafka `group.initial.rebalance.delay.ms`, 3000). Within it,
    /// the rebalance completes once no member has joined for
    /// [`group::INITIAL_QUIET`]; 0 completes it as soon as every known
    /// member has joined.
    pub initial_rebalance_delay_ms: u64,
    /// An Empty group (no members, no join in progress) not used for this
    /// long leaves memory with its timer task and claim: group ids are
    /// chosen by clients, so what they create must go away. Its committed
    /// offsets stay in the store; a later request starts the group afresh.
    pub empty_group_ttl: Duration,
    /// KIP-848 consumer groups (`group.consumer.*`).
    pub consumer: ConsumerGroupConfig,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            min_session_timeout_ms: 6000,
            max_session_timeout_ms: 1_800_000,
            initial_rebalance_delay_ms: 3000,
            empty_group_ttl: Duration::from_secs(300),
            consumer: ConsumerGroupConfig::default(),
        }
    }
}

/// One group, the wake-up of its timer task, and when a request last used it.
struct Slot {
    group: Mutex<AnyGroup>,
    wake: Notify,
    last_used: Mutex<Instant>,
    /// Held by an OffsetCommit from its generation check until its store
    /// write ends, so a commit checked under an older generation can never
    /// land after a newer one.
    commits: Arc<tokio::sync::Mutex<()>>,
    /// Held while the group's membership is saved; the state is read after
    /// taking it, so the newest state is always the one saved last.
    saves: tokio::sync::Mutex<()>,
    /// [`Group::changes`] as of the last successful save.
    saved_changes: AtomicU64,
}

impl Slot {
    fn touch(&self) {
        *lock(&self.last_used) = Instant::now();
    }
}

/// The classic group coordinator. Share it as `Arc<GroupCoordinator>`.
pub struct GroupCoordinator {
    /// This coordinator, for the tasks it spawns (saves, timers).
    me: Weak<GroupCoordinator>,
    /// Claims, saved membership and committed offsets.
    store: Arc<dyn GroupStore>,
    /// Topic lookups for offset commits and fetches.
    topics: Arc<dyn TopicStore>,
    /// Commit timestamps of offsets.
    clock: Arc<dyn Clock>,
    config: GroupConfig,
    groups: Mutex<HashMap<String, Arc<Slot>>>,
    cancel: CancellationToken,
    /// Whether this broker coordinates a group (several brokers: only one
    /// does; the others answer NOT_COORDINATOR). `None`: every group.
    owner: Mutex<Option<OwnerCheck>>,
    /// This broker's node id, for claims.
    node_id: Mutex<i32>,
    /// The claims this broker holds, one per group it serves.
    claims: Mutex<HashMap<String, GroupClaim>>,
    /// Offsets staged by transactions (TxnOffsetCommit, `require_stable`).
    transactions: std::sync::OnceLock<Arc<dyn TransactionStore>>,
    /// The topic list consumer groups subscribe from.
    topics_cache: Mutex<consumer::TopicsCache>,
}

impl std::fmt::Debug for GroupCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCoordinator")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Decides whether this broker coordinates a group id.
pub type OwnerCheck = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Lock a mutex, recovering from poisoning (a panicked request must not
/// take the coordinator down for everyone else).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

fn opt_str(s: &Option<StrBytes>) -> Option<String> {
    s.as_ref().map(|s| s.to_string())
}

impl GroupCoordinator {
    /// A coordinator with no groups; offsets go to `store`, topics are
    /// looked up in `topics`.
    pub fn new(
        store: Arc<dyn GroupStore>,
        topics: Arc<dyn TopicStore>,
        config: GroupConfig,
        clock: Arc<dyn Clock>,
    ) -> Arc<Self> {
        let coordinator = Arc::new_cyclic(|me| GroupCoordinator {
            me: me.clone(),
            store,
            topics,
            clock,
            config,
            groups: Mutex::new(HashMap::new()),
            cancel: CancellationToken::new(),
            owner: Mutex::new(None),
            node_id: Mutex::new(0),
            claims: Mutex::new(HashMap::new()),
            transactions: std::sync::OnceLock::new(),
            topics_cache: Mutex::new(consumer::TopicsCache::default()),
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            let sweep = IdleSweep {
                coordinator: Arc::downgrade(&coordinator),
                ttl: coordinator.config.empty_group_ttl,
            };
            // Ends with the coordinator (cancel, or the last Arc dropped).
            drop(tributary_runtime::spawn(
                "group-sweep",
                sweep,
                coordinator.cancel.clone(),
            ));
        }
        coordinator
    }

    /// Drop Empty groups unused for `ttl`, and claims of groups this broker
    /// holds no state for (a simple consumer's commits claim the group; the
    /// next commit claims it again). Returns how many groups went.
    fn sweep(&self, ttl: Duration) -> usize {
        let now = Instant::now();
        let idle: Vec<(String, Arc<Slot>)> = {
            let mut groups = lock(&self.groups);
            let ids: Vec<String> = groups
                .iter()
                .filter(|(_, slot)| {
                    now.saturating_duration_since(*lock(&slot.last_used)) >= ttl
                        && lock(&slot.group).is_idle()
                })
                .map(|(id, _)| id.clone())
                .collect();
            ids.into_iter()
                .filter_map(|id| groups.remove(&id).map(|slot| (id, slot)))
                .collect()
        };
        for (id, slot) in &idle {
            lock(&slot.group).mark_dead();
            slot.wake.notify_one();
            tracing::debug!(group = %id, "dropped idle empty group");
        }
        let groups = lock(&self.groups);
        lock(&self.claims).retain(|id, _| groups.contains_key(id));
        idle.len()
    }

    /// Groups held in memory (tests).
    #[cfg(test)]
    fn group_count(&self) -> (usize, usize) {
        (lock(&self.groups).len(), lock(&self.claims).len())
    }

    /// Stop every timer task and answer parked requests with NOT_COORDINATOR
    /// so clients look for the group's new coordinator.
    pub fn shutdown(&self) {
        self.cancel.cancel();
        let slots: Vec<Arc<Slot>> = lock(&self.groups).values().cloned().collect();
        for slot in slots {
            lock(&slot.group).abort_parked(code(ResponseError::NotCoordinator));
        }
    }

    fn get(&self, group_id: &str) -> Option<Arc<Slot>> {
        let slot = lock(&self.groups).get(group_id).cloned();
        if let Some(slot) = &slot {
            slot.touch();
        }
        slot
    }

    fn initial_delay(&self) -> Duration {
        Duration::from_millis(self.config.initial_rebalance_delay_ms)
    }

    /// The group's slot; `make` builds the group if it is not in memory.
    fn get_or_insert(&self, group_id: &str, make: impl FnOnce() -> AnyGroup) -> Arc<Slot> {
        let mut groups = lock(&self.groups);
        if let Some(slot) = groups.get(group_id) {
            slot.touch();
            return slot.clone();
        }
        let group = make();
        let slot = Arc::new(Slot {
            saved_changes: AtomicU64::new(group.changes()),
            group: Mutex::new(group),
            wake: Notify::new(),
            last_used: Mutex::new(Instant::now()),
            commits: Arc::new(tokio::sync::Mutex::new(())),
            saves: tokio::sync::Mutex::new(()),
        });
        groups.insert(group_id.to_string(), slot.clone());
        if !self.cancel.is_cancelled() {
            let timers = GroupTimers {
                coordinator: self.me.clone(),
                group_id: group_id.to_string(),
                slot: slot.clone(),
            };
            // Ends when the group dies or the coordinator shuts down.
            drop(tributary_runtime::spawn(
                "group-timers",
                timers,
                self.cancel.clone(),
            ));
        }
        slot
    }

    /// The group as this coordinator serves it: in memory, or else claimed
    /// and loaded from what its previous coordinator saved, or else (with
    /// `create`) new. `Ok(None)`: unknown and not created.
    async fn load(&self, group_id: &str, create: bool) -> Result<Option<Arc<Slot>>, i16> {
        if let Some(slot) = self.get(group_id) {
            return Ok(Some(slot));
        }
        // Claim first: saves under older claims fail from now on, so what
        // is read next is the group's last word.
        self.claim(group_id).await?;
        let saved = self.store.load_group(group_id).await.map_err(|e| {
            tracing::warn!(group = %group_id, error = %Chain(&e), "loading group failed");
            group_meta_error_code(&e)
        })?;
        let saved = saved.and_then(|bytes| match saved::Saved::decode(&bytes) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(group = %group_id, error = %Chain(&e), "starting the group afresh");
                None
            }
        });
        let slot = match saved {
            Some(saved) => {
                tracing::info!(group = %group_id, "carrying on the group as saved");
                self.get_or_insert(group_id, || {
                    AnyGroup::restore(
                        group_id.to_string(),
                        saved,
                        self.initial_delay(),
                        &self.config.consumer,
                        Instant::now(),
                    )
                })
            }
            None if create => self.get_or_insert(group_id, || {
                AnyGroup::Classic(Group::new(group_id.to_string(), self.initial_delay()))
            }),
            None => return Ok(None),
        };
        Ok(Some(slot))
    }

    /// Save the group's membership in the background if it changed since
    /// the last save (a task, so a client hanging up mid-save cannot leave
    /// the other members' SyncGroup answers waiting).
    fn save_soon(&self, group_id: &str, slot: &Arc<Slot>) {
        if lock(&slot.group).changes() == slot.saved_changes.load(Ordering::Acquire) {
            return;
        }
        let Some(me) = self.me.upgrade() else {
            return;
        };
        let (id, slot) = (group_id.to_string(), slot.clone());
        tokio::spawn(async move {
            // A failed save is logged by `save` and retried with the next change.
            let _ = me.save(&id, &slot).await;
        });
    }

    /// Save the group's current membership under this broker's claim and
    /// finish a SyncGroup phase waiting for it. A save fenced by another
    /// broker's claim drops the group here.
    async fn save(&self, group_id: &str, slot: &Slot) -> Result<(), i16> {
        let _one_at_a_time = slot.saves.lock().await;
        let (changes, to_save) = {
            let g = lock(&slot.group);
            (g.changes(), g.to_save())
        };
        if changes == slot.saved_changes.load(Ordering::Acquire) {
            return Ok(());
        }
        let Some((saved, completes)) = to_save else {
            return Ok(());
        };
        // Only under the claim this broker already holds: a save still
        // queued when the group moved away must not claim it back.
        let held = lock(&self.claims).get(group_id).copied();
        let claim = held.ok_or(code(ResponseError::NotCoordinator));
        let result = match claim {
            Ok(claim) => match self.store.save_group(group_id, claim, &saved).await {
                Ok(()) => Ok(()),
                Err(e) => {
                    tracing::warn!(group = %group_id, error = %Chain(&e), "saving group failed");
                    Err((
                        group_meta_error_code(&e),
                        matches!(e, MetaError::Fenced { .. }),
                    ))
                }
            },
            Err(c) => Err((c, false)),
        };
        if result.is_ok() {
            slot.saved_changes.store(changes, Ordering::Release);
        }
        if let Some(generation) = completes {
            if let AnyGroup::Classic(g) = &mut *lock(&slot.group) {
                g.assignment_saved(generation, result.map_err(|(c, _)| c), Instant::now());
            }
            slot.wake.notify_one();
        }
        if let (Err((_, true)), Ok(claim)) = (result, claim) {
            self.forget(group_id, Some(claim));
        }
        result.map_err(|(c, _)| c)
    }

    /// Make this coordinator, on broker `node_id`, answer NOT_COORDINATOR
    /// for groups `check` says belong to another broker.
    pub fn set_owner_check(&self, node_id: i32, check: OwnerCheck) {
        *lock(&self.node_id) = node_id;
        *lock(&self.owner) = Some(check);
    }

    /// Whether another broker coordinates `group_id`. If so, this broker
    /// forgets whatever it held of the group, so that when the group comes
    /// back it starts afresh under a new claim.
    /// Where transactional offsets are staged (set once, at start).
    pub fn set_transactions(&self, store: Arc<dyn TransactionStore>) {
        // A second call keeps the first store.
        let _ = self.transactions.set(store);
    }

    fn transactions(&self) -> Option<&Arc<dyn TransactionStore>> {
        self.transactions.get()
    }

    fn not_mine(&self, group_id: &str) -> bool {
        // A coordinator shutting down serves no group: members look for
        // the group's next coordinator instead of parking here.
        if self.cancel.is_cancelled() {
            return true;
        }
        let check = lock(&self.owner).clone();
        let theirs = !group_id.is_empty() && check.is_some_and(|owns| !owns(group_id));
        if theirs {
            self.forget(group_id, None);
        }
        theirs
    }

    /// Drop every group another broker now coordinates (call when the live
    /// broker list changes).
    pub fn release_moved_groups(&self) {
        let mut ids: Vec<String> = lock(&self.groups).keys().cloned().collect();
        ids.extend(lock(&self.claims).keys().cloned());
        for id in ids {
            // `not_mine` forgets the group when it moved.
            let _ = self.not_mine(&id);
        }
    }

    /// This broker's claim on `group_id`, claiming the group in the store the
    /// first time. `Err` is the Kafka error code to answer.
    async fn claim(&self, group_id: &str) -> Result<GroupClaim, i16> {
        if let Some(c) = lock(&self.claims).get(group_id) {
            return Ok(*c);
        }
        let node_id = *lock(&self.node_id);
        let claim = self
            .store
            .claim_group(group_id, node_id)
            .await
            .map_err(|e| {
                tracing::warn!(group = %group_id, error = %Chain(&e), "claiming group failed");
                group_meta_error_code(&e)
            })?;
        tracing::debug!(group = %group_id, epoch = claim.epoch, "claimed group");
        // Two claims racing on this broker: keep the newer, which is the
        // one the store will accept.
        let mut claims = lock(&self.claims);
        let held = claims.entry(group_id.to_string()).or_insert(claim);
        if claim.epoch > held.epoch {
            *held = claim;
        }
        Ok(*held)
    }

    /// Drop the group's in-memory state and claim (`only_if`: only when
    /// the claim held is that one). Parked members are answered
    /// NOT_COORDINATOR and go looking for the new coordinator.
    fn forget(&self, group_id: &str, only_if: Option<GroupClaim>) {
        {
            let mut claims = lock(&self.claims);
            match (claims.get(group_id), only_if) {
                (Some(held), Some(c)) if *held != c => return,
                (Some(_), _) => {
                    claims.remove(group_id);
                }
                (None, _) => {}
            }
        }
        let slot = lock(&self.groups).remove(group_id);
        if let Some(slot) = slot {
            let mut g = lock(&slot.group);
            g.abort_parked(code(ResponseError::NotCoordinator));
            g.mark_dead();
            drop(g);
            slot.wake.notify_one();
            tracing::info!(group = %group_id, "no longer coordinating group");
        }
    }

    /// JoinGroup (v0-9). Parks until the join phase completes.
    pub async fn join_group(
        &self,
        req: JoinGroupRequest,
        version: i16,
        client_id: &str,
        client_host: &str,
    ) -> JoinGroupResponse {
        let group_id = req.group_id.0.to_string();
        let member_id = req.member_id.to_string();
        if group_id.is_empty() {
            let o = JoinOutcome::error(code(ResponseError::InvalidGroupId), member_id);
            return join_response(version, o);
        }
        if self.not_mine(&group_id) {
            let o = JoinOutcome::error(code(ResponseError::NotCoordinator), member_id);
            return join_response(version, o);
        }
        if req.session_timeout_ms < self.config.min_session_timeout_ms
            || req.session_timeout_ms > self.config.max_session_timeout_ms
        {
            let o = JoinOutcome::error(code(ResponseError::InvalidSessionTimeout), member_id);
            return join_response(version, o);
        }
        let session = Duration::from_millis(u64::try_from(req.session_timeout_ms).unwrap_or(0));
        let rebalance = if version >= 1 && req.rebalance_timeout_ms > 0 {
            Duration::from_millis(u64::try_from(req.rebalance_timeout_ms).unwrap_or(0))
        } else {
            session
        };
        let params = JoinParams {
            member_id: member_id.clone(),
            instance_id: if version >= 5 {
                opt_str(&req.group_instance_id)
            } else {
                None
            },
            require_known_member_id: version >= 4,
            client_id: client_id.to_string(),
            client_host: client_host.to_string(),
            session_timeout: session,
            rebalance_timeout: rebalance,
            protocol_type: req.protocol_type.to_string(),
            protocols: req
                .protocols
                .iter()
                .map(|p| (p.name.to_string(), p.metadata.clone()))
                .collect(),
        };
        let slot = match self.load(&group_id, member_id.is_empty()).await {
            Ok(Some(slot)) => slot,
            Ok(None) => {
                let o = JoinOutcome::error(code(ResponseError::UnknownMemberId), member_id);
                return join_response(version, o);
            }
            Err(c) => return join_response(version, JoinOutcome::error(c, member_id)),
        };
        let reply = {
            let mut any = lock(&slot.group);
            // An empty consumer group becomes a classic one when a classic
            // member joins it.
            if matches!(&*any, AnyGroup::Consumer(_)) && any.is_idle() {
                *any = AnyGroup::Classic(Group::new(group_id.clone(), self.initial_delay()));
                slot.saved_changes.store(u64::MAX, Ordering::Release);
            }
            any.classic()
                .map(|g| g.join(params.clone(), Instant::now()))
        };
        let Some(reply) = reply else {
            // A classic member of a consumer group (an upgrade under way).
            let o = self.join_consumer_group(&group_id, &slot, params).await;
            return join_response(version, o);
        };
        slot.wake.notify_one();
        self.save_soon(&group_id, &slot);
        let outcome = match reply {
            Reply::Now(o) => o,
            Reply::Wait(rx) => rx.await.unwrap_or_else(|_| {
                JoinOutcome::error(code(ResponseError::RebalanceInProgress), member_id)
            }),
        };
        join_response(version, outcome)
    }

    /// SyncGroup (v0-5). A follower parks until the leader's assignment arrives.
    pub async fn sync_group(&self, req: SyncGroupRequest, version: i16) -> SyncGroupResponse {
        let group_id = req.group_id.0.to_string();
        if group_id.is_empty() {
            return sync_response(
                version,
                SyncOutcome::error(code(ResponseError::InvalidGroupId)),
            );
        }
        if self.not_mine(&group_id) {
            return sync_response(
                version,
                SyncOutcome::error(code(ResponseError::NotCoordinator)),
            );
        }
        let slot = match self.load(&group_id, false).await {
            Ok(Some(slot)) => slot,
            Ok(None) => {
                return sync_response(
                    version,
                    SyncOutcome::error(code(ResponseError::UnknownMemberId)),
                )
            }
            Err(c) => return sync_response(version, SyncOutcome::error(c)),
        };
        let params = SyncParams {
            member_id: req.member_id.to_string(),
            instance_id: if version >= 3 {
                opt_str(&req.group_instance_id)
            } else {
                None
            },
            generation_id: req.generation_id,
            protocol_type: if version >= 5 {
                opt_str(&req.protocol_type)
            } else {
                None
            },
            protocol_name: if version >= 5 {
                opt_str(&req.protocol_name)
            } else {
                None
            },
            assignments: req
                .assignments
                .iter()
                .map(|a| (a.member_id.to_string(), a.assignment.clone()))
                .collect(),
        };
        let reply = match &mut *lock(&slot.group) {
            AnyGroup::Classic(g) => g.sync(params, Instant::now()),
            AnyGroup::Consumer(g) => Reply::Now(
                match g.sync_classic(&params.member_id, params.generation_id, Instant::now()) {
                    Ok((assignment, protocol)) => SyncOutcome {
                        error: NONE,
                        assignment,
                        protocol_type: Some("consumer".into()),
                        protocol_name: Some(protocol),
                    },
                    Err(c) => SyncOutcome::error(c),
                },
            ),
        };
        slot.wake.notify_one();
        self.save_soon(&group_id, &slot);
        let outcome = match reply {
            Reply::Now(o) => o,
            Reply::Wait(rx) => rx
                .await
                .unwrap_or_else(|_| SyncOutcome::error(code(ResponseError::RebalanceInProgress))),
        };
        sync_response(version, outcome)
    }

    /// Heartbeat (v0-4).
    pub async fn heartbeat(&self, req: HeartbeatRequest, version: i16) -> HeartbeatResponse {
        let group_id = req.group_id.0.to_string();
        let loaded = if group_id.is_empty() {
            Err(code(ResponseError::InvalidGroupId))
        } else if self.not_mine(&group_id) {
            Err(code(ResponseError::NotCoordinator))
        } else {
            self.load(&group_id, false).await
        };
        let error = if let Err(c) = loaded {
            c
        } else if let Ok(Some(slot)) = loaded {
            let instance = if version >= 3 {
                opt_str(&req.group_instance_id)
            } else {
                None
            };
            let e = match lock(&slot.group).classic() {
                Some(g) => Some(g.heartbeat(
                    req.member_id.as_str(),
                    instance.as_deref(),
                    req.generation_id,
                    Instant::now(),
                )),
                None => None,
            };
            let e = match e {
                Some(e) => e,
                None => {
                    self.heartbeat_consumer_group(
                        &group_id,
                        &slot,
                        req.member_id.as_str(),
                        req.generation_id,
                    )
                    .await
                }
            };
            slot.wake.notify_one();
            e
        } else {
            code(ResponseError::UnknownMemberId)
        };
        HeartbeatResponse::default().with_error_code(error)
    }

    /// LeaveGroup (v0-2 one member, v3+ a list with per-member errors).
    pub async fn leave_group(&self, req: LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
        let group_id = req.group_id.0.to_string();
        let leaving: Vec<(String, Option<String>)> = if version >= 3 {
            req.members
                .iter()
                .map(|m| (m.member_id.to_string(), opt_str(&m.group_instance_id)))
                .collect()
        } else {
            vec![(req.member_id.to_string(), None)]
        };
        let loaded = if group_id.is_empty() {
            Err(code(ResponseError::InvalidGroupId))
        } else if self.not_mine(&group_id) {
            Err(code(ResponseError::NotCoordinator))
        } else {
            self.load(&group_id, false).await
        };
        let (top, errors): (i16, Vec<i16>) = if let Err(c) = loaded {
            (c, Vec::new())
        } else if let Ok(Some(slot)) = loaded {
            let mut any = lock(&slot.group);
            if any.is_dead() {
                (code(ResponseError::CoordinatorNotAvailable), Vec::new())
            } else {
                let now = Instant::now();
                let errs = match &mut *any {
                    AnyGroup::Classic(g) => leaving
                        .iter()
                        .map(|(m, i)| g.leave(m, i.as_deref(), now))
                        .collect(),
                    AnyGroup::Consumer(g) => {
                        leaving.iter().map(|(m, _)| g.leave_classic(m)).collect()
                    }
                };
                drop(any);
                slot.wake.notify_one();
                self.save_soon(&group_id, &slot);
                (NONE, errs)
            }
        } else {
            let unknown = code(ResponseError::UnknownMemberId);
            (NONE, vec![unknown; leaving.len()])
        };
        let mut resp = LeaveGroupResponse::default();
        if version >= 3 {
            resp.error_code = top;
            if top == NONE {
                resp.members = leaving
                    .into_iter()
                    .zip(errors)
                    .map(|((member_id, instance), error_code)| {
                        MemberResponse::default()
                            .with_member_id(str_bytes(member_id))
                            .with_group_instance_id(instance.map(str_bytes))
                            .with_error_code(error_code)
                    })
                    .collect();
            }
        } else {
            resp.error_code = if top != NONE {
                top
            } else {
                errors.first().copied().unwrap_or(NONE)
            };
        }
        resp
    }

    /// ListGroups (v0-5): in-memory groups plus groups that only have
    /// committed offsets (listed as Empty "consumer" groups).
    pub async fn list_groups(&self, req: ListGroupsRequest, version: i16) -> ListGroupsResponse {
        // (id, protocol type, state, group type)
        let mut listed: Vec<(String, String, &'static str, &'static str)> = Vec::new();
        let mut seen = BTreeSet::new();
        for (id, slot) in self.named_slots() {
            let any = lock(&slot.group);
            let protocol_type = match &*any {
                AnyGroup::Classic(g) => {
                    if g.state == GroupState::Dead
                        || (g.state == GroupState::Empty && g.protocol_type.is_none())
                    {
                        continue;
                    }
                    g.protocol_type.clone().unwrap_or_default()
                }
                AnyGroup::Consumer(g) if g.is_dead() => continue,
                AnyGroup::Consumer(_) => "consumer".to_string(),
            };
            seen.insert(id.clone());
            listed.push((id, protocol_type, any.state_name(), any.type_name()));
        }
        let mut error = NONE;
        match self.store.list_groups().await {
            Ok(stored) => {
                for id in stored {
                    if !seen.contains(&id) {
                        listed.push((
                            id,
                            "consumer".to_string(),
                            GroupState::Empty.as_str(),
                            "classic",
                        ));
                    }
                }
            }
            Err(e) => error = group_meta_error_code(&e),
        }
        listed.sort();
        let states: Vec<String> = if version >= 4 {
            req.states_filter
                .iter()
                .map(|s| s.to_ascii_lowercase())
                .collect()
        } else {
            Vec::new()
        };
        let types: Vec<String> = if version >= 5 {
            req.types_filter
                .iter()
                .map(|s| s.to_ascii_lowercase())
                .collect()
        } else {
            Vec::new()
        };
        let groups = listed
            .into_iter()
            .filter(|(_, _, _, kind)| types.is_empty() || types.iter().any(|t| t == kind))
            .filter(|(_, _, state, _)| {
                states.is_empty() || states.contains(&state.to_ascii_lowercase())
            })
            .map(|(id, ptype, state, kind)| {
                let mut g = ListedGroup::default()
                    .with_group_id(GroupId(str_bytes(id)))
                    .with_protocol_type(str_bytes(ptype));
                if version >= 4 {
                    g.group_state = StrBytes::from_static_str(state);
                }
                if version >= 5 {
                    g.group_type = StrBytes::from_static_str(kind);
                }
                g
            })
            .collect();
        ListGroupsResponse::default()
            .with_error_code(error)
            .with_groups(groups)
    }

    /// DescribeGroups (v0-5). Unknown groups are "Dead" with no error, as in Kafka.
    pub async fn describe_groups(
        &self,
        req: DescribeGroupsRequest,
        version: i16,
    ) -> DescribeGroupsResponse {
        let mut stored: Option<Result<Vec<String>, i16>> = None;
        let mut out = Vec::with_capacity(req.groups.len());
        for gid in &req.groups {
            let id = gid.0.to_string();
            let mut d = DescribedGroup::default().with_group_id(gid.clone());
            if let Some(slot) = self.get(&id) {
                let any = lock(&slot.group);
                let AnyGroup::Classic(g) = &*any else {
                    // Kafka describes only classic groups here; consumer
                    // groups answer ConsumerGroupDescribe.
                    d.group_state = StrBytes::from_static_str(GroupState::Dead.as_str());
                    out.push(d);
                    continue;
                };
                d.group_state = StrBytes::from_static_str(g.state.as_str());
                d.protocol_type = str_bytes(g.protocol_type.clone().unwrap_or_default());
                let stable = g.state == GroupState::Stable;
                if stable {
                    d.protocol_data = str_bytes(g.protocol_name.clone().unwrap_or_default());
                }
                d.members = g
                    .members
                    .iter()
                    .map(|m| {
                        let mut dm = DescribedGroupMember::default()
                            .with_member_id(str_bytes(m.id.clone()))
                            .with_client_id(str_bytes(m.client_id.clone()))
                            .with_client_host(str_bytes(m.client_host.clone()));
                        if version >= 4 {
                            dm.group_instance_id = m.instance_id.clone().map(str_bytes);
                        }
                        if stable {
                            dm.member_metadata = m.metadata(g.protocol_name.as_deref());
                            dm.member_assignment = m.assignment.clone();
                        }
                        dm
                    })
                    .collect();
                out.push(d);
                continue;
            }
            if stored.is_none() {
                stored = Some(
                    self.store
                        .list_groups()
                        .await
                        .map_err(|e| group_meta_error_code(&e)),
                );
            }
            match &stored {
                Some(Ok(ids)) if ids.contains(&id) => {
                    d.group_state = StrBytes::from_static_str(GroupState::Empty.as_str());
                    d.protocol_type = StrBytes::from_static_str("consumer");
                }
                Some(Err(e)) => d.error_code = *e,
                Some(Ok(_)) | None => {
                    d.group_state = StrBytes::from_static_str(GroupState::Dead.as_str());
                }
            }
            out.push(d);
        }
        DescribeGroupsResponse::default().with_groups(out)
    }

    /// DeleteGroups (v0-2): only Empty (or offsets-only) groups; removes
    /// their committed offsets.
    pub async fn delete_groups(
        &self,
        req: DeleteGroupsRequest,
        _version: i16,
    ) -> DeleteGroupsResponse {
        let mut results = Vec::with_capacity(req.groups_names.len());
        for gid in &req.groups_names {
            let id = gid.0.to_string();
            let error = self.delete_group(&id).await;
            results.push(
                DeletableGroupResult::default()
                    .with_group_id(gid.clone())
                    .with_error_code(error),
            );
        }
        DeleteGroupsResponse::default().with_results(results)
    }

    async fn delete_group(&self, id: &str) -> i16 {
        let in_memory = {
            let mut groups = lock(&self.groups);
            match groups.get(id).cloned() {
                Some(slot) => {
                    let mut g = lock(&slot.group);
                    if g.is_dead() {
                        Some(code(ResponseError::GroupIdNotFound))
                    } else if g.is_empty() {
                        g.mark_dead();
                        drop(g);
                        groups.remove(id);
                        slot.wake.notify_one();
                        Some(NONE)
                    } else {
                        Some(code(ResponseError::NonEmptyGroup))
                    }
                }
                None => None,
            }
        };
        match in_memory {
            Some(NONE) => {}
            Some(err) => return err,
            None => match self.store.list_groups().await {
                Ok(ids) if ids.iter().any(|g| g == id) => {}
                Ok(_) => return code(ResponseError::GroupIdNotFound),
                Err(e) => return group_meta_error_code(&e),
            },
        }
        match self.store.delete_group(id).await {
            Ok(()) => NONE,
            Err(e) => group_meta_error_code(&e),
        }
    }

    fn named_slots(&self) -> Vec<(String, Arc<Slot>)> {
        lock(&self.groups)
            .iter()
            .map(|(id, slot)| (id.clone(), slot.clone()))
            .collect()
    }
}

/// Every `ttl / 2` (at most a minute), drop idle Empty groups; ends with the
/// coordinator.
/// Drops idle groups and keeps the offsets of active ones from expiring.
struct IdleSweep {
    coordinator: Weak<GroupCoordinator>,
    ttl: Duration,
}

impl IdleSweep {
    fn every(&self) -> Duration {
        (self.ttl / 2).clamp(Duration::from_millis(10), Duration::from_secs(60))
    }
}

#[async_trait]
impl Background for IdleSweep {
    type Event = ();

    fn first(&self) -> Tick {
        Tick::In(self.every())
    }

    async fn tick(&mut self) -> Tick {
        let Some(coordinator) = self.coordinator.upgrade() else {
            return Tick::Done;
        };
        coordinator.sweep(self.ttl);
        // Groups in use keep their stored offsets from expiring
        // (`offsets.retention.minutes` counts from the last activity).
        let active: Vec<String> = lock(&coordinator.groups)
            .iter()
            .filter(|(_, slot)| !lock(&slot.group).is_idle())
            .map(|(id, _)| id.clone())
            .collect();
        let now = coordinator.clock.now_ms();
        if let Err(e) = coordinator.store.touch_groups(&active, now).await {
            tracing::warn!(error = %Chain(&e), groups = active.len(), "marking active groups failed");
        }
        Tick::In(self.every())
    }
}

/// Per-group timer: evict silent members, finish overdue join phases, and
/// save what that changed. Woken early by the group's `wake`.
struct GroupTimers {
    coordinator: Weak<GroupCoordinator>,
    group_id: String,
    slot: Arc<Slot>,
}

#[async_trait]
impl Background for GroupTimers {
    type Event = ();

    async fn tick(&mut self) -> Tick {
        let next = {
            let mut g = lock(&self.slot.group);
            if g.is_dead() {
                return Tick::Done;
            }
            g.tick(Instant::now());
            g.next_deadline()
        };
        if let Some(coordinator) = self.coordinator.upgrade() {
            coordinator.save_soon(&self.group_id, &self.slot);
        }
        next.map_or(Tick::Idle, Tick::At)
    }

    async fn event(&mut self) -> Option<()> {
        self.slot.wake.notified().await;
        Some(())
    }

    async fn handle(&mut self, (): ()) -> Option<Tick> {
        Some(Tick::Now)
    }
}

fn join_response(version: i16, o: JoinOutcome) -> JoinGroupResponse {
    let protocol_name = match o.protocol_name {
        None if version < 7 => Some(StrBytes::default()),
        other => other.map(str_bytes),
    };
    let members = o
        .members
        .into_iter()
        .map(|m| {
            let mut r = JoinGroupResponseMember::default()
                .with_member_id(str_bytes(m.member_id))
                .with_metadata(m.metadata);
            if version >= 5 {
                r.group_instance_id = m.group_instance_id.map(str_bytes);
            }
            r
        })
        .collect();
    let mut r = JoinGroupResponse::default()
        .with_error_code(o.error)
        .with_generation_id(o.generation_id)
        .with_protocol_name(protocol_name)
        .with_leader(str_bytes(o.leader))
        .with_member_id(str_bytes(o.member_id))
        .with_members(members);
    if version >= 7 {
        r.protocol_type = o.protocol_type.map(str_bytes);
    }
    r
}

fn sync_response(version: i16, o: SyncOutcome) -> SyncGroupResponse {
    let mut r = SyncGroupResponse::default()
        .with_error_code(o.error)
        .with_assignment(if o.error == NONE {
            o.assignment
        } else {
            Bytes::new()
        });
    if version >= 5 {
        r.protocol_type = o.protocol_type.map(str_bytes);
        r.protocol_name = o.protocol_name.map(str_bytes);
    }
    r
}
