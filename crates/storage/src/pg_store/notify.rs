//! Learning of changes committed by other nodes: `LISTEN` on a connection of its own, or a
//! poll of the counters (see the module documentation).

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio_postgres::AsyncMessage;

use super::tls::MakeRustls;
use super::{pg_err, pool_err, ChangeNotify, LiveMap, CHANNEL};
use crate::Result;

/// Runs until the store is dropped (`stop` closes).
pub(super) async fn watch_changes(
    config: tokio_postgres::Config,
    tls: MakeRustls,
    pool: Pool,
    live: Arc<LiveMap>,
    mode: ChangeNotify,
    mut stop: watch::Receiver<()>,
) {
    match mode {
        ChangeNotify::Poll(every) => {
            let mut tick = tokio::time::interval(every.max(Duration::from_millis(1)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if let Err(e) = refresh(&pool, &live).await {
                            tracing::debug!("polling PostgreSQL counters: {e}");
                        }
                    }
                    _ = stop.changed() => return,
                }
            }
        }
        ChangeNotify::Listen => loop {
            tokio::select! {
                r = listen(&config, &tls, &pool, &live) => {
                    if let Err(e) = r {
                        tracing::warn!("PostgreSQL change listener: {e}; reconnecting");
                    }
                }
                _ = stop.changed() => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.changed() => return,
            }
        },
    }
}

/// One listening connection: returns when it is lost.
async fn listen(
    config: &tokio_postgres::Config,
    tls: &MakeRustls,
    pool: &Pool,
    live: &LiveMap,
) -> Result<()> {
    let (client, mut conn) = config.connect(tls.clone()).await.map_err(pg_err)?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(n.payload().to_string()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!("PostgreSQL listener connection: {e}");
                    return;
                }
            }
        }
    });
    let _abort = AbortOnDrop(driver);
    client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .await
        .map_err(pg_err)?;
    // whatever was committed before LISTEN took effect
    refresh(pool, live).await?;
    while let Some(payload) = rx.recv().await {
        if let Some(rest) = payload.strip_prefix("settings ") {
            match rest
                .split_once(' ')
                .and_then(|(v, db)| Some((v.parse::<u64>().ok()?, db)))
            {
                Some((version, db)) => live.settings(db, version),
                None => tracing::warn!("unexpected notification on {CHANNEL}"),
            }
            continue;
        }
        match payload
            .split_once(' ')
            .and_then(|(s, db)| Some((s.parse::<u64>().ok()?, db)))
        {
            Some((seq, db)) => live.advance(db, seq),
            None => tracing::warn!("unexpected notification on {CHANNEL}"),
        }
    }
    Err(crate::StorageError::Unavailable(
        "PostgreSQL listener connection lost".into(),
    ))
}

/// Re-reads the counters (and settings versions) of every open database.
async fn refresh(pool: &Pool, live: &LiveMap) -> Result<()> {
    let names = live.names();
    if names.is_empty() {
        return Ok(());
    }
    let c = pool.get().await.map_err(pool_err)?;
    let rows = c
        .query(
            "SELECT db, last_seq, settings_version FROM syncgate_counters WHERE db = ANY($1)",
            &[&names],
        )
        .await
        .map_err(pg_err)?;
    for r in rows {
        let db: String = r.get(0);
        let seq: i64 = r.get(1);
        let settings: i64 = r.get(2);
        live.advance(&db, seq as u64);
        live.settings(&db, settings as u64);
    }
    Ok(())
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
