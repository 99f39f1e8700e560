//! The read path (Electric's `Api.serve_shape_log`).
//!
//! 1. wait (bounded) for the stack to be ready, else 503;
//! 2. validate the parameters and the shape, else 400;
//! 3. resolve the handle: `offset=-1` gets (or creates) the shape's handle; any
//!    other offset needs a handle whose hash matches the shape, else 409 with
//!    the current handle;
//! 4. an offset beyond the shape's latest offset waits up to half the
//!    long-poll timeout for the log to catch up (after a crash the log is cut
//!    to its durable offset and re-filled by replay). Then: 503 (retry) if the
//!    offset's transaction exists upstream, 400 if it cannot exist;
//! 5. the response ends at the chunk end (`electric-offset`); it carries
//!    `up-to-date` when that reaches the latest offset, never for `-1`;
//! 6. a live request with nothing new waits for new data or the long-poll
//!    timeout, then answers with only `up-to-date`.

use super::params::{self, Params};
use super::{Request, Response};
use crate::env::events::RemovalReason;
use crate::handle::ShapeHandle;
use crate::log::{LogError, Stream};
use crate::offset::LogOffset;
use crate::replication::Lsn;
use crate::stack::{Inner, ShapeEntry, Stack, Status};
use crate::wire;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

impl Stack {
    pub async fn serve(&self, request: &Request) -> Response {
        serve(&self.inner, request).await
    }

    /// Electric's `DELETE /v1/shape?handle=H`: removes the shape (its
    /// clients get 409). 202 when removed, 404 if no live shape has the
    /// handle, 400 naming `handle` if it is missing or malformed, 503 if
    /// the stack is not serving.
    pub async fn delete(&self, request: Request) -> Response {
        if self.status() != Status::Ready {
            return Response::unavailable("Stack not ready", 5);
        }
        let handle = match request.params.get("handle").map(|h| ShapeHandle::parse(h)) {
            Some(Ok(handle)) => handle,
            Some(Err(why)) => {
                return Response::bad_request(&BTreeMap::from([("handle", vec![why])]));
            }
            None => {
                let why = "can't be blank".to_string();
                return Response::bad_request(&BTreeMap::from([("handle", vec![why])]));
            }
        };
        if self.remove_shape(&handle) {
            Response::accepted()
        } else {
            Response::not_found("no live shape has this handle")
        }
    }
}

async fn serve(stack: &Arc<Inner>, request: &Request) -> Response {
    if !ready(stack).await {
        return Response::unavailable("Stack not ready", 5);
    }
    let params = match params::parse(request) {
        Ok(params) => params,
        Err(response) => return response,
    };
    let shape = match stack.checked_shape(&params.shape) {
        Ok(shape) => shape,
        Err(e) => {
            return Response::bad_request(&BTreeMap::from([(e.field(), vec![e.to_string()])]));
        }
    };
    let hash = shape.hash();
    let requested = params.handle.clone();
    let current = match requested {
        Some(handle) if stack.db.cached(&handle).is_some_and(|c| c.hash == hash) => Some(handle),
        _ => None,
    };
    let entry = current
        .and_then(|h| stack.entry(&h))
        .filter(|e| !e.is_removed());
    let entry = match (entry, params.offset) {
        (Some(entry), _) => entry,
        (None, offset) => {
            let handle = match stack.get_or_create(shape).await {
                Ok(handle) => handle,
                Err(why) => {
                    return Response::unavailable(&format!("could not create the shape: {why}"), 1);
                }
            };
            let switch = crate::planted!(stack.config, silent_handle_switch);
            if offset != LogOffset::BEFORE_ALL && !switch {
                return Response::must_refetch(handle.as_str());
            }
            match stack.entry(&handle) {
                Some(entry) => entry,
                None => return Response::must_refetch(handle.as_str()),
            }
        }
    };
    stack.db.touch(&entry.handle, stack.now_ms());
    if crate::planted!(stack.config, silent_handle_switch)
        && Some(&entry.handle) != params.handle.as_ref()
        && params.offset != LogOffset::BEFORE_ALL
    {
        // Planted `silent-handle-switch`: the new log from its start, no 409.
        let restart = Params {
            offset: LogOffset::BEFORE_ALL,
            live: false,
            ..params.clone()
        };
        return read(stack, &entry, &restart).await;
    }
    read(stack, &entry, &params).await
}

async fn ready(stack: &Inner) -> bool {
    let deadline_ms = stack.now_ms() + stack.config.stack_ready_timeout_ms;
    loop {
        let changed = stack.status_changed.listen();
        match stack.status() {
            Status::Ready => return true,
            Status::Draining | Status::Stopped => return false,
            Status::Booting => {}
        }
        let left_ms = deadline_ms.saturating_sub(stack.now_ms());
        if left_ms == 0 || !stack.wait(changed, left_ms).await && stack.now_ms() >= deadline_ms {
            return stack.status() == Status::Ready;
        }
    }
}

