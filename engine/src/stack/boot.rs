//! Boot: from whatever the previous run left on disk to a serving stack.
//!
//! Recovery rules, in order (each inconsistency and what happens to it):
//! 0. the replication slot is taken (waiting while another instance holds
//!    it): one instance at a time recovers and writes the disk;
//! 1. the clean-shutdown marker is read and removed (durably): the stack knows
//!    whether the previous stop was clean;
//! 2. metadata: shapes whose snapshot never completed are deleted from SQLite
//!    and their storage removed (clients holding them get 409);
//! 3. each remaining shape is re-checked against the current catalog (a
//!    table that changed drops the shape) and its log opened, which trims it
//!    to its durable offset. A log that is missing, of another storage
//!    version, or without a complete snapshot drops the shape; a corrupt log
//!    (which the crash-consistency contract rules out) is a fatal invariant
//!    violation in strict mode, else dropped;
//! 4. directories under `shapes/` that no live shape owns are orphans (a shape
//!    whose metadata add was lost in a crash, or a half-finished removal) and
//!    are removed;
//! 5. replication connects from the slot's confirmed LSN; the stack serves once
//!    it has. Replayed transactions are then skipped globally (at or below
//!    what was already processed) and per shape (at or below its log's end).

use super::{CLEAN_SHUTDOWN_MARKER, Inner, SHAPES_DIR, SubqueryRestore, replication, shape_dir};
use crate::consumer::Start;
use crate::env::events::RemovalReason;
use crate::env::{CrashPoint, Event, join};
use crate::handle::ShapeHandle;
use crate::log::{LogError, ShapeLog};
use crate::metadata::ShapeRow;
use crate::schema::Catalog;
use crate::shape::Shape;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

pub(super) async fn boot(stack: Arc<Inner>) {
    let env = stack.env().clone();
    // The slot first: while another instance holds it (a rolling restart),
    // this one touches neither storage nor metadata.
    let early_slot = match crate::planted!(stack.config, boot_before_slot) {
        false => Some(replication::acquire_slot(&stack).await),
        true => None,
    };
    let clean = consume_marker(&stack).await;
    *stack.previous_stop_clean.lock().expect("marker") = Some(clean);
    env.emit(Event::BootStarted {
        previous_stop_clean: clean,
    });

    env.storage
        .create_dir_all(SHAPES_DIR)
        .await
        .expect("create the shapes directory");
    env.storage
        .sync_dir("")
        .await
        .expect("sync the storage root");
    let (rows, incomplete) = stack.db.boot(stack.now_ms()).expect("metadata boot");
    for handle in incomplete {
        remove_storage(&stack, &handle).await;
        env.emit(Event::BootDropped {
            handle,
            reason: RemovalReason::SnapshotIncomplete,
        });
    }

    let catalog = loop {
        match stack.host.postgres.catalog().await {
            Ok(catalog) => break catalog,
            Err(_) => env.clock.sleep_ms(stack.config.retry_backoff_ms).await,
        }
    };
    for table in catalog.tables() {
        stack.upsert_table(table.clone());
    }

    // Inner shapes before the shapes built on them; each found by the
    // definition its metadata stores.
    let known: BTreeMap<String, ShapeHandle> = rows
        .iter()
        .map(|r| (r.comparable.clone(), r.handle.clone()))
        .collect();
    let mut by_layer: BTreeMap<usize, Vec<ShapeRow>> = BTreeMap::new();
    for row in rows {
        by_layer.entry(layer(&catalog, &row)).or_default().push(row);
    }
    let resume_lsn = early_slot.as_ref().map_or(0, |slot| slot.confirmed_lsn);
    for row in by_layer.into_values().flatten() {
        restore(&stack, &catalog, &known, row, clean, resume_lsn).await;
    }
    drop_unused_inner_shapes(&stack);
    remove_orphans(&stack, &known).await;
    let slot = match early_slot {
        Some(slot) => slot,
        None => replication::acquire_slot(&stack).await,
    };
    env.crash_point(CrashPoint::BootBeforeReplication).await;

    let (replicating, acking, flushing) = (stack.clone(), stack.clone(), stack.clone());
    env.spawner.spawn(
        "replication",
        Box::pin(async move { replication::run(replicating, slot).await }),
    );
    env.spawner.spawn(
        "acknowledge",
        Box::pin(async move { replication::acknowledge(acking).await }),
    );
    env.spawner.spawn(
        "metadata-flush",
        Box::pin(async move { flush_metadata(flushing).await }),
    );
}

