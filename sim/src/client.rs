//! A shape client that behaves like Electric's: it starts at `offset=-1`,
//! follows `electric-offset`, switches to live long-polls once up to date, and
//! on a 409 drops its rows and refetches with the handle it was given.
//!
//! It decodes the wire format with its own code and materialises strictly:
//! an insert of a key it holds, or an update or delete of a key it does not
//! hold, is a violation (as in Electric's oracle test).

use engine::api::{Request, Response};
use serde_json::Value as Json;
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

    /// Applies a response; `Err` is a violation of the strict row invariants.
    pub fn apply(&mut self, response: &Response) -> Result<Outcome, String> {
        self.requests += 1;
        match response.status {
            200 => {}
            409 => {
                self.rows.clear();
                self.refetches += 1;
                self.handle = response.header("electric-handle").map(str::to_string);
                self.offset = "-1".to_string();
                self.live = false;
                self.up_to_date = false;
                return Ok(Outcome::Refetch {
                    new_handle: self.handle.clone(),
                });
            }
            503 => return Ok(Outcome::Retry { status: 503 }),
            status => {
                return Ok(Outcome::Unexpected {
                    status,
                    body: response.body.clone(),
                });
            }
        }
        let messages: Vec<Json> = serde_json::from_str(&response.body)
            .map_err(|e| format!("body is not a JSON array: {e}"))?;
        let mut up_to_date = false;
        for message in &messages {
            let headers = &message["headers"];
            match headers["control"].as_str() {
                Some("up-to-date") => up_to_date = true,
                Some(_) => {}
                None => self.change(message)?,
            }
        }
        let handle = response
            .header("electric-handle")
            .ok_or("200 without electric-handle")?;
        let offset = response
            .header("electric-offset")
            .ok_or("200 without electric-offset")?;
        self.handle = Some(handle.to_string());
        self.offset = offset.to_string();
        // Up to date means: the last answer said so. Once live, a client
        // stays live, but a catch-up answer that does not end in
        // up-to-date leaves it behind again.
        self.up_to_date = up_to_date;
        self.live |= up_to_date;
        Ok(Outcome::Data {
            messages: messages.len(),
            up_to_date,
        })
    }

    fn change(&mut self, message: &Json) -> Result<(), String> {
        let key = message["key"]
            .as_str()
            .ok_or("change without a key")?
            .to_string();
        let value = decode_row(&message["value"])?;
        match message["headers"]["operation"].as_str() {
            Some("insert") => {
                if self.rows.insert(key.clone(), value).is_some() {
                    return Err(format!("insert for row that already exists: {key}"));
                }
            }
            Some("update") => {
                let row = self
                    .rows
                    .get_mut(&key)
                    .ok_or_else(|| format!("update for row that does not exist: {key}"))?;
                if self.replica_full {
                    *row = value;
                } else {
                    row.extend(value);
                }
            }
            Some("delete") => {
                if self.rows.remove(&key).is_none() {
                    return Err(format!("delete for row that does not exist: {key}"));
                }
            }
            other => return Err(format!("unknown operation {other:?} for {key}")),
        }
        Ok(())
    }
}

fn decode_row(value: &Json) -> Result<ClientRow, String> {
    let object = value.as_object().ok_or("value is not an object")?;
    object
        .iter()
        .map(|(column, v)| match v {
            Json::Null => Ok((column.clone(), None)),
            Json::String(s) => Ok((column.clone(), Some(s.clone()))),
            other => Err(format!("column {column} has non-text value {other}")),
        })
        .collect()
}
