//! The NATS backend's four tasks, which end with the manager: the reader
//! (the stream, in order, into the manager), the registry writer
//! (connection arrivals and departures), the liveness renewal, and the
//! housekeeping (this instance's records written again when NATS lost
//! them, dead instances' records removed).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use futures_util::StreamExt as _;
use tokio::sync::mpsc;

use super::entry::decode;
use super::{
    CHECK, INSTANCE, MIN_BACKOFF, RESUME_KEY, RegOp, Shared, buckets, consume, forget, keys,
    open_stream, place_value, renewal, set_once, times, with_timeout,
};
use crate::backend::registry::next_backoff;
use crate::backend::{Epoch, Sink};
use crate::connections::ConnectionId;

/// Why the reader stopped reading.
enum Stop {
    /// The manager is gone.
    Closed,
    /// The stream must be looked at again (an error, another epoch).
    Again,
}

/// Puts back what NATS may have lost (the buckets and the resume key),
/// then opens the stream: its epoch, made anew when it was lost.
async fn reopen(shared: &Shared) -> Result<(async_nats::jetstream::stream::Stream, Epoch), String> {
    buckets(&shared.js, &shared.names, shared.liveness).await?;
    shared.read_age().await;
    // NATS may have come back without its data. It lost the resume key
    // too: put back the one every running instance holds, before the new
    // epoch (an instance started from now on reads this key, not a new one
    // of its own, under which no page of the others could resume).
    let current = set_once(&shared.meta, RESUME_KEY, &shared.resume_key).await?;
    if current != shared.resume_key {
        tracing::warn!(
            "the resume key in NATS is not the one this instance started with: \
             pages moving to or from it get the reset event (unrecognized)"
        );
    }
    open_stream(&shared.js, &shared.names, shared.history).await
}

/// Every how many `CHECK`s the reader looks at the stream's epoch.
const EPOCH_CHECK: u32 = 5;

/// Whether the stream is still there in `epoch`.
async fn same_epoch(shared: &Shared, epoch: Epoch) -> bool {
    let opened = with_timeout(
        shared.timeout,
        "reading the stream",
        open_stream(&shared.js, &shared.names, shared.history),
    )
    .await;
    matches!(opened, Ok((_, now)) if now == epoch)
}

