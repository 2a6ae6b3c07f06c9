//! Incremental fetch sessions (KIP-227): a consumer of many partitions
//! sends its partitions once; later fetches name only what changed (a new
//! fetch offset, a partition added or forgotten) and answers carry only the
//! partitions with news (records, an error, or a moved high watermark, last
//! stable offset or log start).
//!
//! The cache is bounded: at most `slots` sessions and
//! [`MAX_CACHED_PARTITIONS`] partitions over all of them, at most
//! [`MAX_SESSION_PARTITIONS`] in one. A session unused for [`IDLE`] is
//! dropped when room is needed (Kafka's
//! `min.incremental.fetch.session.eviction.ms`), and is dropped anyway once
//! idle for twice that; when no room can be made, the fetch is answered
//! without a session and the client keeps sending full fetches. A session
//! belongs to the principal that created it; another one naming its id is
//! told FETCH_SESSION_ID_NOT_FOUND.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::fetch_response::FetchableTopicResponse;
use kafka_protocol::messages::{FetchRequest, FetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;
use tokio::time::Instant;

/// A session unused this long may be evicted for a new one.
pub const IDLE: Duration = Duration::from_secs(120);

/// Partitions cached over all sessions (each costs about 100 bytes).
pub const MAX_CACHED_PARTITIONS: usize = 500_000;

/// Partitions one session may hold.
pub const MAX_SESSION_PARTITIONS: usize = 50_000;

/// The epoch a client sends to open a session, and to close one.
const INITIAL_EPOCH: i32 = 0;
const FINAL_EPOCH: i32 = -1;

/// What a fetch does with sessions.
#[derive(Debug)]
pub enum Begin {
    /// Read the request as it is and answer session id 0.
    Sessionless,
    /// Read the request as it is, then [`FetchSessions::create`] a session
    /// from it.
    Create,
    /// Read `request` (the session's partitions, with this fetch's changes
    /// applied), then [`FetchSessions::finish`] the answer.
    Incremental { id: i32, request: Box<FetchRequest> },
    /// Answer with this top-level error and nothing else.
    Refuse(i16),
}

/// One partition of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cached {
    fetch_offset: i64,
    max_bytes: i32,
    /// (high watermark, last stable offset, log start) last answered.
    answered: Option<(i64, i64, i64)>,
}

/// A session's partitions by topic name (looked up by `&str`, with no
/// allocation per partition) and index.
#[derive(Debug, Default)]
struct Parts {
    by_topic: BTreeMap<String, BTreeMap<i32, Cached>>,
    len: usize,
}

impl Parts {
    fn len(&self) -> usize {
        self.len
    }

    fn get(&self, topic: &str, partition: i32) -> Option<&Cached> {
        self.by_topic.get(topic)?.get(&partition)
    }

    fn get_mut(&mut self, topic: &str, partition: i32) -> Option<&mut Cached> {
        self.by_topic.get_mut(topic)?.get_mut(&partition)
    }

    fn insert(&mut self, topic: &str, partition: i32, cached: Cached) {
        let added = match self.by_topic.get_mut(topic) {
            Some(parts) => parts.insert(partition, cached).is_none(),
            None => {
                self.by_topic
                    .insert(topic.to_owned(), BTreeMap::from([(partition, cached)]));
                true
            }
        };
        self.len += usize::from(added);
    }

    fn remove(&mut self, topic: &str, partition: i32) {
        if let Some(parts) = self.by_topic.get_mut(topic) {
            if parts.remove(&partition).is_some() {
                self.len -= 1;
            }
            if parts.is_empty() {
                self.by_topic.remove(topic);
            }
        }
    }
}

#[derive(Debug)]
struct Session {
    owner: String,
    /// The epoch the next fetch must carry.
    next_epoch: i32,
    partitions: Parts,
    last_used: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    sessions: HashMap<i32, Session>,
    /// Partitions over all sessions.
    cached: usize,
}

/// The broker's fetch session cache.
#[derive(Debug)]
pub struct FetchSessions {
    slots: usize,
    inner: Mutex<Inner>,
}

