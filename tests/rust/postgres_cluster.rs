//! Issue #4, acceptance 1 and 2 at full size: three brokers on one
//! PostgreSQL and one object store act as one cluster. An idempotent
//! librdkafka producer bootstrapped with all three writes 200k records while
//! a consumer group of three members reads them. Mid-stream the broker that
//! coordinates the group is SIGKILLed: Metadata drops it, the group moves to
//! another broker and rebalances, producer and consumers carry on through
//! the other two. The broker then restarts and rejoins (Metadata lists it
//! and names it leader again). In the end every acknowledged record is in
//! the log exactly once, at its acknowledged offset, with dense offsets, and
//! the group has consumed all of them.
//!
//! "Consumed exactly once" is checked on the log (each record once, at one
//! offset); the group itself delivers at least once, as Kafka's does: after
//! a rebalance a member resumes from the last committed offset, so a few
//! records may reach the application twice. Those repeats are counted and
//! printed.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use anyhow::{ensure, Context, Result};
use rdkafka::consumer::{Consumer, StreamConsumer};
use tributary_broker::cluster::coordinator_among;
use tributary_meta::BrokerInfo;
use tributary_testkit::PgServer;

const TOPIC: &str = "cluster";
const PARTITIONS: i32 = 6;

/// The group protocol the members use and how many records go through.
#[derive(Clone, Copy)]
struct Run {
    /// librdkafka `group.protocol`: `classic` or `consumer` (KIP-848).
    protocol: &'static str,
    records: usize,
}

#[tokio::test(flavor = "multi_thread")]
async fn three_brokers_200k_records_through_a_kill_and_rejoin() -> Result<()> {
    cluster_run(
        "cluster",
        Run {
            protocol: "classic",
            records: 200_000,
        },
    )
    .await
}

/// Issue #16, acceptance 2: the same with a KIP-848 consumer group; its
/// coordinator's broker is SIGKILLed and the group carries on from what the
/// coordinator saved, under another broker.
#[tokio::test(flavor = "multi_thread")]
async fn three_brokers_consumer_protocol_group_through_a_coordinator_kill() -> Result<()> {
    cluster_run(
        "cluster_kip848",
        Run {
            protocol: "consumer",
            records: 60_000,
        },
    )
    .await
}

async fn cluster_run(schema: &str, run: Run) -> Result<()> {
    let pg = PgServer::start()?;
    let objects = tempfile::tempdir()?;
    let mut brokers = start_brokers(&pg, schema, objects.path(), 3)?;
    let bootstrap = brokers
        .iter()
        .map(|b| b.bootstrap())
        .collect::<Vec<_>>()
        .join(",");
    let first = brokers.remove(0);
    let result = body(&bootstrap, &mut brokers, run).await;
    run_test(&first, async { result }).await
}

/// Brokers 1..=`count` on one PostgreSQL schema and one `file://` object
/// store.
fn start_brokers(
    pg: &PgServer,
    schema: &str,
    objects: &std::path::Path,
    count: i32,
) -> Result<Vec<BrokerProcess>> {
    let url = format!("{}?schema={schema}", pg.url());
    let objects_url = format!("file://{}", objects.display());
    (1..=count)
        .map(|id| {
            start_broker_local(&[
                "--metadata",
                &url,
                "--object-store",
                &objects_url,
                "--node-id",
                &id.to_string(),
            ])
        })
        .collect()
}

/// A group id (`{prefix}-N`) that broker `node_id` coordinates while
/// brokers 1..=`live` are live.
fn group_coordinated_by(node_id: i32, live: i32, prefix: &str) -> String {
    let brokers: Vec<BrokerInfo> = (1..=live)
        .map(|node_id| BrokerInfo {
            node_id,
            host: String::new(),
            port: 0,
            rack: None,
            listeners: Vec::new(),
        })
        .collect();
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|g| coordinator_among(&brokers, g).map(|b| b.node_id) == Some(node_id))
        .expect("some group hashes to the broker")
}

/// (brokers listed, distinct partition leaders) in a Metadata answer.
fn cluster_shape(probe: &StreamConsumer) -> Result<(usize, HashSet<i32>)> {
    let md = tokio::task::block_in_place(|| probe.fetch_metadata(Some(TOPIC), OP_TIMEOUT))?;
    let leaders = md.topics()[0]
        .partitions()
        .iter()
        .map(|p| p.leader())
        .collect();
    Ok((md.brokers().len(), leaders))
}