/// Reads the stream and delivers each message to this instance's
/// connections, in order; reconnects with backoff. A stream in another
/// epoch than the manager's (NATS lost its data, and this or another
/// instance made it again) is read from its start, after the manager
/// learned the new epoch.
pub(super) async fn read_loop(sink: Sink, shared: Arc<Shared>, mut last: u64) {
    let mut backoff = MIN_BACKOFF;
    let mut failing = false;
    loop {
        if !sink.is_open() {
            return;
        }
        let opened = with_timeout(
            times(shared.timeout, 3),
            "opening the stream",
            reopen(&shared),
        )
        .await;
        let (stream, epoch) = match opened {
            Ok(v) => v,
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "NATS unreachable; retrying");
                    failing = true;
                }
                tokio::time::sleep(backoff).await;
                backoff = next_backoff(backoff);
                continue;
            }
        };
        let Some(changed) = sink.new_epoch(epoch) else {
            return;
        };
        // This epoch's subject (`PREFIX.log.EPOCH`) ends so.
        let own_subject_end = format!(".log.{epoch}");
        if changed {
            tracing::warn!(epoch = %epoch, "NATS lost its data: new epoch");
            last = 0;
        }
        let messages = with_timeout(
            shared.timeout,
            "reading the stream",
            consume(&shared.client, &stream, last + 1),
        )
        .await;
        let mut messages = match messages {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "reading the stream failed; retrying");
                failing = true;
                tokio::time::sleep(backoff).await;
                backoff = next_backoff(backoff);
                continue;
            }
        };
        if failing {
            tracing::info!("NATS reachable again; delivery resumes");
            // What this instance recorded may be gone (NATS came back
            // empty, or the liveness entry expired and another instance
            // buried the records), and what it wrote meanwhile failed.
            shared.records_lost();
        }
        backoff = MIN_BACKOFF;
        shared.reading.store(true, Ordering::Relaxed);
        let mut tick = tokio::time::interval(CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks: u32 = 0;
        let mut down = false;
        let stop = loop {
            if !sink.is_open() {
                break Stop::Closed;
            }
            let next = tokio::select! {
                next = messages.next() => next,
                () = shared.recheck.notified() => {
                    // A publish found no stream for its epoch.
                    if same_epoch(&shared, epoch).await {
                        continue;
                    }
                    break Stop::Again;
                }
                _ = tick.tick() => {
                    // After a reconnection the server may be a new one
                    // without the stream: look at it again (the consumer
                    // alone may wait for a stream that is gone). And now
                    // and then anyway (the stream deleted by hand).
                    ticks = ticks.wrapping_add(1);
                    let connected = shared.client.connection_state()
                        == async_nats::connection::State::Connected;
                    if !connected {
                        down = true;
                        shared.reading.store(false, Ordering::Relaxed);
                        continue;
                    }
                    if down || (ticks.is_multiple_of(EPOCH_CHECK) && !same_epoch(&shared, epoch).await) {
                        break Stop::Again;
                    }
                    continue;
                }
            };
            let message = match next {
                Some(Ok(m)) => {
                    // Reading again, though perhaps not told of the
                    // reconnection yet (the next tick looks at the stream).
                    shared.reading.store(true, Ordering::Relaxed);
                    m
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "reading from NATS failed; reading again");
                    break Stop::Again;
                }
                None => break Stop::Again,
            };
            let seq = match message.info() {
                Ok(info) => info.stream_sequence,
                Err(e) => {
                    tracing::warn!(error = %e, "a message without its stream sequence");
                    break Stop::Again;
                }
            };
            match decode(message.payload.clone()) {
                Ok((e, _))
                    if e != epoch && !message.subject.as_str().ends_with(&own_subject_end) =>
                {
                    // The stream was made again under this consumer.
                    break Stop::Again;
                }
                Ok((e, _)) if e != epoch => {
                    // Under this epoch's subject (which the server holds
                    // to this epoch's stream) but saying another epoch:
                    // not one of ours (a foreign or broken writer).
                    // Skipped as unreadable, so the manager sees the number
                    // missing and a resume across it gets the reset, rather
                    // than this reader stopping at it for good.
                    last = seq;
                    tracing::warn!(seq, epoch = %e, "skipping a stream message of another epoch");
                }
                Ok((e, envelope)) => {
                    last = seq;
                    if sink.deliver(e, seq, envelope).is_none() {
                        break Stop::Closed;
                    }
                }
                Err(e) => {
                    // Skipped: the manager sees the number missing, and a
                    // resume across it gets the reset event.
                    last = seq;
                    tracing::warn!(seq, error = %e, "skipping a stream message");
                }
            }
        };
        shared.reading.store(false, Ordering::Relaxed);
        if matches!(stop, Stop::Closed) {
            return;
        }
        failing = true;
        tokio::time::sleep(backoff).await;
        backoff = next_backoff(backoff);
    }
}

/// Writes connection arrivals and departures to the place bucket, and
/// this instance's count to its liveness entry after each batch.
pub(super) async fn registry_loop(
    sink: Sink,
    shared: Arc<Shared>,
    mut ops: mpsc::UnboundedReceiver<RegOp>,
) {
    let mut batch = Vec::new();
    while ops.recv_many(&mut batch, 512).await > 0 {
        let mut readies = Vec::new();
        // The writes run at once, so only the last operation on an id
        // counts: a page that left and came back to this instance within
        // one batch is recorded, not forgotten by a late removal.
        let mut latest: HashMap<ConnectionId, RegOp> = HashMap::with_capacity(batch.len());
        for op in batch.drain(..) {
            let id = match &op {
                RegOp::Add { id, .. } | RegOp::Remove { id } => id.clone(),
            };
            if let Some(RegOp::Add { ready, .. }) = latest.insert(id, op) {
                readies.push(ready);
            }
        }
        let removed: Vec<ConnectionId> = latest
            .iter()
            .filter(|(_, op)| matches!(op, RegOp::Remove { .. }))
            .map(|(id, _)| id.clone())
            .collect();
        let mut writes = Vec::new();
        for op in latest.into_values() {
            let shared = &shared;
            match op {
                RegOp::Add { id, user, ready } => {
                    readies.push(ready);
                    writes.push(futures_util::future::Either::Left(async move {
                        shared
                            .place
                            .put(id.as_str(), place_value(&shared.instance, user.as_ref()))
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string())
                    }));
                }
                RegOp::Remove { id } => {
                    writes.push(futures_util::future::Either::Right(async move {
                        // Forgotten unless another instance took the id since.
                        let entry = shared
                            .place
                            .entry(id.as_str())
                            .await
                            .map_err(|e| e.to_string())?;
                        let Some(entry) = entry else { return Ok(()) };
                        let mine = entry
                            .value
                            .split(|b| *b == b'\n')
                            .next()
                            .is_some_and(|i| i == shared.instance.as_bytes());
                        if mine && entry.operation == async_nats::jetstream::kv::Operation::Put {
                            // Taken meanwhile: a later revision, which
                            // stays.
                            forget(&shared.place, id.as_str(), entry.revision).await?;
                        }
                        Ok::<(), String>(())
                    }));
                }
            }
        }
        let count = sink.connections().map_or(0, |c| c.len());
        let result = with_timeout(shared.timeout, "recording connections", async {
            for r in futures_util::future::join_all(writes).await {
                r?;
            }
            shared.renew(count).await
        })
        .await;
        match result {
            Ok(true) => {}
            Ok(false) => {
                // The liveness entry had expired (or NATS lost it): this
                // instance may have been buried meanwhile.
                shared.records_lost();
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not record connections in NATS");
                shared.unforgotten.lock().extend(removed);
                shared.records_lost();
            }
        }
        drop(readies);
        if !sink.is_open() {
            return;
        }
    }
}

