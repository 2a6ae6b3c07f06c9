//! Data-path storage: the object store chosen by URL, the read cache, the
//! segment writer (batch → PUT → commit → ack) and the fetcher (index lookup →
//! ranged reads → patched batches).
//!
//! Business logic here only sees `Arc<dyn ObjectStore>`; which wrappers sit
//! around the backend is decided in [`open`].

pub use object_store;

pub mod cache;
pub mod entropy;
mod error;
pub mod health;
pub mod keys;
pub mod maintenance;
pub mod open;
pub mod producer_gaps;
pub mod reader;
pub mod watermarks;
pub mod wrappers;
pub mod writer;

pub use cache::{CacheStats, ReadCache};
pub use error::{CommitAttempt, CommitFailure, ReadError, StorageError, UploadFailure, WriteError};
pub use health::WriteHealth;
pub use maintenance::{Maintenance, MaintenanceConfig, PassReport};
pub use open::{
    open_object_store, open_object_store_with, parse_fault_spec, FaultSpec, ObjectStoreUrl,
    OpenedStore, S3Settings,
};
pub use reader::{FetchedPartition, Fetcher, Isolation};
pub use watermarks::{PartitionKey, PartitionWatch, Watermarks};
pub use wrappers::{FaultyStore, MetricsHandle, MetricsStore, RetryPolicy, RetryingStore};
pub use writer::{AppendBatch, AppendReceiver, SegmentWriter, WriterConfig};
