//! The [`SqliteStore`] handle: opening the database (file or in-memory),
//! the writer and reader connections, and running each call as one
//! transaction on the blocking pool (see the backend's module docs).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::Duration;
use tributary_runtime::Chain;

use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};
use tracing::{debug, warn};

use super::error::Step;
use super::schema::migrate;
use crate::clock::Clock;
use crate::{MetaError, Result};

/// How long a connection waits on a lock held by another connection (or
/// process) before the call fails with a retryable error.
pub(super) const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Read-only connections opened next to the writer for file databases.
pub(super) const READERS: usize = 4;

/// Metadata store over SQLite. Cheap to clone (shares the connections).
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
    /// The store's clock: refuses commits past their deadline
    /// ([`crate::CommitDeadline`]) and dates abandoned segments.
    clock: Arc<dyn Clock>,
    /// Run calls on the calling thread instead of the blocking pool
    /// ([`SqliteStore::with_inline_calls`]).
    inline: bool,
}

pub(super) struct Inner {
    /// The only connection that writes.
    writer: Mutex<Connection>,
    /// Read-only connections (empty for in-memory databases, whose readers
    /// use the writer).
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    /// Where the database lives, for logs (`:memory:` for in-memory).
    location: String,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("location", &self.inner.location)
            .field("readers", &self.inner.readers.len())
            .finish()
    }
}

impl SqliteStore {
    /// Open (creating if needed) the database file at `path`, creating its
    /// parent directory, and bring the schema up to date.
    pub async fn open(path: &Path) -> Result<Self> {
        let path = path.to_path_buf();
        blocking("open", move || open_file(&path)).await
    }

    /// A private in-memory database (tests, throwaway brokers).
    pub async fn open_in_memory() -> Result<Self> {
        blocking("open", || {
            let mut conn = Connection::open_in_memory()?;
            configure(&conn)?;
            migrate(&mut conn)?;
            Ok(SqliteStore::from_parts(conn, Vec::new(), ":memory:".into()))
        })
        .await
    }

    /// Open from a URL: `sqlite::memory:` for an in-memory database,
    /// `sqlite://relative/path.db` or `sqlite:///absolute/path.db` for a
    /// file. A query string (`?mode=rwc`) is accepted and ignored.
    pub async fn open_url(url: &str) -> Result<Self> {
        match parse_url(url)? {
            None => Self::open_in_memory().await,
            Some(path) => Self::open(&path).await,
        }
    }

    /// The writer connection, locked (tests inspect the schema with it).
    #[cfg(test)]
    pub(super) fn writer_for_tests(&self) -> MutexGuard<'_, Connection> {
        lock(&self.inner.writer)
    }

    /// The writer connection's mutex (tests poison it).
    #[cfg(test)]
    pub(super) fn writer_mutex_for_tests(&self) -> &Mutex<Connection> {
        &self.inner.writer
    }

    fn from_parts(writer: Connection, readers: Vec<Connection>, location: String) -> Self {
        SqliteStore {
            inner: Arc::new(Inner {
                writer: Mutex::new(writer),
                readers: readers.into_iter().map(Mutex::new).collect(),
                next_reader: AtomicUsize::new(0),
                location,
            }),
            clock: crate::clock::system(),
            inline: false,
        }
    }

    /// The store's clock.
    pub(super) fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Use `clock` as the store's clock (simulations; the default is the
    /// machine's).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Run every call on the calling thread, inside the future's first
    /// poll, instead of on the blocking pool. Only for deterministic
    /// simulations of in-memory databases: the async thread blocks for the
    /// duration of each call, but nothing else runs meanwhile, so a paused
    /// tokio clock cannot advance during a call and the interleaving of
    /// tasks is the same on every run.
    pub fn with_inline_calls(mut self) -> Self {
        self.inline = true;
        self
    }

    /// Run `f` on the blocking pool, or inline (see
    /// [`SqliteStore::with_inline_calls`]).
    async fn call<T, F>(&self, op: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> Step<T> + Send + 'static,
    {
        if self.inline {
            return f().map_err(|fail| fail.into_meta(op));
        }
        blocking(op, f).await
    }

    /// Run `f` in a `BEGIN IMMEDIATE` transaction on the writer; commit if it
    /// returns `Ok`, roll back otherwise.
    pub(super) async fn write<T, F>(&self, op: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Step<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        self.call(op, move || {
            let mut conn = lock(&inner.writer);
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })
        .await
    }

    /// Run `f` in a read transaction (one consistent snapshot) on a reader
    /// connection, or on the writer for in-memory databases.
    pub(super) async fn read<T, F>(&self, op: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Step<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        self.call(op, move || {
            let mut conn = if inner.readers.is_empty() {
                lock(&inner.writer)
            } else {
                pick_reader(&inner)
            };
            let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })
        .await
    }
}

