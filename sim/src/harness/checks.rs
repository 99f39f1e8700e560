//! The checks after each batch, stack restart and client restart: every
//! client must reach up-to-date with exactly the oracle's rows (the shape's
//! WHERE evaluated by the oracle over the Postgres model) within a simulated
//! deadline, every answer on the way judged by the client itself and by the
//! state checker ([`super::checker`]); then the slot must reach the last
//! committed transaction (`ack-liveness`).

use super::checker::{self, ReadContext, SharedChecker};
use super::net::ClientNet;
use super::timeline::{self, Kind, Track};
use super::trace::{DebugText, SharedTrace, record};
use crate::client::{Outcome, ShapeClient};
use crate::oracle::rows::{self, OracleRows};
use crate::pg::PgModel;
use engine::offset::LogOffset;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// A violated check, as reported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Failure {
    /// Which check: the client's (`strict-materialization`, `continuity`,
    /// `wire`), the state checker's (`ack-contract`, `ack-liveness`,
    /// `lost-shape`, `unexplained-409`, `prefix-mismatch`,
    /// `latency`), the convergence checks (`mismatch`, `liveness`,
    /// `unexpected-status`), `graceful-shutdown`, `engine-contract` (the
    /// engine broke the Postgres model's side of a boundary),
    /// `engine-invariant` (an engine assertion fired) or `harness-error` (a
    /// bug in the harness itself).
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
}

use crate::host::now_ms;

/// Why a client that ran out of time failed.
fn stuck(
    index: usize,
    client: &ShapeClient,
    oracle: &OracleRows,
    pg: &PgModel,
) -> (&'static str, String) {
    let (check, why) = if client.up_to_date && !pg.all_delivered() {
        let why = format!(
            "replication is behind: Postgres has transactions the engine never received (client at {})",
            client.offset
        );
        ("liveness", why)
    } else if client.up_to_date {
        let why = format!(
            "up to date with {} rows, the oracle has {}: {}",
            client.rows.len(),
            oracle.len(),
            rows::diff(&client.rows, &rows::keyed(oracle))
        );
        ("mismatch", why)
    } else {
        let why = format!(
            "never up to date (offset {}, handle {:?})",
            client.offset, client.handle
        );
        ("liveness", why)
    };
    (check, format!("shape {index}: {why}"))
}

/// One request and its answer, judged by the client and the state checker.
/// `Ok(None)`: the request or its answer was lost.
pub async fn exchange(
    index: usize,
    client: &mut ShapeClient,
    checker: &SharedChecker,
    net: &ClientNet,
    timeout_ms: u64,
) -> Result<Option<Outcome>, Failure> {
    let trace = checker::lock(checker).trace.clone();
    // Shared with the engine's handler: the request is read, never changed.
    let request = Arc::new(client.request());
    let ctx = ReadContext {
        shape: index,
        request: &request,
        sent_ms: now_ms(),
        known_lsn: client.up_to_date_lsn,
    };
    record(
        &trace,
        format_args!(
            "client {index} requests offset {} live={} handle={}",
            client.offset,
            client.live,
            DebugText(client.handle.as_deref())
        ),
    );
    let (track, poll) = (Track::Client(index), Kind::LongPoll);
    let name = || {
        let live = if client.live { " live" } else { "" };
        format!("GET offset {}{live}", client.offset)
    };
    timeline::begin(&trace, track.clone(), poll, name);
    let response = net.get(request.clone(), timeout_ms).await;
    timeline::end(&trace, track.clone(), poll);
    let Some(response) = response else {
        record(&trace, format_args!("client {index}: request lost"));
        return Ok(None);
    };
    if response.status == 409 {
        let handle = response
            .header("electric-handle")
            .unwrap_or_default()
            .to_string();
        let args = vec![("new handle", handle)];
        timeline::instant(
            &trace,
            track,
            Kind::Conflict,
            "409 must refetch".into(),
            args,
        );
    }
    record(
        &trace,
        format_args!(
            "client {index} gets {} offset {} handle {} body {:08x}",
            response.status,
            DebugText(response.header("electric-offset")),
            DebugText(response.header("electric-handle")),
            body_hash(&response.body)
        ),
    );
    let applied = client.apply(&request, &response).map_err(|violation| {
        let why = format!("shape {index}: {}", violation.message);
        Failure::new(violation.class, why, Some(index), &trace)
    })?;
    let mut checker = checker::lock(checker);
    if matches!(applied.outcome, Outcome::Refetch { .. }) {
        checker.coverage.rows_refetched += client.rows_dropped;
    }
    let outcome = applied.outcome.clone();
    checker
        .on_response(&ctx, &response, applied, client)
        .map_err(|failure| *failure)?;
    Ok(Some(outcome))
}

