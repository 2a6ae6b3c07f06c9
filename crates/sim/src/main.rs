//! `tributary-sim`: run simulation seeds (see the crate docs and
//! `scripts/simulate.sh`).
//!
//! `--seeds N [--first S]` runs seeds S..S+N on every core and prints each
//! failing seed with the command that replays it; `--seed S` runs one seed
//! and prints its trace.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use clap::Parser;
use tributary_sim::{run, Options, Report};

#[derive(Parser, Debug)]
#[command(about = "Deterministic simulation of Tributary's storage paths")]
struct Args {
    /// Number of seeds to run.
    #[arg(long, default_value_t = 1000)]
    seeds: u64,
    /// First seed of the range.
    #[arg(long, default_value_t = 0)]
    first: u64,
    /// Run only this seed and print its trace.
    #[arg(long)]
    seed: Option<u64>,
    /// Worker threads (default: available cores).
    #[arg(long)]
    jobs: Option<usize>,
    /// Run every seed twice and fail if the two traces differ.
    #[arg(long)]
    check_determinism: bool,
    /// Turn the defect-1 fix off (no commit deadlines, unbounded metadata
    /// calls), to show the simulation finds that defect (with the workload
    /// it was found with: no transactional producers).
    #[arg(long)]
    no_commit_deadline: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let options = Options {
        commit_deadlines: !args.no_commit_deadline,
        keep_trace: args.seed.is_some(),
        // The defect-1 demonstration replays the workload it was found
        // with (before transactional producers joined the runs).
        transactions: !args.no_commit_deadline,
    };
    let replay_flag = if args.no_commit_deadline {
        " --no-commit-deadline"
    } else {
        ""
    };
    if let Some(seed) = args.seed {
        let report = run(seed, &options);
        for line in &report.trace {
            println!("{line}");
        }
        println!("params: {}", report.params);
        println!("stats: {:?}", report.stats);
        println!("trace hash: {:016x}", report.trace_hash);
        if args.check_determinism {
            let again = run(seed, &options);
            if again.trace_hash != report.trace_hash {
                println!(
                    "NOT DETERMINISTIC: second run hash {:016x}",
                    again.trace_hash
                );
                return ExitCode::FAILURE;
            }
            println!("replayed: same trace");
        }
        return summarize_one(&report);
    }

    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(args.first));
    let end = args.first.saturating_add(args.seeds);
    let failures: Arc<Mutex<Vec<Report>>> = Arc::default();
    let nondeterministic: Arc<Mutex<Vec<u64>>> = Arc::default();
    let totals = Arc::new(Mutex::new(tributary_sim::Stats::default()));
    let jobs = args.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let workers: Vec<_> = (0..jobs.max(1))
        .map(|_| {
            let (next, failures, nondeterministic, totals, options) = (
                next.clone(),
                failures.clone(),
                nondeterministic.clone(),
                totals.clone(),
                options.clone(),
            );
            let check = args.check_determinism;
            std::thread::spawn(move || loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= end {
                    return;
                }
                let report = run(seed, &options);
                if check && run(seed, &options).trace_hash != report.trace_hash {
                    lock(&nondeterministic).push(seed);
                }
                {
                    let mut t = lock(&totals);
                    t.appends += report.stats.appends;
                    t.acked += report.stats.acked;
                    t.failed += report.stats.failed;
                    t.crashes += report.stats.crashes;
                    t.records_audited += report.stats.records_audited;
                    t.simulated_ms += report.stats.simulated_ms;
                }
                if !report.violations.is_empty() {
                    println!(
                        "FAIL seed={seed}: {} (replay: scripts/simulate.sh --seed {seed}{replay_flag})",
                        report.violations[0]
                    );
                    lock(&failures).push(report);
                }
            })
        })
        .collect();
    for w in workers {
        if w.join().is_err() {
            eprintln!("a simulation worker panicked");
            return ExitCode::FAILURE;
        }
    }
    let totals = *lock(&totals);
    let mut failures = std::mem::take(&mut *lock(&failures));
    failures.sort_by_key(|r| r.seed);
    let nondeterministic = std::mem::take(&mut *lock(&nondeterministic));
    println!(
        "{} seeds ({}..{}) in {:.1}s: {} appends, {} acknowledged, {} failed, {} crashes, {} records audited, {:.0} simulated minutes",
        args.seeds,
        args.first,
        end,
        started.elapsed().as_secs_f64(),
        totals.appends,
        totals.acked,
        totals.failed,
        totals.crashes,
        totals.records_audited,
        totals.simulated_ms as f64 / 60_000.0
    );
    if !nondeterministic.is_empty() {
        println!("NOT DETERMINISTIC (two runs differ): seeds {nondeterministic:?}");
    }
    if failures.is_empty() && nondeterministic.is_empty() {
        println!("all seeds passed");
        return ExitCode::SUCCESS;
    }
    for r in &failures {
        println!("seed {} violations:", r.seed);
        for v in r.violations.iter().take(10) {
            println!("  {v}");
        }
    }
    println!(
        "{} failing seeds: {:?}",
        failures.len(),
        failures.iter().map(|r| r.seed).collect::<Vec<_>>()
    );
    ExitCode::FAILURE
}

fn summarize_one(report: &Report) -> ExitCode {
    if report.violations.is_empty() {
        println!("seed {} passed", report.seed);
        return ExitCode::SUCCESS;
    }
    println!("seed {} FAILED:", report.seed);
    for v in &report.violations {
        println!("  {v}");
    }
    ExitCode::FAILURE
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
