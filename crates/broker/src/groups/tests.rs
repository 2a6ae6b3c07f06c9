//! Tests of the group coordinator against an in-memory SQLite metadata store,
//! on paused time: timers (session timeouts, rebalance timeouts, the idle
//! sweep) fire when the test runtime has nothing else to do, so a test that
//! waits out a 30 s timeout takes no real time and never races the clock.
//! The store runs its calls inline ([`SqliteStore::with_inline_calls`]) so
//! time cannot auto-advance while a call is in flight.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_delete_request::{
    OffsetDeleteRequestPartition, OffsetDeleteRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic,
};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Encodable, StrBytes};
use tributary_meta::{GroupStore, SqliteStore, TopicStore};

use super::*;

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn gid(v: &str) -> GroupId {
    GroupId(s(v))
}

/// Every response must encode at the version it was built for.
fn enc<T: Encodable>(r: &T, version: i16) {
    let mut buf = BytesMut::new();
    r.encode(&mut buf, version)
        .expect("response encodes at its version");
}

/// A coordinator whose groups and topics are both in `store`.
fn coordinator<S: GroupStore + TopicStore + 'static>(
    store: Arc<S>,
    config: GroupConfig,
) -> Arc<GroupCoordinator> {
    GroupCoordinator::new(
        store.clone(),
        store,
        config,
        tributary_meta::clock::system(),
    )
}

/// An in-memory store with topics `t` (2 partitions) and `u` (1).
async fn store_with_topics() -> Arc<SqliteStore> {
    let store = Arc::new(
        SqliteStore::open_in_memory()
            .await
            .expect("sqlite store")
            .with_inline_calls(),
    );
    store
        .create_topic("t", 2, BTreeMap::new())
        .await
        .expect("create topic");
    store
        .create_topic("u", 1, BTreeMap::new())
        .await
        .expect("create topic");
    store
}

async fn setup() -> (Arc<GroupCoordinator>, Arc<SqliteStore>) {
    let store = store_with_topics().await;
    // A short minimum lets tests use short session timeouts.
    let config = GroupConfig {
        min_session_timeout_ms: 50,
        ..GroupConfig::default()
    };
    let c = coordinator(store.clone(), config);
    (c, store)
}

/// Consumer-protocol subscription metadata (version 0) for `topics`.
fn subscription(topics: &[&str]) -> Bytes {
    let sub =
        ConsumerProtocolSubscription::default().with_topics(topics.iter().map(|t| s(t)).collect());
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&0i16.to_be_bytes());
    sub.encode(&mut buf, 0).expect("subscription encodes");
    buf.freeze()
}

fn join_req(group: &str, member: &str, session_ms: i32) -> JoinGroupRequest {
    timed_join_req(group, member, session_ms, 30_000)
}

fn timed_join_req(
    group: &str,
    member: &str,
    session_ms: i32,
    rebalance_ms: i32,
) -> JoinGroupRequest {
    JoinGroupRequest::default()
        .with_group_id(gid(group))
        .with_member_id(s(member))
        .with_session_timeout_ms(session_ms)
        .with_rebalance_timeout_ms(rebalance_ms)
        .with_protocol_type(s("consumer"))
        .with_protocols(vec![JoinGroupRequestProtocol::default()
            .with_name(s("range"))
            .with_metadata(subscription(&["t"]))])
}

async fn join(c: &Arc<GroupCoordinator>, req: JoinGroupRequest, version: i16) -> JoinGroupResponse {
    let r = c.join_group(req, version, "client", "/127.0.0.1").await;
    enc(&r, version);
    r
}

/// MEMBER_ID_REQUIRED round: returns the member id to rejoin with.
async fn member_id(c: &Arc<GroupCoordinator>, group: &str) -> String {
    let r = join(c, join_req(group, "", 10_000), 5).await;
    assert_eq!(r.error_code, 79);
    assert!(r.member_id.starts_with("client-"));
    r.member_id.to_string()
}

/// All `ids` (re)join concurrently; answers in the same order.
async fn join_all(
    c: &Arc<GroupCoordinator>,
    group: &str,
    ids: &[String],
) -> Vec<JoinGroupResponse> {
    join_all_t(c, group, ids, (10_000, 30_000)).await
}

