//! The Redis backend's tasks, which end with the manager: the reader (the
//! stream, in order, into the manager), the registry writer (connection
//! arrivals and departures, in batches, and every local connection again
//! when what Redis holds of them may be stale), and the liveness task:
//! the renewal of the liveness key and, apart from it, so that it never
//! waits on them, the burial of dead instances.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::{AsyncCommands, AsyncConnectionConfig};
use tokio::sync::mpsc;

use super::entry::{decode_raw, read_reply};
use super::{
    BLOCK, MAX_BATCH, MAX_BATCH_BYTES, MIN_BACKOFF, RegOp, Shared, Write, epoch, renewal, set_once,
    times, with_timeout,
};
use crate::backend::Sink;
use crate::backend::registry::next_backoff;
use crate::error::Error;

/// The most entries one `XREAD` returns.
const READ_COUNT: usize = 1024;

async fn reader_connection(shared: &Shared) -> redis::RedisResult<MultiplexedConnection> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(shared.timeout))
        .set_response_timeout(Some(BLOCK.saturating_add(shared.timeout)));
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
            // What this instance wrote meanwhile failed, and what it wrote
            // before may be gone (the liveness key expired and another
            // instance buried it, or Redis lost its data).
            shared.records_lost();
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
            times(shared.timeout, 2),
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
///
/// Each batch renews the liveness key too (so that no instance takes the
/// records for a dead instance's). When a write fails, or what Redis holds
/// of this instance may be stale otherwise (the reader reconnected, the
/// liveness key had expired: see [`RegOp::Resync`]), writes every local
/// connection again and forgets the departed ones (see `record_again`),
/// then, and retrying with backoff until that succeeds. The one writer of
/// this instance's records: what it writes is in the order the
/// connections came and went.
pub(super) async fn registry_loop(
    sink: Sink,
    shared: Arc<Shared>,
    mut ops: mpsc::UnboundedReceiver<RegOp>,
) {
    let mut batch = Vec::new();
    let mut stale = false;
    // The last write failed: Redis is away, most likely.
    let mut failing = false;
    let mut backoff = MIN_BACKOFF;
    loop {
        let received = if stale {
            // Again after a while, even with nothing new to write.
            tokio::time::timeout(backoff, ops.recv_many(&mut batch, 512))
                .await
                .unwrap_or(usize::MAX)
        } else {
            ops.recv_many(&mut batch, 512).await
        };
        if received == 0 || !sink.is_open() {
            return;
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        shared.renew_into(&mut pipe);
        let mut readies = Vec::new();
        for op in batch.drain(..) {
            match op {
                RegOp::Add { id, user, ready } => {
                    shared.record(&mut pipe, &id, user.as_ref());
                    readies.push(ready);
                }
                RegOp::Remove { id } => shared.unrecord(&mut pipe, id.as_str()),
                RegOp::Resync => stale = true,
            }
        }
        if failing {
            // No page waits for a Redis that is away: these are recorded
            // with the others once it is back.
            readies.clear();
        }
        let mut con = shared.commands.clone();
        let step = async {
            // Scripts in a pipeline run by EVALSHA: load it first.
            shared.forget.prepare_invoke().load_async(&mut con).await?;
            if stale {
                // First: the operations of this batch came before the
                // connections listed now, those of later batches after.
                record_again(&sink, &shared, &mut con).await?;
            }
            let (existed,): (bool,) = pipe.query_async(&mut con).await?;
            if !existed && !stale {
                // The liveness key had expired (or Redis lost it): another
                // instance may have buried this one's records.
                record_again(&sink, &shared, &mut con).await?;
            }
            redis::RedisResult::Ok(())
        };
        match with_timeout(times(shared.timeout, 2), "recording connections", step).await {
            Ok(()) => {
                (stale, failing) = (false, false);
                backoff = MIN_BACKOFF;
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "could not record connections in Redis; retrying");
                }
                (stale, failing) = (true, true);
                backoff = next_backoff(backoff);
            }
        }
        drop(readies);
    }
}