/// Whether `row` is an inner shape (a dependency of subquery shapes).
fn is_inner(catalog: &Catalog, row: &ShapeRow) -> bool {
    Shape::inner(catalog, &row.request).is_ok_and(|s| s.comparable() == row.comparable)
}

/// The shape's layer (0 for a plain shape; see `Shape::layer`).
fn layer(catalog: &Catalog, row: &ShapeRow) -> usize {
    let shape = match is_inner(catalog, row) {
        true => Shape::inner(catalog, &row.request),
        false => Shape::new(catalog, &row.request),
    };
    shape.map_or(0, |s| s.layer())
}

/// The inner shapes of `shape`, restored before it, in plan order; if one
/// did not survive, why `shape` cannot be restored either.
fn restored_dependencies(
    stack: &Inner,
    catalog: &Catalog,
    known: &BTreeMap<String, ShapeHandle>,
    shape: &Shape,
) -> Result<Vec<Arc<crate::consumer::ShapeEntry>>, RemovalReason> {
    let dep_shapes = shape
        .dependency_shapes(catalog)
        .map_err(|_| RemovalReason::DependencyLost)?;
    dep_shapes
        .iter()
        .map(|dep| {
            let handle = known
                .get(dep.comparable())
                .ok_or(RemovalReason::DependencyLost)?
                .clone();
            match stack.entry(&handle) {
                Some(entry) if !entry.is_removed() => Ok(entry),
                // Restored, then removed (an I/O error while it rebuilt).
                _ => Err(RemovalReason::DependencyRemoved { dependency: handle }),
            }
        })
        .collect()
}

/// Inner shapes no restored subquery shape uses are removed.
fn drop_unused_inner_shapes(stack: &Arc<Inner>) {
    let entries: Vec<_> = stack.registry().shapes.values().cloned().collect();
    for entry in entries {
        if entry.shape.is_dependency() && entry.users() == 0 {
            stack.remove_shape(&entry.handle, RemovalReason::Unused);
        }
    }
}

/// Restores one shape from its metadata row and its log, or drops it (and
/// says why).
async fn restore(
    stack: &Arc<Inner>,
    catalog: &Catalog,
    known: &BTreeMap<String, ShapeHandle>,
    row: ShapeRow,
    clean: bool,
    resume_lsn: crate::replication::Lsn,
) {
    let env = stack.env();
    if crate::planted!(stack.config, drop_all_on_dirty_boot) && !clean {
        #[cfg(feature = "plants")]
        drop_shape(stack, &row.handle, RemovalReason::DirtyBoot).await;
        return;
    }
    let inner = is_inner(catalog, &row);
    // Electric's mode (#4735): subquery shapes and their inner shapes are
    // dropped.
    let subquery = inner || Shape::new(catalog, &row.request).is_ok_and(|s| s.has_subquery());
    if subquery && stack.config.subquery_restore == SubqueryRestore::Drop {
        drop_shape(stack, &row.handle, RemovalReason::SubqueryNotRestored).await;
        return;
    }
    let same = |a: &str, b: &str| match crate::planted!(stack.config, boot_ignores_definition) {
        // Planted: the shape's own columns are compared, not the table's.
        true => {
            a.split(crate::shape::DEFINITION).next() == b.split(crate::shape::DEFINITION).next()
        }
        false => a == b,
    };
    let shape = match inner {
        true => Shape::inner(catalog, &row.request),
        false => Shape::new(catalog, &row.request),
    };
    let shape = shape.ok().filter(|s| same(s.comparable(), &row.comparable));
    let Some(shape) = shape else {
        let (table, oid) = (row.request.table.clone(), row.oid);
        let reason = RemovalReason::TableChanged { table, oid };
        drop_shape(stack, &row.handle, reason).await;
        return;
    };
    let deps = match shape.has_subquery() {
        false => Vec::new(),
        true => match restored_dependencies(stack, catalog, known, &shape) {
            Ok(deps) => deps,
            Err(reason) => {
                drop_shape(stack, &row.handle, reason).await;
                return;
            }
        },
    };
    let dir = shape_dir(&row.handle);
    match ShapeLog::open(env, &dir, stack.config.log).await {
        Ok(writer) if shape.has_subquery() && writer.meta().outer.is_none() => {
            // Written by a stack that dropped subquery shapes: no state.
            drop(writer);
            drop_shape(stack, &row.handle, RemovalReason::SubqueryNotRestored).await;
        }
        Ok(writer) => {
            env.emit(Event::ShapeRestored {
                handle: row.handle.clone(),
                durable: writer.durable_offset(),
            });
            let trimmed = writer.trimmed();
            if trimmed.log_bytes > 0 || trimmed.index_bytes > 0 {
                env.emit(Event::LogTrimmed {
                    handle: row.handle.clone(),
                    log_bytes: trimmed.log_bytes,
                    index_bytes: trimmed.index_bytes,
                });
            }
            for dep in &deps {
                dep.add_user();
            }
            let start = Start::Restored { resume_lsn };
            stack.register(row.handle, shape, writer, start, deps);
        }
        Err(LogError::Corrupt(why)) if stack.config.strict_recovery => {
            panic!(
                "invariant violated: the log of shape {} is corrupt at boot: {why}",
                row.handle
            )
        }
        Err(e) => drop_shape(stack, &row.handle, RemovalReason::OpenFailed(e.failure())).await,
    }
}