/// The current handle for the entry's shape, for a 409.
async fn refetch(stack: &Arc<Inner>, entry: &ShapeEntry) -> Response {
    match stack.get_or_create(entry.shape.clone()).await {
        Ok(handle) => Response::must_refetch(handle.as_str()),
        Err(why) => Response::unavailable(&format!("could not create the shape: {why}"), 1),
    }
}

/// An offset past the end of the log: replay may not have caught up yet
/// (after a crash the log is cut to its durable offset). Waits up to half
/// the long-poll timeout; `Some` answer if the offset is still out of bounds.
async fn wait_in_bounds(
    stack: &Arc<Inner>,
    entry: &ShapeEntry,
    offset: LogOffset,
) -> Option<Response> {
    let reader = &entry.reader;
    let deadline_ms = stack.now_ms() + stack.config.long_poll_timeout_ms / 2;
    loop {
        let changed = entry.changed.listen();
        if entry.is_removed() || offset <= reader.latest_offset() {
            return None;
        }
        let left_ms = deadline_ms.saturating_sub(stack.now_ms());
        if left_ms == 0 || !stack.wait(changed, left_ms).await && stack.now_ms() >= deadline_ms {
            if offset <= reader.latest_offset() {
                return None;
            }
            // Upstream has this transaction: the log is still catching up
            // (replay after a crash). Tell the client to retry rather than
            // call its offset invalid; Electric answers 400 here (its open
            // bug 3, which this harness reproduces).
            let upstream = stack.upstream_lsn.load(std::sync::atomic::Ordering::SeqCst);
            if offset.tx().is_some_and(|tx| tx <= upstream)
                && !crate::planted!(stack.config, out_of_bounds_400)
            {
                let why = "the shape is catching up with replication; retry";
                return Some(Response::unavailable(why, 1));
            }
            let errors =
                BTreeMap::from([("offset", vec!["out of bounds for this shape".to_string()])]);
            return Some(Response::bad_request(&errors));
        }
    }
}

/// The LSN every shape has applied (what an up-to-date may claim), read
/// *before* the log: every transaction at or below it is in what is read
/// after. With the planted `early-global-lsn`, the last LSN received.
fn seen_lsn(stack: &Inner) -> Lsn {
    let seen = stack.tracker.with(|t| {
        if crate::planted!(stack.config, early_global_lsn) {
            t.last_seen()
        } else {
            t.visible_lsn()
        }
    });
    seen.unwrap_or(0)
}

async fn read(stack: &Arc<Inner>, entry: &Arc<ShapeEntry>, params: &Params) -> Response {
    let (reader, offset) = (&entry.reader, params.offset);
    if let Some(response) = wait_in_bounds(stack, entry, offset).await {
        return response;
    }
    let started_ms = stack.now_ms();
    let long_poll_ms = stack.config.long_poll_timeout_ms;
    loop {
        let changed = entry.changed.listen();
        if entry.is_removed() {
            return refetch(stack, entry).await;
        }
        let seen = seen_lsn(stack);
        // A subquery shape is read only up to its claim, where its log
        // holds its rows as of a known LSN.
        let claim = entry.claims().then(|| entry.claim());
        let latest = readable_end(entry);
        let mut chunk_end = reader.chunk_end(offset).unwrap_or(latest);
        if claim.is_some() {
            chunk_end = chunk_end.min(latest.max(offset));
        }
        let entries = match reader.log_stream(offset, chunk_end).await {
            Ok(Stream::Entries(entries)) => entries,
            Ok(Stream::SnapshotChunkPending(_)) => {
                let deadline_ms = started_ms + stack.config.snapshot_timeout_ms;
                let left_ms = deadline_ms.saturating_sub(stack.now_ms());
                if left_ms == 0
                    || (!stack.wait(changed, left_ms).await && stack.now_ms() >= deadline_ms)
                {
                    return Response::unavailable("the shape's snapshot is not ready yet", 1);
                }
                continue;
            }
            Err(LogError::Corrupt(why)) if stack.config.strict_recovery => {
                panic!("invariant violated: reading shape {}: {why}", entry.handle)
            }
            Err(e) => {
                stack.remove_shape(&entry.handle, RemovalReason::ReadFailed(e.failure()));
                return refetch(stack, entry).await;
            }
        };
        let mut up_to_date = chunk_end >= latest.max(offset)
            && offset != LogOffset::BEFORE_ALL
            && claim.is_none_or(|c| c.is_some());
        // Only an up-to-date that names `seen` (not live with a transaction
        // to name) needs replication to have reached the snapshot.
        let names_seen = !params.live || chunk_end.tx().is_none_or(|tx| tx == 0);
        let settled = seen >= entry.snapshot_lsn()
            || !names_seen
            || crate::planted!(stack.config, unsettled_snapshot);
        if up_to_date && !settled {
            // The snapshot is ahead of replication: it reflects transactions
            // not every shape has applied yet. Wait for them (bounded).
            if stack.now_ms() < started_ms + long_poll_ms / 2 {
                stack.env().clock.sleep_ms(SNAPSHOT_CATCH_UP_POLL_MS).await;
                continue;
            }
            up_to_date = false;
        }
        if params.live && entries.is_empty() && up_to_date {
            let left_ms = (started_ms + long_poll_ms).saturating_sub(stack.now_ms());
            if left_ms > 0 && stack.wait(changed, left_ms).await {
                continue;
            }
            // Timed out (or woken at the deadline): re-check once, then answer.
            if readable_end(entry) > latest && !entry.is_removed() {
                continue;
            }
        }
        let snapshot_lsn = if crate::planted!(stack.config, unsettled_snapshot) {
            0
        } else {
            entry.snapshot_lsn()
        };
        let seen = up_to_date.then(|| match claim {
            // What its log holds as of (never `seen`: a shape released at
            // shutdown no longer holds the visible LSN back).
            Some(Some((_, claimed))) => claimed,
            _ => global_last_seen_lsn(snapshot_lsn, seen, chunk_end, params.live),
        });
        let messages = entries.iter().map(|e| e.json.as_str());
        return respond(stack, entry, params, chunk_end, seen, messages);
    }
}