impl FetchSessions {
    /// A cache of at most `slots` sessions (0: no sessions).
    pub fn new(slots: usize) -> Self {
        FetchSessions {
            slots,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sessions and cached partitions (for `/metrics`).
    pub fn sizes(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.sessions.len(), inner.cached)
    }

    /// Decide what a Fetch of `version` from `owner` does, applying an
    /// incremental fetch's changes to its session.
    pub fn begin(&self, req: &FetchRequest, version: i16, owner: &str) -> Begin {
        if version < 7 {
            return Begin::Sessionless;
        }
        let (id, epoch) = (req.session_id, req.session_epoch);
        let mut inner = self.lock();
        if epoch == FINAL_EPOCH || epoch == INITIAL_EPOCH {
            // Closing (and maybe reopening): the named session goes, if
            // it is the caller's.
            if id != 0 && inner.sessions.get(&id).is_some_and(|s| s.owner == owner) {
                inner.remove(id);
                counter("closed", 1);
            }
            return if epoch == INITIAL_EPOCH && self.slots > 0 {
                Begin::Create
            } else {
                Begin::Sessionless
            };
        }
        if epoch < 0 {
            return Begin::Refuse(ResponseError::InvalidFetchSessionEpoch.code());
        }
        let now = Instant::now();
        let Some(session) = inner.sessions.get_mut(&id).filter(|s| s.owner == owner) else {
            return Begin::Refuse(ResponseError::FetchSessionIdNotFound.code());
        };
        if session.next_epoch != epoch {
            return Begin::Refuse(ResponseError::InvalidFetchSessionEpoch.code());
        }
        session.next_epoch = if epoch == i32::MAX { 1 } else { epoch + 1 };
        session.last_used = now;
        let before = session.partitions.len();
        for t in &req.forgotten_topics_data {
            for p in &t.partitions {
                session.partitions.remove(&t.topic.0, *p);
            }
        }
        for t in &req.topics {
            for p in &t.partitions {
                let answered = session
                    .partitions
                    .get(&t.topic.0, p.partition)
                    .and_then(|c| c.answered);
                session.partitions.insert(
                    &t.topic.0,
                    p.partition,
                    Cached {
                        fetch_offset: p.fetch_offset,
                        max_bytes: p.partition_max_bytes,
                        answered,
                    },
                );
            }
        }
        let after = session.partitions.len();
        if after > MAX_SESSION_PARTITIONS {
            inner.cached = inner.cached + after - before;
            inner.remove(id);
            return Begin::Refuse(ResponseError::FetchSessionIdNotFound.code());
        }
        let request = Box::new(full_request(req, &session.partitions));
        inner.cached = (inner.cached + after).saturating_sub(before);
        counter("incremental", 1);
        Begin::Incremental { id, request }
    }

    /// Open a session for a full fetch `req` answered with `resp`: its id,
    /// or 0 when there is no room (the client goes on with full fetches).
    pub fn create(&self, req: &FetchRequest, resp: &FetchResponse, owner: &str) -> i32 {
        let mut partitions = Parts::default();
        for t in &req.topics {
            for p in &t.partitions {
                partitions.insert(
                    &t.topic.0,
                    p.partition,
                    Cached {
                        fetch_offset: p.fetch_offset,
                        max_bytes: p.partition_max_bytes,
                        answered: None,
                    },
                );
            }
        }
        note_answers(&mut partitions, &resp.responses);
        let size = partitions.len();
        let now = Instant::now();
        let mut inner = self.lock();
        inner.expire(now);
        if size > MAX_SESSION_PARTITIONS || !inner.make_room(self.slots, size, now) {
            counter("refused", 1);
            return 0;
        }
        let id = loop {
            let id = rand::random::<i32>();
            if id > 0 && !inner.sessions.contains_key(&id) {
                break id;
            }
        };
        inner.cached += size;
        inner.sessions.insert(
            id,
            Session {
                owner: owner.to_owned(),
                next_epoch: 1,
                partitions,
                last_used: now,
            },
        );
        counter("created", 1);
        id
    }

    /// The answer of incremental fetch `id`: only the partitions with news
    /// (records, an error, or boundaries that moved since last answered),
    /// which are remembered as answered.
    pub fn finish(&self, id: i32, mut resp: FetchResponse) -> FetchResponse {
        let mut inner = self.lock();
        let Some(session) = inner.sessions.get_mut(&id) else {
            // Evicted meanwhile: the whole answer, and no session.
            return resp.with_session_id(0);
        };
        for t in &mut resp.responses {
            let topic = t.topic.0.as_str();
            t.partitions.retain(|p| {
                let now = (p.high_watermark, p.last_stable_offset, p.log_start_offset);
                let cached = session.partitions.get(topic, p.partition_index);
                p.error_code != 0
                    || p.records.as_ref().is_some_and(|r| !r.is_empty())
                    || cached.is_none_or(|c| c.answered != Some(now))
            });
        }
        resp.responses.retain(|t| !t.partitions.is_empty());
        note_answers(&mut session.partitions, &resp.responses);
        resp.with_session_id(id)
    }
}

impl Inner {
    fn remove(&mut self, id: i32) {
        if let Some(s) = self.sessions.remove(&id) {
            self.cached = self.cached.saturating_sub(s.partitions.len());
        }
    }

