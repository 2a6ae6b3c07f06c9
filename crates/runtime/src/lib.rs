//! What every long-running part of a broker shares: the shape of a
//! background task ([`task`]) and how an error and its causes are told in
//! one line ([`chain`]). No Kafka, no storage: the crates below the binary
//! use it so that each loop is written once.

pub mod chain;
pub mod task;

pub use chain::{chain, Chain};
pub use task::{spawn, supervise, Background, TaskFailed, TaskHandle, Tick};
/// How a task is told to stop (re-exported so users need not name tokio-util).
pub use tokio_util::sync::CancellationToken;
