//! The Redis backend's three tasks, which end with the manager: the
//! reader (the stream, in order, into the manager), the registry writer
//! (connection arrivals and departures, in batches) and the liveness
//! renewal (which also buries dead instances).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::{AsyncCommands, AsyncConnectionConfig};
use tokio::sync::mpsc;

use super::entry::{decode_raw, read_reply};
use super::{
    BLOCK, MAX_BACKOFF, MAX_BATCH, MAX_BATCH_BYTES, MIN_BACKOFF, RegOp, Shared, Write,
    backend_error, epoch, set_once, with_timeout,
};
use crate::backend::Sink;
use crate::error::Error;

/// The most entries one `XREAD` returns.
const READ_COUNT: usize = 1024;

fn next_backoff(b: Duration) -> Duration {
    (b * 2).min(MAX_BACKOFF)
}

async fn reader_connection(shared: &Shared) -> redis::RedisResult<MultiplexedConnection> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(shared.timeout))
        .set_response_timeout(Some(BLOCK + shared.timeout));
    shared
        .client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// Reads the stream and delivers each message to this instance's
/// connections, in order; reconnects with backoff.
pub(super) async fn read_loop(sink: Sink, shared: Arc<Shared>, mut last: u64) {
    let mut backoff = MIN_BACKOFF;
    let mut failing = false;
    loop {
        if !sink.is_open() {
            return;
        }
        let mut con = match reader_connection(&shared).await {
            Ok(con) => con,
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "Redis unreachable; retrying");
                    failing = true;
                }
                tokio::time::sleep(backoff).await;
                backoff = next_backoff(backoff);
                continue;
            }
        };
        // The writer connects again too (before a new epoch is known, which
        // a publisher may be waiting for).
        shared.connections.fetch_add(1, Ordering::AcqRel);
        // Redis may have come back without its data. It lost the resume key
        // too: put back the one every running instance holds, before the new
        // epoch (an instance started from now on reads this key, not a new
        // one of its own, under which no page of the others could resume).
        match set_once(&mut con, &shared.keys.resume_key, &shared.resume_key).await {
            Ok(current) if current != shared.resume_key => tracing::warn!(
                "the resume key in Redis is not the one this instance started with: \
                 pages moving to or from it get the reset event (unrecognized)"
            ),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "restoring the resume key failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = next_backoff(backoff);
                continue;
            }
        }
        // Then a new epoch, read from the start of the new stream.
        match epoch(&mut con, &shared.keys).await {
            Ok(e) => {
                let Some(changed) = sink.new_epoch(e) else {
                    return;
                };
                if changed {
                    tracing::warn!(epoch = %e, "Redis lost its data: new epoch");
                    last = 0;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the epoch failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = next_backoff(backoff);
                continue;
            }
        }
        if failing {
            tracing::info!("Redis reachable again; delivery resumes");
        }
        backoff = MIN_BACKOFF;
        shared.reading.store(true, Ordering::Relaxed);
        let block = BLOCK.as_millis().to_string();
        loop {
            if !sink.is_open() {
                return;
            }
            let reply: redis::RedisResult<redis::Value> = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(READ_COUNT)
                .arg("BLOCK")
                .arg(&block)
                .arg("STREAMS")
                .arg(&shared.keys.stream)
                .arg(format!("0-{last}"))
                .query_async(&mut con)
                .await;
            let reply = match reply {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "reading from Redis failed; reconnecting");
                    failing = true;
                    break;
                }
            };
            for entry in read_reply(reply) {
                let seq = entry.seq();
                let id = seq.is_none().then(|| entry.id.clone());
                match decode_raw(entry) {
                    Ok(d) => {
                        last = d.seq;
                        if sink.deliver(d.epoch, d.seq, d.envelope).is_none() {
                            return;
                        }
                    }
                    Err(e) => {
                        if let Some(seq) = seq {
                            last = seq;
                        }
                        tracing::warn!(?seq, ?id, error = %e, "skipping a stream entry");
                    }
                }
            }
        }
        shared.reading.store(false, Ordering::Relaxed);
        tokio::time::sleep(backoff).await;
        backoff = next_backoff(backoff);
    }
}

/// A connection for the writer, made on the runtime it runs on (its I/O
/// is driven there); until Redis answers, everything queued fails.
/// `None` when the manager is gone.
async fn writer_connection(
    shared: &Shared,
    writes: &mut mpsc::UnboundedReceiver<Write>,
    queued: &mut VecDeque<Write>,
) -> Option<ConnectionManager> {
    let mut backoff = MIN_BACKOFF;
    loop {
        let made = with_timeout(
            shared.timeout * 2,
            "connecting to Redis",
            shared
                .client
                .get_connection_manager_with_config(shared.manager_config()),
        )
        .await;
        match made {
            Ok(con) => return Some(con),
            Err(e) => {
                tracing::debug!(error = %e, "the Redis writer cannot connect; retrying");
                loop {
                    match writes.try_recv() {
                        Ok(w) => queued.push_back(w),
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => return None,
                    }
                }
                for w in queued.drain(..) {
                    let _ = w.done.send(Err(Error::Backend(format!("publishing: {e}"))));
                }
                tokio::time::sleep(backoff).await;
                backoff = next_backoff(backoff);
            }
        }
    }
}

