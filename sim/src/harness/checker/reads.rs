//! What the checker judges in every answer a client gets:
//!
//! - `unexplained-409`: a 409 for a handle whose removal the harness accepts
//!   (or which a kill lost with the metadata write buffer); anything else,
//!   after any kind of restart, fails;
//! - `prefix-mismatch`: at every up-to-date with `global_last_seen_lsn` G the
//!   client holds exactly the oracle's rows as of G, and no later answer for
//!   that handle carries a change at or below G (Electric bug 8);
//! - `wire`: every replicated change is a faithful rendering of the change
//!   at its `op_position` in the Postgres model's transaction at its `lsn`
//!   (`txids`, `relation`, key, value, `old_value`, key-change headers), and
//!   every key follows Electric's format;
//! - `latency`: outside fault windows, a change committed at T that alters a
//!   live client's rows reaches it by max(T, request sent) plus the bound;
//!   a live request for which data already exists is answered at once, not
//!   after the long-poll timeout.

use super::view::ShapeView;
use super::{Checker, Fate};
use crate::client::{Applied, ChangeSeen, ClientRow, ShapeClient, Text};
use crate::harness::checks::Failure;
use crate::host::now_ms;
use crate::oracle::rows::{self, rendered};
use engine::api::{Request, Response};
use engine::replication::{Change, Lsn, Transaction};
use engine::schema::Value;

/// The request an answer is for, as the client sent it.
pub struct ReadContext<'a> {
    /// The client's index, which is its shape's index in the scenario.
    pub shape: usize,
    pub request: &'a Request,
    pub sent_ms: u64,
    /// The client's highest up-to-date LSN for the handle it sent.
    pub known_lsn: Option<Lsn>,
}

impl Checker {
    /// Judges one answer; a violation is recorded in the verdict and returned.
    pub fn on_response(
        &mut self,
        ctx: &ReadContext<'_>,
        response: &Response,
        applied: Applied,
        client: &ShapeClient,
    ) -> Result<(), Box<Failure>> {
        let result = match response.status {
            409 => self.conflict(ctx),
            200 => self.data(ctx, response, applied, client),
            _ => Ok(()),
        };
        result.map_err(|(check, why)| {
            let handle = response.header("electric-handle").map(str::to_string);
            self.fail(
                check,
                format!("shape {}: {why}", ctx.shape),
                handle.as_deref(),
            );
            Box::new(self.verdict.failure().expect("just recorded"))
        })
    }

    fn conflict(&mut self, ctx: &ReadContext<'_>) -> Result<(), (&'static str, String)> {
        self.open_txns[ctx.shape] = None; // the client starts over
        let sent = ctx.request.params.get("handle").cloned();
        let Some(sent) = sent else {
            // A first request (no handle yet) is answered 409 only if the
            // shape it was being served from was removed meanwhile; that
            // removal was judged when it happened (`lost-shape`).
            return match self.last_removal.clone().filter(|(at, _)| *at >= ctx.sent_ms) {
                Some((_, reason)) => {
                    self.coverage.conflict(&reason);
                    Ok(())
                }
                None => Err((
                    "unexplained-409",
                    "409 for a first request (no handle), and no shape was removed while it was served".into(),
                )),
            };
        };
        let state = self.handles.get(&sent).cloned().unwrap_or_default();
        let explained = match &state.fate {
            Some(Fate::Lost(why)) => Some(why.name().to_string()),
            Some(Fate::Removed(reason)) if state.explained => Some(reason.name().to_string()),
            _ => None,
        };
        match explained {
            Some(reason) => {
                self.coverage.conflict(&reason);
                Ok(())
            }
            None => Err((
                "unexplained-409",
                format!(
                    "409 for {sent}, which is {:?}",
                    state.fate.map_or("live".into(), |f| format!("{f:?}"))
                ),
            )),
        }
    }

    fn data(
        &mut self,
        ctx: &ReadContext<'_>,
        response: &Response,
        applied: Applied,
        client: &ShapeClient,
    ) -> Result<(), (&'static str, String)> {
        let handle = response
            .header("electric-handle")
            .unwrap_or_default()
            .to_string();
        self.handle_shape.insert(handle.clone(), ctx.shape);
        let synthetic = applied.synthetic_deletes.len() as u64;
        self.coverage.subquery_add("synthetic_deletes", synthetic);
        self.latest_handle[ctx.shape] = Some(handle.clone());
        for change in applied.changes {
            // Formatted before the wire check takes the change (rare).
            let late = (change.headers.lsn.zip(ctx.known_lsn))
                .filter(|(lsn, g)| lsn <= g)
                .map(|(lsn, g)| {
                    let key = &change.key;
                    format!("a change at lsn {lsn} ({key}) after up-to-date at {g}")
                });
            self.wire(ctx.shape, &handle, change)
                .map_err(|why| ("wire", why))?;
            if let Some(why) = late {
                return Err(("prefix-mismatch", why));
            }
        }
        if let Some(g) = applied.up_to_date {
            self.coverage.checks.prefix += 1;
            let oracle = self.oracle_at(ctx.shape, g);
            let oracle = self.views[ctx.shape].as_served(oracle, &client.rows);
            if !rows::same(&client.rows, &oracle) {
                let why = format!(
                    "up to date at lsn {g} with {} rows, the oracle as of {g} has {}: {}",
                    client.rows.len(),
                    oracle.len(),
                    rows::diff(&client.rows, &rows::keyed(&oracle))
                );
                return Err(("prefix-mismatch", why));
            }
        }
        self.latency(ctx).map_err(|why| ("latency", why))
    }