/// Like [`join_all`] with (session, rebalance) timeouts in ms.
async fn join_all_t(
    c: &Arc<GroupCoordinator>,
    group: &str,
    ids: &[String],
    t: (i32, i32),
) -> Vec<JoinGroupResponse> {
    let tasks: Vec<_> = ids
        .iter()
        .map(|id| {
            let c = c.clone();
            let req = timed_join_req(group, id, t.0, t.1);
            tokio::spawn(async move { join(&c, req, 7).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("join task"));
    }
    out
}

fn sync_req(
    group: &str,
    member: &str,
    generation: i32,
    assign: &[(&str, &[u8])],
) -> SyncGroupRequest {
    SyncGroupRequest::default()
        .with_group_id(gid(group))
        .with_member_id(s(member))
        .with_generation_id(generation)
        .with_assignments(
            assign
                .iter()
                .map(|(m, a)| {
                    SyncGroupRequestAssignment::default()
                        .with_member_id(s(m))
                        .with_assignment(Bytes::copy_from_slice(a))
                })
                .collect(),
        )
}

/// Followers sync first (parked), then the leader; returns assignments in `ids` order.
async fn sync_all(
    c: &Arc<GroupCoordinator>,
    group: &str,
    gen: i32,
    leader: &str,
    ids: &[String],
) -> Vec<Bytes> {
    let mut tasks = Vec::new();
    for id in ids.iter().filter(|i| *i != leader) {
        let c = c.clone();
        let req = sync_req(group, id, gen, &[]);
        tasks.push((
            id.clone(),
            tokio::spawn(async move { c.sync_group(req, 5).await }),
        ));
    }
    tokio::task::yield_now().await;
    let assign: Vec<(&str, &[u8])> = ids.iter().map(|i| (i.as_str(), i.as_bytes())).collect();
    let lr = c.sync_group(sync_req(group, leader, gen, &assign), 5).await;
    enc(&lr, 5);
    assert_eq!(lr.error_code, 0);
    assert_eq!(lr.protocol_name.as_deref(), Some("range"));
    let mut by_id = BTreeMap::new();
    by_id.insert(leader.to_string(), lr.assignment);
    for (id, t) in tasks {
        let r = t.await.expect("sync task");
        assert_eq!(r.error_code, 0);
        by_id.insert(id, r.assignment);
    }
    ids.iter().map(|i| by_id[i].clone()).collect()
}

async fn heartbeat(c: &Arc<GroupCoordinator>, group: &str, member: &str, gen: i32) -> i16 {
    let r = c
        .heartbeat(
            HeartbeatRequest::default()
                .with_group_id(gid(group))
                .with_member_id(s(member))
                .with_generation_id(gen),
            4,
        )
        .await;
    enc(&r, 4);
    r.error_code
}

async fn leave(
    c: &Arc<GroupCoordinator>,
    group: &str,
    member: &str,
    version: i16,
) -> LeaveGroupResponse {
    let mut req = LeaveGroupRequest::default().with_group_id(gid(group));
    if version >= 3 {
        req.members = vec![MemberIdentity::default().with_member_id(s(member))];
    } else {
        req.member_id = s(member);
    }
    let r = c.leave_group(req, version).await;
    enc(&r, version);
    r
}

async fn describe(c: &Arc<GroupCoordinator>, group: &str) -> DescribedGroup {
    let r = c
        .describe_groups(
            DescribeGroupsRequest::default().with_groups(vec![gid(group)]),
            5,
        )
        .await;
    enc(&r, 5);
    r.groups.into_iter().next().expect("one group")
}

/// Forms a stable group of `n` members; returns (ids, leader, generation).
async fn stable_group(
    c: &Arc<GroupCoordinator>,
    group: &str,
    n: usize,
) -> (Vec<String>, String, i32) {
    stable_group_t(c, group, n, (10_000, 30_000)).await
}

/// Like [`stable_group`] with (session, rebalance) timeouts in ms.
async fn stable_group_t(
    c: &Arc<GroupCoordinator>,
    group: &str,
    n: usize,
    t: (i32, i32),
) -> (Vec<String>, String, i32) {
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(member_id(c, group).await);
    }
    let joined = join_all_t(c, group, &ids, t).await;
    let gen = joined[0].generation_id;
    let leader = joined[0].leader.to_string();
    for r in &joined {
        assert_eq!(r.error_code, 0);
        assert_eq!(r.generation_id, gen);
        assert_eq!(r.leader.as_str(), leader);
        assert_eq!(r.protocol_type.as_deref(), Some("consumer"));
        assert_eq!(
            r.members.len(),
            if r.member_id.as_str() == leader { n } else { 0 }
        );
    }
    let assignments = sync_all(c, group, gen, &leader, &ids).await;
    for (id, a) in ids.iter().zip(assignments) {
        assert_eq!(a.as_ref(), id.as_bytes());
    }
    (ids, leader, gen)
}

#[tokio::test(start_paused = true)]
async fn single_member_joins_immediately() {
    let (c, _) = setup().await;
    let id = member_id(&c, "g").await;
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        join(&c, join_req("g", &id, 10_000), 5),
    )
    .await
    .expect("first join completes after the quiet period");
    assert_eq!(r.error_code, 0);
    assert_eq!(r.generation_id, 1);
    assert_eq!(r.leader.as_str(), id);
    assert_eq!(r.protocol_name.as_deref(), Some("range"));
    assert_eq!(r.members.len(), 1);
    let sr = c.sync_group(sync_req("g", &id, 1, &[(&id, b"a")]), 3).await;
    enc(&sr, 3);
    assert_eq!(sr.error_code, 0);
    assert_eq!(sr.assignment.as_ref(), b"a");
    assert_eq!(heartbeat(&c, "g", &id, 1).await, 0);
    assert_eq!(describe(&c, "g").await.group_state.as_str(), "Stable");
    // Old clients (v0-3) join without the MEMBER_ID_REQUIRED round.
    let r = join(&c, join_req("old", "", 10_000), 0).await;
    assert_eq!(r.error_code, 0);
    assert_eq!(r.generation_id, 1);
    c.shutdown();
}