/// What the group has read so far.
#[derive(Default)]
struct Consumed {
    /// First delivery of each (partition, offset).
    records: Vec<Rec>,
    seen: HashSet<(i32, i64)>,
    repeats: usize,
    errors: usize,
    /// Each member's assignment and positions, sampled now and then.
    members: Vec<String>,
    /// Client errors by message.
    error_kinds: std::collections::BTreeMap<String, usize>,
}

/// Three members of `group` read until `stop`, recording into `out`.
fn spawn_group(
    bootstrap: &str,
    group: &str,
    protocol: &str,
    out: Arc<Mutex<Consumed>>,
    stop: Arc<AtomicBool>,
) -> Result<tokio::task::JoinHandle<()>> {
    let commits = [
        ("enable.auto.commit", "true"),
        ("auto.commit.interval.ms", "200"),
    ];
    let members: Vec<StreamConsumer> = (0..3)
        .map(|_| match protocol {
            "consumer" => consumer_protocol_member(bootstrap, group, &commits),
            _ => consumer(bootstrap, group, &commits),
        })
        .collect::<Result<_>>()?;
    for m in &members {
        m.subscribe(&[TOPIC]).context("subscribe")?;
    }
    // One task per member, so an idle member never slows a busy one.
    let tasks: Vec<_> = members
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let (out, stop) = (out.clone(), stop.clone());
            tokio::spawn(async move {
                let mut round = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    round += 1;
                    // Members talking to the killed broker report transport
                    // errors while they reconnect; those are not failures.
                    let got = recv(&m, Duration::from_millis(100)).await;
                    let mut c = out.lock().unwrap_or_else(|e| e.into_inner());
                    if round.is_multiple_of(500) || c.members.len() <= i {
                        let state = format!(
                            "assigned={:?} position={:?}",
                            assigned(&m, TOPIC).ok(),
                            m.position().ok().map(|p| p
                                .elements()
                                .iter()
                                .map(|e| (e.partition(), e.offset()))
                                .collect::<Vec<_>>())
                        );
                        let len = c.members.len().max(i + 1);
                        c.members.resize(len, String::new());
                        c.members[i] = state;
                    }
                    match got {
                        Ok(Some(r)) => {
                            if c.seen.insert((r.partition, r.offset)) {
                                c.records.push(r);
                            } else {
                                c.repeats += 1;
                            }
                        }
                        Ok(None) => {}
                        Err(e) => {
                            *c.error_kinds.entry(e.to_string()).or_default() += 1;
                            c.errors += 1;
                        }
                    }
                }
            })
        })
        .collect();
    Ok(tokio::spawn(async move {
        for t in tasks {
            let _ = t.await;
        }
    }))
}

