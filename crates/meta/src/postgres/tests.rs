//! Tests of the PostgreSQL backend against a real server: concurrency,
//! restarts, TLS, plans (the conformance suite is in `tests/conformance`).

use std::time::Instant;

use tributary_testkit::PgServer;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use deadpool_postgres::Object;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::conn::PostgresStore;
use super::log::{SQL_ENTRY_FOR_TIMESTAMP, SQL_LOCK_PARTITIONS};
use super::rows::SQL_ENTRIES_FROM;
use super::schema::MIGRATIONS;
use super::tls::TlsMode;
use super::url::{parse_url, ParsedUrl, SESSION_TIMEOUTS};
use crate::{
    BatchOutcome, BrokerRegistry, LogStore, MetaError, PartitionOffsets, PendingBatch,
    SegmentCommit, TopicStore,
};

/// A throwaway cluster; fails (never skips) without PostgreSQL binaries.
fn pg_server() -> PgServer {
    PgServer::start().unwrap_or_else(|e| panic!("cannot start PostgreSQL for the test: {e:#}"))
}

fn batch(topic_id: Uuid, partition: i32, byte_start: u64, count: i64) -> PendingBatch {
    PendingBatch {
        topic_id,
        partition,
        byte_start,
        byte_len: 10,
        offset_count: count,
        max_timestamp: 1_000,
        producer: None,
        txn: Default::default(),
    }
}

/// Two stores ("brokers") on one database, each with four concurrent
/// writers, commit 200 segments each to the same three partitions, in
/// opposite partition orders: offsets stay dense and unique, and the
/// index matches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_brokers_commit_concurrently() {
    const BROKERS: usize = 2;
    const TASKS: usize = 4;
    const SEGMENTS_PER_TASK: usize = 50;
    let server = pg_server();
    let url = format!("{}?schema=brokers", server.url());
    // Both brokers connect (and migrate) at once.
    let (a, b) = tokio::join!(PostgresStore::connect(&url), PostgresStore::connect(&url));
    let stores = [a.expect("connect a"), b.expect("connect b")];
    let topic = stores[0]
        .create_topic("shared", 3, BTreeMap::new())
        .await
        .expect("create");
    assert_eq!(
        stores[1].get_topic("shared").await.expect("get"),
        Some(topic.clone()),
        "both brokers see one database"
    );

    let mut tasks = Vec::new();
    for (broker, store) in stores.iter().enumerate() {
        for task in 0..TASKS {
            let store = store.clone();
            let topic_id = topic.id;
            tasks.push(tokio::spawn(async move {
                let mut got: Vec<(i32, i64, i64)> = Vec::new();
                for i in 0..SEGMENTS_PER_TASK {
                    let mut parts = [0, 1, 2];
                    if broker == 1 {
                        parts.reverse();
                    }
                    let batches: Vec<PendingBatch> = parts
                        .iter()
                        .enumerate()
                        .map(|(j, &p)| {
                            let count = i64::try_from(1 + (i + j + task) % 4).expect("small");
                            batch(topic_id, p, u64::try_from(j).expect("small") * 10, count)
                        })
                        .collect();
                    let seg = SegmentCommit {
                        key: format!("b{broker}-t{task}-s{i:03}"),
                        size: 30,
                        batches: batches.clone(),
                        deadline: None,
                    };
                    let outcomes = store
                        .commit_segment(&seg)
                        .await
                        .unwrap_or_else(|e| panic!("commit {}: {e}", seg.key));
                    for (b, o) in batches.iter().zip(outcomes) {
                        let BatchOutcome::Appended { base_offset } = o else {
                            panic!("expected Appended, got {o:?}");
                        };
                        got.push((b.partition, base_offset, b.offset_count));
                    }
                }
                got
            }));
        }
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("writer task"));
    }
    assert_eq!(all.len(), BROKERS * TASKS * SEGMENTS_PER_TASK * 3);

    for partition in 0..3 {
        let mut ranges: Vec<(i64, i64)> = all
            .iter()
            .filter(|(p, _, _)| *p == partition)
            .map(|(_, base, count)| (*base, *count))
            .collect();
        ranges.sort();
        let mut cursor = 0;
        for (base, count) in &ranges {
            assert_eq!(
                *base, cursor,
                "partition {partition}: dense, unique offsets"
            );
            cursor += count;
        }
        for store in &stores {
            assert_eq!(
                store
                    .partition_offsets(topic.id, partition)
                    .await
                    .expect("offsets")
                    .next_offset,
                cursor
            );
        }
        let entries = stores[1]
            .index_entries(topic.id, partition, 0, usize::MAX)
            .await
            .expect("entries");
        assert_eq!(entries.len(), ranges.len(), "one entry per batch");
        let mut covered = 0;
        for e in &entries {
            assert_eq!(
                e.base_offset, covered,
                "partition {partition}: no index gaps"
            );
            covered = e.last_offset + 1;
        }
        assert_eq!(covered, cursor);
    }
    assert_eq!(
        stores[0].list_segments().await.expect("segments").len(),
        BROKERS * TASKS * SEGMENTS_PER_TASK
    );
}