/// A new group's first rebalance: a lone member waits one quiet period;
/// members joining a quarter second apart land in one generation; a stream
/// of joins is cut off by `group.initial.rebalance.delay.ms`.
#[tokio::test(start_paused = true)]
async fn first_rebalance_waits_for_a_quiet_period() {
    let (c, _) = setup().await;
    let start = tokio::time::Instant::now();
    let id = member_id(&c, "alone").await;
    let r = join(&c, join_req("alone", &id, 10_000), 5).await;
    assert_eq!((r.error_code, r.generation_id), (0, 1));
    assert_eq!(
        start.elapsed(),
        group::INITIAL_QUIET,
        "a lone member waits one quiet period"
    );

    // Three members, each a quarter second after the previous.
    let mut tasks = Vec::new();
    for i in 0..3u64 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(250 * i)).await;
            let id = member_id(&c, "together").await;
            join(&c, join_req("together", &id, 10_000), 5).await
        }));
    }
    let mut generations = Vec::new();
    for t in tasks {
        let r = t.await.expect("join task");
        assert_eq!(r.error_code, 0);
        generations.push(r.generation_id);
    }
    assert_eq!(
        generations,
        [1, 1, 1],
        "one rebalance for members started together"
    );

    // A member every 300 ms for five seconds: the first rebalance still
    // completes by the initial delay (3 s).
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..16u64 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300 * i)).await;
            let id = member_id(&c, "stream").await;
            let r = join(&c, join_req("stream", &id, 10_000), 5).await;
            (r.generation_id, tokio::time::Instant::now())
        }));
    }
    let first = tasks.remove(0).await.expect("join task");
    assert_eq!(first.0, 1);
    assert_eq!(
        first.1 - start,
        Duration::from_millis(3000),
        "bounded by the initial delay"
    );
    for t in tasks {
        t.await.expect("join task");
    }
    c.shutdown();
}

#[tokio::test(start_paused = true)]
async fn invalid_requests() {
    let (c, _) = setup().await;
    assert_eq!(join(&c, join_req("", "", 10_000), 5).await.error_code, 24);
    assert_eq!(join(&c, join_req("g", "", 10), 5).await.error_code, 26);
    assert_eq!(
        join(&c, join_req("g", "nobody", 10_000), 5)
            .await
            .error_code,
        25
    );
    assert_eq!(heartbeat(&c, "g", "nobody", 1).await, 25);
    let sr = c.sync_group(sync_req("g", "nobody", 1, &[]), 5).await;
    assert_eq!(sr.error_code, 25);
}

#[tokio::test(start_paused = true)]
async fn member_leaves_and_rest_rebalance() {
    let (c, _) = setup().await;
    let (ids, leader, gen) = stable_group(&c, "g", 3).await;
    let gone = ids
        .iter()
        .find(|i| **i != leader)
        .expect("a follower")
        .clone();
    let lr = leave(&c, "g", &gone, 3).await;
    assert_eq!(lr.error_code, 0);
    assert_eq!(lr.members[0].error_code, 0);
    let rest: Vec<String> = ids.iter().filter(|i| **i != gone).cloned().collect();
    for id in &rest {
        assert_eq!(heartbeat(&c, "g", id, gen).await, 27);
    }
    let joined = join_all(&c, "g", &rest).await;
    for r in &joined {
        assert_eq!(r.error_code, 0);
        assert_eq!(r.generation_id, gen + 1);
        assert_eq!(r.leader.as_str(), leader, "leader kept");
    }
    sync_all(&c, "g", gen + 1, &leader, &rest).await;
    let d = describe(&c, "g").await;
    assert_eq!(d.members.len(), 2);
    // Leaving with an old-style request, then the last member -> Empty.
    let other = rest.iter().find(|i| **i != leader).expect("follower");
    assert_eq!(leave(&c, "g", other, 1).await.error_code, 0);
    assert_eq!(leave(&c, "g", &leader, 1).await.error_code, 0);
    assert_eq!(leave(&c, "g", &leader, 1).await.error_code, 25);
    assert_eq!(describe(&c, "g").await.group_state.as_str(), "Empty");
    c.shutdown();
}

#[tokio::test(start_paused = true)]
async fn silent_leader_is_evicted_and_group_recovers() {
    const T: (i32, i32) = (400, 2_000);
    let beat = Duration::from_millis(100);
    let (c, _) = setup().await;
    let (ids, leader, gen) = stable_group_t(&c, "g", 2, T).await;
    let survivor = ids
        .iter()
        .find(|i| **i != leader)
        .expect("follower")
        .clone();
    // The leader dies without LeaveGroup; the survivor keeps heartbeating.
    let mut seen_rebalance = false;
    for _ in 0..30 {
        tokio::time::sleep(beat).await;
        match heartbeat(&c, "g", &survivor, gen).await {
            0 => {}
            27 => {
                seen_rebalance = true;
                break;
            }
            other => panic!("unexpected heartbeat error {other}"),
        }
    }
    assert!(seen_rebalance, "leader eviction starts a rebalance");
    let r = join(&c, timed_join_req("g", &survivor, T.0, T.1), 7).await;
    assert_eq!(r.error_code, 0);
    assert_eq!(r.generation_id, gen + 1);
    assert_eq!(r.leader.as_str(), survivor, "survivor is the new leader");
    assert_eq!(r.members.len(), 1);
    sync_all(&c, "g", gen + 1, &survivor, std::slice::from_ref(&survivor)).await;
    assert_eq!(heartbeat(&c, "g", &leader, gen).await, 25);
    // A new member can join: the survivor rejoins when told to.
    let newcomer = member_id(&c, "g").await;
    let c2 = c.clone();
    let nc = newcomer.clone();
    let t = tokio::spawn(async move { join(&c2, timed_join_req("g", &nc, T.0, T.1), 7).await });
    tokio::time::sleep(beat).await;
    assert_eq!(heartbeat(&c, "g", &survivor, gen + 1).await, 27);
    let r = join(&c, timed_join_req("g", &survivor, T.0, T.1), 7).await;
    assert_eq!(r.generation_id, gen + 2);
    assert_eq!(t.await.expect("join").generation_id, gen + 2);
    c.shutdown();
}