/// The instances alive now: the keys of the liveness bucket (whose
/// entries the server removes at the liveness age).
async fn live_instances(shared: &Shared) -> Result<HashSet<String>, String> {
    Ok(keys(&shared.alive, ">").await?.into_iter().collect())
}

/// Forgets every connection recorded for an instance that is not alive
/// (it crashed, or lost NATS for longer than the liveness: it writes its
/// connections again when it comes back). Reads the place bucket once, in
/// one stream, then the live instances: an instance renews its liveness
/// entry before it records its first connection (see `connect`), so the
/// owner of any record read is in that later list unless it is dead, even
/// one that started during the reading. Returns how many it forgot.
async fn bury(shared: &Shared) -> Result<usize, String> {
    // Fresh (`kv::Store::status` answers what was known at start).
    let info = shared
        .place
        .stream
        .get_info()
        .await
        .map_err(|e| e.to_string())?;
    if info.state.messages == 0 {
        return Ok(0);
    }
    let mut entries = shared
        .place
        .watch_with_history(">")
        .await
        .map_err(|e| e.to_string())?;
    let mut records = Vec::new();
    let mut markers = Vec::new();
    while let Some(entry) = entries.next().await {
        let entry = entry.map_err(|e| e.to_string())?;
        if entry.operation == async_nats::jetstream::kv::Operation::Put {
            let instance = entry.value.split(|b| *b == b'\n').next().unwrap_or(&[]);
            let instance = String::from_utf8_lossy(instance).into_owned();
            records.push((entry.key, entry.revision, instance));
        } else {
            // A delete marker left by an older version of this crate.
            markers.push((entry.key, entry.revision));
        }
        if entry.delta == 0 {
            break;
        }
    }
    let live = live_instances(shared).await?;
    let forgets = records
        .iter()
        .filter(|(_, _, instance)| !live.contains(instance))
        .map(|(key, revision, _)| {
            // Unless the connection was recorded again meanwhile.
            forget(&shared.place, key, *revision)
        });
    let forgotten = futures_util::future::join_all(forgets)
        .await
        .into_iter()
        .filter(|r| matches!(r, Ok(true)))
        .count();
    let markers = markers
        .iter()
        .map(|(key, revision)| forget(&shared.place, key, *revision));
    futures_util::future::join_all(markers).await;
    Ok(forgotten)
}

/// The instances that recorded themselves in the meta bucket (see
/// `connect`) and have not been buried, each with the revision of its
/// record.
async fn known_instances(shared: &Shared) -> Result<Vec<(String, u64)>, String> {
    let mut known = Vec::new();
    for key in keys(&shared.meta, &format!("{INSTANCE}>")).await? {
        // A key buried by an older version holds the marker of its
        // deletion.
        let recorded = shared.meta.entry(&key).await.map_err(|e| e.to_string())?;
        if let (Some(entry), Some(instance)) = (recorded, key.strip_prefix(INSTANCE))
            && entry.operation == async_nats::jetstream::kv::Operation::Put
        {
            known.push((instance.to_owned(), entry.revision));
        }
    }
    Ok(known)
}

