//! Test helpers shared by Tributary's end-to-end tests.
//!
//! Owns starting and stopping a real `tributary` broker process
//! ([`BrokerProcess`]) on a free loopback port with its own data directory, so
//! tests with real Kafka clients (rdkafka, confluent-kafka, kcat) can run
//! against it, crash it (`SIGKILL`), stop it cleanly (`SIGTERM`) and restart it
//! on the same data. Nothing here depends on the broker crates: the binary is
//! found by path (`env!("CARGO_BIN_EXE_tributary")` in the cli package's tests).
//!
//! [`S3Server`] runs a local S3 endpoint (`moto_server`) for `s3://` tests;
//! [`Pki`] makes a throwaway CA and certificates for TLS tests.

mod broker;
mod pki;
mod postgres;
mod s3;

pub use broker::{free_port, BrokerBuilder, BrokerProcess, DEFAULT_READY_TIMEOUT};
pub use pki::{CertFiles, Pki};
pub use postgres::{pg_bin_dir, PgServer, PG_READY_TIMEOUT, PG_TEST_DATABASE};
pub use s3::{moto_server_bin, S3Server, S3_READY_TIMEOUT, S3_TEST_ENV, S3_TEST_REGION};