/// Writes publishes to the stream: everything queued since the last
/// call, in the order it was queued, as one script call per epoch (at most
/// `MAX_BATCH` messages or `MAX_BATCH_BYTES`), one call in flight at a
/// time, so that the calls' order is the queue's. Its connection is its
/// own, made again whenever the reader had to reconnect (the old one may
/// be dead without knowing it yet: its next call would fail).
pub(super) async fn write_loop(shared: Arc<Shared>, mut writes: mpsc::UnboundedReceiver<Write>) {
    let mut queued: VecDeque<Write> = VecDeque::new();
    let mut received = Vec::new();
    let mut con: Option<(u64, ConnectionManager)> = None;
    loop {
        if queued.is_empty() {
            if writes.recv_many(&mut received, MAX_BATCH).await == 0 {
                return;
            }
            queued.extend(received.drain(..));
        }
        let connections = shared.connections.load(Ordering::Acquire);
        let current = match &mut con {
            Some((made_at, c)) if *made_at == connections => c,
            _ => {
                let Some(c) = writer_connection(&shared, &mut writes, &mut queued).await else {
                    return;
                };
                &mut con.insert((connections, c)).1
            }
        };
        // Everything else queued by now, up to one more batch.
        while queued.len() < 2 * MAX_BATCH {
            match writes.try_recv() {
                Ok(w) => queued.push_back(w),
                Err(_) => break,
            }
        }
        let mut batch: Vec<Write> = Vec::new();
        let mut bytes = 0;
        while let Some(w) = queued.front() {
            let size: usize = w.fields.iter().map(|(k, v)| k.len() + v.len()).sum();
            let fits = batch.len() < MAX_BATCH && bytes + size <= MAX_BATCH_BYTES;
            if let Some(first) = batch.first()
                && (w.epoch != first.epoch || !fits)
            {
                break;
            }
            bytes += size;
            batch.extend(queued.pop_front());
        }
        shared.write_batch(current, batch).await;
    }
}

/// Writes connection arrivals and departures to Redis, in batches.
pub(super) async fn registry_loop(
    sink: Sink,
    shared: Arc<Shared>,
    mut ops: mpsc::UnboundedReceiver<RegOp>,
) {
    let conns = shared.keys.conns(&shared.instance);
    let mut batch = Vec::new();
    while ops.recv_many(&mut batch, 512).await > 0 {
        let mut pipe = redis::pipe();
        let mut readies = Vec::new();
        for op in batch.drain(..) {
            match op {
                RegOp::Add { id, user, ready } => {
                    shared.record(&mut pipe, &id, user.as_ref());
                    readies.push(ready);
                }
                RegOp::Remove { id } => {
                    let mut forget = shared.forget.prepare_invoke();
                    forget
                        .key(&shared.keys.place)
                        .key(&conns)
                        .arg(id.as_str())
                        .arg(&shared.instance);
                    pipe.invoke_script(&forget).ignore();
                }
            }
        }
        let mut con = shared.commands.clone();
        // Scripts in a pipeline run by EVALSHA: load it first.
        let loaded: redis::RedisResult<()> = shared
            .forget
            .prepare_invoke()
            .load_async(&mut con)
            .await
            .map(|_| ());
        let result = match loaded {
            Ok(()) => {
                with_timeout(
                    shared.timeout,
                    "recording connections",
                    pipe.query_async::<()>(&mut con),
                )
                .await
            }
            Err(e) => Err(backend_error("recording connections", &e)),
        };
        if let Err(e) = result {
            // The liveness task writes every local connection again once
            // Redis is back.
            tracing::warn!(error = %e, "could not record connections in Redis");
        }
        drop(readies);
        if !sink.is_open() {
            return;
        }
    }
}

/// Renews this instance's liveness key, writes its connections again when
/// Redis forgot them, and buries instances that died.
pub(super) async fn liveness_loop(sink: Sink, shared: Arc<Shared>) {
    let alive = shared.keys.alive(&shared.instance);
    let mut tick = tokio::time::interval(shared.liveness / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !sink.is_open() {
            return;
        }
        let mut con = shared.commands.clone();
        let step = async {
            let existed: bool = con.exists(&alive).await?;
            let ttl = u64::try_from(shared.liveness.as_millis()).unwrap_or(u64::MAX);
            let _: () = redis::pipe()
                .pset_ex(&alive, 1, ttl)
                .ignore()
                .sadd(&shared.keys.instances, &shared.instance)
                .ignore()
                .query_async(&mut con)
                .await?;
            if !existed {
                // First round, or Redis forgot us: write every local
                // connection again.
                let local = sink.connections().unwrap_or_default();
                if !local.is_empty() {
                    let mut pipe = redis::pipe();
                    for (id, user) in &local {
                        shared.record(&mut pipe, id, user.as_ref());
                    }
                    let _: () = pipe.query_async(&mut con).await?;
                }
            }
            let instances: Vec<String> = con.smembers(&shared.keys.instances).await?;
            for other in instances.iter().filter(|i| **i != shared.instance) {
                let live: bool = con.exists(shared.keys.alive(other)).await?;
                if !live {
                    let n: usize = shared
                        .bury
                        .key(&shared.keys.place)
                        .key(shared.keys.conns(other))
                        .key(&shared.keys.instances)
                        .arg(other)
                        .invoke_async(&mut con)
                        .await?;
                    tracing::info!(instance = %other, connections = n, "buried a dead instance");
                }
            }
            redis::RedisResult::Ok(())
        };
        let result = with_timeout(shared.timeout * 2, "renewing liveness", step).await;
        if let Err(e) = result {
            tracing::debug!(error = %e, "liveness renewal failed");
        }
    }
}
