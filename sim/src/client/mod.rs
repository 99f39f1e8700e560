//! A shape client that behaves like Electric's: it starts at `offset=-1`,
//! follows `electric-offset`, switches to live long-polls once up to date, and
//! on a 409 drops its rows and refetches with the handle it was given.
//!
//! It decodes the wire format with its own code and checks everything it
//! can check alone, each a failure class:
//! - `strict-materialization`: an insert of a key it holds, or an update or
//!   delete of a key it does not hold (as in Electric's oracle test);
//! - `continuity`: a 200 for an offset other than `-1` carries the handle the
//!   client sent, and `electric-offset` never goes backwards for a handle;
//! - `wire`: every header is well formed; a transaction's changes are
//!   contiguous and the last carries `last: true`; with `replica=full`, an
//!   update's `old_value` holds exactly the changed columns with the values
//!   the client had, its `value` the whole row, and a delete's `value` the
//!   whole old row.
//!
//! For subquery shapes it tracks tags as Electric's Elixir client does
//! ([`tags`]): a `move-out` event deletes, on the client's side, the rows it
//! leaves with no disjunct fully true.
//!
//! What needs the oracle (the changes against the Postgres model, the rows
//! as of each up-to-date LSN) is the state checker's (`harness::checker`);
//! [`Applied`] hands it every change with the row it replaced.

use engine::api::{Request, Response};
use engine::offset::LogOffset;
use engine::replication::Lsn;
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::BTreeMap;

mod row;
mod tags;
pub use row::ClientRow;
pub use tags::MoveEvent;
use tags::TagTracker;

/// A column name or a value's text. Short strings (column names and most
/// values) are stored inline, so decoding and copying a row allocates only
/// for long ones.
pub type Text = compact_str::CompactString;

#[derive(Clone, Debug)]
pub struct ShapeClient {
    pub table: String,
    pub where_clause: Option<String>,
    pub columns: Option<String>,
    pub replica_full: bool,
    pub handle: Option<String>,
    pub offset: String,
    pub live: bool,
    pub up_to_date: bool,
    pub rows: BTreeMap<String, ClientRow>,
    pub requests: u64,
    pub refetches: u64,
    /// The rows it held when its last 409 made it start over.
    pub rows_dropped: u64,
    /// The highest `global_last_seen_lsn` seen for the current handle.
    pub up_to_date_lsn: Option<Lsn>,
    /// A transaction whose last change has not arrived yet.
    open_txn: Option<Lsn>,
    /// The last replicated change's LSN for the current handle.
    last_change_lsn: Option<Lsn>,
    /// Rows deleted by the client itself on a move-out, so far.
    pub synthetic_deletes: u64,
    tags: TagTracker,
}

/// What one response meant to the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 200: applied; `up_to_date` says whether the client is now up to date.
    Data { messages: usize, up_to_date: bool },
    /// 409: rows dropped; the next request starts over with the new handle.
    Refetch { new_handle: Option<String> },
    /// 503 or another retryable answer.
    Retry { status: u16 },
    /// Anything else (a 400 the client did not cause, a malformed body).
    Unexpected { status: u16, body: String },
}

/// A check the client itself failed, by class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub class: &'static str,
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.class, self.message)
    }
}

fn violation(class: &'static str, message: String) -> Violation {
    Violation { class, message }
}

/// The headers of a change message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers {
    pub operation: Text,
    pub relation: Option<(Text, Text)>,
    pub lsn: Option<Lsn>,
    pub op_position: Option<u64>,
    pub txids: Option<Vec<u64>>,
    pub last: bool,
    pub key_change_to: Option<String>,
    pub key_change_from: Option<String>,
    /// Subquery shapes: one tag per disjunct, the tags an update removed,
    /// and each position's condition.
    pub tags: Vec<String>,
    pub removed_tags: Vec<String>,
    pub active_conditions: Option<Vec<bool>>,
}

/// One change as received, with the row it replaced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeSeen {
    pub headers: Headers,
    pub key: String,
    pub value: ClientRow,
    pub old_value: Option<ClientRow>,
}

/// What a response did to the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub outcome: Outcome,
    /// Every change (snapshot rows too), in order.
    pub changes: Vec<ChangeSeen>,
    /// The `global_last_seen_lsn` of a closing up-to-date.
    pub up_to_date: Option<Lsn>,
    /// Keys the client deleted itself on a move-out, with the rows.
    pub synthetic_deletes: Vec<(String, ClientRow)>,
}

