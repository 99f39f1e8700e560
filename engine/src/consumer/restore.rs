//! Resuming a shape restored at boot (ARCHITECTURE.md, "Restoring subquery
//! shapes").
//!
//! - Every restored shape: its snapshot's visibility, and the LSN up to
//!   which its durable log already reflects every transaction
//!   (`replayed_through`: its durable offset's transaction, its snapshot's
//!   position, and the slot's confirmed LSN, which no shape lacks).
//! - An inner shape rebuilds its materializer from its whole durable log:
//!   every snapshot chunk, one at a time, then the main log in one read
//!   (Electric's bugs 1 and 4 are the two ways to get this wrong).
//! - A subquery shape resumes from the state written with its durable
//!   offset (`OuterState`): its views, its claim, how far each
//!   dependency's moves had arrived. It never takes a view from its inner
//!   shapes: it subscribes, follows what each publishes until the inner
//!   shape has caught up with its recorded position, and only then queues
//!   the difference between the two as moves (which re-derives every move
//!   it had not applied, and none it had).

use super::{Consumer, Stop};
use crate::env::Event;
use crate::env::events::RemovalReason;
use crate::log::{LogEntry, LogError, Operation, OuterState, SnapshotState, Stream};
use crate::moves::Tuple;
use crate::moves::materializer::{InnerChange, MoveEvents, RowMeta};
use crate::moves::queue::MoveKind;
use crate::offset::LogOffset;
use crate::replication::Lsn;
use crate::schema::{ColumnType, Value};
use crate::shape::Shape;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;

/// One record of an inner shape's log, as far as the materializer reads it.
#[derive(Deserialize)]
struct Record {
    #[serde(default)]
    value: BTreeMap<String, Option<String>>,
    headers: Headers,
}

#[derive(Deserialize)]
struct Headers {
    event: Option<String>,
    #[serde(default)]
    patterns: Vec<Pattern>,
    tags: Option<Vec<String>>,
    active_conditions: Option<Vec<bool>>,
}

#[derive(Deserialize)]
struct Pattern {
    pos: usize,
    value: String,
}

fn parse_value(ty: ColumnType, text: Option<&str>) -> Option<Value> {
    let Some(text) = text else {
        return Some(Value::Null);
    };
    Some(match ty {
        ColumnType::Int => Value::Int(text.parse().ok()?),
        ColumnType::Bool => Value::Bool(text.parse().ok()?),
        ColumnType::Text => Value::Text(text.to_string()),
    })
}

/// What `entry` of `shape`'s own log means to its materializer. Inner
/// logs are written with `replica=full`, so every row record carries the
/// whole tuple. A record the engine cannot read back is corruption of its
/// own checksummed log: an invariant violation.
pub(super) fn decode(shape: &Shape, entry: &LogEntry) -> Option<InnerChange> {
    let bad = |why: &str| -> ! {
        panic!(
            "invariant violated: record {} of an inner log: {why}: {}",
            entry.offset, entry.json
        )
    };
    let record: Record = serde_json::from_str(&entry.json).unwrap_or_else(|e| bad(&e.to_string()));
    let headers = record.headers;
    let tuple = || -> Tuple {
        let columns = shape.dependency.as_ref().expect("an inner shape");
        columns
            .iter()
            .map(|&i| {
                let column = &shape.table.columns[i];
                let text = record
                    .value
                    .get(&column.name)
                    .unwrap_or_else(|| bad(&format!("no column {}", column.name)));
                parse_value(column.ty, text.as_deref())
                    .unwrap_or_else(|| bad(&format!("a bad {} value", column.ty)))
            })
            .collect()
    };
    let meta = || match (&headers.tags, &headers.active_conditions) {
        (Some(tags), Some(active)) => Some(RowMeta {
            tags: tags.clone(),
            active: active.clone(),
        }),
        _ => None,
    };
    let key = entry.key.clone();
    match entry.operation {
        Operation::Insert => Some(InnerChange::Insert {
            key,
            value: tuple(),
            meta: meta(),
        }),
        Operation::Update => Some(InnerChange::Update {
            old_key: key.clone(),
            key,
            value: tuple(),
            meta: meta(),
        }),
        Operation::Delete => Some(InnerChange::Delete { key }),
        Operation::Control => {
            let kind = match headers.event.as_deref() {
                Some("move-in") => MoveKind::In,
                Some("move-out") => MoveKind::Out,
                _ => return None, // snapshot-end
            };
            let patterns = headers
                .patterns
                .into_iter()
                .map(|p| (p.pos, p.value))
                .collect();
            Some(InnerChange::Move { kind, patterns })
        }
    }
}

/// How a restored subquery shape follows one dependency until the inner
/// shape has caught up with the position its own state recorded.
#[derive(Clone, Debug)]
pub(super) struct CatchUp {
    /// The recorded position: the view plus the moves not yet applied is
    /// the inner shape's state there.
    pub target: Lsn,
    /// What the inner shape has published since this shape subscribed
    /// (`None` until it has).
    pub values: Option<BTreeSet<Tuple>>,
    pub through: Lsn,
    pub cause: Lsn,
    pub xids: BTreeSet<crate::replication::Xid>,
    /// How far the inner shape was when this shape subscribed.
    pub inner_at_subscribe: Lsn,
}

impl CatchUp {
    pub fn new(target: Lsn) -> CatchUp {
        CatchUp {
            target,
            values: None,
            through: 0,
            cause: 0,
            xids: BTreeSet::new(),
            inner_at_subscribe: 0,
        }
    }

