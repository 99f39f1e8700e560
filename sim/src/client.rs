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
//! What needs the oracle (the changes against the Postgres model, the rows
//! as of each up-to-date LSN) is the state checker's (`harness::checker`);
//! [`Applied`] hands it every change with the row it replaced.

use engine::api::{Request, Response};
use engine::offset::LogOffset;
use engine::replication::Lsn;
use serde::Deserialize;
use std::collections::BTreeMap;

/// A materialised row: column -> text value (`None` for NULL).
pub type ClientRow = BTreeMap<String, Option<String>>;

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
    /// The highest `global_last_seen_lsn` seen for the current handle.
    pub up_to_date_lsn: Option<Lsn>,
    /// A transaction whose last change has not arrived yet.
    open_txn: Option<Lsn>,
    /// The last replicated change's LSN for the current handle.
    last_change_lsn: Option<Lsn>,
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
    pub operation: String,
    pub relation: Option<(String, String)>,
    pub lsn: Option<Lsn>,
    pub op_position: Option<u64>,
    pub txids: Option<Vec<u64>>,
    pub last: bool,
    pub key_change_to: Option<String>,
    pub key_change_from: Option<String>,
}

/// One change as received, with the row it replaced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeSeen {
    pub headers: Headers,
    pub key: String,
    pub value: ClientRow,
    pub old_value: Option<ClientRow>,
    /// The client's row under `key` before the change (update, delete).
    pub previous: Option<ClientRow>,
}

/// What a response did to the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub outcome: Outcome,
    /// Every change (snapshot rows too), in order.
    pub changes: Vec<ChangeSeen>,
    /// The `global_last_seen_lsn` of a closing up-to-date.
    pub up_to_date: Option<Lsn>,
}