/// Retry `f` until it succeeds; every failure meanwhile must be a
/// retryable backend error. Panics after `within`.
async fn until_ok<T, F, Fut>(what: &str, within: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = crate::Result<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => {
                assert!(
                    matches!(e, MetaError::Backend { .. }) && e.is_retryable(),
                    "{what}: only retryable backend errors while the server is away, got {e:?}"
                );
                assert!(
                    Instant::now() < deadline,
                    "{what}: still failing after {within:?}: {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The server going away and coming back does not wedge the store:
/// calls fail with retryable errors while it is down, succeed again soon
/// after it is back (dead pooled connections are replaced), and the data
/// is intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_server_restart() {
    let mut server = pg_server();
    let store = PostgresStore::connect(&format!("{}?schema=restart", server.url()))
        .await
        .expect("connect");
    let topic = store
        .create_topic("t", 1, BTreeMap::new())
        .await
        .expect("create");
    let seg = |key: &str| SegmentCommit {
        key: key.to_owned(),
        size: 10,
        batches: vec![batch(topic.id, 0, 0, 3)],
        deadline: None,
    };
    store.commit_segment(&seg("before")).await.expect("commit");
    // Several pooled connections, all about to die.
    let reads = (0..6).map(|_| store.partition_offsets(topic.id, 0));
    for r in futures::future::join_all(reads).await {
        r.expect("read");
    }

    // Down: every call fails, retryably, and none hangs.
    tokio::task::block_in_place(|| server.stop()).expect("stop");
    for _ in 0..3 {
        let err = tokio::time::timeout(
            Duration::from_secs(30),
            store.partition_offsets(topic.id, 0),
        )
        .await
        .expect("a call against a stopped server returns")
        .expect_err("server is down");
        assert!(
            matches!(err, MetaError::Backend { .. }) && err.is_retryable(),
            "{err:?}"
        );
    }
    tokio::task::block_in_place(|| server.resume()).expect("resume");
    let offsets = until_ok("read after resume", Duration::from_secs(10), || {
        store.partition_offsets(topic.id, 0)
    })
    .await;
    assert_eq!(offsets, PartitionOffsets::settled(0, 3));

    // A restart while the pool holds live connections.
    tokio::task::block_in_place(|| server.restart()).expect("restart");
    let outcomes = until_ok("commit after restart", Duration::from_secs(10), || async {
        // A commit whose answer was lost would be resolved by the caller
        // with segment_committed; here nothing can have landed before
        // the first success, so a retry never sees SegmentExists.
        store.commit_segment(&seg("after")).await
    })
    .await;
    assert_eq!(outcomes, vec![BatchOutcome::Appended { base_offset: 3 }]);
    let entries = store
        .index_entries(topic.id, 0, 0, 10)
        .await
        .expect("entries");
    assert_eq!(entries.len(), 2, "data from before the restart is intact");
    assert_eq!(entries[0].segment_key, "before");
    assert!(store.segment_committed("before").await.expect("committed"));
    assert_eq!(
        store.list_topics().await.expect("list"),
        vec![topic.clone()]
    );
}

/// Wait until the feed satisfies `ok`, at most 30 s.
async fn feed_until(
    feed: &mut crate::CommitFeed,
    what: &str,
    ok: impl Fn(&crate::RemoteCommits) -> bool,
) -> crate::RemoteCommits {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let now = *feed.borrow_and_update();
            if ok(&now) {
                return now;
            }
            feed.changed().await.expect("feed alive");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("commit feed never got to: {what}"))
}

/// LISTEN/NOTIFY: a store hears the commits of another store on the same
/// database, says when it stops listening (server restart) and listens
/// again by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_feed_hears_other_brokers() {
    let mut server = pg_server();
    let url = format!("{}?schema=feed", server.url());
    let a = PostgresStore::connect(&url).await.expect("connect a");
    let b = PostgresStore::connect(&url).await.expect("connect b");
    let topic = a
        .create_topic("t", 1, BTreeMap::new())
        .await
        .expect("create");
    let seg = |key: &str| SegmentCommit {
        key: key.to_owned(),
        size: 10,
        batches: vec![batch(topic.id, 0, 0, 1)],
        deadline: None,
    };
    let mut feed = a.commit_feed().expect("PostgreSQL has NOTIFY");
    let start = feed_until(&mut feed, "listening", |s| s.listening).await;
    b.commit_segment(&seg("b1")).await.expect("commit b1");
    let heard = feed_until(&mut feed, "b1 heard", |s| s.seen != start.seen).await;

    // The listener loses its connection; once it listens again it
    // reports a change (commits made meanwhile were not heard).
    tokio::task::block_in_place(|| server.restart()).expect("restart");
    let back = feed_until(&mut feed, "listening again", |s| {
        s.listening && s.seen != heard.seen
    })
    .await;
    let b2 = seg("b2");
    until_ok("commit after restart", Duration::from_secs(10), || {
        b.commit_segment(&b2)
    })
    .await;
    feed_until(&mut feed, "b2 heard", |s| s.seen != back.seen).await;
    drop(feed);
}

