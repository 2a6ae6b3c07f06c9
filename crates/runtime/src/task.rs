//! One shape for every background loop of a broker (heartbeats, the
//! maintenance pass, the group sweep and timers, the lag reporter, the
//! commit-feed listener, …): the loop is written here once, each task says
//! only what it does.
//!
//! A task [`Background::tick`]s when its timer is due and says when the next
//! tick is ([`Tick`]); it may also wait for events ([`Background::event`])
//! and [`Background::handle`] them between ticks; once stopped (its
//! `CancellationToken` fires, it returns [`Tick::Done`], or its event source
//! closes) it [`Background::drain`]s once. A tick or a handler is never
//! interrupted by the stop: it finishes first, so tasks need not be
//! cancel-safe. A panic ends the task and is what [`TaskHandle::join`]
//! returns ([`TaskFailed`]), so whoever shuts the node down sees it.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// When a task's next tick is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    /// At once.
    Now,
    /// After this long.
    In(Duration),
    /// At this instant.
    At(Instant),
    /// Not until an event says so.
    Idle,
    /// Never: the task drains and ends.
    Done,
}

impl Tick {
    /// The instant the tick is due (`None`: not by the timer), judged now.
    fn deadline(self) -> Option<Instant> {
        match self {
            Tick::Now => Some(Instant::now()),
            Tick::In(d) => Some(Instant::now() + d),
            Tick::At(t) => Some(t),
            Tick::Idle | Tick::Done => None,
        }
    }
}

/// What one background task does; [`spawn`] owns the loop.
#[async_trait]
pub trait Background: Send + 'static {
    /// What [`Background::event`] yields (`()` for tasks without events).
    type Event: Send;

    /// When the first tick is due (default: at once).
    fn first(&self) -> Tick {
        Tick::Now
    }

    /// One round of the task's work; returns when the next is due.
    async fn tick(&mut self) -> Tick;

    /// Wait for the next event; `None` when the source has closed (the task
    /// then drains and ends). Must be cancel-safe: it is dropped when the
    /// timer or the stop comes first. Default: no events, ever.
    async fn event(&mut self) -> Option<Self::Event> {
        std::future::pending().await
    }

    /// Handle one event; `Some` moves the next tick.
    async fn handle(&mut self, _event: Self::Event) -> Option<Tick> {
        None
    }

    /// Last words, once, after the task stopped: deregister, flush.
    async fn drain(&mut self) {}
}

/// Run `task` on the current runtime until `stop` fires or the task ends.
pub fn spawn<B: Background>(
    name: &'static str,
    mut task: B,
    stop: CancellationToken,
) -> TaskHandle {
    supervise(name, async move {
        let mut due = task.first();
        let mut deadline = due.deadline();
        while due != Tick::Done {
            let timer = async {
                match deadline {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                () = timer => {
                    due = task.tick().await;
                    deadline = due.deadline();
                }
                event = task.event() => match event {
                    Some(event) => {
                        if let Some(next) = task.handle(event).await {
                            due = next;
                            deadline = due.deadline();
                        }
                    }
                    None => break,
                },
            }
        }
        task.drain().await;
    })
}

/// Run a future that is not a loop of ticks (a pipeline stage, a server) as
/// a named task whose panic [`TaskHandle::join`] reports.
pub fn supervise(
    name: &'static str,
    work: impl Future<Output = ()> + Send + 'static,
) -> TaskHandle {
    let span = tracing::info_span!("task", name);
    TaskHandle {
        name,
        join: tokio::spawn(work.instrument(span)),
    }
}

/// A running task.
#[derive(Debug)]
pub struct TaskHandle {
    name: &'static str,
    join: JoinHandle<()>,
}

impl TaskHandle {
    /// The task's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Whether the task has ended.
    pub fn is_finished(&self) -> bool {
        self.join.is_finished()
    }

    /// Stop the task where it waits (for tasks whose stop is not a token).
    pub fn abort(&self) {
        self.join.abort();
    }

    /// Wait for the task to end: `Err` if it panicked or was aborted.
    pub async fn join(self) -> Result<(), TaskFailed> {
        self.join.await.map_err(|e| TaskFailed {
            task: self.name,
            reason: if e.is_panic() {
                format!("panicked: {}", panic_message(e.into_panic()))
            } else {
                "cancelled".to_owned()
            },
        })
    }

    /// [`TaskHandle::join`], with a failure logged as a warning; returns
    /// whether the task ended cleanly.
    pub async fn join_logged(self) -> bool {
        match self.join().await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(task = e.task, reason = %e.reason, "background task ended abnormally");
                false
            }
        }
    }
}