impl Applied {
    fn only(outcome: Outcome) -> Applied {
        Applied {
            outcome,
            changes: Vec::new(),
            up_to_date: None,
            synthetic_deletes: Vec::new(),
        }
    }
}

impl ShapeClient {
    pub fn new(table: &str, where_clause: Option<&str>, replica_full: bool) -> ShapeClient {
        ShapeClient {
            table: table.to_string(),
            where_clause: where_clause.map(str::to_string),
            columns: None,
            replica_full,
            handle: None,
            offset: "-1".to_string(),
            live: false,
            up_to_date: false,
            rows: BTreeMap::new(),
            requests: 0,
            refetches: 0,
            rows_dropped: 0,
            up_to_date_lsn: None,
            open_txn: None,
            last_change_lsn: None,
            synthetic_deletes: 0,
            tags: TagTracker::default(),
        }
    }

    /// The next request to send.
    pub fn request(&self) -> Request {
        let mut params = vec![
            ("table", self.table.as_str()),
            ("offset", self.offset.as_str()),
        ];
        if let Some(w) = &self.where_clause {
            params.push(("where", w));
        }
        if let Some(c) = &self.columns {
            params.push(("columns", c));
        }
        if let Some(h) = &self.handle {
            params.push(("handle", h));
        }
        if self.live {
            params.push(("live", "true"));
        }
        if self.replica_full {
            params.push(("replica", "full"));
        }
        Request::new(params)
    }

    /// Forgets everything about the current handle (a 409, or a new handle).
    fn start_over(&mut self) {
        self.rows.clear();
        self.offset = "-1".to_string();
        self.live = false;
        self.up_to_date = false;
        self.up_to_date_lsn = None;
        self.open_txn = None;
        self.last_change_lsn = None;
        self.tags.clear();
    }

