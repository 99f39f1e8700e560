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
use crate::log::{LogError, Stream};
use crate::offset::LogOffset;
use crate::stack::{Inner, ShapeEntry, Stack, Status};
use crate::wire;
use std::collections::BTreeMap;
use std::sync::Arc;

impl Stack {
    pub async fn serve(&self, request: Request) -> Response {
        serve(&self.inner, request).await
    }
}

async fn serve(stack: &Arc<Inner>, request: Request) -> Response {
    if !ready(stack).await {
        return Response::unavailable("Stack not ready", 5);
    }
    let params = match params::parse(&request) {
        Ok(params) => params,
        Err(response) => return response,
    };
    let shape = match stack.checked_shape(&params.shape) {
        Ok(shape) => shape,
        Err(e) => {
            return Response::bad_request(&BTreeMap::from([(e.field(), vec![e.to_string()])]));
        }
    };
    if shape.has_subquery() {
        let why = "subqueries (IN (SELECT ...)) are not supported yet".to_string();
        return Response::bad_request(&BTreeMap::from([("where", vec![why])]));
    }
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
            if offset != LogOffset::BEFORE_ALL {
                return Response::must_refetch(handle.as_str());
            }
            match stack.entry(&handle) {
                Some(entry) => entry,
                None => return Response::must_refetch(handle.as_str()),
            }
        }
    };
    stack.db.touch(&entry.handle, stack.now_ms());
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
    match stack.get_or_create((*entry.shape).clone()).await {
        Ok(handle) => Response::must_refetch(handle.as_str()),
        Err(why) => Response::unavailable(&format!("could not create the shape: {why}"), 1),
    }
}

async fn read(stack: &Arc<Inner>, entry: &Arc<ShapeEntry>, params: &Params) -> Response {
    let reader = &entry.reader;
    let offset = params.offset;

    // An offset past the end: maybe replay has not caught up yet.
    let out_of_bounds_deadline_ms = stack.now_ms() + stack.config.long_poll_timeout_ms / 2;
    loop {
        let changed = entry.changed.listen();
        if entry.is_removed() {
            return refetch(stack, entry).await;
        }
        if offset <= reader.latest_offset() {
            break;
        }
        let left_ms = out_of_bounds_deadline_ms.saturating_sub(stack.now_ms());
        if left_ms == 0
            || !stack.wait(changed, left_ms).await && stack.now_ms() >= out_of_bounds_deadline_ms
        {
            if offset <= reader.latest_offset() {
                break;
            }
            // Upstream has this transaction: the log is still catching up
            // (replay after a crash). Tell the client to retry rather than
            // call its offset invalid; Electric answers 400 here (its open
            // bug 3, which this harness reproduces).
            let upstream = stack.upstream_lsn.load(std::sync::atomic::Ordering::SeqCst);
            if offset.tx().is_some_and(|tx| tx <= upstream)
                && !stack.config.plants.out_of_bounds_400
            {
                return Response::unavailable(
                    "the shape is catching up with replication; retry",
                    1,
                );
            }
            let errors =
                BTreeMap::from([("offset", vec!["out of bounds for this shape".to_string()])]);
            return Response::bad_request(&errors);
        }
    }

    let started_ms = stack.now_ms();
    loop {
        let changed = entry.changed.listen();
        if entry.is_removed() {
            return refetch(stack, entry).await;
        }
        let latest = reader.latest_offset();
        let chunk_end = reader.chunk_end(offset).unwrap_or(latest);
        let entries = match reader.log_stream(offset, chunk_end).await {
            Ok(Stream::Entries(entries)) => entries,
            Ok(Stream::SnapshotChunkPending(_)) => {
                let left_ms =
                    (started_ms + stack.config.snapshot_timeout_ms).saturating_sub(stack.now_ms());
                if left_ms == 0
                    || (!stack.wait(changed, left_ms).await
                        && stack.now_ms() >= started_ms + stack.config.snapshot_timeout_ms)
                {
                    return Response::unavailable("the shape's snapshot is not ready yet", 1);
                }
                continue;
            }
            Err(LogError::Corrupt(why)) if stack.config.strict_recovery => {
                panic!("invariant violated: reading shape {}: {why}", entry.handle)
            }
            Err(_) => {
                stack.remove_shape(&entry.handle, "its log could not be read");
                return refetch(stack, entry).await;
            }
        };
        let up_to_date = chunk_end >= latest.max(offset) && offset != LogOffset::BEFORE_ALL;
        if params.live && entries.is_empty() && up_to_date {
            let left_ms =
                (started_ms + stack.config.long_poll_timeout_ms).saturating_sub(stack.now_ms());
            if left_ms > 0 && stack.wait(changed, left_ms).await {
                continue;
            }
            // Timed out (or woken at the deadline): re-check once, then answer.
            if reader.latest_offset() > latest && !entry.is_removed() {
                continue;
            }
        }
        return respond(
            stack,
            entry,
            params,
            chunk_end,
            up_to_date,
            entries.iter().map(|e| e.json.as_str()),
        );
    }
}

fn respond<'a>(
    stack: &Inner,
    entry: &ShapeEntry,
    params: &Params,
    chunk_end: LogOffset,
    up_to_date: bool,
    messages: impl Iterator<Item = &'a str>,
) -> Response {
    let mut body: Vec<String> = messages.map(str::to_string).collect();
    let has_data = !body.is_empty();
    if up_to_date {
        let end_lsn = chunk_end.tx().unwrap_or(0);
        let seen = if params.live {
            end_lsn
        } else {
            stack
                .tracker()
                .as_ref()
                .map_or(end_lsn, |t| t.last_seen().max(end_lsn))
        };
        body.push(wire::up_to_date(seen));
    }
    let mut response = Response::json(200, wire::array(body.iter().map(String::as_str)))
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
        response = response.with(
            "electric-schema",
            wire::schema_header(&entry.shape.table, &entry.shape.selected),
        );
        let cache = if params.offset == LogOffset::BEFORE_ALL {
            "public, max-age=604800, s-maxage=3600, stale-while-revalidate=2629746"
        } else {
            "public, max-age=60, stale-while-revalidate=300"
        };
        response = response.with("cache-control", cache);
    }
    response
}