    /// Drop sessions idle for twice [`IDLE`].
    fn expire(&mut self, now: Instant) {
        let old: Vec<i32> = self
            .sessions
            .iter()
            .filter(|(_, s)| now.duration_since(s.last_used) >= 2 * IDLE)
            .map(|(id, _)| *id)
            .collect();
        counter("expired", old.len() as u64);
        for id in old {
            self.remove(id);
        }
    }

    /// Room for a session of `size` partitions, evicting the least recently
    /// used sessions idle for [`IDLE`] if needed.
    fn make_room(&mut self, slots: usize, size: usize, now: Instant) -> bool {
        while self.sessions.len() >= slots || self.cached + size > MAX_CACHED_PARTITIONS {
            let victim = self
                .sessions
                .iter()
                .filter(|(_, s)| now.duration_since(s.last_used) >= IDLE)
                .min_by_key(|(_, s)| s.last_used)
                .map(|(id, _)| *id);
            match victim {
                Some(id) => {
                    self.remove(id);
                    counter("evicted", 1);
                }
                None => return false,
            }
        }
        true
    }
}

/// Remember what was answered for each partition in `responses`.
fn note_answers(partitions: &mut Parts, responses: &[FetchableTopicResponse]) {
    for t in responses {
        for p in &t.partitions {
            if let Some(c) = partitions.get_mut(&t.topic.0, p.partition_index) {
                c.answered = Some((p.high_watermark, p.last_stable_offset, p.log_start_offset));
            }
        }
    }
}

/// `req` with the session's partitions in place of its own.
fn full_request(req: &FetchRequest, partitions: &Parts) -> FetchRequest {
    let topics = partitions
        .by_topic
        .iter()
        .map(|(topic, parts)| {
            FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_string(topic.clone())))
                .with_partitions(
                    parts
                        .iter()
                        .map(|(partition, c)| {
                            FetchPartition::default()
                                .with_partition(*partition)
                                .with_fetch_offset(c.fetch_offset)
                                .with_partition_max_bytes(c.max_bytes)
                        })
                        .collect(),
                )
        })
        .collect();
    FetchRequest::default()
        .with_replica_id(req.replica_id)
        .with_max_wait_ms(req.max_wait_ms)
        .with_min_bytes(req.min_bytes)
        .with_max_bytes(req.max_bytes)
        .with_isolation_level(req.isolation_level)
        .with_session_id(req.session_id)
        .with_session_epoch(req.session_epoch)
        .with_topics(topics)
}