async fn body(bootstrap: &str, others: &mut [BrokerProcess], run: Run) -> Result<()> {
    create_topic(bootstrap, TOPIC, PARTITIONS).await?;
    let probe = consumer(bootstrap, "probe", &[])?;
    // Brokers learn about each other through heartbeats (every 2 s); any
    // of them may answer, and each must know the other two.
    wait_for(
        "metadata listing 3 brokers, each leading partitions",
        Duration::from_secs(20),
        || {
            let (n, leaders) = cluster_shape(&probe)?;
            Ok(if n == 3 && leaders.len() == 3 {
                Ok(())
            } else {
                Err((n, leaders))
            })
        },
    )
    .await?;

    let group = group_coordinated_by(3, 3, "cluster-group");
    let consumed = Arc::new(Mutex::new(Consumed::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let readers = spawn_group(
        bootstrap,
        &group,
        run.protocol,
        consumed.clone(),
        stop.clone(),
    )?;
    let progress = || consumed.lock().map(|c| c.seen.len()).unwrap_or(0);
    let result = stream(bootstrap, others, &probe, &group, &consumed, progress, run).await;
    if result.is_err() {
        {
            let c = consumed.lock().unwrap_or_else(|e| e.into_inner());
            let mut per = vec![(0usize, -1i64); PARTITIONS as usize];
            for (p, o) in &c.seen {
                let e = &mut per[*p as usize];
                e.0 += 1;
                e.1 = e.1.max(*o);
            }
            eprintln!("read per partition (count, max offset): {per:?}");
            eprintln!("members: {:#?}", c.members);
            eprintln!("client errors: {:#?}", c.error_kinds);
        }
        if let Ok(md) =
            tokio::task::block_in_place(|| probe.fetch_metadata(Some(TOPIC), OP_TIMEOUT))
        {
            let leaders: Vec<(i32, i32)> = md.topics()[0]
                .partitions()
                .iter()
                .map(|p| (p.id(), p.leader()))
                .collect();
            eprintln!("leaders: {leaders:?}");
        }
        for b in others.iter() {
            eprintln!("--- broker {} ---\n{}", b.bootstrap(), b.logs_tail(80));
        }
    }
    stop.store(true, Ordering::Relaxed);
    readers.await.context("consumer task")?;
    result
}

async fn stream(
    bootstrap: &str,
    others: &mut [BrokerProcess],
    probe: &StreamConsumer,
    group: &str,
    consumed: &Mutex<Consumed>,
    progress: impl Fn() -> usize,
    run: Run,
) -> Result<()> {
    let records = run.records;
    let producer = producer(
        bootstrap,
        &[
            ("acks", "all"),
            ("enable.idempotence", "true"),
            ("message.timeout.ms", "120000"),
        ],
    )?;
    // Chunk by chunk, so the kill below lands while records are in flight.
    let acked_so_far = Arc::new(AtomicUsize::new(0));
    let counter = acked_so_far.clone();
    let writing = tokio::spawn(async move {
        let mut deliveries = Vec::with_capacity(records);
        for start in (0..records).step_by(5_000) {
            let chunk: Vec<Out> = (start..(start + 5_000).min(records))
                .map(|i| Out {
                    key: format!("k{}", i % 60),
                    value: format!("r{i}"),
                    ..Out::default()
                })
                .collect();
            deliveries.extend(produce_all(&producer, TOPIC, chunk).await?);
            counter.store(deliveries.len(), Ordering::Relaxed);
        }
        Ok::<_, anyhow::Error>(deliveries)
    });

    // Mid-stream: kill the group's coordinator.
    wait_for(
        "a fifth of the records acknowledged and a tenth read",
        Duration::from_secs(120),
        || {
            let (w, r) = (acked_so_far.load(Ordering::Relaxed), progress());
            Ok(if w >= records / 5 && r >= records / 10 {
                Ok(())
            } else {
                Err((w, r))
            })
        },
    )
    .await?;
    let victim = &mut others[1];
    tokio::task::block_in_place(|| victim.kill_9())?;
    eprintln!(
        "killed broker 3 (coordinator of {group}) at {} acknowledged, {} read",
        acked_so_far.load(Ordering::Relaxed),
        progress()
    );
    wait_for(
        "metadata to drop the dead broker",
        Duration::from_secs(30),
        || {
            let (n, leaders) = cluster_shape(probe)?;
            Ok(if n == 2 { Ok(()) } else { Err((n, leaders)) })
        },
    )
    .await?;
    // The group carries on under another coordinator.
    let at_drop = progress();
    wait_for(
        "the group to read on after the kill",
        Duration::from_secs(120),
        || {
            let n = progress();
            Ok(if n >= at_drop + records / 20 || n == records {
                Ok(())
            } else {
                Err(n)
            })
        },
    )
    .await?;

    // The broker restarts and rejoins the cluster.
    tokio::task::block_in_place(|| victim.restart())?;
    wait_for(
        "metadata listing the restarted broker as a leader",
        Duration::from_secs(30),
        || {
            let (n, leaders) = cluster_shape(probe)?;
            Ok(if n == 3 && leaders.contains(&3) {
                Ok(())
            } else {
                Err((n, leaders))
            })
        },
    )
    .await?;
    eprintln!("broker 3 rejoined at {} records read", progress());

    let deliveries = writing.await.context("producer task")??;
    let acked: HashMap<String, (i32, i64)> = deliveries
        .into_iter()
        .enumerate()
        .map(|(i, d)| (format!("r{i}"), (d.partition, d.offset)))
        .collect();
    ensure!(acked.len() == records);
    let mut want = vec![0usize; PARTITIONS as usize];
    for (p, _) in acked.values() {
        want[*p as usize] += 1;
    }
    let read = wait_for(
        "the group to read every record (read, acknowledged per partition)",
        Duration::from_secs(120),
        || {
            let c = consumed.lock().unwrap_or_else(|e| e.into_inner());
            let mut per = vec![0usize; PARTITIONS as usize];
            for (p, _) in &c.seen {
                per[*p as usize] += 1;
            }
            Ok(if c.seen.len() >= records {
                Ok(())
            } else {
                Err((per, want.clone()))
            })
        },
    )
    .await;
    read?;

    let mut c = std::mem::take(&mut *consumed.lock().unwrap_or_else(|e| e.into_inner()));
    eprintln!(
        "group read {} records ({} delivered again after rebalances, {} client errors)",
        c.records.len(),
        c.repeats,
        c.errors
    );
    c.records.sort_by_key(|r| (r.partition, r.offset));
    check_dense(&c.records, |_| 0)?;
    ensure!(c.records.len() == records, "read {}", c.records.len());
    for r in &c.records {
        ensure!(
            acked.get(&r.value) == Some(&(r.partition, r.offset)),
            "{} at {}/{} acknowledged at {:?}",
            r.value,
            r.partition,
            r.offset,
            acked.get(&r.value)
        );
    }
    // And through the restarted broker alone, from the start.
    audit_acked(&others[1].bootstrap(), TOPIC, PARTITIONS, &acked).await?;
    Ok(())
}

/// Issue 12, defect 12, across brokers: a stable group whose coordinator is
/// SIGKILLed moves to the other broker without a rebalance. The new
/// coordinator loads the group as the old one saved it, so the member's
/// heartbeats and commits of its generation keep working: one assignment,
/// no revocation, and the commit after the move lands.
#[tokio::test(flavor = "multi_thread")]
async fn stable_group_moves_without_a_rebalance() -> Result<()> {
    let pg = PgServer::start()?;
    let objects = tempfile::tempdir()?;
    let mut brokers = start_brokers(&pg, "group_move", objects.path(), 2)?;
    let mut coordinator = brokers.pop().context("broker 2")?;
    let survivor = brokers.pop().context("broker 1")?;
    let result = group_moves(&survivor, &mut coordinator).await;
    run_test(&survivor, async { result }).await
}

async fn group_moves(survivor: &BrokerProcess, coordinator: &mut BrokerProcess) -> Result<()> {
    const MOVE_TOPIC: &str = "group-move";
    let group = group_coordinated_by(2, 2, "moving-group");
    tokio::time::timeout(TEST_TIMEOUT, async {
        let bootstrap = format!("{},{}", survivor.bootstrap(), coordinator.bootstrap());
        // Both brokers list each other before the group forms.
        let probe = consumer(&survivor.bootstrap(), "probe", &[])?;
        wait_for("both brokers in Metadata", Duration::from_secs(30), || {
            let listed = tokio::task::block_in_place(|| probe.fetch_metadata(None, OP_TIMEOUT))
                .map(|md| md.brokers().len())
                .unwrap_or(0);
            Ok(if listed == 2 { Ok(()) } else { Err(listed) })
        })
        .await?;
        create_topic(&survivor.bootstrap(), MOVE_TOPIC, 2).await?;
        let writer = producer(&survivor.bootstrap(), &[("acks", "all")])?;
        produce_all(&writer, MOVE_TOPIC, ten_per_partition("before", 2)).await?;

        let member = counting_consumer(&bootstrap, &group)?;
        member.subscribe(&[MOVE_TOPIC]).context("subscribe")?;
        let first = consume_n(&member, 20, Duration::from_secs(90)).await?;
        check_dense(&first, |_| 0)?;
        member
            .commit_consumer_state(rdkafka::consumer::CommitMode::Sync)
            .context("commit before the move")?;
        ensure!(member.context().counts() == (1, 0));

        tokio::task::block_in_place(|| coordinator.kill_9())?;
        produce_all(&writer, MOVE_TOPIC, ten_per_partition("after", 2)).await?;
        let second = consume_n(&member, 20, Duration::from_secs(90)).await?;
        check_dense(&second, |_| 10)?;
        // The commit needs the group's new coordinator: retried until the
        // registry has dropped the killed broker (its 10 s TTL).
        wait_for("a commit after the move", Duration::from_secs(60), || {
            let committed = tokio::task::block_in_place(|| {
                member.commit_consumer_state(rdkafka::consumer::CommitMode::Sync)
            });
            Ok(committed.map_err(|e| e.to_string()))
        })
        .await?;
        ensure_no_rebalance(&member, "when it moved").await
    })
    .await
    .context("stable_group_moves_without_a_rebalance timed out")?
}
