//! Planted bugs: switches that re-introduce known bug classes, so that the
//! harness can prove it catches each of them (a check that cannot fail is
//! worse than none).
//!
//! They exist only with the engine's `plants` cargo feature, which the
//! simulator enables; a default build has no `Plants` type, no `plants` field
//! in any configuration and no planted branch, so no production build can
//! turn one on. Code reads a switch through [`planted!`](crate::planted),
//! which is the constant `false` without the feature.

/// Every switch, all off by default. The first group are bug classes
/// planted for the harness to find; the second are real bugs the harness
/// found in this engine, fixed, and kept re-introducible for their corpus
/// entries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Plants {
    /// A consumer does not skip replayed transactions at or below its log's
    /// end (PR 4648's bug 2, Electric #4668).
    pub skip_shape_dedup: bool,
    /// The acknowledged LSN passes transactions some shape has not flushed
    /// (Electric #4731).
    pub ack_past_unflushed: bool,
    /// A shape-log flush records its durable offset before the data is synced.
    pub offset_before_fsync: bool,
    /// A reopened shape log keeps the unflushed tail past its durable offset.
    pub no_trim_on_open: bool,
    /// The engine stops advancing the acknowledged LSN after boot (the
    /// symptom of Electric's bug 7: a flush-tracker entry pinned forever).
    pub never_ack: bool,
    /// After a crash or power loss, boot wipes every shape (what PR 4648's
    /// shutdown coordinator did on a dirty start).
    pub drop_all_on_dirty_boot: bool,
    /// `global_last_seen_lsn` in up-to-date is the last LSN received, before
    /// every shape has committed that transaction (Electric bug 8).
    pub early_global_lsn: bool,
    /// A `replica=full` update's `old_value` carries the new values of the
    /// changed columns (a wire-format bug no materialising client notices).
    pub wrong_old_value: bool,
    /// A request for a handle that is gone is answered with the current
    /// shape's log from the start, under the new handle, instead of 409.
    pub silent_handle_switch: bool,
    /// A consumer does not wake long-polling readers after a commit: they
    /// see new data only at their timeout.
    pub lost_wakeup: bool,
    /// A failed fsync of a shape log is treated as success: the flush
    /// records as durable what may never reach the disk.
    pub fsync_error_ignored: bool,
    /// Boot recovers the disk before it holds the replication slot: during
    /// a rolling restart the new instance works on the disk the old one
    /// still serves from.
    pub boot_before_slot: bool,
    /// Snapshot visibility treats the transactions in progress when the
    /// snapshot was taken as visible: their changes are skipped, though the
    /// snapshot never had them.
    pub ignore_xip: bool,
    /// A subquery shape's move-out changes its view but writes no
    /// `move-out` event: clients keep rows that left the shape.
    pub move_out_not_written: bool,
    /// A move-in splices one buffered transaction early: a transaction its
    /// query already saw is applied with the views after the move.
    pub splice_at_wrong_boundary: bool,
    /// An inner shape's materializer counts the values of rows that are
    /// not in the shape, so it moves in values no included row has.
    pub materializer_counts_excluded: bool,
    /// A restored inner shape's materializer replays only the first chunk
    /// of its log (PR 4648's bug 1).
    pub materializer_first_chunk_only: bool,
    /// A restored inner shape's materializer walks its main log chunk by
    /// chunk, though each read returns the rest of the log, so it applies
    /// records twice (PR 4648's bug 4: "Key already exists").
    pub materializer_rereads_main_log: bool,
    /// A restored subquery shape takes its views from its inner shapes'
    /// materializers instead of its own durable state (PR 4648's bugs
    /// 2(ii) and 5).
    pub outer_view_from_materializer: bool,
    /// A removal deletes the shape's metadata before it takes the shape
    /// out of service, so a removal the stack refuses (it is stopping)
    /// still deletes a healthy shape (PR 4648's bug 6).
    pub remove_metadata_first: bool,
    /// A shape counts as flushed only when its durable offset is exactly
    /// the last offset of a transaction it wrote: control events and
    /// moved-in rows after it pin the acknowledgement (Electric's bug 7).
    pub flush_boundary_exact_match: bool,

    /// Real bug (Electric's bug 3, found here by the harness, fixed): an
    /// offset past a log still being replayed after a crash gets 400.
    pub out_of_bounds_400: bool,
    /// Real bug (found here by the harness, fixed): snapshot queries are
    /// tried ten times, then the shape is dropped.
    pub snapshot_attempt_budget: bool,
    /// Real bug (found here by the log crash property test, fixed): reopen
    /// trusts metadata whose rename a crash left unsynced.
    pub no_sync_on_open: bool,
    /// Real bug (found here by the harness's prefix check, fixed): an
    /// up-to-date does not wait for replication to reach the shape's
    /// snapshot position, so it can name an LSN older than the rows it
    /// serves.
    pub unsettled_snapshot: bool,
    /// Real bug (found here by the unexplained-409 check once the workload
    /// added columns, fixed): boot kept a shape whose table had gained a
    /// column (it compared the shape's stored columns only), so the shape
    /// stayed live while every request for it got 409.
    pub boot_ignores_definition: bool,
}