/// libpq's sslmode meanings against a server that takes TCP clients only
/// over TLS, with a certificate for `localhost` from a throwaway CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_modes_against_a_tls_only_server() {
    let server = tokio::task::block_in_place(PgServer::start_tls).expect("start tls server");
    let ca = server.ca_cert().expect("ca").display().to_string();
    let ip = server.url();
    let named = format!(
        "postgres://postgres@localhost:{}/tributary?hostaddr=127.0.0.1&",
        server.port()
    );
    let ok = |url: String| async move {
        let store = PostgresStore::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("{url}: {e:?}"));
        store.list_topics().await.expect("query over TLS");
        store
    };
    let refused = |url: String| async move {
        let err = PostgresStore::connect(&url)
            .await
            .err()
            .unwrap_or_else(|| panic!("{url} must be refused"));
        format!("{err:?}")
    };
    // Encrypted, certificate not checked (libpq's require and prefer).
    let store = ok(format!("{ip}?sslmode=require")).await;
    ok(ip.clone()).await;
    // The certificate chains to the CA; the name is checked only by
    // verify-full, and it names localhost, not 127.0.0.1.
    ok(format!("{named}sslmode=verify-full&sslrootcert={ca}")).await;
    ok(format!("{ip}?sslmode=verify-ca&sslrootcert={ca}")).await;
    let wrong_name = refused(format!("{ip}?sslmode=verify-full&sslrootcert={ca}")).await;
    assert!(wrong_name.contains("NotValidForName"), "{wrong_name}");
    // require with a root file behaves like verify-ca (as libpq).
    ok(format!("{ip}?sslmode=require&sslrootcert={ca}")).await;
    // The system roots do not know the throwaway CA.
    let unknown = refused(format!("{named}sslmode=verify-full")).await;
    assert!(unknown.contains("UnknownIssuer"), "{unknown}");
    // The server takes no plain TCP clients.
    let plain = refused(format!("{ip}?sslmode=disable")).await;
    assert!(plain.contains("no encryption"), "{plain}");
    // The LISTEN connection uses TLS too.
    let mut feed = store.commit_feed().expect("feed");
    feed_until(&mut feed, "listening over TLS", |s| s.listening).await;
}