    /// A change is well formed and comes from a committed transaction; once
    /// the transaction's last change for the shape arrives, the whole
    /// sequence is what the Postgres model's transaction renders to for this
    /// shape (which changes, in which order, at which `op_position`, with
    /// which values, key changes and `last`).
    fn wire(&mut self, shape: usize, handle: &str, change: ChangeSeen) -> Result<(), String> {
        let view = &self.views[shape];
        let schema = view.schema.clone();
        let expected_key = view.key_of_text(&change.value);
        if expected_key.as_deref() != Some(change.key.as_str()) {
            let why = format!(
                "key {} does not follow from its value {:?}",
                change.key, change.value
            );
            return Err(why);
        }
        let h = &change.headers;
        let relation_is =
            |(s, n): &(Text, Text)| *s == schema.name.schema && *n == schema.name.name;
        if !h.relation.as_ref().is_some_and(relation_is) {
            return Err(format!(
                "relation {:?} for a change of {}",
                h.relation, schema.name
            ));
        }
        let (Some(lsn), Some(position)) = (h.lsn, h.op_position) else {
            return Ok(()); // a snapshot row: checked against the oracle's rows
        };
        self.coverage.checks.changes += 1;
        let xid = self.pg.with_transaction(lsn, |t| t.xid).ok_or_else(|| {
            format!(
                "{} claims lsn {lsn}, where no transaction committed",
                change.key
            )
        })?;
        if h.txids.as_deref() != Some(&[xid][..]) {
            let why = format!(
                "lsn {lsn} has xid {xid}, the change says txids {:?}",
                h.txids
            );
            return Err(why);
        }
        let last = h.last;
        let headers = change.headers;
        let seen = WireChange {
            operation: headers.operation,
            op_position: position,
            last,
            rendered: Rendered {
                key: change.key,
                value: change.value,
                old_value: change.old_value,
                key_change_to: headers.key_change_to,
                key_change_from: headers.key_change_from,
            },
        };
        let open = &mut self.open_txns[shape];
        if open
            .as_ref()
            .is_some_and(|(h, l, _)| h != handle || *l != lsn)
        {
            *open = None; // another handle's log, or the client gave up on it
        }
        let (_, _, changes) = open.get_or_insert_with(|| (handle.to_string(), lsn, Vec::new()));
        changes.push(seen);
        if !last {
            return Ok(());
        }
        let (_, _, got) = open.take().expect("just pushed");
        if self.views[shape].depth > 0 {
            // Which changes a subquery shape gets depends on its views at
            // the time (a move-in's buffered transactions are judged with
            // the views before it): the prefix check judges the rows.
            return Ok(());
        }
        let view = &self.views[shape];
        let expected = (self.pg)
            .with_transaction(lsn, |txn| expected(view, txn))
            .expect("the transaction was found above");
        if got != expected {
            return Err(format!(
                "lsn {lsn} arrived as {got:#?}, the Postgres transaction renders for this shape as {expected:#?}"
            ));
        }
        Ok(())
    }

    /// Outside fault windows, the first change after the client's known LSN
    /// that alters its rows arrives within the bound.
    fn latency(&mut self, ctx: &ReadContext<'_>) -> Result<(), String> {
        let (Some(bound_ms), Some(known)) = (self.latency_bound_ms, ctx.known_lsn) else {
            return Ok(());
        };
        if ctx.request.params.get("live").map(String::as_str) != Some("true") {
            return Ok(());
        }
        if self.views[ctx.shape].depth > 0 {
            // A subquery shape may pass over a state its dependencies left
            // at once (moves queued together collapse, as in Electric):
            // not every change reaches it, so latency is not judged.
            return Ok(());
        }
        let timeline = &self.timelines[ctx.shape];
        let Some(&(lsn, _)) = timeline.iter().find(|(l, _)| *l > known) else {
            return Ok(());
        };
        let committed_ms = self.commit_ms[&lsn];
        let now = now_ms();
        if !self.quiet(committed_ms.min(ctx.sent_ms), now, bound_ms) {
            return Ok(());
        }
        self.coverage.checks.latency += 1;
        let deadline_ms = committed_ms.max(ctx.sent_ms) + bound_ms;
        if now > deadline_ms {
            return Err(format!(
                "lsn {lsn} (committed at {committed_ms} ms) changes the rows of a live client at lsn {known}; its request of {} ms was answered at {now} ms, past {deadline_ms} ms",
                ctx.sent_ms
            ));
        }
        Ok(())
    }