#[tokio::test(start_paused = true)]
async fn member_not_rejoining_is_dropped_at_rebalance_timeout() {
    const T: (i32, i32) = (400, 600);
    let (c, _) = setup().await;
    let (ids, leader, gen) = stable_group_t(&c, "g", 2, T).await;
    let lazy = ids
        .iter()
        .find(|i| **i != leader)
        .expect("follower")
        .clone();
    // The leader rejoins (rebalance); the follower heartbeats but never rejoins.
    let c2 = c.clone();
    let l2 = leader.clone();
    let t = tokio::spawn(async move { join(&c2, timed_join_req("g", &l2, T.0, T.1), 7).await });
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if t.is_finished() {
            break;
        }
        assert_eq!(heartbeat(&c, "g", &lazy, gen).await, 27);
    }
    let r = t.await.expect("join");
    assert_eq!(r.error_code, 0);
    assert_eq!(r.generation_id, gen + 1);
    assert_eq!(r.members.len(), 1);
    assert_eq!(heartbeat(&c, "g", &lazy, gen).await, 25);
    c.shutdown();
}

#[tokio::test(start_paused = true)]
async fn static_member_replaces_old_id() {
    let (c, _) = setup().await;
    let req = join_req("g", "", 10_000).with_group_instance_id(Some(s("inst-1")));
    let r1 = join(&c, req.clone(), 5).await;
    assert_eq!(r1.error_code, 0, "static members skip MEMBER_ID_REQUIRED");
    let old = r1.member_id.to_string();
    let ids = vec![old.clone()];
    sync_all(&c, "g", r1.generation_id, &old, &ids).await;
    let r2 = join(&c, req, 5).await;
    assert_eq!(r2.error_code, 0);
    assert_ne!(r2.member_id.as_str(), old);
    let hb = c
        .heartbeat(
            HeartbeatRequest::default()
                .with_group_id(gid("g"))
                .with_member_id(s(&old))
                .with_group_instance_id(Some(s("inst-1")))
                .with_generation_id(r1.generation_id),
            4,
        )
        .await;
    assert_eq!(hb.error_code, 82);
    c.shutdown();
}

fn commit_req(
    group: &str,
    member: &str,
    gen: i32,
    parts: &[(&str, i32, i64, Option<&str>)],
) -> OffsetCommitRequest {
    let mut topics: Vec<OffsetCommitRequestTopic> = Vec::new();
    for (t, p, o, m) in parts {
        let part = OffsetCommitRequestPartition::default()
            .with_partition_index(*p)
            .with_committed_offset(*o)
            .with_committed_leader_epoch(7)
            .with_committed_metadata(m.map(s));
        match topics.iter_mut().find(|x| x.name.as_str() == *t) {
            Some(x) => x.partitions.push(part),
            None => topics.push(
                OffsetCommitRequestTopic::default()
                    .with_name(TopicName(s(t)))
                    .with_partitions(vec![part]),
            ),
        }
    }
    OffsetCommitRequest::default()
        .with_group_id(gid(group))
        .with_member_id(s(member))
        .with_generation_id_or_member_epoch(gen)
        .with_topics(topics)
}

fn commit_errors(r: &OffsetCommitResponse) -> Vec<(String, i32, i16)> {
    r.topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|p| (t.name.to_string(), p.partition_index, p.error_code))
        })
        .collect()
}