    /// Applies a response to the request it answers; `Err` is a violation.
    pub fn apply(&mut self, request: &Request, response: &Response) -> Result<Applied, Violation> {
        self.requests += 1;
        match response.status {
            200 => {}
            409 => {
                self.rows_dropped = self.rows.len() as u64;
                self.start_over();
                self.refetches += 1;
                self.handle = response.header("electric-handle").map(str::to_string);
                let new_handle = self.handle.clone();
                return Ok(Applied::only(Outcome::Refetch { new_handle }));
            }
            503 => return Ok(Applied::only(Outcome::Retry { status: 503 })),
            status => {
                let body = response.body.clone();
                return Ok(Applied::only(Outcome::Unexpected { status, body }));
            }
        }
        self.continuity(request, response)?;
        let mut messages: Vec<Message<'_>> = serde_json::from_str(&response.body).map_err(|e| {
            violation(
                "wire",
                format!("body is not an array of messages: {e}: {}", response.body),
            )
        })?;
        let mut applied = Applied::only(Outcome::Data {
            messages: messages.len(),
            up_to_date: false,
        });
        let count = messages.len();
        // Each message is read in place: a decoded message is large, and
        // moving it out would copy it whole.
        for message in &mut messages {
            if message.headers.control.is_none() && message.headers.event.is_some() {
                self.move_event(message, &mut applied)?;
                continue;
            }
            match message.headers.control.as_deref() {
                Some("up-to-date") => {
                    let lsn = message
                        .headers
                        .global_last_seen_lsn
                        .as_deref()
                        .and_then(|s| s.parse().ok());
                    let lsn = lsn.ok_or_else(|| {
                        violation(
                            "wire",
                            "up-to-date without a numeric global_last_seen_lsn".to_string(),
                        )
                    })?;
                    applied.up_to_date = Some(lsn);
                }
                Some(_) => {}
                None => applied.changes.push(self.change(message)?),
            }
        }
        self.offset = response
            .header("electric-offset")
            .expect("checked")
            .to_string();
        // Up to date means: the last answer said so. Once live, a client
        // stays live, but a catch-up answer that does not end in
        // up-to-date leaves it behind again.
        self.up_to_date = applied.up_to_date.is_some();
        self.live |= self.up_to_date;
        if let Some(lsn) = applied.up_to_date {
            if let Some(open) = self.open_txn {
                let why = format!("up-to-date while transaction {open} lacks its last change");
                return Err(violation("wire", why));
            }
            self.up_to_date_lsn = Some(self.up_to_date_lsn.map_or(lsn, |g| g.max(lsn)));
        }
        applied.outcome = Outcome::Data {
            messages: count,
            up_to_date: self.up_to_date,
        };
        Ok(applied)
    }

    /// A 200 continues the log the client asked for: same handle (unless it
    /// started over), an offset that never goes backwards.
    fn continuity(&mut self, request: &Request, response: &Response) -> Result<(), Violation> {
        let handle = response
            .header("electric-handle")
            .ok_or_else(|| violation("wire", "200 without electric-handle".to_string()))?;
        let offset_text = response
            .header("electric-offset")
            .ok_or_else(|| violation("wire", "200 without electric-offset".to_string()))?;
        let offset: LogOffset = offset_text
            .parse()
            .map_err(|e| violation("wire", format!("electric-offset {offset_text:?}: {e}")))?;
        let sent_offset = request.params.get("offset").map(String::as_str);
        let sent_handle = request.params.get("handle").map(String::as_str);
        if sent_offset != Some("-1") {
            if sent_handle != Some(handle) {
                let why = format!(
                    "asked {sent_handle:?} at offset {sent_offset:?}, answered by {handle}"
                );
                return Err(violation("continuity", why));
            }
            let previous: LogOffset = self.offset.parse().expect("the client's own offset");
            if offset < previous {
                let why =
                    format!("electric-offset went back from {previous} to {offset} for {handle}");
                return Err(violation("continuity", why));
            }
        } else if self.handle.as_deref() != Some(handle) || !self.rows.is_empty() {
            // A fresh start (or a new handle): the log begins again.
            self.start_over();
        }
        self.handle = Some(handle.to_string());
        Ok(())
    }

    fn change(&mut self, message: &mut Message<'_>) -> Result<ChangeSeen, Violation> {
        let key = message
            .key
            .take()
            .ok_or_else(|| violation("wire", "a change without a key".to_string()))?;
        let headers = headers(&mut message.headers, &key)?;
        let value = message
            .value
            .take()
            .ok_or_else(|| violation("wire", format!("a change of {key} without a value")))?;
        let old_value = message.old_value.take();
        self.txn_structure(&headers, &key)?;
        match headers.operation.as_str() {
            "insert" => {
                if self.rows.contains_key(&key) {
                    let why = format!("insert for row that already exists: {key}");
                    return Err(violation("strict-materialization", why));
                }
                self.rows.insert(key.clone(), value.clone());
            }
            "update" => {
                let Some(row) = self.rows.get_mut(&key) else {
                    let why = format!("update for row that does not exist: {key}");
                    return Err(violation("strict-materialization", why));
                };
                if self.replica_full {
                    full_update(row, &value, old_value.as_ref(), &key)?;
                    *row = value.clone();
                } else {
                    row.extend(value.clone());
                }
            }
            "delete" => {
                let Some(row) = self.rows.remove(&key) else {
                    let why = format!("delete for row that does not exist: {key}");
                    return Err(violation("strict-materialization", why));
                };
                if self.replica_full && row != value {
                    let why = format!(
                        "replica=full delete of {key} carries {value:?}, the row was {row:?}"
                    );
                    return Err(violation("wire", why));
                }
            }
            other => {
                return Err(violation(
                    "wire",
                    format!("unknown operation {other:?} for {key}"),
                ));
            }
        }
        let active = headers.active_conditions.as_deref();
        self.tags.change(
            &key,
            &headers.operation,
            &headers.tags,
            &headers.removed_tags,
            active,
        )?;
        Ok(ChangeSeen {
            headers,
            key,
            value,
            old_value,
        })
    }

    /// A `move-in` / `move-out` event: positions flip; a move-out deletes
    /// the rows left with no disjunct fully true.
    fn move_event(
        &mut self,
        message: &mut Message<'_>,
        applied: &mut Applied,
    ) -> Result<(), Violation> {
        let raw = &mut message.headers;
        let event = match raw.event.as_deref() {
            Some("move-out") => MoveEvent::Out,
            Some("move-in") => MoveEvent::In,
            other => return Err(violation("wire", format!("unknown event {other:?}"))),
        };
        let patterns: Vec<(usize, String)> = raw
            .patterns
            .take()
            .ok_or_else(|| violation("wire", format!("{event:?} event without patterns")))?
            .into_iter()
            .map(|p| (p.pos, p.value))
            .collect();
        for key in self.tags.moved(event, &patterns)? {
            let row = self.rows.remove(&key).ok_or_else(|| {
                let why = format!("a move-out deletes {key}, which the client does not hold");
                violation("strict-materialization", why)
            })?;
            self.synthetic_deletes += 1;
            applied.synthetic_deletes.push((key, row));
        }
        Ok(())
    }

    /// A transaction's changes are contiguous and end with `last: true`.
    fn txn_structure(&mut self, headers: &Headers, key: &str) -> Result<(), Violation> {
        let Some(lsn) = headers.lsn else {
            return Ok(()); // a snapshot row
        };
        if let Some(open) = self.open_txn.filter(|&open| open != lsn) {
            let why = format!(
                "change of lsn {lsn} ({key}) while transaction {open} lacks its last change"
            );
            return Err(violation("wire", why));
        }
        if let Some(previous) = self.last_change_lsn.filter(|&p| p > lsn) {
            let why = format!("change of lsn {lsn} ({key}) after one of lsn {previous}");
            return Err(violation("wire", why));
        }
        self.last_change_lsn = Some(lsn);
        self.open_txn = (!headers.last).then_some(lsn);
        Ok(())
    }
}

