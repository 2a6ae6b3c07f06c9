//! Tests of the wrappers stacked together over `InMemory`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{Error, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use super::*;

/// `RetryingStore(MetricsStore(FaultyStore(InMemory)))`: metrics see every
/// attempt that got past the retry layer.
struct Stack {
    store: Arc<dyn ObjectStore>,
    metrics: MetricsHandle,
    faults: FaultyStore,
    memory: Arc<dyn ObjectStore>,
}

fn stack(config: FaultConfig, policy: RetryPolicy) -> Stack {
    let memory: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let faults = FaultyStore::new(memory.clone(), config);
    let metered = MetricsStore::new(Arc::new(faults.clone()));
    let metrics = metered.handle();
    let store: Arc<dyn ObjectStore> = Arc::new(RetryingStore::new(Arc::new(metered), policy));
    Stack {
        store,
        metrics,
        faults,
        memory,
    }
}

fn create_only() -> PutOptions {
    PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    }
}

fn injected_fault(error: &Error) -> Option<&InjectedFault> {
    match error {
        Error::Generic { store, source } if *store == faults::STORE => source.downcast_ref(),
        _ => None,
    }
}

fn timed_out(error: &Error) -> Option<&AttemptTimedOut> {
    match error {
        Error::Generic { source, .. } => source.downcast_ref(),
        _ => None,
    }
}

#[tokio::test(start_paused = true)]
async fn retry_recovers_from_first_failed_puts() {
    let s = stack(
        FaultConfig {
            fail_first_n_puts: 2,
            ..Default::default()
        },
        RetryPolicy::default(),
    );
    let path = Path::from("segments/a");
    s.store
        .put_opts(&path, PutPayload::from_static(b"hello"), create_only())
        .await
        .expect("put recovers");

    assert_eq!(s.faults.injected().put_failures, 2);
    let snap = s.metrics.snapshot();
    assert_eq!(snap.put.requests, 3);
    assert_eq!(snap.put.errors, 2);
    assert_eq!(snap.put.bytes, 5);
    let got = s.memory.get(&path).await.expect("get").bytes().await;
    assert_eq!(got.expect("body"), Bytes::from_static(b"hello"));
}