async fn fetch(
    c: &Arc<GroupCoordinator>,
    group: &str,
    topics: Option<&[(&str, &[i32])]>,
    version: i16,
) -> Vec<(String, i32, i64, i32, Option<String>)> {
    let topics = topics.map(|ts| {
        ts.iter()
            .map(|(n, ps)| {
                OffsetFetchRequestTopic::default()
                    .with_name(TopicName(s(n)))
                    .with_partition_indexes(ps.to_vec())
            })
            .collect::<Vec<_>>()
    });
    let r = c
        .offset_fetch(
            OffsetFetchRequest::default()
                .with_group_id(gid(group))
                .with_topics(topics),
            version,
        )
        .await;
    enc(&r, version);
    assert_eq!(r.error_code, 0);
    r.topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| {
                assert_eq!(p.error_code, 0);
                (
                    t.name.to_string(),
                    p.partition_index,
                    p.committed_offset,
                    p.committed_leader_epoch,
                    p.metadata.as_ref().map(|m| m.to_string()),
                )
            })
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn simple_commit_and_fetch() {
    let (c, _) = setup().await;
    let r = c
        .offset_commit(
            commit_req(
                "g",
                "",
                -1,
                &[
                    ("t", 0, 42, Some("meta")),
                    ("t", 5, 1, None),
                    ("nope", 0, 1, None),
                ],
            ),
            8,
        )
        .await;
    enc(&r, 8);
    assert_eq!(
        commit_errors(&r),
        vec![
            ("t".into(), 0, 0),
            ("t".into(), 5, 3),
            ("nope".into(), 0, 3)
        ]
    );
    let got = fetch(&c, "g", Some(&[("t", &[0, 1])]), 7).await;
    assert_eq!(
        got,
        vec![
            ("t".into(), 0, 42, 7, Some("meta".into())),
            ("t".into(), 1, -1, -1, Some(String::new())),
        ]
    );
    let all = fetch(&c, "g", None, 7).await;
    assert_eq!(all, vec![("t".into(), 0, 42, 7, Some("meta".into()))]);
    let v1 = fetch(&c, "g", Some(&[("t", &[0])]), 1).await;
    assert_eq!(v1[0].2, 42);
    // v8 multi-group form.
    let r = c
        .offset_fetch(
            OffsetFetchRequest::default().with_groups(vec![
                OffsetFetchRequestGroup::default()
                    .with_group_id(gid("g"))
                    .with_topics(None),
                OffsetFetchRequestGroup::default()
                    .with_group_id(gid("other"))
                    .with_topics(None),
            ]),
            8,
        )
        .await;
    enc(&r, 8);
    assert_eq!(r.groups.len(), 2);
    assert_eq!(r.groups[0].topics[0].partitions[0].committed_offset, 42);
    assert!(r.groups[1].topics.is_empty());
    // Offsets-only groups are listed and described as Empty.
    let d = describe(&c, "g").await;
    assert_eq!(d.group_state.as_str(), "Empty");
    assert_eq!(describe(&c, "unknown").await.group_state.as_str(), "Dead");
    c.shutdown();
}

#[tokio::test(start_paused = true)]
async fn group_commits_are_validated() {
    let (c, _) = setup().await;
    let (ids, leader, gen) = stable_group(&c, "g", 2).await;
    let ok = c
        .offset_commit(commit_req("g", &leader, gen, &[("t", 1, 9, Some("m"))]), 7)
        .await;
    assert_eq!(commit_errors(&ok), vec![("t".into(), 1, 0)]);
    let bad_gen = c
        .offset_commit(commit_req("g", &leader, gen + 5, &[("t", 1, 10, None)]), 7)
        .await;
    assert_eq!(commit_errors(&bad_gen)[0].2, 22);
    let unknown = c
        .offset_commit(commit_req("g", "who", gen, &[("t", 1, 10, None)]), 7)
        .await;
    assert_eq!(commit_errors(&unknown)[0].2, 25);
    let simple = c
        .offset_commit(commit_req("g", "", -1, &[("t", 1, 10, None)]), 7)
        .await;
    assert_eq!(
        commit_errors(&simple)[0].2,
        25,
        "simple commit refused on a live group"
    );
    let no_group = c
        .offset_commit(commit_req("nogroup", "m", 3, &[("t", 1, 10, None)]), 7)
        .await;
    assert_eq!(commit_errors(&no_group)[0].2, 22);
    assert_eq!(heartbeat(&c, "g", &ids[0], gen + 1).await, 22);
    let sr = c.sync_group(sync_req("g", &ids[0], gen + 1, &[]), 5).await;
    assert_eq!(sr.error_code, 22);
    // During a rebalance commits of the current generation still succeed.
    let newcomer = member_id(&c, "g").await;
    let c2 = c.clone();
    let t = tokio::spawn(async move { join(&c2, join_req("g", &newcomer, 10_000), 7).await });
    tokio::task::yield_now().await;
    assert_eq!(heartbeat(&c, "g", &leader, gen).await, 27);
    let during = c
        .offset_commit(commit_req("g", &leader, gen, &[("t", 1, 11, None)]), 7)
        .await;
    assert_eq!(commit_errors(&during)[0].2, 0);
    assert_eq!(fetch(&c, "g", Some(&[("t", &[1])]), 6).await[0].2, 11);
    t.abort();
    c.shutdown();
}