/// Run `f` on the blocking pool and turn its failure into a [`MetaError`].
pub(super) async fn blocking<T, F>(op: &'static str, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Step<T> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(fail)) => Err(fail.into_meta(op)),
        Err(join) => Err(MetaError::Backend {
            op,
            source: Box::new(join),
        }),
    }
}

/// Lock a connection even if an earlier call panicked while holding it, and
/// roll back any transaction that call left open.
pub(super) fn lock(m: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    let guard = m.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    recover(&guard);
    guard
}

pub(super) fn recover(conn: &Connection) {
    if !conn.is_autocommit() {
        warn!("sqlite connection left inside a transaction, rolling back");
        if let Err(e) = conn.execute_batch("ROLLBACK") {
            warn!(error = %Chain(&e), "sqlite rollback of abandoned transaction failed");
        }
    }
}

/// A free reader if there is one, else wait on the next one in turn.
pub(super) fn pick_reader(inner: &Inner) -> MutexGuard<'_, Connection> {
    let n = inner.readers.len();
    let start = inner.next_reader.fetch_add(1, Ordering::Relaxed);
    for i in 0..n {
        let m = &inner.readers[(start + i) % n];
        let guard = match m.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => continue,
        };
        recover(&guard);
        return guard;
    }
    lock(&inner.readers[start % n])
}

pub(super) fn open_file(path: &Path) -> Step<SqliteStore> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| MetaError::Backend {
            op: "open",
            source: Box::new(e),
        })?;
    }
    let mut writer = Connection::open(path)?;
    configure(&writer)?;
    let mode: String = writer.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(MetaError::InvalidArgument(format!(
            "sqlite database cannot use WAL mode journal_mode={mode} path={}",
            path.display()
        ))
        .into());
    }
    migrate(&mut writer)?;
    let mut readers = Vec::with_capacity(READERS);
    for _ in 0..READERS {
        let reader = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_URI,
        )?;
        configure(&reader)?;
        reader.pragma_update(None, "query_only", true)?;
        readers.push(reader);
    }
    debug!(path = %path.display(), "sqlite metadata store opened");
    Ok(SqliteStore::from_parts(
        writer,
        readers,
        path.display().to_string(),
    ))
}

/// Per-connection settings.
pub(super) fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    Ok(())
}

/// `None` for an in-memory database, else the file path.
pub(crate) fn parse_url(url: &str) -> Result<Option<PathBuf>> {
    let invalid = || MetaError::InvalidArgument(format!("sqlite url url={url}"));
    let rest = url.strip_prefix("sqlite:").ok_or_else(invalid)?;
    let rest = rest.split_once('?').map_or(rest, |(path, _query)| path);
    let path = rest.strip_prefix("//").unwrap_or(rest);
    if path == ":memory:" {
        return Ok(None);
    }
    if path.is_empty() {
        return Err(invalid());
    }
    Ok(Some(PathBuf::from(path)))
}