/// A task that did not end on its own terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskFailed {
    /// The task's name.
    pub task: &'static str,
    /// `panicked: <message>` or `cancelled`.
    pub reason: String,
}

impl fmt::Display for TaskFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "task {} {}", self.task, self.reason)
    }
}

impl std::error::Error for TaskFailed {}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(s) => (*s).to_owned(),
            Err(_) => "(no message)".to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    struct Counter {
        ticks: Arc<AtomicU32>,
        drained: Arc<AtomicU32>,
        events: tokio::sync::mpsc::Receiver<u32>,
        panic_at: Option<u32>,
        stop_at: Option<u32>,
    }

    #[async_trait]
    impl Background for Counter {
        type Event = u32;
        fn first(&self) -> Tick {
            Tick::In(Duration::from_secs(1))
        }
        async fn tick(&mut self) -> Tick {
            let n = self.ticks.fetch_add(1, Ordering::SeqCst) + 1;
            if Some(n) == self.panic_at {
                panic!("tick {n} broke");
            }
            if Some(n) == self.stop_at {
                return Tick::Done;
            }
            Tick::In(Duration::from_secs(1))
        }
        async fn event(&mut self) -> Option<u32> {
            self.events.recv().await
        }
        async fn handle(&mut self, event: u32) -> Option<Tick> {
            (event == 0).then_some(Tick::Now)
        }
        async fn drain(&mut self) {
            self.drained.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counter(
        panic_at: Option<u32>,
        stop_at: Option<u32>,
    ) -> (
        Counter,
        Arc<AtomicU32>,
        Arc<AtomicU32>,
        tokio::sync::mpsc::Sender<u32>,
    ) {
        let (tx, events) = tokio::sync::mpsc::channel(4);
        let (ticks, drained) = (Arc::default(), Arc::default());
        let c = Counter {
            ticks: Arc::clone(&ticks),
            drained: Arc::clone(&drained),
            events,
            panic_at,
            stop_at,
        };
        (c, ticks, drained, tx)
    }

    #[tokio::test(start_paused = true)]
    async fn ticks_on_time_drains_once_on_stop() {
        let (c, ticks, drained, _tx) = counter(None, None);
        let stop = CancellationToken::new();
        let task = spawn("counter", c, stop.clone());
        tokio::time::sleep(Duration::from_millis(3500)).await;
        assert_eq!(ticks.load(Ordering::SeqCst), 3);
        stop.cancel();
        assert_eq!(task.join().await, Ok(()));
        assert_eq!(drained.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn events_move_the_timer_and_a_closed_source_ends_the_task() {
        let (c, ticks, drained, tx) = counter(None, None);
        let task = spawn("counter", c, CancellationToken::new());
        tx.send(0).await.expect("task listens"); // "tick now"
        tx.send(7).await.expect("task listens"); // handled, timer unchanged
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(ticks.load(Ordering::SeqCst), 1);
        drop(tx);
        assert_eq!(task.join().await, Ok(()));
        assert_eq!(drained.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn done_ends_and_a_panic_is_the_result() {
        let (c, ticks, drained, _tx) = counter(None, Some(2));
        let task = spawn("counter", c, CancellationToken::new());
        assert_eq!(task.join().await, Ok(()));
        assert_eq!(
            (ticks.load(Ordering::SeqCst), drained.load(Ordering::SeqCst)),
            (2, 1)
        );

        let (c, _, drained, _tx) = counter(Some(1), None);
        let failed = spawn("counter", c, CancellationToken::new()).join().await;
        assert_eq!(
            failed,
            Err(TaskFailed {
                task: "counter",
                reason: "panicked: tick 1 broke".into()
            })
        );
        assert_eq!(drained.load(Ordering::SeqCst), 0);
    }
}