    /// Follows one publication's moves.
    pub fn follow(&mut self, events: &MoveEvents, through: Lsn, cause: Lsn) {
        let values = self
            .values
            .as_mut()
            .expect("moves arrive only after the subscription");
        for tuple in &events.move_out {
            assert!(
                values.remove(tuple),
                "a dependency moved out {tuple:?}, which it lacked"
            );
        }
        for tuple in &events.move_in {
            assert!(
                values.insert(tuple.clone()),
                "a dependency moved in {tuple:?} twice"
            );
        }
        self.through = self.through.max(through);
        self.cause = self.cause.max(cause);
    }

    pub fn caught_up(&self) -> bool {
        self.values.is_some() && self.through >= self.target
    }
}

impl Consumer {
    /// A shape restored at boot, before it takes its first message.
    pub(super) async fn restore(&mut self, resume_lsn: Lsn) -> Result<(), Stop> {
        let SnapshotState::Complete {
            visibility,
            last_chunk,
        } = self.writer.meta().snapshot.clone()
        else {
            unreachable!("only complete snapshots are restored")
        };
        self.entry
            .snapshot_lsn
            .store(visibility.wal_lsn, Ordering::SeqCst);
        let durable_lsn = self.writer.durable_offset().and_then(LogOffset::tx);
        let mut through = visibility.wal_lsn.max(durable_lsn.unwrap_or(0));
        self.visibility = Some(visibility);
        match self.writer.meta().outer.clone() {
            // A subquery shape reflects what its state records: it never
            // reported more as flushed, so the slot replays every later
            // transaction routed to it (the confirmed LSN may be past it
            // only by transactions it was never sent).
            Some(state) => {
                through = through.max(state.processed);
                self.resume_outer(&state, through);
            }
            None => through = through.max(resume_lsn),
        }
        self.replayed_through = through;
        if self.materializer.is_some() {
            self.rebuild_materializer(last_chunk).await?;
        }
        if self.outer.is_some() {
            self.wait_for_dependencies().await?;
        }
        if let Some(materializer) = &mut self.materializer {
            materializer.commit();
            let values = materializer.values().cloned().collect();
            // A nested inner shape vouches only for what it claimed, and
            // its log may hold moves caused past that (`applied_cause`).
            let (vouched, cause) = match &self.outer {
                Some(outer) => (self.vouched(), outer.cause().max(through)),
                None => (through, through),
            };
            self.entry.publish(super::Published {
                values,
                through: vouched,
                cause,
            });
        }
        self.entry.snapshot_done.store(true, Ordering::SeqCst);
        self.entry.changed.notify(usize::MAX);
        Ok(())
    }

    fn resume_outer(&mut self, state: &OuterState, processed: Lsn) {
        let deps = self.entry.deps.len();
        assert!(
            state.views.len() == deps
                && state.dep_through.len() == deps
                && state.dep_needed.len() == deps,
            "invariant violated: the state of {} has {} views for {deps} dependencies",
            self.entry.handle,
            state.views.len()
        );
        // The entry serves it already (set at registration).
        self.claims.restored(state.claim);
        let outer = self.outer.as_mut().expect("a subquery shape");
        outer.resume(state, processed);
        // With its claim: the next metadata write must not forget it.
        self.save_state();
    }

    /// Feeds the materializer the whole durable log: each snapshot chunk,
    /// then the main log in one read (it returns the whole range).
    async fn rebuild_materializer(&mut self, last_chunk: u64) -> Result<(), Stop> {
        let reader = self.entry.reader.clone();
        let latest = reader.latest_offset();
        let read = |stream: Result<Stream, LogError>| match stream {
            Ok(Stream::Entries(entries)) => Ok(entries),
            Ok(Stream::SnapshotChunkPending(n)) => {
                panic!("invariant violated: chunk {n} of a complete snapshot is pending")
            }
            Err(e) => Err(Stop::Failed(RemovalReason::ConsumerFailed(
                crate::env::events::ConsumerFailure::Storage(e.failure()),
            ))),
        };
        let first_chunk_only = crate::planted!(self.ctx.config, materializer_first_chunk_only);
        let mut entries = Vec::new();
        for chunk in 0..=last_chunk {
            let after = match chunk {
                0 => LogOffset::BEFORE_ALL,
                k => LogOffset::snapshot_chunk(k - 1),
            };
            entries.extend(read(reader.log_stream(after, latest).await)?);
            if first_chunk_only {
                break; // planted `materializer-first-chunk-only` (bug 1)
            }
        }
        if !first_chunk_only {
            let after = LogOffset::snapshot_chunk(last_chunk);
            match crate::planted!(self.ctx.config, materializer_rereads_main_log) {
                false => entries.extend(read(reader.log_stream(after, latest).await)?),
                // Planted `materializer-rereads-main-log` (bug 4): chunk by
                // chunk, though each read returns the rest of the log.
                true => {
                    let mut after = after;
                    loop {
                        entries.extend(read(reader.log_stream(after, latest).await)?);
                        match reader.chunk_end(after.max(LogOffset::SNAPSHOT_END)) {
                            Some(end) if end < latest => after = end,
                            _ => break,
                        }
                    }
                }
            }
        }
        let shape = self.entry.shape.clone();
        let changes: Vec<InnerChange> = entries.iter().filter_map(|e| decode(&shape, e)).collect();
        let rows = changes.len();
        if let Some(materializer) = &mut self.materializer {
            super::inner::feed(materializer, &self.entry.handle, changes);
        }
        self.ctx.env.emit(Event::MaterializerRebuilt {
            handle: self.entry.handle.clone(),
            records: rows as u64,
        });
        Ok(())
    }
}
