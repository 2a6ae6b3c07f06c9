//! The `tributary` binary's parts, as a library so that tests can run a
//! whole broker in-process: [`config`] resolves settings (flags →
//! `TRIBUTARY_*` environment → config file → the components' defaults),
//! [`node::Node`] assembles a broker from them and shuts it down, [`init`]
//! checks the object store, [`export`] replays topics into Parquet,
//! [`users`] manages SASL/SCRAM users in the metadata store.
//! `main.rs` only parses the command line, sets up logging and waits for
//! the shutdown signal.

pub mod config;
pub mod export;
pub mod init;
pub mod node;
mod observe;
pub mod users;

pub use node::Node;