/// Writes this instance's liveness key and every local connection again,
/// and forgets the connections it recorded that are no longer local (they
/// left while a write failed). Read in this order: what Redis holds, then
/// the local connections, so that one recorded between the two (by no
/// one but the registry task, which runs this) is not taken for departed.
async fn record_again(
    sink: &Sink,
    shared: &Shared,
    con: &mut redis::aio::ConnectionManager,
) -> redis::RedisResult<()> {
    let recorded: Vec<String> = con.hkeys(shared.keys.conns(&shared.instance)).await?;
    let local = sink.connections().unwrap_or_default();
    let mut pipe = redis::pipe();
    pipe.atomic();
    // The liveness key first, in the same transaction: no other instance
    // buries what is written here.
    shared.renew_into(&mut pipe);
    for (id, user) in &local {
        shared.record(&mut pipe, id, user.as_ref());
    }
    let here: HashSet<&str> = local.iter().map(|(id, _)| id.as_str()).collect();
    let departed: Vec<&String> = recorded
        .iter()
        .filter(|id| !here.contains(id.as_str()))
        .collect();
    for id in &departed {
        shared.unrecord(&mut pipe, id);
    }
    let _: (bool,) = pipe.query_async(con).await?;
    tracing::info!(
        connections = local.len(),
        departed = departed.len(),
        "recorded this instance's connections in Redis again"
    );
    Ok(())
}

/// Renews this instance's liveness key at a quarter of its age, whatever
/// else the backend does (burying dead instances runs beside it, and
/// never delays it), so that a healthy instance is never taken for dead;
/// when the key had expired, the registry task writes every local
/// connection again. And buries instances that died.
pub(super) async fn liveness_loop(sink: Sink, shared: Arc<Shared>) {
    tokio::join!(renewal_loop(&sink, &shared), burial_loop(&sink, &shared));
}

/// The renewal half of [`liveness_loop`].
async fn renewal_loop(sink: &Sink, shared: &Shared) {
    let period = renewal(shared.liveness);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !sink.is_open() {
            return;
        }
        let mut con = shared.commands.clone();
        let mut pipe = redis::pipe();
        pipe.atomic();
        shared.renew_into(&mut pipe);
        let renewed = with_timeout(period, "renewing liveness", async {
            pipe.query_async::<(bool,)>(&mut con).await
        })
        .await;
        match renewed {
            Ok((true,)) => {}
            // First round, or Redis forgot this instance (or another
            // buried it): every local connection again.
            Ok((false,)) => shared.records_lost(),
            Err(e) => tracing::debug!(error = %e, "liveness renewal failed"),
        }
    }
}

/// The burial half of [`liveness_loop`]: every quarter of the liveness,
/// removes what instances whose liveness key expired left.
async fn burial_loop(sink: &Sink, shared: &Shared) {
    let mut tick = tokio::time::interval(renewal(shared.liveness));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if !sink.is_open() {
            return;
        }
        let limit = shared.liveness.max(times(shared.timeout, 2));
        if let Err(e) = with_timeout(limit, "burying dead instances", bury_dead(shared)).await {
            tracing::debug!(error = %e, "burying dead instances failed");
        }
    }
}

/// How many instances [`bury_dead`] looks at per round trip.
const BURIAL_CHUNK: usize = 128;

/// Buries the instances in the set of instances whose liveness key is
/// gone, a chunk at a time (one round trip to find the dead, one to bury
/// them), so that other commands on the connection (the renewal) never
/// wait long behind it. The script checks the key again: an instance that
/// renewed it meanwhile is not buried.
async fn bury_dead(shared: &Shared) -> redis::RedisResult<()> {
    let mut con = shared.commands.clone();
    let instances: Vec<String> = con.smembers(&shared.keys.instances).await?;
    let others: Vec<&String> = instances
        .iter()
        .filter(|i| **i != shared.instance)
        .collect();
    let mut loaded = false;
    for chunk in others.chunks(BURIAL_CHUNK) {
        let mut pipe = redis::pipe();
        for other in chunk {
            pipe.exists(shared.keys.alive(other));
        }
        let alive: Vec<bool> = pipe.query_async(&mut con).await?;
        let dead: Vec<&&String> = chunk
            .iter()
            .zip(alive)
            .filter(|(_, alive)| !alive)
            .map(|(i, _)| i)
            .collect();
        if dead.is_empty() {
            continue;
        }
        if !loaded {
            shared.bury.prepare_invoke().load_async(&mut con).await?;
            loaded = true;
        }
        let mut pipe = redis::pipe();
        for other in &dead {
            let mut bury = shared.bury.prepare_invoke();
            bury.key(&shared.keys.place)
                .key(shared.keys.conns(other))
                .key(&shared.keys.instances)
                .key(shared.keys.alive(other))
                .arg(other.as_str());
            pipe.invoke_script(&bury);
        }
        let counts: Vec<i64> = pipe.query_async(&mut con).await?;
        for (other, n) in dead.iter().zip(counts) {
            if n >= 0 {
                tracing::info!(instance = %other, connections = n, "buried a dead instance");
            }
        }
    }
    Ok(())
}