impl Applied {
    fn only(outcome: Outcome) -> Applied {
        Applied {
            outcome,
            changes: Vec::new(),
            up_to_date: None,
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
            up_to_date_lsn: None,
            open_txn: None,
            last_change_lsn: None,
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
    }

    /// Applies a response to the request it answers; `Err` is a violation.
    pub fn apply(&mut self, request: &Request, response: &Response) -> Result<Applied, Violation> {
        self.requests += 1;
        match response.status {
            200 => {}
            409 => {
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
        let messages: Vec<Message> = serde_json::from_str(&response.body).map_err(|e| {
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
        for message in messages {
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

    fn change(&mut self, message: Message) -> Result<ChangeSeen, Violation> {
        let key = message
            .key
            .ok_or_else(|| violation("wire", "a change without a key".to_string()))?;
        let headers = headers(message.headers, &key)?;
        let value = message
            .value
            .ok_or_else(|| violation("wire", format!("a change of {key} without a value")))?;
        let old_value = message.old_value;
        self.txn_structure(&headers, &key)?;
        let previous = self.rows.get(&key).cloned();
        match headers.operation.as_str() {
            "insert" => {
                if previous.is_some() {
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
        Ok(ChangeSeen {
            headers,
            key,
            value,
            old_value,
            previous,
        })
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
            value.keys(),
            row.keys()
        ));
    }
    let changed: ClientRow = row
        .iter()
        .filter(|(column, v)| value.get(*column) != Some(*v))
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
struct Message {
    headers: RawHeaders,
    key: Option<String>,
    value: Option<ClientRow>,
    old_value: Option<ClientRow>,
}

#[derive(Deserialize)]
struct RawHeaders {
    control: Option<String>,
    global_last_seen_lsn: Option<String>,
    operation: Option<String>,
    relation: Option<(String, String)>,
    lsn: Option<String>,
    op_position: Option<u64>,
    txids: Option<Vec<u64>>,
    last: Option<bool>,
    key_change_to: Option<String>,
    key_change_from: Option<String>,
}

fn headers(raw: RawHeaders, key: &str) -> Result<Headers, Violation> {
    let bad = |what: &str| {
        violation(
            "wire",
            format!("header {what} of the change of {key} malformed"),
        )
    };
    let operation = raw.operation.ok_or_else(|| bad("operation"))?;
    let relation = Some(raw.relation.ok_or_else(|| bad("relation"))?);
    let lsn = match raw.lsn {
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
        txids: raw.txids,
        last: raw.last.unwrap_or(false),
        key_change_to: raw.key_change_to,
        key_change_from: raw.key_change_from,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(handle: &str, offset: &str, body: &str) -> Response {
        let headers = [("electric-handle", handle), ("electric-offset", offset)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Response {
            status: 200,
            headers,
            body: body.to_string(),
        }
    }

    const ROW: &str = r#"{"key":"\"public\".\"t\"/\"a\"","value":{"id":"a","n":"1"},"headers":{"operation":"insert","relation":["public","t"]}}"#;

    /// A client that has read the snapshot row `a` (n = 1) of handle `h`.
    fn started(replica_full: bool) -> ShapeClient {
        let mut client = ShapeClient::new("t", None, replica_full);
        let request = client.request();
        client
            .apply(&request, &response("h", "0_inf", &format!("[{ROW}]")))
            .unwrap();
        client
    }

    fn change(op: &str, value: &str, old_value: &str, last: bool) -> String {
        let old = if old_value.is_empty() {
            String::new()
        } else {
            format!(r#","old_value":{old_value}"#)
        };
        format!(
            r#"{{"key":"\"public\".\"t\"/\"a\"","value":{value}{old},"headers":{{"operation":"{op}","relation":["public","t"],"lsn":"9","op_position":0,"txids":[7],"last":{last}}}}}"#
        )
    }

    #[test]
    fn a_200_under_another_handle_or_going_back_breaks_continuity() {
        let mut client = started(false);
        let request = client.request();
        let err = client
            .apply(&request, &response("other", "0_inf", "[]"))
            .unwrap_err();
        assert_eq!(err.class, "continuity", "{err}");
        let mut client = started(false);
        let request = client.request();
        let err = client
            .apply(&request, &response("h", "0_0", "[]"))
            .unwrap_err();
        assert_eq!(err.class, "continuity", "{err}");
        assert!(err.message.contains("went back"), "{err}");
    }

    #[test]
    fn replica_full_updates_must_carry_the_values_the_client_had() {
        let good = change("update", r#"{"id":"a","n":"2"}"#, r#"{"n":"1"}"#, true);
        let mut client = started(true);
        let request = client.request();
        let applied = client
            .apply(&request, &response("h", "9_0", &format!("[{good}]")))
            .unwrap();
        assert_eq!(
            applied.changes[0].previous.as_ref().unwrap()["n"].as_deref(),
            Some("1")
        );
        let wrong = change("update", r#"{"id":"a","n":"2"}"#, r#"{"n":"2"}"#, true);
        let mut client = started(true);
        let request = client.request();
        let err = client
            .apply(&request, &response("h", "9_0", &format!("[{wrong}]")))
            .unwrap_err();
        assert_eq!(err.class, "wire", "{err}");
        let partial = change("update", r#"{"n":"2"}"#, r#"{"n":"1"}"#, true);
        let mut client = started(true);
        let request = client.request();
        let err = client
            .apply(&request, &response("h", "9_0", &format!("[{partial}]")))
            .unwrap_err();
        assert!(err.message.contains("columns"), "the whole row: {err}");
    }

    #[test]
    fn a_transaction_must_end_with_last_before_another_or_an_up_to_date() {
        let open = change("update", r#"{"id":"a","n":"2"}"#, "", false);
        let up_to_date = r#"{"headers":{"control":"up-to-date","global_last_seen_lsn":"9"}}"#;
        let mut client = started(false);
        let request = client.request();
        let err = client
            .apply(
                &request,
                &response("h", "9_0", &format!("[{open},{up_to_date}]")),
            )
            .unwrap_err();
        assert_eq!(err.class, "wire", "{err}");
        let closed = change("update", r#"{"id":"a","n":"2"}"#, "", true);
        let mut client = started(false);
        let request = client.request();
        let applied = client
            .apply(
                &request,
                &response("h", "9_0", &format!("[{closed},{up_to_date}]")),
            )
            .unwrap();
        assert_eq!(
            (applied.up_to_date, client.up_to_date_lsn),
            (Some(9), Some(9))
        );
    }

    #[test]
    fn strict_materialization_and_malformed_messages_are_named() {
        let mut client = started(false);
        let request = client.request();
        let err = client
            .apply(&request, &response("h", "0_inf", &format!("[{ROW}]")))
            .unwrap_err();
        assert_eq!(err.class, "strict-materialization", "{err}");
        let mut client = started(false);
        let request = client.request();
        let number = r#"[{"key":"k","value":{"n":1},"headers":{"operation":"insert","relation":["public","t"]}}]"#;
        let err = client
            .apply(&request, &response("h", "0_inf", number))
            .unwrap_err();
        assert_eq!(err.class, "wire", "values are text: {err}");
    }
}