/// Renews this instance's liveness entry (its connection count) at a
/// quarter of the liveness bucket's age, whatever else the backend is
/// doing (burying others, writing records again, which the housekeeping
/// task does), so that a healthy instance is never taken for dead. When
/// the entry had expired, NATS may have lost (or another instance buried)
/// this instance's records: the housekeeping task writes them again.
pub(super) async fn liveness_loop(sink: Sink, shared: Arc<Shared>) {
    loop {
        let period = renewal(shared.age());
        tokio::time::sleep(period).await;
        if !sink.is_open() {
            return;
        }
        let count = sink.connections().map_or(0, |c| c.len());
        match with_timeout(period, "renewing liveness", shared.renew(count)).await {
            Ok(true) => {}
            Ok(false) => shared.records_lost(),
            Err(e) => tracing::debug!(error = %e, "liveness renewal failed"),
        }
    }
}

/// Records this instance and every local connection again (NATS lost
/// them, or another instance buried them): its liveness entry first, so
/// that no other instance takes the records just written for a dead
/// instance's. A connection that left while they were written, or whose
/// removal failed to be written (it left during an outage), is forgotten
/// again after them.
async fn record_again(sink: &Sink, shared: &Shared) -> Result<usize, String> {
    let local = sink.connections().unwrap_or_default();
    shared.renew(local.len()).await?;
    shared
        .meta
        .put(format!("{INSTANCE}{}", shared.instance), Bytes::new())
        .await
        .map_err(|e| e.to_string())?;
    let writes = local.iter().map(|(id, user)| {
        shared
            .place
            .put(id.as_str(), place_value(&shared.instance, user.as_ref()))
    });
    for r in futures_util::future::join_all(writes).await {
        r.map_err(|e| e.to_string())?;
    }
    let now: HashSet<ConnectionId> = sink
        .connections()
        .unwrap_or_default()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    for (id, _) in &local {
        if !now.contains(id) {
            // Its removal may have run before the write above.
            shared.remove(id.clone());
        }
    }
    // And those whose removal failed (they left during an outage).
    let unforgotten = std::mem::take(&mut *shared.unforgotten.lock());
    for id in unforgotten {
        if !now.contains(&id) {
            shared.remove(id);
        }
    }
    Ok(local.len())
}

/// Writes this instance's records again when they may be lost (see
/// `Shared::records_lost`, and when its own record in the meta bucket is
/// gone: another instance buried it), and forgets the connections of
/// instances that died (recorded in the meta bucket, no longer in the
/// liveness bucket), as the Redis backend buries them.
pub(super) async fn housekeeping_loop(sink: Sink, shared: Arc<Shared>) {
    let own = format!("{INSTANCE}{}", shared.instance);
    loop {
        let period = renewal(shared.age());
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            () = shared.housekeep.notified() => {}
        }
        if !sink.is_open() {
            return;
        }
        let step = async {
            let buried = shared
                .meta
                .get(&own)
                .await
                .map_err(|e| e.to_string())?
                .is_none();
            if shared.lost.swap(false, Ordering::Relaxed) || buried {
                let n = record_again(&sink, &shared).await.inspect_err(|_| {
                    shared.lost.store(true, Ordering::Relaxed);
                })?;
                tracing::info!(
                    connections = n,
                    "recorded this instance's connections again"
                );
            }
            // Known first, then alive: a known instance renewed its entry
            // before it recorded itself, so it is in the later list unless
            // it is dead.
            let known = known_instances(&shared).await?;
            let live = live_instances(&shared).await?;
            let dead: Vec<(String, u64)> = known
                .into_iter()
                .filter(|(i, _)| !live.contains(i))
                .collect();
            if !dead.is_empty() {
                let n = bury(&shared).await?;
                for (instance, revision) in &dead {
                    // Only the record read: one the instance wrote again
                    // since (it came back) has a later revision and stays.
                    forget(&shared.meta, &format!("{INSTANCE}{instance}"), *revision).await?;
                }
                tracing::info!(instances = ?dead, connections = n, "buried dead instances");
            }
            Ok::<(), String>(())
        };
        let limit = shared.age().max(times(shared.timeout, 2));
        if let Err(e) = with_timeout(limit, "housekeeping", step).await {
            tracing::debug!(error = %e, "NATS housekeeping failed");
        }
    }
}