/// Migrations are recorded and not re-run by a second connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_keeps_schema_and_data() {
    let server = pg_server();
    let url = format!("{}?schema=reconnect", server.url());
    let topic = {
        let store = PostgresStore::connect(&url).await.expect("connect");
        let (pid, _) = store.allocate_producer_id().await.expect("pid");
        assert_eq!(pid, 0);
        store
            .create_topic("t", 2, BTreeMap::new())
            .await
            .expect("create")
    };
    let store = crate::open_metadata(&url).await.expect("reopen");
    assert_eq!(store.get_topic("t").await.expect("get"), Some(topic));
    let (pid, _) = store.allocate_producer_id().await.expect("pid");
    assert_eq!(pid, 1, "producer ids continue after reconnect");
    let pg = PostgresStore::connect(&url).await.expect("connect");
    let client = pg.client().await.unwrap_or_else(|_| panic!("client"));
    let version: i64 = client
        .query_one("SELECT version FROM schema_version", &[])
        .await
        .expect("version")
        .get(0);
    assert_eq!(version, i64::try_from(MIGRATIONS.len()).expect("fits"));
    // Tables live in the named schema, not in public.
    let in_public: i64 = client
        .query_one(
            "SELECT COUNT(*) FROM information_schema.tables                  WHERE table_schema = 'public' AND table_name = 'topics'",
            &[],
        )
        .await
        .expect("catalog")
        .get(0);
    assert_eq!(in_public, 0);
}

/// Plan lines of `sql` with the given arguments.
async fn plan(client: &Object, sql: &str, args: &[&(dyn ToSql + Sync)]) -> Vec<String> {
    client
        .query(&format!("EXPLAIN {sql}"), args)
        .await
        .unwrap_or_else(|e| panic!("explain {sql}: {e}"))
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
}

/// Hot-path lookups seek an index and need no sort (checked with
/// sequential scans and sorts priced out, as tables in a test are tiny),
/// and the commit's partition lock sorts before it locks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_queries_use_indexes_and_locks_are_ordered() {
    let server = pg_server();
    let store = PostgresStore::connect(&format!("{}?schema=plans", server.url()))
        .await
        .expect("connect");
    let client = store.client().await.unwrap_or_else(|_| panic!("client"));
    client
        .batch_execute("SET enable_seqscan = off; SET enable_sort = off")
        .await
        .expect("planner settings");
    let id = Uuid::nil();
    let (p, o, l) = (0i32, 0i64, 10i64);
    let key = "k".to_owned();
    let keys = vec![key.clone()];
    let checks: Vec<(&str, Vec<&(dyn ToSql + Sync)>)> = vec![
        (SQL_ENTRIES_FROM, vec![&id, &p, &o, &l]),
        (SQL_ENTRY_FOR_TIMESTAMP, vec![&id, &p, &o, &o]),
        (
            "SELECT log_start_offset, next_offset, max_timestamp FROM partitions \
             WHERE topic_id = $1 AND partition_index = $2",
            vec![&id, &p],
        ),
        (
            "SELECT base_sequence, last_sequence, base_offset FROM producer_batches \
             WHERE topic_id = $1 AND partition_index = $2 AND producer_id = $3 \
             ORDER BY base_offset DESC LIMIT $4",
            vec![&id, &p, &o, &l],
        ),
        (
            "SELECT EXISTS (SELECT 1 FROM segments WHERE key = $1)",
            vec![&key],
        ),
        (
            "SELECT 1 FROM index_entries WHERE segment_key = $1",
            vec![&key],
        ),
        (
            "SELECT DISTINCT segment_key FROM index_entries WHERE topic_id = $1",
            vec![&id],
        ),
        (
            "SELECT key, size, dead_since_ms FROM segments \
             WHERE dead_since_ms IS NOT NULL AND dead_since_ms <= $1 \
             ORDER BY dead_since_ms, key LIMIT $2",
            vec![&o, &l],
        ),
        ("SELECT key FROM segments WHERE key = ANY($1)", vec![&keys]),
        (
            "SELECT running_max_timestamp FROM index_entries \
             WHERE topic_id = $1 AND partition_index = $2 AND base_offset < $3 \
             ORDER BY base_offset DESC LIMIT 1",
            vec![&id, &p, &o],
        ),
    ];
    for (sql, args) in &checks {
        let lines = plan(&client, sql, args).await;
        for line in &lines {
            assert!(
                !line.contains("Seq Scan") && !line.contains("Sort"),
                "query plan {lines:#?} for {sql}"
            );
        }
    }
    let ids = vec![id];
    let parts = vec![p];
    let lines = plan(&client, SQL_LOCK_PARTITIONS, &[&ids, &parts]).await;
    assert!(
        lines[0].trim_start().starts_with("LockRows"),
        "rows are locked after ordering: {lines:#?}"
    );
}