#[tokio::test(start_paused = true)]
async fn retry_gives_up_after_max_attempts() {
    let s = stack(
        FaultConfig {
            fail_put_ratio: 1.0,
            ..Default::default()
        },
        RetryPolicy {
            max_attempts: 3,
            ..Default::default()
        },
    );
    let path = Path::from("segments/b");
    let error = s
        .store
        .put(&path, PutPayload::from_static(b"x"))
        .await
        .expect_err("every attempt fails");

    assert!(injected_fault(&error).is_some(), "{error}");
    assert!(is_retryable(&error));
    assert_eq!(s.faults.injected().put_failures, 3);
    let snap = s.metrics.snapshot();
    assert_eq!(snap.put.requests, 3);
    assert_eq!(snap.put.errors, 3);
    assert!(matches!(
        s.memory.head(&path).await,
        Err(Error::NotFound { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn not_found_is_not_retried() {
    let s = stack(FaultConfig::default(), RetryPolicy::default());
    let path = Path::from("missing");

    let head = s.store.head(&path).await;
    assert!(matches!(head, Err(Error::NotFound { .. })), "{head:?}");
    let range = s.store.get_range(&path, 0..4).await;
    assert!(matches!(range, Err(Error::NotFound { .. })), "{range:?}");
    let ranges = s.store.get_ranges(&path, &[0..1, 2..3]).await;
    assert!(matches!(ranges, Err(Error::NotFound { .. })), "{ranges:?}");

    let snap = s.metrics.snapshot();
    assert_eq!(snap.head.requests, 1);
    assert_eq!(snap.head.errors, 1);
    assert_eq!(snap.get.requests, 2);
    assert_eq!(snap.get.errors, 2);
}

#[tokio::test(start_paused = true)]
async fn create_only_put_after_lost_response_returns_already_exists() {
    let s = stack(
        FaultConfig {
            put_succeeds_then_errors_ratio: 1.0,
            ..Default::default()
        },
        RetryPolicy::default(),
    );
    let path = Path::from("segments/c");
    let error = s
        .store
        .put_opts(&path, PutPayload::from_static(b"segment"), create_only())
        .await
        .expect_err("the retry finds the object");

    assert!(matches!(error, Error::AlreadyExists { .. }), "{error}");
    assert_eq!(s.faults.injected().put_lost_responses, 1);
    let snap = s.metrics.snapshot();
    assert_eq!(snap.put.requests, 2, "one retry, then a final answer");
    // The object is there, with our bytes: what the writer checks next.
    let meta = s.store.head(&path).await.expect("head");
    assert_eq!(meta.size, 7);
    let got = s.store.get(&path).await.expect("get").bytes().await;
    assert_eq!(got.expect("body"), Bytes::from_static(b"segment"));
}

#[tokio::test(start_paused = true)]
async fn ranged_get_recovers_from_first_failed_gets() {
    let s = stack(
        FaultConfig {
            fail_first_n_gets: 2,
            ..Default::default()
        },
        RetryPolicy::default(),
    );
    let path = Path::from("segments/d");
    s.memory
        .put(&path, PutPayload::from_static(b"0123456789"))
        .await
        .expect("seed object");

    let got = s.store.get_range(&path, 2..6).await.expect("get_range");
    assert_eq!(got, Bytes::from_static(b"2345"));
    assert_eq!(s.faults.injected().get_failures, 2);
    let snap = s.metrics.snapshot();
    assert_eq!(snap.get.requests, 3);
    assert_eq!(snap.get.errors, 2);
    assert_eq!(snap.get.bytes, 4);
}

#[tokio::test]
async fn metrics_count_requests_and_bytes() {
    let metered = MetricsStore::new(Arc::new(InMemory::new()));
    let handle = metered.handle();
    // The handle keeps working under more layers.
    let store: Arc<dyn ObjectStore> = Arc::new(RetryingStore::new(
        Arc::new(metered),
        RetryPolicy::default(),
    ));
    let a = Path::from("p/a");
    let b = Path::from("p/b");

    store
        .put(&a, PutPayload::from_static(b"0123456789"))
        .await
        .expect("put a");
    store
        .put(&b, PutPayload::from_static(b"abcde"))
        .await
        .expect("put b");
    let whole = store.get(&a).await.expect("get").bytes().await;
    assert_eq!(whole.expect("body").len(), 10);
    assert_eq!(
        store.get_range(&a, 2..6).await.expect("range"),
        Bytes::from_static(b"2345")
    );
    let parts = store.get_ranges(&b, &[0..1, 3..5]).await.expect("ranges");
    assert_eq!(
        parts,
        vec![Bytes::from_static(b"a"), Bytes::from_static(b"de")]
    );
    assert_eq!(store.head(&b).await.expect("head").size, 5);
    let listed: Vec<_> = store
        .list(Some(&Path::from("p")))
        .try_collect()
        .await
        .expect("list");
    assert_eq!(listed.len(), 2);
    let dir = store
        .list_with_delimiter(Some(&Path::from("p")))
        .await
        .expect("list_with_delimiter");
    assert_eq!(dir.objects.len(), 2);
    store.copy(&a, &Path::from("p/c")).await.expect("copy");
    store.delete(&b).await.expect("delete");
    assert!(store.head(&b).await.is_err());

    let snap = handle.snapshot();
    assert_eq!(snap.put.requests, 2);
    assert_eq!(snap.put.bytes, 15);
    assert_eq!(snap.get.requests, 3);
    assert_eq!(snap.get.bytes, 10 + 4 + 3);
    assert_eq!(snap.head.requests, 2);
    assert_eq!(snap.head.errors, 1);
    assert_eq!(snap.list.requests, 2);
    assert_eq!(snap.list.errors, 0);
    assert_eq!(snap.copy.requests, 1);
    assert_eq!(snap.delete.requests, 1);
    assert_eq!(snap.total_requests(), 11);
    assert_eq!(snap.total_errors(), 1);
    for op in Op::ALL {
        let o = snap.op(op);
        assert_eq!(o.cancelled, 0, "{op}");
        assert_eq!(o.latency.count(), o.requests, "{op}");
        assert_eq!(o.p50().is_some(), o.requests > 0, "{op}");
    }
}

#[tokio::test(start_paused = true)]
async fn attempts_slower_than_timeout_fail_the_call() {
    let s = stack(
        FaultConfig {
            latency: Some((Duration::from_secs(5), Duration::from_secs(5))),
            ..Default::default()
        },
        RetryPolicy {
            max_attempts: 3,
            attempt_timeout: Duration::from_secs(1),
            ..Default::default()
        },
    );
    let path = Path::from("segments/slow");
    let started = tokio::time::Instant::now();
    let error = s
        .store
        .put_opts(&path, PutPayload::from_static(b"x"), create_only())
        .await
        .expect_err("every attempt times out");
    let elapsed = started.elapsed();

    let timeout = timed_out(&error).expect("a timeout error");
    assert_eq!(timeout.op, "put");
    assert!(elapsed >= Duration::from_secs(3), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
    let snap = s.metrics.snapshot();
    assert_eq!(snap.put.requests, 3);
    assert_eq!(snap.put.cancelled, 3);
    assert_eq!(s.faults.injected().delays, 3);
    // The latency sits before the write, so nothing landed.
    assert!(s.memory.head(&path).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn retry_recovers_once_latency_goes_away() {
    let s = stack(
        FaultConfig {
            latency: Some((Duration::from_secs(5), Duration::from_secs(5))),
            ..Default::default()
        },
        RetryPolicy {
            attempt_timeout: Duration::from_secs(1),
            ..Default::default()
        },
    );
    let faults = s.faults.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        faults.set_config(FaultConfig::default());
    });
    let path = Path::from("segments/recovers");
    s.store
        .put_opts(&path, PutPayload::from_static(b"late"), create_only())
        .await
        .expect("put once the store is fast again");

    // Attempts start at ~0 s, ~1 s and ~2 s (slow), then after 2.5 s (fast).
    let snap = s.metrics.snapshot();
    assert_eq!(snap.put.requests, 4);
    assert_eq!(snap.put.cancelled, 3);
    assert_eq!(snap.put.errors, 0);
    assert_eq!(s.memory.head(&path).await.expect("landed").size, 4);
}

#[tokio::test(start_paused = true)]
async fn delete_stream_keeps_order_and_reports_each_location() {
    let s = stack(FaultConfig::default(), RetryPolicy::default());
    let paths: Vec<Path> = (0..25).map(|i| Path::from(format!("d/{i:02}"))).collect();
    for p in &paths {
        s.store
            .put(p, PutPayload::from_static(b"x"))
            .await
            .expect("put");
    }
    let input = futures::stream::iter(paths.clone().into_iter().map(Ok)).boxed();
    let deleted: Vec<Path> = s
        .store
        .delete_stream(input)
        .try_collect()
        .await
        .expect("delete");
    assert_eq!(deleted, paths);
    assert_eq!(s.metrics.snapshot().delete.requests, 25);
    let left: Vec<_> = s.memory.list(None).try_collect().await.expect("list");
    assert!(left.is_empty());
}

#[tokio::test]
async fn faults_are_reproducible_from_the_seed() {
    async fn pattern(seed: u64) -> Vec<bool> {
        let faults = FaultyStore::new(
            Arc::new(InMemory::new()),
            FaultConfig {
                fail_put_ratio: 0.5,
                seed,
                ..Default::default()
            },
        );
        let mut outcomes = Vec::new();
        for i in 0..32 {
            let path = Path::from(format!("k/{i}"));
            let result = faults.put(&path, PutPayload::from_static(b"x")).await;
            outcomes.push(result.is_ok());
        }
        outcomes
    }
    let first = pattern(7).await;
    assert_eq!(first, pattern(7).await);
    assert!(first.iter().any(|ok| *ok) && first.iter().any(|ok| !*ok));
    assert_ne!(first, pattern(8).await);
}

#[tokio::test]
async fn set_config_restarts_first_n_counters() {
    let faults = FaultyStore::new(
        Arc::new(InMemory::new()),
        FaultConfig {
            fail_first_n_gets: 1,
            ..Default::default()
        },
    );
    let path = Path::from("x");
    faults
        .put(&path, PutPayload::from_static(b"x"))
        .await
        .expect("put");
    assert!(faults.head(&path).await.is_err());
    assert!(faults.head(&path).await.is_ok());
    faults.set_config(faults.config());
    assert!(faults.head(&path).await.is_err());
    assert_eq!(faults.injected().get_failures, 2);
    assert!(faults.to_string().starts_with("FaultyStore("));
}

#[tokio::test]
async fn list_stream_is_timed_until_dropped() {
    let metered = MetricsStore::new(Arc::new(InMemory::new()));
    let stream = metered.list(None);
    let snap = metered.snapshot();
    assert_eq!(snap.list.requests, 1);
    assert_eq!(snap.list.latency.count(), 0, "still open");
    drop(stream);
    let snap = metered.snapshot();
    assert_eq!(snap.list.latency.count(), 1);
    assert_eq!(snap.list.errors, 0);
    assert_eq!(snap.list.cancelled, 0);
}