/// `replica=full`: `old_value` is exactly the changed columns with the values
/// the client had, `value` the whole new row.
fn full_update(
    row: &ClientRow,
    value: &ClientRow,
    old_value: Option<&ClientRow>,
    key: &str,
) -> Result<(), Violation> {
    let bad = |why: String| {
        Err(violation(
            "wire",
            format!("replica=full update of {key}: {why}"),
        ))
    };
    let Some(old_value) = old_value else {
        return bad("no old_value".to_string());
    };
    if value.keys().ne(row.keys()) {
        return bad(format!(
            "value has columns {:?}, the row {:?}",
            value.keys().collect::<Vec<_>>(),
            row.keys().collect::<Vec<_>>()
        ));
    }
    let changed: ClientRow = row
        .iter()
        .filter(|(column, v)| value.get(column) != Some(*v))
        .map(|(c, v)| (c.clone(), v.clone()))
        .collect();
    if *old_value != changed {
        return bad(format!(
            "old_value {old_value:?}, the client had {changed:?} in the changed columns"
        ));
    }
    Ok(())
}

/// A message as the wire carries it (values are text or null: anything
/// else fails to decode, a `wire` violation).
#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    headers: RawHeaders<'a>,
    key: Option<String>,
    value: Option<ClientRow>,
    old_value: Option<ClientRow>,
}

/// Headers that are only read borrow from the body (`Cow`: a value with
/// escapes is still decoded).
#[derive(Deserialize)]
struct RawHeaders<'a> {
    #[serde(borrow)]
    control: Option<Cow<'a, str>>,
    #[serde(borrow)]
    global_last_seen_lsn: Option<Cow<'a, str>>,
    operation: Option<Text>,
    relation: Option<(Text, Text)>,
    #[serde(borrow)]
    lsn: Option<Cow<'a, str>>,
    op_position: Option<u64>,
    txids: Option<Vec<u64>>,
    last: Option<bool>,
    key_change_to: Option<String>,
    key_change_from: Option<String>,
    #[serde(borrow)]
    event: Option<Cow<'a, str>>,
    patterns: Option<Vec<Pattern>>,
    tags: Option<Vec<String>>,
    removed_tags: Option<Vec<String>>,
    active_conditions: Option<Vec<bool>>,
}

/// One `{pos, value}` of a move event.
#[derive(Deserialize)]
struct Pattern {
    pos: usize,
    value: String,
}

fn headers(raw: &mut RawHeaders<'_>, key: &str) -> Result<Headers, Violation> {
    let bad = |what: &str| {
        violation(
            "wire",
            format!("header {what} of the change of {key} malformed"),
        )
    };
    let operation = raw.operation.take().ok_or_else(|| bad("operation"))?;
    let relation = Some(raw.relation.take().ok_or_else(|| bad("relation"))?);
    let lsn = match raw.lsn.as_deref() {
        None => None,
        Some(text) => Some(text.parse().map_err(|_| bad("lsn"))?),
    };
    let replicated = [
        lsn.is_some(),
        raw.op_position.is_some(),
        raw.txids.is_some(),
    ];
    if replicated.iter().any(|&r| r) && !replicated.iter().all(|&r| r) {
        return Err(bad("lsn/op_position/txids (all or none)"));
    }
    Ok(Headers {
        operation,
        relation,
        lsn,
        op_position: raw.op_position,
        txids: raw.txids.take(),
        last: raw.last.unwrap_or(false),
        key_change_to: raw.key_change_to.take(),
        key_change_from: raw.key_change_from.take(),
        tags: raw.tags.take().unwrap_or_default(),
        removed_tags: raw.removed_tags.take().unwrap_or_default(),
        active_conditions: raw.active_conditions.take(),
    })
}

#[cfg(test)]
mod tests;
