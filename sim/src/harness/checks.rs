//! The checks: after each batch, stack restart and client restart, every
//! client must reach up-to-date with exactly the oracle's rows (the shape's
//! WHERE evaluated by the oracle over the Postgres model) within a simulated
//! deadline. The client materialises strictly on the way.

use super::net;
use super::trace::{SharedTrace, record};
use crate::client::{Outcome, ShapeClient};
use crate::oracle::rows::{self, KeyedRows};
use crate::pg::PgModel;
use crate::standard;
use engine::offset::LogOffset;
use madsim::net::Endpoint;
use serde::Serialize;
use std::time::Duration;

/// A violated check, as reported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// Which check: `strict-materialization`, `mismatch`, `liveness`,
    /// `unexpected-409`, `unexpected-status`, `graceful-shutdown`,
    /// `engine-invariant` (a panic in the engine crate) or `harness-error`
    /// (a panic in the harness itself).
    pub check: String,
    pub message: String,
    /// For a panic: its message with numbers and handles masked, the part
    /// of the signature that tells one assertion from another.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The shape (its index in the scenario), where one is at fault.
    pub shape: Option<usize>,
    /// The client (its index; a client restart makes new ones).
    pub client: Option<usize>,
    pub sim_ms: u64,
    /// The trace's most recent events when the failure was found.
    #[serde(skip)]
    pub last_events: Vec<String>,
}

impl Failure {
    pub fn new(check: &str, message: String, shape: Option<usize>, trace: &SharedTrace) -> Failure {
        let sim_ms =
            madsim::time::TimeHandle::try_current().map_or(0, |t| t.elapsed().as_millis() as u64);
        let last_events = trace.lock().expect("trace").recent();
        Failure {
            check: check.to_string(),
            message,
            detail: None,
            shape,
            client: shape,
            sim_ms,
            last_events,
        }
    }
}

/// The rows a client of `where_clause` on level_4 must hold, by key.
pub fn oracle_rows(pg: &PgModel, where_clause: Option<&str>) -> KeyedRows {
    rows::expected_rows(pg, &standard::level(4), where_clause, None)
}

/// A check may run this many times its timeout while the client progresses.
const PROGRESS_CAP: u64 = 10;
/// More 409s than this in one check is a refetch loop.
const MAX_REFETCHES: u64 = 3;

pub struct CheckRules {
    /// Set by the first client that fails: the others stop.
    pub stop: std::sync::atomic::AtomicBool,
    /// How long a client may go without progress.
    pub timeout_ms: u64,
    pub request_timeout_ms: u64,
    /// A 409 is expected (metadata may have been lost in a crash).
    pub allow_409: bool,
}

/// Polls until the client is up to date with the oracle's rows. Returns the
/// number of 409s it got.
#[allow(clippy::too_many_arguments)]
pub async fn converge(
    index: usize,
    client: &mut ShapeClient,
    oracle: &KeyedRows,
    pg: &PgModel,
    ep: &Endpoint,
    rules: &CheckRules,
    trace: &SharedTrace,
) -> Result<u64, Failure> {
    let now = || madsim::time::TimeHandle::current().elapsed().as_millis() as u64;
    let mut conflicts = 0;
    // Liveness is about progress: the deadline moves on whenever the client's
    // offset passes its furthest point so far (a long log walked over a lossy
    // network is slow, not stuck), up to a hard cap.
    let started_ms = now();
    let hard_deadline_ms = started_ms + PROGRESS_CAP * rules.timeout_ms;
    let mut deadline_ms = started_ms + rules.timeout_ms;
    let mut furthest: Option<LogOffset> = None;
    let mut furthest_handle = client.handle.clone();
    // Only an answer given during this check counts as up to date.
    client.up_to_date = false;
    let result = loop {
        if rules.stop.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(conflicts); // another client failed: this check is over
        }
        let offset = client.offset.parse::<LogOffset>().ok();
        if client.handle != furthest_handle {
            // A refetch starts a new log: progress is measured afresh.
            (furthest, furthest_handle) = (None, client.handle.clone());
        }
        if offset > furthest && client.handle.is_some() {
            furthest = offset;
            deadline_ms = (now() + rules.timeout_ms).min(hard_deadline_ms);
        }
        if conflicts > MAX_REFETCHES {
            break Err(Failure::new(
                "liveness",
                format!("shape {index}: {conflicts} refetches in one check"),
                Some(index),
                trace,
            ));
        }
        if now() >= deadline_ms {
            let (check, why) = if client.up_to_date && !pg.all_delivered() {
                (
                    "liveness",
                    format!(
                        "replication is behind: Postgres has transactions the engine never received (client at {})",
                        client.offset
                    ),
                )
            } else if client.up_to_date {
                (
                    "mismatch",
                    format!(
                        "up to date with {} rows, the oracle has {}: {}",
                        client.rows.len(),
                        oracle.len(),
                        rows::diff(&client.rows, oracle)
                    ),
                )
            } else {
                (
                    "liveness",
                    format!(
                        "never up to date (offset {}, handle {:?})",
                        client.offset, client.handle
                    ),
                )
            };
            break Err(Failure::new(
                check,
                format!("shape {index}: {why}"),
                Some(index),
                trace,
            ));
        }
        let request = client.request();
        let live = client.live;
        record(
            trace,
            format!(
                "client {index} requests offset {} live={live} handle={:?}",
                client.offset, client.handle
            ),
        );
        let Some(response) = net::get(ep, request, rules.request_timeout_ms).await else {
            record(trace, format!("client {index}: request lost"));
            continue;
        };
        let body_hash = response
            .body
            .bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
        record(
            trace,
            format!(
                "client {index} gets {} offset {:?} handle {:?} body {body_hash:08x}",
                response.status,
                response.header("electric-offset"),
                response.header("electric-handle")
            ),
        );
        match client.apply(&response) {
            Err(violation) => {
                break Err(Failure::new(
                    "strict-materialization",
                    format!("shape {index}: {violation}"),
                    Some(index),
                    trace,
                ));
            }
            Ok(Outcome::Data { .. }) => {
                if client.up_to_date && client.rows == *oracle {
                    break Ok(conflicts);
                }
            }
            Ok(Outcome::Refetch { new_handle }) => {
                conflicts += 1;
                if !rules.allow_409 {
                    let why = format!(
                        "shape {index}: 409 (new handle {new_handle:?}) where none may happen"
                    );
                    break Err(Failure::new("unexpected-409", why, Some(index), trace));
                }
            }
            Ok(Outcome::Retry { .. }) => madsim::time::sleep(Duration::from_millis(50)).await,
            Ok(Outcome::Unexpected { status, body }) => {
                let why = format!("shape {index}: {status}: {body}");
                break Err(Failure::new("unexpected-status", why, Some(index), trace));
            }
        }
    };
    if result.is_err() {
        rules.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    result
}