#[tokio::test(start_paused = true)]
async fn describe_list_delete() {
    let (c, store) = setup().await;
    let (ids, leader, gen) = stable_group(&c, "g", 2).await;
    let d = describe(&c, "g").await;
    assert_eq!(d.error_code, 0);
    assert_eq!(d.group_state.as_str(), "Stable");
    assert_eq!(d.protocol_type.as_str(), "consumer");
    assert_eq!(d.protocol_data.as_str(), "range");
    assert_eq!(d.members.len(), 2);
    for m in &d.members {
        assert_eq!(m.client_id.as_str(), "client");
        assert_eq!(m.client_host.as_str(), "/127.0.0.1");
        assert_eq!(m.member_assignment.as_ref(), m.member_id.as_bytes());
        assert_eq!(m.member_metadata, subscription(&["t"]));
    }
    c.offset_commit(
        commit_req("g", &leader, gen, &[("t", 0, 5, None), ("u", 0, 6, None)]),
        7,
    )
    .await;
    c.offset_commit(commit_req("offsets-only", "", -1, &[("t", 0, 1, None)]), 7)
        .await;

    let list = c.list_groups(ListGroupsRequest::default(), 4).await;
    enc(&list, 4);
    let names: Vec<(String, String, String)> = list
        .groups
        .iter()
        .map(|g| {
            (
                g.group_id.to_string(),
                g.protocol_type.to_string(),
                g.group_state.to_string(),
            )
        })
        .collect();
    assert_eq!(
        names,
        vec![
            ("g".into(), "consumer".into(), "Stable".into()),
            ("offsets-only".into(), "consumer".into(), "Empty".into()),
        ]
    );
    let filtered = c
        .list_groups(
            ListGroupsRequest::default().with_states_filter(vec![s("Empty")]),
            5,
        )
        .await;
    enc(&filtered, 5);
    assert_eq!(filtered.groups.len(), 1);
    assert_eq!(filtered.groups[0].group_id.as_str(), "offsets-only");
    enc(&c.list_groups(ListGroupsRequest::default(), 0).await, 0);

    // OffsetDelete: subscribed topic refused while the group is live.
    let od = c
        .offset_delete(
            OffsetDeleteRequest::default()
                .with_group_id(gid("g"))
                .with_topics(vec![
                    OffsetDeleteRequestTopic::default()
                        .with_name(TopicName(s("t")))
                        .with_partitions(vec![
                            OffsetDeleteRequestPartition::default().with_partition_index(0)
                        ]),
                    OffsetDeleteRequestTopic::default()
                        .with_name(TopicName(s("u")))
                        .with_partitions(vec![
                            OffsetDeleteRequestPartition::default().with_partition_index(0)
                        ]),
                ]),
            0,
        )
        .await;
    enc(&od, 0);
    assert_eq!(od.error_code, 0);
    assert_eq!(od.topics[0].partitions[0].error_code, 86);
    assert_eq!(od.topics[1].partitions[0].error_code, 0);
    assert_eq!(fetch(&c, "g", Some(&[("u", &[0])]), 7).await[0].2, -1);

    let del = |names: Vec<&str>| {
        DeleteGroupsRequest::default().with_groups_names(names.into_iter().map(gid).collect())
    };
    let r = c
        .delete_groups(del(vec!["g", "offsets-only", "missing"]), 2)
        .await;
    enc(&r, 2);
    let codes: Vec<i16> = r.results.iter().map(|x| x.error_code).collect();
    assert_eq!(codes, vec![68, 0, 69]);
    for id in &ids {
        leave(&c, "g", id, 5).await;
    }
    let r = c.delete_groups(del(vec!["g"]), 0).await;
    assert_eq!(r.results[0].error_code, 0);
    assert!(store
        .fetch_offsets("g", None)
        .await
        .expect("fetch")
        .is_empty());
    assert_eq!(describe(&c, "g").await.group_state.as_str(), "Dead");
    let list = c.list_groups(ListGroupsRequest::default(), 3).await;
    assert!(list.groups.is_empty());
    c.shutdown();
}

#[tokio::test(start_paused = true)]
async fn shutdown_answers_parked_joins() {
    let (c, _) = setup().await;
    let (_, leader, _) = stable_group(&c, "g", 2).await;
    let c2 = c.clone();
    let t = tokio::spawn(async move { join(&c2, join_req("g", &leader, 10_000), 7).await });
    tokio::task::yield_now().await;
    c.shutdown();
    assert_eq!(t.await.expect("join").error_code, 16);
}

/// Two brokers that both believe they coordinate "g" (their views of the
/// live brokers disagree for a moment): the one that claimed the group last
/// wins and carries the group on as saved; the other's commits are fenced
/// and it drops the group.
#[tokio::test(start_paused = true)]
async fn stale_coordinator_cannot_commit() {
    let (a, store) = setup().await;
    let b = coordinator(store.clone(), a.config.clone());
    a.set_owner_check(1, Arc::new(|_: &str| true));
    b.set_owner_check(2, Arc::new(|_: &str| true));

    let (ids, leader, gen) = stable_group(&a, "g", 2).await;
    let ok = a
        .offset_commit(commit_req("g", &leader, gen, &[("t", 0, 10, None)]), 7)
        .await;
    assert_eq!(commit_errors(&ok), vec![("t".into(), 0, 0)]);

    // The group moves to b: b claims it at the first request and carries
    // the saved generation on.
    assert_eq!(heartbeat(&b, "g", &leader, gen).await, 0);
    let fresh = b
        .offset_commit(commit_req("g", &leader, gen, &[("t", 0, 20, None)]), 7)
        .await;
    assert_eq!(commit_errors(&fresh), vec![("t".into(), 0, 0)]);
    let stale = a
        .offset_commit(commit_req("g", &leader, gen, &[("t", 0, 99, None)]), 7)
        .await;
    assert_eq!(
        commit_errors(&stale),
        vec![("t".into(), 0, 16)],
        "NOT_COORDINATOR: a's claim is fenced"
    );
    assert_eq!(a.group_count(), (0, 0), "a dropped the group");
    assert_eq!(fetch(&b, "g", Some(&[("t", &[0])]), 7).await[0].2, 20);

    // The other member's heartbeat reaches a, which claims the group back
    // (as saved); b is fenced in turn.
    assert_eq!(heartbeat(&a, "g", &ids[1], gen).await, 0);
    let fenced = b
        .offset_commit(commit_req("g", &leader, gen, &[("t", 0, 30, None)]), 7)
        .await;
    assert_eq!(commit_errors(&fenced)[0].2, 16);
    assert_eq!(fetch(&a, "g", Some(&[("t", &[0])]), 7).await[0].2, 20);

    // A group the owner check gives away is dropped at the next request.
    a.set_owner_check(1, Arc::new(|_: &str| false));
    assert_eq!(heartbeat(&a, "g", &leader, gen).await, 16);
    assert_eq!(a.group_count(), (0, 0));
    a.shutdown();
    b.shutdown();
}

