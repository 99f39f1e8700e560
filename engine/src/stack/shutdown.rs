//! Graceful shutdown: the coordinator.
//!
//! 1. stop serving (requests get 503) and stop the intake;
//! 2. ask every consumer to flush everything it received (a consumer still
//!    taking its snapshot finishes it first) and wait for all of them, and
//!    for every removal in progress to be durable;
//! 3. acknowledge the final LSN to the slot;
//! 4. flush the metadata write buffer to SQLite;
//! 5. write the clean-shutdown marker (temp file, sync, rename, sync dir).
//!
//! The whole drain is bounded by `shutdown_timeout_ms`; past it the marker is
//! not written and the next boot knows the stop was not clean. Nothing here is
//! needed for correctness: a brutal kill skips it all and boot recovers.

use super::{CLEAN_SHUTDOWN_MARKER, Inner, Status};
use crate::consumer::ConsumerMsg;
use crate::env::{CrashPoint, Event};
use crate::flush_tracker::FlushTracker;
use futures::SinkExt;
use futures::channel::oneshot;
use futures::future::join_all;
use std::sync::Arc;
use std::sync::atomic::Ordering;

pub(super) async fn shutdown(stack: Arc<Inner>) -> bool {
    if stack.status() != Status::Ready {
        return false;
    }
    let deadline_ms = stack.now_ms() + stack.config.shutdown_timeout_ms;
    let remaining = |stack: &Inner| deadline_ms.saturating_sub(stack.now_ms());
    stack.set_status(Status::Draining);
    stack.env().emit(Event::ShutdownStarted);

    stack.intake_stopping.store(true, Ordering::SeqCst);
    stack.stop_intake.notify(usize::MAX);
    while !stack.intake_stopped.load(Ordering::SeqCst) {
        let stopped = stack.status_changed.listen();
        if stack.intake_stopped.load(Ordering::SeqCst) {
            break;
        }
        if !stack.wait(stopped, remaining(&stack)).await && remaining(&stack) == 0 {
            return finish(&stack, false);
        }
    }

    // Hold the creation lock to the end: no shape can appear after the list
    // below is taken (it would never be drained, and would be lost at boot).
    let _creating = stack.creating.lock().await;
    let entries: Vec<_> = stack.registry().shapes.values().cloned().collect();
    let drains = entries.into_iter().map(|entry| async move {
        let (reply, done) = oneshot::channel();
        entry
            .tx
            .clone()
            .send(ConsumerMsg::Drain(reply))
            .await
            .is_ok()
            && done.await.is_ok()
            // Removed meanwhile (its inner shape failed as it was created):
            // nothing to drain; `wait_idle` waits for its storage to go.
            || entry.is_removed()
    });
    let all_drained = async { join_all(drains).await.into_iter().all(|ok| ok) };
    let drained = {
        let all_drained = std::pin::pin!(all_drained);
        let sleep = stack.env().clock.sleep_ms(remaining(&stack));
        match futures::future::select(all_drained, sleep).await {
            futures::future::Either::Left((ok, _)) => ok,
            futures::future::Either::Right(_) => false,
        }
    };
    release_unrestored(&stack);
    let idle = wait_idle(&stack, deadline_ms).await;
    let mut clean = drained && idle;
    acknowledge_final(&stack).await;

    stack
        .env()
        .crash_point(CrashPoint::ShutdownAfterDrain)
        .await;
    match stack.db.flush_all() {
        Ok(changes) if changes.is_empty() => {}
        Ok(changes) => stack.env().emit(Event::MetadataWritten { changes }),
        Err(_) => clean = false,
    }
    if clean {
        write_marker(&stack).await;
    }
    finish(&stack, clean)
}

/// Subquery shapes and their inner shapes are dropped at the next boot:
/// what they have not made durable is never needed, so they stop holding
/// the acknowledgement back (a move-in still waiting for transactions the
/// stopped intake will not deliver would otherwise hold it forever).
fn release_unrestored(stack: &Inner) {
    if stack.config.subquery_restore == super::SubqueryRestore::Restore {
        return;
    }
    let entries: Vec<_> = stack.registry().shapes.values().cloned().collect();
    for entry in entries {
        if entry.shape.has_subquery() || entry.shape.is_dependency() {
            let handle = entry.handle.as_str();
            stack.tracker.update(|tracker| tracker.remove_shape(handle));
            stack.env().emit(Event::HoldReleased {
                handle: entry.handle.clone(),
            });
        }
    }
}

/// Waits (until `deadline_ms`) for the flush tracker to hold nothing back:
/// every shape flushed, every removal durable (a removed shape's consumer
/// deletes its storage on its own).
async fn wait_idle(stack: &Inner, deadline_ms: u64) -> bool {
    loop {
        let changed = stack.tracker.changed.listen();
        if stack.tracker.with(|t| t.is_idle()).unwrap_or(true) {
            return true;
        }
        let left_ms = deadline_ms.saturating_sub(stack.now_ms());
        if left_ms == 0 || !stack.wait(changed, left_ms).await && stack.now_ms() >= deadline_ms {
            return stack.tracker.with(|t| t.is_idle()).unwrap_or(true);
        }
    }
}

/// Tells the slot everything is durable. Best effort: if it fails, the next
/// connection replays what the slot still holds, which the shapes skip.
async fn acknowledge_final(stack: &Inner) {
    let ack = stack.tracker.with(FlushTracker::ack_lsn);
    let stream = stack.stream.lock().expect("stream").clone();
    if let (Some(ack), Some(stream)) = (ack, stream)
        && !crate::planted!(stack.config, never_ack)
    {
        stack.env().emit(Event::Acknowledged { lsn: ack });
        if stream.acknowledge(ack).await.is_err() {
            // See above: replay covers it.
        }
    }
}

fn finish(stack: &Inner, clean: bool) -> bool {
    stack.set_status(Status::Stopped);
    stack.env().emit(Event::ShutdownFinished { clean });
    clean
}

async fn write_marker(stack: &Inner) {
    let storage = &stack.env().storage;
    let tmp = format!("{CLEAN_SHUTDOWN_MARKER}.tmp");
    storage
        .write(&tmp, b"clean\n")
        .await
        .expect("write the clean-shutdown marker");
    storage
        .sync(&tmp)
        .await
        .expect("sync the clean-shutdown marker");
    storage
        .rename(&tmp, CLEAN_SHUTDOWN_MARKER)
        .await
        .expect("rename the clean-shutdown marker");
    storage.sync_dir("").await.expect("sync the storage root");
}