#[tokio::test]
async fn open_metadata_dispatches_on_scheme() {
    let store = crate::open_metadata("sqlite::memory:")
        .await
        .expect("sqlite");
    assert!(store.list_topics().await.expect("list").is_empty());
    let err = crate::open_metadata("mysql://u:secret@h/db")
        .await
        .expect_err("unknown scheme");
    assert!(matches!(err, MetaError::InvalidArgument(_)));
    assert!(!err.to_string().contains("secret"), "{err}");
}

#[test]
fn url_parsing() {
    assert_eq!(
        parse_url("postgres://u:p@localhost:5432/db").expect("plain"),
        ParsedUrl {
            libpq_url: "postgres://u:p@localhost:5432/db".into(),
            schema: None,
            tls: TlsMode::Prefer,
            root_cert: None,
            timeouts: SESSION_TIMEOUTS.to_vec(),
            keepalives_given: false,
        }
    );
    assert_eq!(
        parse_url("postgresql://h/db?connect_timeout=3&schema=t_1&sslmode=disable")
            .expect("schema"),
        ParsedUrl {
            libpq_url: "postgresql://h/db?connect_timeout=3".into(),
            schema: Some("t_1".into()),
            tls: TlsMode::Disable,
            root_cert: None,
            timeouts: SESSION_TIMEOUTS.to_vec(),
            keepalives_given: false,
        }
    );
    assert_eq!(
        parse_url("postgres://h/db?sslmode=verify-full&sslrootcert=/etc/ca.pem").expect("tls"),
        ParsedUrl {
            libpq_url: "postgres://h/db".into(),
            schema: None,
            tls: TlsMode::VerifyFull,
            root_cert: Some("/etc/ca.pem".into()),
            timeouts: SESSION_TIMEOUTS.to_vec(),
            keepalives_given: false,
        }
    );
    assert_eq!(
        parse_url("postgres://h/db?schema=abc")
            .expect("schema only")
            .libpq_url,
        "postgres://h/db"
    );
    let bounded =
        parse_url("postgres://h/db?lock_timeout=2000&keepalives_idle=5&statement_timeout=0")
            .expect("timeouts");
    assert_eq!(
        bounded.timeouts,
        vec![
            ("statement_timeout", 0),
            ("lock_timeout", 2000),
            ("idle_in_transaction_session_timeout", 10_000)
        ]
    );
    assert!(bounded.keepalives_given);
    assert_eq!(bounded.libpq_url, "postgres://h/db?keepalives_idle=5");
    for bad in [
        "postgres://h/db?lock_timeout=soon",
        "sqlite://x.db",
        "postgres://h/db?schema=",
        "postgres://h/db?schema=1abc",
        "postgres://h/db?schema=Bad",
        "postgres://h/db?schema=a;drop",
        "postgres://h/db?sslmode=maybe",
    ] {
        assert!(
            matches!(parse_url(bad), Err(MetaError::InvalidArgument(_))),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn bad_url_is_invalid_argument() {
    let err = PostgresStore::connect("postgres://h/db?no_such_option=1")
        .await
        .expect_err("unknown option");
    assert!(matches!(err, MetaError::InvalidArgument(_)), "{err:?}");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn unreachable_server_is_retryable_backend_error() {
    let port = tributary_testkit::free_port().expect("free port");
    let err = PostgresStore::connect(&format!(
        "postgres://postgres@127.0.0.1:{port}/db?connect_timeout=2"
    ))
    .await
    .expect_err("nothing listens there");
    assert!(matches!(err, MetaError::Backend { .. }), "{err:?}");
    assert!(err.is_retryable());
}