/// How a client's background polling is stopped.
#[derive(Default)]
pub struct StopSignal {
    stopped: std::sync::atomic::AtomicBool,
    event: event_listener::Event,
}

impl StopSignal {
    pub fn stop(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.event.notify(usize::MAX);
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Polls as a live client does, judging every answer, until `stop` (a
/// request in flight then is abandoned, as if lost: the client is unchanged).
pub async fn poll(
    index: usize,
    client: &mut ShapeClient,
    checker: &SharedChecker,
    net: &ClientNet,
    timeout_ms: u64,
    stop: &StopSignal,
) -> Result<(), Failure> {
    loop {
        let stopped = stop.event.listen();
        if stop.is_stopped() {
            return Ok(());
        }
        let exchange = std::pin::pin!(exchange(index, client, checker, net, timeout_ms));
        let applied = match futures::future::select(exchange, stopped).await {
            futures::future::Either::Left((result, _)) => result?,
            futures::future::Either::Right(_) => return Ok(()),
        };
        match applied {
            Some(Outcome::Retry { .. }) => madsim::time::sleep(Duration::from_millis(50)).await,
            Some(Outcome::Unexpected { status, body }) => {
                let why = format!("shape {index}: {status}: {body}");
                let trace = checker::lock(checker).trace.clone();
                return Err(Failure::new("unexpected-status", why, Some(index), &trace));
            }
            _ => {}
        }
    }
}

/// Polls until the client is up to date with the oracle's rows.
pub async fn converge(
    index: usize,
    client: &mut ShapeClient,
    checker: &SharedChecker,
    pg: &PgModel,
    net: &ClientNet,
    rules: &CheckRules,
) -> Result<(), Failure> {
    let trace = checker::lock(checker).trace.clone();
    let oracle = checker::lock(checker).oracle_now(index);
    let mut conflicts = 0;
    // Liveness is about progress: the deadline moves on whenever the client's
    // offset passes its furthest point so far (a long log walked over a lossy
    // network is slow, not stuck), up to a hard cap.
    let started_ms = now_ms();
    let hard_deadline_ms = started_ms + PROGRESS_CAP * rules.timeout_ms;
    let mut deadline_ms = started_ms + rules.timeout_ms;
    let mut furthest: Option<LogOffset> = None;
    let mut furthest_handle = client.handle.clone();
    // Only an answer given during this check counts as up to date.
    client.up_to_date = false;
    let result = loop {
        if rules.stop.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(()); // another client failed: this check is over
        }
        let offset = client.offset.parse::<LogOffset>().ok();
        if client.handle != furthest_handle {
            // A refetch starts a new log: progress is measured afresh.
            (furthest, furthest_handle) = (None, client.handle.clone());
        }
        if offset > furthest && client.handle.is_some() {
            furthest = offset;
            deadline_ms = (now_ms() + rules.timeout_ms).min(hard_deadline_ms);
        }
        if conflicts > MAX_REFETCHES {
            let why = format!("shape {index}: {conflicts} refetches in one check");
            break Err(Failure::new("liveness", why, Some(index), &trace));
        }
        if now_ms() >= deadline_ms {
            let (check, why) = stuck(index, client, &oracle, pg);
            break Err(Failure::new(check, why, Some(index), &trace));
        }
        let asked_handle = client.handle.clone();
        let outcome = match exchange(index, client, checker, net, rules.request_timeout_ms).await {
            Ok(Some(outcome)) => outcome,
            Ok(None) => continue,
            Err(failure) => break Err(failure),
        };
        match outcome {
            Outcome::Data { .. } if client.up_to_date && rows::same(&client.rows, &oracle) => {
                let mut checker = checker::lock(checker);
                let checks = &mut checker.coverage.checks;
                checks.total += 1;
                checks.non_empty += u64::from(!oracle.is_empty());
                checks.rows_compared += oracle.len() as u64;
                break Ok(());
            }
            Outcome::Data { .. } => {}
            // A shape whose own files had I/O errors injected may be
            // dropped again and again (a many-chunk snapshot does many
            // writes): those refetches are the faults', not a loop.
            Outcome::Refetch { .. } => {
                let faulted = asked_handle
                    .as_deref()
                    .is_some_and(|h| checker::lock(checker).io_faulted(h));
                conflicts += u64::from(!faulted);
            }
            Outcome::Retry { .. } => madsim::time::sleep(Duration::from_millis(50)).await,
            Outcome::Unexpected { status, body } => {
                let why = format!("shape {index}: {status}: {body}");
                break Err(Failure::new("unexpected-status", why, Some(index), &trace));
            }
        }
    };
    if result.is_err() {
        rules.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    result
}

/// `h = h * 31 + byte` over the body (wrapping), as traced since the first
/// trace. Computed 32 bytes at a time, `h * 31^32 + Σ byte_j * 31^(31-j)`:
/// the same polynomial without a multiply chained through every byte (the
/// sum is a dot product the compiler vectorizes).
fn body_hash(body: &str) -> u32 {
    const BLOCK: usize = 32;
    const POWERS: [u32; BLOCK] = {
        let mut powers = [1u32; BLOCK];
        let mut j = BLOCK - 1;
        while j > 0 {
            powers[j - 1] = powers[j].wrapping_mul(31);
            j -= 1;
        }
        powers
    };
    let step = POWERS[0].wrapping_mul(31);
    let bytes = body.as_bytes();
    let mut chunks = bytes.chunks_exact(BLOCK);
    let mut hash = 0u32;
    for chunk in &mut chunks {
        let sum = chunk.iter().zip(POWERS).fold(0u32, |s, (&b, p)| {
            s.wrapping_add(u32::from(b).wrapping_mul(p))
        });
        hash = hash.wrapping_mul(step).wrapping_add(sum);
    }
    chunks
        .remainder()
        .iter()
        .fold(hash, |h, &b| h.wrapping_mul(31).wrapping_add(u32::from(b)))
}

/// At quiescence the slot must reach the last committed transaction within
/// `timeout_ms`; otherwise `ack-liveness`, naming what holds it back.
pub async fn ack_liveness(
    checker: &SharedChecker,
    pg: &PgModel,
    timeout_ms: u64,
) -> Result<(), Failure> {
    let Some(target) = pg.last_txn_lsn() else {
        return Ok(());
    };
    let deadline_ms = now_ms() + timeout_ms;
    while pg.slot_confirmed() < target {
        if now_ms() >= deadline_ms {
            let checker = checker::lock(checker);
            let why = format!(
                "the slot is at lsn {} after {timeout_ms} ms of quiet, the last commit is {target}: {}",
                pg.slot_confirmed(),
                checker.ack_holdup(target)
            );
            return Err(Failure::new("ack-liveness", why, None, &checker.trace));
        }
        madsim::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(engine::testing::proptest_config(256))]

        #[test]
        fn body_hash_is_the_bytewise_polynomial(body in ".{0,200}") {
            let bytewise = body
                .bytes()
                .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
            prop_assert_eq!(super::body_hash(&body), bytewise);
        }
    }
}
