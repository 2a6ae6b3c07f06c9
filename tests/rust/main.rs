//! End-to-end tests with real Kafka clients (the `rdkafka` crate, i.e.
//! librdkafka) against the `tributary` binary, one module per area. They
//! are one test binary so rdkafka is linked once; nextest still runs each
//! test in its own process. Tests that need PostgreSQL are in the
//! `postgres_*` modules; `TRIBUTARY_TEST_STORE=s3` runs the rest on a
//! local S3 server (see `scripts/test.sh`).

mod common;

mod abuse;
mod acls;
mod admin_endpoint;
mod bad_input;
mod crash_orphans;
mod export_parquet;
mod fault_injection;
mod fetch_semantics;
mod group_rebalance;
mod idempotent;
mod in_process;
mod list_offsets_by_timestamp;
mod postgres_acls;
mod postgres_brokers;
mod postgres_cluster;
mod postgres_key_compaction;
mod postgres_locks;
mod postgres_restart;
mod postgres_transactions;
mod produce_consume;
mod reauthentication;
mod restart_resume;
mod retention_compaction;
mod s3_broker;
mod sasl;
mod semantics;
mod sigkill_durability;
mod stored_data_faults;
mod tls;
mod transactions;