/// Reads and removes the marker; true if the previous stop was clean.
async fn consume_marker(stack: &Inner) -> bool {
    let storage = &stack.env().storage;
    let present = storage
        .exists(CLEAN_SHUTDOWN_MARKER)
        .await
        .expect("storage root readable");
    if present {
        storage
            .remove(CLEAN_SHUTDOWN_MARKER)
            .await
            .expect("remove the clean-shutdown marker");
        storage.sync_dir("").await.expect("sync the storage root");
    }
    present
}

async fn drop_shape(stack: &Inner, handle: &ShapeHandle, reason: RemovalReason) {
    stack.db.remove_shape(handle);
    remove_storage(stack, handle).await;
    stack.env().emit(Event::BootDropped {
        handle: handle.clone(),
        reason,
    });
}

async fn remove_storage(stack: &Inner, handle: &ShapeHandle) {
    let dir = shape_dir(handle);
    if let Err(e) = ShapeLog::remove(stack.env(), &dir).await {
        panic!("cannot remove {dir}: {e}");
    }
}

/// Directories no metadata row owns. A row's own directory is its
/// shape's to keep or remove (a restored shape whose consumer failed
/// removes it itself, possibly while this runs).
async fn remove_orphans(stack: &Inner, known: &BTreeMap<String, ShapeHandle>) {
    let names = stack
        .env()
        .storage
        .list(SHAPES_DIR)
        .await
        .expect("list the shapes directory");
    let live: BTreeSet<String> = known.values().map(|h| h.as_str().to_string()).collect();
    for name in names.iter().filter(|n| !live.contains(*n)) {
        let dir = join(SHAPES_DIR, name);
        if let Err(e) = ShapeLog::remove(stack.env(), &dir).await {
            panic!("cannot remove orphan {dir}: {e}");
        }
        // Only the engine creates directories here, named by handle: one
        // that no metadata row owns lost its add with the write buffer.
        stack.env().emit(match ShapeHandle::parse(name) {
            Ok(handle) => Event::BootDropped {
                handle,
                reason: RemovalReason::MetadataLost,
            },
            Err(_) => Event::ForeignDirRemoved { dir },
        });
    }
}

/// Applies the metadata write buffer every `flush_period_ms`, a batch at a time.
async fn flush_metadata(stack: Arc<Inner>) {
    let period_ms = stack.config.meta.flush_period_ms;
    loop {
        stack.env().clock.sleep_ms(period_ms).await;
        while stack.db.pending() > 0 {
            stack.env().crash_point(CrashPoint::MetadataFlush).await;
            match stack.db.flush_batch() {
                Ok(changes) => stack.env().emit(Event::MetadataWritten { changes }),
                // Retried next period; nothing was lost from the buffer.
                Err(_) => break,
            }
        }
    }
}
