//! A new shape's snapshot: the query (retried until the snapshot timeout,
//! while what arrives is buffered), its rows written as snapshot chunks and
//! `snapshot-end`. A subquery shape first waits for its inner shapes'
//! snapshots and subscribes to them; its query is written with its views.

use super::inner::{self, Published, Subscriber};
use super::{Consumer, Stop};
use crate::env::Event;
use crate::env::events::RemovalReason;
use crate::log::Operation;
use crate::moves::materializer::InnerChange;
use crate::replication::{Lsn, SnapshotQuery, SnapshotResult};
use crate::schema::Row;
use crate::wire;
use std::sync::atomic::Ordering;

impl Consumer {
    /// The snapshot query, retried (backing off up to a second) until the
    /// snapshot timeout: failures are transient (the network, a restarting
    /// Postgres).
    async fn snapshot_query(&mut self, query: SnapshotQuery) -> Result<SnapshotResult, Stop> {
        let config = self.ctx.config;
        let give_up_ms = self.ctx.env.clock.now_ms() + config.snapshot_timeout_ms;
        let mut backoff_ms = config.retry_backoff_ms;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (postgres, query) = (self.ctx.postgres.clone(), query.clone());
            match self
                .buffering(async move { postgres.snapshot(query).await })
                .await?
            {
                Ok(result) => return Ok(result),
                Err(e)
                    if self.ctx.env.clock.now_ms() >= give_up_ms || self.budget_spent(attempts) =>
                {
                    return Err(Stop::Failed(RemovalReason::SnapshotGaveUp(e)));
                }
                Err(_) => {
                    let backoff = self.ctx.env.clock.sleep_ms(backoff_ms);
                    self.buffering(backoff).await?;
                    if !crate::planted!(config, snapshot_attempt_budget) {
                        backoff_ms = (backoff_ms * 2).min(1_000);
                    }
                }
            }
        }
    }

    /// Planted real bug: the old policy gave up after ten attempts.
    fn budget_spent(&self, attempts: u32) -> bool {
        crate::planted!(self.ctx.config, snapshot_attempt_budget) && attempts >= 10
    }

    /// A subquery shape takes its snapshot only after each inner shape
    /// has taken its own: the inner shape's materializer starts from its
    /// snapshot, so a change before it would never become a move, and this
    /// shape's views must already reflect it.
    /// Then it subscribes, and its views start from what each published.
    pub(super) async fn wait_for_dependencies(&mut self) -> Result<(), Stop> {
        for (d, dep) in self.entry.dep_entries.clone().iter().enumerate() {
            loop {
                let listener = dep.changed.listen();
                if dep.is_removed() {
                    let dependency = dep.handle.clone();
                    let reason = RemovalReason::DependencyRemoved { dependency };
                    return Err(Stop::Failed(reason));
                }
                if dep.snapshot_done.load(Ordering::SeqCst) {
                    break;
                }
                self.buffering(listener).await?;
            }
            let published = dep.subscribe(Subscriber {
                outer: self.entry.handle.clone(),
                tx: self.entry.tx.clone(),
            });
            // What was routed to it before this shape existed must be
            // vouched for too (some may not even be sent yet): this shape
            // was not routed it, and cannot know. So must its snapshot's
            // position: a nested inner shape publishes what it vouches
            // for, which may be nothing yet, while its values reflect its
            // snapshot (subqueries-restart seed 445, drop mode).
            let sent = dep
                .last_routed
                .load(Ordering::SeqCst)
                .max(dep.snapshot_lsn());
            let planted = crate::planted!(self.ctx.config, outer_view_from_materializer);
            let outer = self
                .outer
                .as_mut()
                .expect("only subquery shapes have dependencies");
            if planted && outer.catching_up(d) {
                // Planted `outer-view-from-materializer` (PR 4648's bugs
                // 2(ii) and 5): the restored view is the inner shape's.
                outer.forget_state(d);
            }
            outer.start_from(d, published, sent);
            self.try_catch_up(d);
        }
        Ok(())
    }

    pub(super) async fn snapshot(&mut self) -> Result<(), Stop> {
        let shape = self.entry.shape.clone();
        let handle = self.entry.handle.clone();
        let query = SnapshotQuery {
            table: shape.table.name.clone(),
            where_sql: self.snapshot_where(),
            dependencies: Vec::new(),
        };
        let result = self.snapshot_query(query).await?;
        let visibility = result.visibility;
        if let Some(outer) = &mut self.outer {
            outer.snapshot_taken(visibility.wal_lsn);
        }
        self.writer.start_snapshot(visibility.clone()).await?;
        self.entry
            .snapshot_lsn
            .store(visibility.wal_lsn, Ordering::SeqCst);
        self.ctx.env.emit(Event::SnapshotStarted {
            handle: handle.clone(),
        });
        self.ctx.db.mark_snapshot_started(&handle);
        self.write_snapshot_rows(&result.rows, visibility.wal_lsn)
            .await?;
        let end = wire::snapshot_end(&visibility);
        self.writer
            .append_snapshot_row(Operation::Control, String::new(), end)
            .await?;
        self.save_state();
        let last_chunk = self.writer.finish_snapshot().await?;
        self.ctx.env.emit(Event::SnapshotCompleted {
            handle: handle.clone(),
            rows: result.rows.len() as u64,
            chunks: last_chunk + 1,
        });
        self.ctx.db.mark_snapshot_complete(&handle).await;
        self.entry.snapshot_done.store(true, Ordering::SeqCst);
        self.entry.changed.notify(usize::MAX);
        self.visibility = Some(visibility);
        Ok(())
    }

    /// The snapshot's rows (tagged, in a subquery shape), each fed to the
    /// materializer of an inner shape, which then publishes its values.
    async fn write_snapshot_rows(&mut self, rows: &[Row], wal_lsn: Lsn) -> Result<(), Stop> {
        let shape = self.entry.shape.clone();
        let handle = self.entry.handle.clone();
        let table = &shape.table;
        for row in rows {
            let key = wire::row_key(table, row);
            let tags = self.row_tags(row);
            let json = wire::snapshot_row(
                table,
                &key,
                &wire::RowValues::new(table, row, shape.selected.iter().copied()),
                tags.as_ref(),
            );
            if self.materializer.is_some() {
                let change = InnerChange::Insert {
                    key: key.clone(),
                    value: shape.tuple(row),
                    meta: self.row_meta(row),
                };
                if let Some(materializer) = &mut self.materializer {
                    inner::feed(materializer, &handle, vec![change]);
                }
            }
            self.writer
                .append_snapshot_row(Operation::Insert, key, json)
                .await?;
            self.entry.changed.notify(usize::MAX);
        }
        if let Some(materializer) = &mut self.materializer {
            // The snapshot is the starting point, not a move.
            materializer.commit();
            let values = materializer.values().cloned().collect();
            let cause = self.outer.as_ref().map_or(0, |o| o.cause());
            // A plain inner shape vouches for its snapshot's position: every
            // transaction up to it is in the snapshot (and is skipped, with
            // no moves); a nested one only for what it will have claimed.
            let through = match self.outer {
                None => wal_lsn,
                Some(_) => 0,
            };
            self.entry.publish(Published {
                values,
                through,
                cause: cause.max(wal_lsn),
            });
        }
        Ok(())
    }
}