    /// Whether no fault window (extended by the bound) touches `from..=to`.
    fn quiet(&self, from: u64, to: u64, bound_ms: u64) -> bool {
        self.faults.iter().all(|&(start, end)| {
            let end = end.map_or(u64::MAX, |e| e.saturating_add(bound_ms));
            end < from || start > to
        })
    }
}

/// What a shape must receive for `txn`: per change (in order), an insert,
/// update or delete, a key change as a delete and an insert, or nothing (an
/// update that changes no selected column); the last one flagged `last`.
fn expected(view: &ShapeView, txn: &Transaction) -> Vec<WireChange> {
    let full = view.replica_full;
    let mut out = Vec::new();
    let mut push = |operation: &str, op_position: u64, rendered: Rendered| {
        let operation = Text::from(operation);
        out.push(WireChange {
            operation,
            op_position,
            last: false,
            rendered,
        });
    };
    let pk = &view.schema.primary_key;
    for (k, change) in txn.changes.iter().enumerate() {
        let at = 2 * k as u64;
        if *change.table() != view.table {
            continue;
        }
        match change {
            Change::Insert { new, .. } if view.matches(new) => {
                push("insert", at, Rendered::inserted(view, new))
            }
            Change::Delete { old, .. } if view.matches(old) => {
                push("delete", at, Rendered::deleted(view, old, full))
            }
            Change::Update { old, new, .. } => match (view.matches(old), view.matches(new)) {
                (false, true) => push("insert", at, Rendered::inserted(view, new)),
                (true, false) => push("delete", at, Rendered::deleted(view, old, full)),
                (true, true) if pk.iter().any(|&i| old[i] != new[i]) => {
                    let gone = Rendered {
                        key_change_to: Some(view.key(new)),
                        ..Rendered::deleted(view, old, full)
                    };
                    push("delete", at, gone);
                    let came = Rendered {
                        key_change_from: Some(view.key(old)),
                        ..Rendered::inserted(view, new)
                    };
                    push("insert", at + 1, came);
                }
                (true, true) => {
                    if let Some(update) = Rendered::updated(view, old, new, full) {
                        push("update", at, update)
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }
    if let Some(last) = out.last_mut() {
        last.last = true;
    }
    out
}

/// A change as a client receives it: what the wire check compares.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Rendered {
    key: String,
    value: ClientRow,
    old_value: Option<ClientRow>,
    key_change_to: Option<String>,
    key_change_from: Option<String>,
}

/// One change of a transaction as a shape's client receives it.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct WireChange {
    operation: Text,
    op_position: u64,
    last: bool,
    rendered: Rendered,
}

impl Rendered {
    /// An insert: the selected columns.
    fn inserted(view: &ShapeView, new: &[Value]) -> Rendered {
        Rendered::row(view, new, view.render(new))
    }

    fn row(view: &ShapeView, row: &[Value], value: ClientRow) -> Rendered {
        Rendered {
            key: view.key(row),
            value,
            old_value: None,
            key_change_to: None,
            key_change_from: None,
        }
    }

    /// A delete: the primary key, or with `replica=full` the selected
    /// columns of the old row.
    fn deleted(view: &ShapeView, old: &[Value], full: bool) -> Rendered {
        let value = if full {
            view.render(old)
        } else {
            rendered(&view.schema, old, view.schema.primary_key.iter().copied())
        };
        Rendered::row(view, old, value)
    }

    /// An update: the primary key and the changed selected columns, or with
    /// `replica=full` the selected columns of the new row and the old values
    /// of the changed ones. `None` if no selected column changed (Electric
    /// drops such an update).
    fn updated(view: &ShapeView, old: &[Value], new: &[Value], full: bool) -> Option<Rendered> {
        let schema = &view.schema;
        let changed: Vec<usize> = view
            .selected_of(new)
            .filter(|&i| old[i] != new[i])
            .collect();
        if changed.is_empty() {
            return None;
        }
        Some(if full {
            Rendered {
                old_value: Some(rendered(schema, old, changed)),
                ..Rendered::inserted(view, new)
            }
        } else {
            let mut value = rendered(schema, new, schema.primary_key.iter().copied());
            value.extend(rendered(schema, new, changed));
            Rendered::row(view, new, value)
        })
    }
}
