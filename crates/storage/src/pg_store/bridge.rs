//! The backend's own runtime, and the time limit of a call.
//!
//! The storage traits are async: a call awaits PostgreSQL on the caller's runtime (no thread
//! hand-off). The backend keeps a small multi-thread tokio runtime of its own (shared by every
//! [`super::PgStore`] of the process) for what must outlive any one caller: the listener, the
//! poller, and every pooled connection's task — a connection is made on this runtime
//! ([`SpawnedConnect`]), so one made for a request of a short-lived runtime (a test's) keeps
//! serving the next caller.

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::time::Duration;

use deadpool_postgres::Connect;
use tokio::runtime::{Handle, Runtime};
use tokio::task::JoinHandle;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{Client, Socket};

use crate::{Result, StorageError};

/// Longest a call waits for PostgreSQL before it is refused as unavailable (a server that
/// stopped answering must not hang requests). Compaction is exempt.
pub(super) const CALL_TIMEOUT: Duration = Duration::from_secs(30);

static RUNTIME: OnceLock<std::result::Result<Runtime, String>> = OnceLock::new();

/// A handle on the backend's runtime.
#[derive(Clone)]
pub(super) struct Bridge {
    handle: Handle,
}

impl Bridge {
    pub(super) fn new() -> Result<Bridge> {
        let rt = RUNTIME.get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("syncgate-pg")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        });
        match rt {
            Ok(rt) => Ok(Bridge {
                handle: rt.handle().clone(),
            }),
            Err(e) => Err(StorageError::Engine(format!(
                "cannot start the PostgreSQL runtime: {e}"
            ))),
        }
    }

    /// Starts a background task on the backend runtime.
    pub(super) fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) {
        self.handle.spawn(fut);
    }

    /// How the pool makes connections: on the backend runtime.
    pub(super) fn connector<T>(&self, tls: T) -> SpawnedConnect<T> {
        SpawnedConnect {
            tls,
            handle: self.handle.clone(),
        }
    }
}

/// `fut`, at most [`CALL_TIMEOUT`]: then [`StorageError::Unavailable`].
pub(super) async fn timed<T>(fut: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(CALL_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| {
            Err(StorageError::Unavailable(format!(
                "PostgreSQL did not answer within {} s",
                CALL_TIMEOUT.as_secs()
            )))
        })
}

/// Connects on the backend runtime, where the connection's task then runs (deadpool's own
/// connector spawns it on the runtime of whoever asked the pool).
pub(super) struct SpawnedConnect<T> {
    tls: T,
    handle: Handle,
}

type ConnectFuture<'a> = Pin<
    Box<
        dyn Future<Output = std::result::Result<(Client, JoinHandle<()>), tokio_postgres::Error>>
            + Send
            + 'a,
    >,
>;

impl<T> Connect for SpawnedConnect<T>
where
    T: MakeTlsConnect<Socket> + Clone + Sync + Send + 'static,
    T::Stream: Sync + Send,
    T::TlsConnect: Sync + Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    fn connect(&self, pg_config: &tokio_postgres::Config) -> ConnectFuture<'_> {
        let (tls, config) = (self.tls.clone(), pg_config.clone());
        let task = self.handle.spawn(async move {
            let (client, connection) = config.connect(tls).await?;
            let conn_task = tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!("PostgreSQL connection ended: {e}");
                }
            });
            Ok((client, conn_task))
        });
        Box::pin(async move {
            match task.await {
                Ok(r) => r,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                // the backend runtime never shuts down (a static): the pool's create timeout
                // ends the wait
                Err(_) => std::future::pending().await,
            }
        })
    }
}