/// Where a reader may read to now: the log's end, or a subquery shape's
/// claim (its snapshot until it has one: nothing after it is durable and
/// consistent before a claim).
fn readable_end(entry: &ShapeEntry) -> LogOffset {
    let latest = entry.reader.latest_offset();
    match entry.claims().then(|| entry.claim()) {
        None => latest,
        Some(Some((claimed, _))) => claimed,
        Some(None) => latest.min(LogOffset::SNAPSHOT_END),
    }
}

/// How often a read waiting for replication to reach its shape's snapshot
/// looks again.
const SNAPSHOT_CATCH_UP_POLL_MS: u64 = 5;

/// The `global_last_seen_lsn` of an up-to-date: an LSN as of which the
/// client's rows are exactly the shape's. Live, as Electric: the transaction
/// of the chunk end (not below the snapshot's WAL position). Otherwise, or
/// for a log holding only its snapshot, `seen`: the LSN every shape has
/// applied (at or above the snapshot's position), never merely received
/// (Electric bug 8 published the last LSN received).
fn global_last_seen_lsn(snapshot_lsn: Lsn, seen: Lsn, chunk_end: LogOffset, live: bool) -> Lsn {
    let end_lsn = chunk_end.tx().filter(|&tx| tx > 0);
    match (live, end_lsn) {
        (true, Some(end_lsn)) => end_lsn.max(snapshot_lsn),
        (_, end_lsn) => seen.max(end_lsn.unwrap_or(0)),
    }
}

/// A 200: the messages, then an up-to-date if `up_to_date` names its LSN.
fn respond<'a>(
    stack: &Inner,
    entry: &ShapeEntry,
    params: &Params,
    chunk_end: LogOffset,
    up_to_date: Option<Lsn>,
    messages: impl Iterator<Item = &'a str>,
) -> Response {
    let mut messages = messages.peekable();
    let has_data = messages.peek().is_some();
    let closing = up_to_date.map(|lsn| Cow::Owned(wire::up_to_date(lsn)));
    let body = wire::array(messages.map(Cow::Borrowed).chain(closing));
    let up_to_date = up_to_date.is_some();
    let mut response = Response::json(200, body)
        .with("electric-handle", entry.handle.as_str())
        .with("electric-offset", chunk_end.to_string())
        .with("electric-has-data", has_data.to_string());
    if up_to_date {
        response = response.with("electric-up-to-date", "");
    }
    if params.live {
        let cursor = stack.now_ms() / stack.config.long_poll_timeout_ms.max(1);
        response = response.with("electric-cursor", cursor.to_string()).with(
            "cache-control",
            "public, max-age=5, stale-while-revalidate=5",
        );
    } else {
        response = response.with("electric-schema", entry.schema_header.as_str());
        let cache = if params.offset == LogOffset::BEFORE_ALL {
            "public, max-age=604800, s-maxage=3600, stale-while-revalidate=2629746"
        } else {
            "public, max-age=60, stale-while-revalidate=300"
        };
        response = response.with("cache-control", cache);
    }
    response
}