/// Issue 12, defect 12: membership lived in memory only, so after a
/// coordinator restart (or a move) a stable group's heartbeats got
/// UNKNOWN_MEMBER_ID and its commits ILLEGAL_GENERATION: the commit was
/// lost and the group rebalanced. The coordinator now saves the group when
/// a generation's assignment is complete, and a new coordinator carries it
/// on.
#[tokio::test(start_paused = true)]
async fn restarted_coordinator_carries_a_stable_group_on() {
    let (a, store) = setup().await;
    let (ids, leader, gen) = stable_group(&a, "g", 3).await;
    a.shutdown();
    drop(a);

    let b = coordinator(
        store.clone(),
        GroupConfig {
            min_session_timeout_ms: 50,
            ..GroupConfig::default()
        },
    );
    for id in &ids {
        assert_eq!(heartbeat(&b, "g", id, gen).await, 0, "heartbeat of {id}");
    }
    let r = b
        .offset_commit(commit_req("g", &ids[2], gen, &[("t", 1, 42, None)]), 7)
        .await;
    assert_eq!(commit_errors(&r), vec![("t".into(), 1, 0)]);
    let d = describe(&b, "g").await;
    assert_eq!(d.group_state.as_str(), "Stable");
    assert_eq!(d.protocol_data.as_str(), "range");
    let mut described: Vec<(String, Bytes)> = d
        .members
        .iter()
        .map(|m| (m.member_id.to_string(), m.member_assignment.clone()))
        .collect();
    described.sort();
    let mut expected: Vec<(String, Bytes)> = ids
        .iter()
        .map(|i| (i.clone(), Bytes::copy_from_slice(i.as_bytes())))
        .collect();
    expected.sort();
    assert_eq!(described, expected, "members and assignments as saved");
    // A member's re-sync gets its saved assignment.
    let r = b.sync_group(sync_req("g", &ids[1], gen, &[]), 5).await;
    assert_eq!(
        (r.error_code, r.assignment.as_ref()),
        (0, ids[1].as_bytes())
    );

    // Life goes on: a member leaves, the rest rebalance to the next
    // generation with the old leader still leading.
    assert_eq!(leave(&b, "g", &ids[0], 3).await.error_code, 0);
    let rest: Vec<String> = ids[1..].to_vec();
    let joined = join_all(&b, "g", &rest).await;
    assert!(joined
        .iter()
        .all(|r| r.error_code == 0 && r.generation_id == gen + 1));
    let new_leader = joined[0].leader.to_string();
    if ids[0] != leader {
        assert_eq!(new_leader, leader);
    }
    sync_all(&b, "g", gen + 1, &new_leader, &rest).await;
    b.shutdown();
}

/// Members get their SyncGroup answer only once the generation is saved:
/// when the save fails they get the error and the group rebalances, as in
/// Kafka (an assignment nobody could carry on after a move is not handed
/// out).
#[tokio::test(start_paused = true)]
async fn sync_waits_for_the_save() {
    use tributary_meta::faults::{FaultyMeta, MetaFaults};

    /// `save_group` fails while the flag is set.
    struct FailingSave(std::sync::atomic::AtomicBool);
    #[async_trait::async_trait]
    impl MetaFaults for FailingSave {
        async fn before(&self, op: &'static str) -> tributary_meta::Result<()> {
            if op == "save_group" && self.0.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(tributary_meta::faults::injected(op));
            }
            Ok(())
        }
        async fn after(&self, _op: &'static str, _ok: bool) -> tributary_meta::Result<()> {
            Ok(())
        }
    }
    let faults = Arc::new(FailingSave(std::sync::atomic::AtomicBool::new(true)));
    let store = Arc::new(FaultyMeta::new(store_with_topics().await, faults.clone()));
    let c = coordinator(
        store.clone(),
        GroupConfig {
            min_session_timeout_ms: 50,
            ..GroupConfig::default()
        },
    );
    let ids = vec![member_id(&c, "g").await, member_id(&c, "g").await];
    let joined = join_all(&c, "g", &ids).await;
    let (gen, leader) = (joined[0].generation_id, joined[0].leader.to_string());
    let follower = ids
        .iter()
        .find(|i| **i != leader)
        .expect("follower")
        .clone();
    let parked = {
        let (c, req) = (c.clone(), sync_req("g", &follower, gen, &[]));
        tokio::spawn(async move { c.sync_group(req, 5).await })
    };
    tokio::task::yield_now().await;
    let assign: Vec<(&str, &[u8])> = ids.iter().map(|i| (i.as_str(), i.as_bytes())).collect();
    let lr = c.sync_group(sync_req("g", &leader, gen, &assign), 5).await;
    assert_eq!(lr.error_code, 15, "COORDINATOR_NOT_AVAILABLE: not saved");
    assert_eq!(parked.await.expect("sync").error_code, 15);
    assert_eq!(
        describe(&c, "g").await.group_state.as_str(),
        "PreparingRebalance"
    );
    assert_eq!(store.load_group("g").await.expect("load"), None);

    // With the store back, the next generation is saved and handed out.
    faults.0.store(false, std::sync::atomic::Ordering::SeqCst);
    let joined = join_all(&c, "g", &ids).await;
    let (gen, leader) = (joined[0].generation_id, joined[0].leader.to_string());
    sync_all(&c, "g", gen, &leader, &ids).await;
    assert!(store.load_group("g").await.expect("load").is_some());
    c.shutdown();
}

