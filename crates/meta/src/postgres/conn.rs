//! The [`PostgresStore`] handle: connecting (pool, TLS, session options,
//! schema), checking out clients and running calls with conflict retries.

use std::future::Future;
use std::time::Duration;
use tributary_runtime::Chain;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio_postgres_rustls::MakeRustlsConnect;
use tracing::debug;
use uuid::Uuid;

use super::error::{Fail, Step};
use super::listen::COMMIT_CHANNEL;
use super::schema::{create_schema, migrate};
use super::sql::{query, retry};
use super::tls;
use super::url::config_from_url;
use crate::{MetaError, Result};

/// Connections per store (per broker).
const POOL_SIZE: usize = 16;

/// Connect timeout when the URL does not set `connect_timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a call waits for a free pooled connection.
const POOL_WAIT_TIMEOUT: Duration = Duration::from_secs(30);

/// TCP keepalive (unless the URL sets `keepalives_idle`): a silent server is
/// noticed in about a minute, not two hours.
const KEEPALIVES_IDLE: Duration = Duration::from_secs(30);

/// Metadata store over PostgreSQL. Cheap to clone (shares the pool).
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    /// Where the database lives, for logs and `Debug` (never the password).
    location: String,
    /// How to open the dedicated `LISTEN` connection.
    pub(super) listen_config: tokio_postgres::Config,
    pub(super) tls: MakeRustlsConnect,
    /// This store's name in commit notifications, so it skips its own.
    pub(super) instance: String,
    /// Whether the server takes `pg_notify` (probed at connect).
    pub(super) notify: bool,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("location", &self.location)
            .field("pool", &self.pool.status())
            .finish()
    }
}

impl PostgresStore {
    /// Connect to `url` (see the module docs), create the schema if asked
    /// and bring it up to date. Fails with [`MetaError::Backend`] if the
    /// server cannot be reached, [`MetaError::InvalidArgument`] for a
    /// malformed URL.
    pub async fn connect(url: &str) -> Result<Self> {
        let (parsed, mut config) = config_from_url(url)?;
        let connect_timeout = match config.get_connect_timeout() {
            Some(t) => *t,
            None => {
                config.connect_timeout(CONNECT_TIMEOUT);
                CONNECT_TIMEOUT
            }
        };
        if config.get_application_name().is_none() {
            config.application_name("tributary");
        }
        config.ssl_mode(parsed.tls.ssl_mode());
        let tls = tls::connector(parsed.tls, parsed.root_cert.as_deref())?;
        let mut options: Vec<String> = config
            .get_options()
            .filter(|o| !o.is_empty())
            .map(str::to_owned)
            .into_iter()
            .collect();
        if let Some(schema) = &parsed.schema {
            options.push(format!("-c search_path={schema}"));
        }
        for (name, ms) in &parsed.timeouts {
            options.push(format!("-c {name}={ms}"));
        }
        config.options(options.join(" "));
        if !parsed.keepalives_given {
            config.keepalives(true).keepalives_idle(KEEPALIVES_IDLE);
        }
        let location = format!(
            "hosts={:?} ports={:?} db={} schema={}",
            config.get_hosts(),
            config.get_ports(),
            config.get_dbname().unwrap_or("-"),
            parsed.schema.as_deref().unwrap_or("-"),
        );
        let listen_config = config.clone();
        let manager = Manager::from_config(
            config,
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT_TIMEOUT))
            .create_timeout(Some(connect_timeout + CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| MetaError::Backend {
                op: "connect",
                source: Box::new(e),
            })?;
        let mut store = PostgresStore {
            pool,
            location,
            listen_config,
            tls,
            instance: Uuid::new_v4().to_string(),
            notify: false,
        };
        if let Some(schema) = &parsed.schema {
            create_schema(&store.pool, schema).await?;
        }
        migrate(&store.pool).await?;
        store.notify = store.probe_notify().await?;
        debug!(location = %store.location, "postgres metadata store connected");
        Ok(store)
    }

    /// Whether the server takes `pg_notify`; `Err` only when it cannot be
    /// asked at all.
    async fn probe_notify(&self) -> Result<bool> {
        let client = self.client().await.map_err(|f| f.into_meta("connect"))?;
        match client
            .execute("SELECT pg_notify($1, '')", &[&COMMIT_CHANNEL])
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.as_db_error().is_some() => {
                tracing::info!(error = %Chain(&e), "database has no NOTIFY; brokers will poll for each other's commits");
                Ok(false)
            }
            Err(e) => Err(Fail::from(e).into_meta("connect")),
        }
    }

    /// The first column of a parameterless query, as text.
    pub(super) async fn text_column(
        &self,
        op: &'static str,
        sql: &'static str,
    ) -> Result<Vec<String>> {
        self.run(op, move || async move {
            let client = self.client().await?;
            query(&client, sql, &[])
                .await?
                .iter()
                .map(|r| Ok(r.try_get(0)?))
                .collect()
        })
        .await
    }

    pub(super) async fn client(&self) -> Step<Object> {
        Ok(self.pool.get().await?)
    }

    /// Run `f` (one transaction, or one statement) with conflict retries
    /// ([`retry`]).
    pub(super) async fn run<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Step<T>>,
    {
        retry(op, f).await
    }
}