fn counter(event: &'static str, n: u64) {
    if n > 0 {
        metrics::counter!("tributary_fetch_sessions_total", "event" => event).increment(n);
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use kafka_protocol::messages::fetch_request::ForgottenTopic;
    use kafka_protocol::messages::fetch_response::PartitionData;

    use super::*;

    fn name(t: &str) -> TopicName {
        TopicName(StrBytes::from_string(t.to_owned()))
    }

    fn request(id: i32, epoch: i32, parts: &[(&str, i32, i64)]) -> FetchRequest {
        let mut req = FetchRequest::default()
            .with_session_id(id)
            .with_session_epoch(epoch);
        let mut cached = Parts::default();
        for (t, p, o) in parts {
            cached.insert(
                t,
                *p,
                Cached {
                    fetch_offset: *o,
                    max_bytes: 1000,
                    answered: None,
                },
            );
        }
        req.topics = full_request(&req, &cached).topics;
        req
    }

    /// An answer for `parts`: (topic, partition, high watermark, records?).
    fn answer(parts: &[(&str, i32, i64, bool)]) -> FetchResponse {
        let mut resp = FetchResponse::default();
        for (t, p, hw, records) in parts {
            if resp
                .responses
                .last()
                .is_none_or(|r| r.topic.0.as_str() != *t)
            {
                resp.responses
                    .push(FetchableTopicResponse::default().with_topic(name(t)));
            }
            let records = records.then(|| Bytes::from_static(b"batch"));
            resp.responses.last_mut().expect("a topic").partitions.push(
                PartitionData::default()
                    .with_partition_index(*p)
                    .with_high_watermark(*hw)
                    .with_last_stable_offset(*hw)
                    .with_records(records),
            );
        }
        resp
    }

    fn listed(resp: &FetchResponse) -> Vec<(String, i32)> {
        resp.responses
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(|p| (t.topic.0.to_string(), p.partition_index))
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_answers_only_news() {
        let cache = FetchSessions::new(10);
        let full = request(0, 0, &[("a", 0, 5), ("a", 1, 7), ("b", 0, 0)]);
        assert!(matches!(cache.begin(&full, 12, "alice"), Begin::Create));
        let id = cache.create(
            &full,
            &answer(&[("a", 0, 5, false), ("a", 1, 9, true), ("b", 0, 0, false)]),
            "alice",
        );
        assert!(id > 0);
        assert_eq!(cache.sizes(), (1, 3));

        // Epoch 1: a/1 moves on, b/0 is forgotten; only a/1 is re-read at
        // its new offset, and a/0 (nothing new) is left out of the answer.
        let mut next = request(id, 1, &[("a", 1, 9)]);
        next.forgotten_topics_data = vec![ForgottenTopic::default()
            .with_topic(name("b"))
            .with_partitions(vec![0])];
        let Begin::Incremental { request: read, .. } = cache.begin(&next, 12, "alice") else {
            panic!("an incremental fetch");
        };
        let offsets: Vec<_> = read.topics[0]
            .partitions
            .iter()
            .map(|p| (p.partition, p.fetch_offset))
            .collect();
        assert_eq!(offsets, [(0, 5), (1, 9)]);
        assert_eq!(read.topics.len(), 1, "b was forgotten");
        let resp = cache.finish(id, answer(&[("a", 0, 5, false), ("a", 1, 9, false)]));
        assert_eq!(resp.session_id, id);
        assert!(listed(&resp).is_empty(), "nothing new: {:?}", listed(&resp));
        // A moved high watermark is news.
        assert!(matches!(
            cache.begin(&request(id, 2, &[]), 12, "alice"),
            Begin::Incremental { .. }
        ));
        let resp = cache.finish(id, answer(&[("a", 0, 6, false), ("a", 1, 9, false)]));
        assert_eq!(listed(&resp), [("a".to_owned(), 0)]);
        assert_eq!(cache.sizes(), (1, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn wrong_epochs_owners_and_ids_are_refused() {
        let cache = FetchSessions::new(10);
        let full = request(0, 0, &[("a", 0, 0)]);
        let id = cache.create(&full, &answer(&[("a", 0, 0, false)]), "alice");
        let refused = |r: Begin| match r {
            Begin::Refuse(code) => code,
            other => panic!("refused expected: {other:?}"),
        };
        assert_eq!(refused(cache.begin(&request(id, 2, &[]), 12, "alice")), 71);
        assert_eq!(
            refused(cache.begin(&request(id, 1, &[]), 12, "mallory")),
            70
        );
        assert_eq!(
            refused(cache.begin(&request(id + 1, 1, &[]), 12, "alice")),
            70
        );
        assert!(matches!(
            cache.begin(&request(id, 1, &[]), 12, "alice"),
            Begin::Incremental { .. }
        ));
        // The same epoch twice (a retried or concurrent fetch) is refused.
        assert_eq!(refused(cache.begin(&request(id, 1, &[]), 12, "alice")), 71);
        // Closing with the final epoch; old versions never have sessions.
        assert!(matches!(
            cache.begin(&request(id, -1, &[]), 12, "alice"),
            Begin::Sessionless
        ));
        assert_eq!(cache.sizes(), (0, 0));
        assert!(matches!(
            cache.begin(&request(0, 0, &[]), 6, "alice"),
            Begin::Sessionless
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn the_cache_is_bounded_and_idle_sessions_make_room() {
        let cache = FetchSessions::new(2);
        let full = request(0, 0, &[("a", 0, 0)]);
        let resp = answer(&[("a", 0, 0, false)]);
        let first = cache.create(&full, &resp, "c1");
        tokio::time::advance(Duration::from_secs(1)).await;
        let second = cache.create(&full, &resp, "c2");
        assert!(first > 0 && second > 0);
        assert_eq!(cache.create(&full, &resp, "c3"), 0, "full, nobody idle");
        tokio::time::advance(IDLE).await;
        // Keep the second one busy: the first (least recently used) goes.
        assert!(matches!(
            cache.begin(&request(second, 1, &[]), 12, "c2"),
            Begin::Incremental { .. }
        ));
        let third = cache.create(&full, &resp, "c3");
        assert!(third > 0);
        assert!(matches!(
            cache.begin(&request(first, 1, &[]), 12, "c1"),
            Begin::Refuse(70)
        ));
        // Unused for twice IDLE: dropped even without pressure.
        tokio::time::advance(2 * IDLE).await;
        let _ = cache.create(&full, &resp, "c4");
        assert_eq!(cache.sizes().0, 1);
        // A session may not outgrow its bound.
        let big: Vec<(&str, i32, i64)> = (0..=MAX_SESSION_PARTITIONS as i32)
            .map(|p| ("a", p, 0))
            .collect();
        assert_eq!(
            cache.create(&request(0, 0, &big), &FetchResponse::default(), "c5"),
            0
        );
    }
}