/// Issue 12, defect 8: every group id a client ever joined (or committed
/// under) stayed in memory forever with its timer task and claim. Empty
/// groups unused for `empty_group_ttl` now leave memory; groups with
/// members stay.
#[tokio::test(start_paused = true)]
async fn idle_empty_groups_leave_memory() {
    let c = coordinator(
        store_with_topics().await,
        GroupConfig {
            min_session_timeout_ms: 50,
            empty_group_ttl: Duration::from_millis(200),
            // First joins complete at once: the groups must all be in
            // memory before the sweep starts.
            initial_rebalance_delay_ms: 0,
            ..GroupConfig::default()
        },
    );
    for i in 0..40 {
        let g = format!("passing-{i}");
        let id = member_id(&c, &g).await;
        assert_eq!(join(&c, join_req(&g, &id, 10_000), 5).await.error_code, 0);
        assert_eq!(leave(&c, &g, &id, 3).await.error_code, 0);
    }
    let id = member_id(&c, "stays").await;
    let r = join(&c, join_req("stays", &id, 30_000), 5).await;
    assert_eq!(r.error_code, 0);
    assert_eq!(c.group_count().0, 41);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while c.group_count().0 > 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "idle groups still held: {:?}",
            c.group_count()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        describe(&c, "stays").await.group_state.as_str(),
        "CompletingRebalance"
    );
    // A dropped group comes back as saved (Empty at generation 2: joined,
    // then emptied) on its next join.
    let id = member_id(&c, "passing-0").await;
    let r = join(&c, join_req("passing-0", &id, 10_000), 5).await;
    assert_eq!((r.error_code, r.generation_id), (0, 3));
    c.shutdown();
}

/// Issue 12 suspicion, confirmed: OffsetCommit checked the generation under
/// the group lock, then awaited the store, so a commit checked under an old
/// generation could land after a newer commit and move the offset back.
#[tokio::test(start_paused = true)]
async fn stale_commit_cannot_land_after_a_newer_one() {
    use tributary_meta::faults::{FaultyMeta, MetaFaults};

    /// The first `commit_offsets` call stalls before reaching the store.
    struct SlowFirstCommit(std::sync::atomic::AtomicBool);
    #[async_trait::async_trait]
    impl MetaFaults for SlowFirstCommit {
        async fn before(&self, op: &'static str) -> tributary_meta::Result<()> {
            if op == "commit_offsets" && !self.0.swap(true, std::sync::atomic::Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
            Ok(())
        }
        async fn after(&self, _op: &'static str, _ok: bool) -> tributary_meta::Result<()> {
            Ok(())
        }
    }

    let store = Arc::new(FaultyMeta::new(
        store_with_topics().await,
        Arc::new(SlowFirstCommit(std::sync::atomic::AtomicBool::new(false))),
    ));
    let c = coordinator(
        store,
        GroupConfig {
            min_session_timeout_ms: 50,
            ..GroupConfig::default()
        },
    );
    let id = member_id(&c, "g").await;
    let r = join(&c, join_req("g", &id, 10_000), 5).await;
    assert_eq!(r.error_code, 0);
    let gen = r.generation_id;
    let sr = c
        .sync_group(sync_req("g", &id, gen, &[(&id, b"a")]), 3)
        .await;
    assert_eq!(sr.error_code, 0);
    // The member commits offset 10 under its generation; the write stalls.
    let stale = {
        let c = c.clone();
        let req = commit_req("g", &id, gen, &[("t", 0, 10, None)]);
        tokio::spawn(async move { c.offset_commit(req, 7).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Meanwhile the member leaves and a newer commit (the group is Empty:
    // a simple commit) moves the offset to 20.
    assert_eq!(leave(&c, "g", &id, 3).await.error_code, 0);
    let newer = c
        .offset_commit(commit_req("g", "", -1, &[("t", 0, 20, None)]), 7)
        .await;
    assert_eq!(newer.topics[0].partitions[0].error_code, 0);
    let stale = stale.await.expect("stale commit task");
    assert_eq!(stale.topics[0].partitions[0].error_code, 0);
    let committed = c
        .store
        .fetch_offsets("g", None)
        .await
        .expect("fetch offsets");
    assert_eq!(
        committed[0].offset, 20,
        "the stale commit moved the offset back"
    );
    c.shutdown();
}
