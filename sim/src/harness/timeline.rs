//! A run as a timeline: typed marks (span begins and ends, instants) on
//! tracks (Postgres, the engine, restarts, checks, the network, each client,
//! each shape), kept beside the trace when asked for (`run --timeline`) and
//! never hashed, written as Chrome trace-event JSON (Perfetto,
//! `chrome://tracing`) with simulated time on the axis.
//!
//! Spans are written as complete events (`"ph": "X"`): a span begun again
//! on its track before it ended is closed there (`"interrupted"`), one
//! still open when the run ends is closed at its end (`"unfinished"`), so
//! every span has a duration and spans of one track never overlap.

use serde_json::{Value, json};
use std::collections::BTreeMap;

/// Where a mark is drawn.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Track {
    Postgres,
    Engine,
    Restarts,
    Checks,
    Network,
    Client(usize),
    /// A shape consumer, by handle.
    Shape(String),
}

impl Track {
    fn name(&self) -> String {
        match self {
            Track::Postgres => "postgres".to_string(),
            Track::Engine => "engine".to_string(),
            Track::Restarts => "restarts".to_string(),
            Track::Checks => "checks".to_string(),
            Track::Network => "network".to_string(),
            Track::Client(i) => format!("client {i}"),
            Track::Shape(handle) => format!("shape {handle}"),
        }
    }
}

/// What kind of thing a mark is (the trace event's category).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Batch,
    Restart,
    Kill,
    PowerLoss,
    Boot,
    Snapshot,
    Flush,
    Removal,
    Check,
    LongPoll,
    Conflict,
    Ack,
    Partition,
    Failure,
    Other,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Batch => "batch",
            Kind::Restart => "restart",
            Kind::Kill => "kill",
            Kind::PowerLoss => "power-loss",
            Kind::Boot => "boot",
            Kind::Snapshot => "snapshot",
            Kind::Flush => "flush",
            Kind::Removal => "removal",
            Kind::Check => "check",
            Kind::LongPoll => "long-poll",
            Kind::Conflict => "409",
            Kind::Ack => "ack",
            Kind::Partition => "partition",
            Kind::Failure => "failure",
            Kind::Other => "other",
        }
    }
}

/// One mark.
#[derive(Clone, Debug)]
pub enum Mark {
    Begin {
        track: Track,
        kind: Kind,
        name: String,
    },
    End {
        track: Track,
        kind: Kind,
    },
    Instant {
        track: Track,
        kind: Kind,
        name: String,
        args: Vec<(&'static str, String)>,
    },
}

#[derive(Debug, Default)]
pub struct Timeline {
    marks: Vec<(u64, Mark)>,
}

impl Timeline {
    pub fn mark(&mut self, now_ms: u64, mark: Mark) {
        assert!(
            self.marks.last().is_none_or(|(t, _)| *t <= now_ms),
            "timeline marks come in simulated-time order"
        );
        self.marks.push((now_ms, mark));
    }

    /// The Chrome trace-event JSON object, spans closed by `end_ms`.
    pub fn to_json(&self, seed: u64, end_ms: u64) -> Value {
        let mut tids: BTreeMap<Track, u64> = BTreeMap::new();
        let mut events = Vec::new();
        let mut open: BTreeMap<(Track, &'static str), (u64, String, Kind)> = BTreeMap::new();
        let us = |ms: u64| ms * 1_000;
        let mut tid = |track: &Track| {
            let next = tids.len() as u64 + 1;
            *tids.entry(track.clone()).or_insert(next)
        };
        let span = |tid: u64, kind: Kind, name: &str, from: u64, to: u64, how: Option<&str>| {
            let mut args = json!({});
            if let Some(how) = how {
                args[how] = json!(true);
            }
            json!({"name": name, "cat": kind.name(), "ph": "X", "ts": us(from),
                   "dur": us(to.saturating_sub(from)), "pid": 1, "tid": tid, "args": args})
        };
        for (at, mark) in &self.marks {
            match mark {
                Mark::Begin { track, kind, name } => {
                    let id = tid(track);
                    let key = (track.clone(), kind.name());
                    if let Some((from, old, _)) = open.insert(key, (*at, name.clone(), *kind)) {
                        events.push(span(id, *kind, &old, from, *at, Some("interrupted")));
                    }
                }
                Mark::End { track, kind } => {
                    let id = tid(track);
                    if let Some((from, name, _)) = open.remove(&(track.clone(), kind.name())) {
                        events.push(span(id, *kind, &name, from, *at, None));
                    }
                }
                Mark::Instant {
                    track,
                    kind,
                    name,
                    args,
                } => {
                    let id = tid(track);
                    let args: serde_json::Map<String, Value> = args
                        .iter()
                        .map(|(k, v)| (k.to_string(), json!(v)))
                        .collect();
                    events.push(
                        json!({"name": name, "cat": kind.name(), "ph": "i", "s": "t",
                        "ts": us(*at), "pid": 1, "tid": id, "args": args}),
                    );
                }
            }
        }
        for ((track, _), (from, name, kind)) in open {
            let id = tids[&track];
            events.push(span(
                id,
                kind,
                &name,
                from,
                end_ms.max(from),
                Some("unfinished"),
            ));
        }
        events.push(json!({"name": "process_name", "ph": "M", "pid": 1,
                           "args": {"name": format!("shapesim seed {seed} (simulated time)")}}));
        // Tracks in their own order: Postgres, the engine, restarts,
        // checks, the network, clients, shapes.
        for (index, (track, id)) in tids.iter().enumerate() {
            events.push(
                json!({"name": "thread_name", "ph": "M", "pid": 1, "tid": id,
                               "args": {"name": track.name()}}),
            );
            events.push(
                json!({"name": "thread_sort_index", "ph": "M", "pid": 1, "tid": id,
                               "args": {"sort_index": index + 1}}),
            );
        }
        json!({"traceEvents": events, "displayTimeUnit": "ms"})
    }
}

/// Begins a span on `track` now.
/// (`name` is called only when the run records a timeline.)
pub fn begin(
    trace: &super::trace::SharedTrace,
    track: Track,
    kind: Kind,
    name: impl FnOnce() -> String,
) {
    let mut trace = trace.lock().expect("trace");
    if trace.has_timeline() {
        let now_ms = crate::host::now_ms();
        trace.mark(
            now_ms,
            Mark::Begin {
                track,
                kind,
                name: name(),
            },
        );
    }
}

/// Ends the span of `kind` on `track` now.
pub fn end(trace: &super::trace::SharedTrace, track: Track, kind: Kind) {
    super::trace::mark(trace, Mark::End { track, kind });
}

/// An instant on `track` now.
pub fn instant(
    trace: &super::trace::SharedTrace,
    track: Track,
    kind: Kind,
    name: String,
    args: Vec<(&'static str, String)>,
) {
    super::trace::mark(
        trace,
        Mark::Instant {
            track,
            kind,
            name,
            args,
        },
    );
}

/// The engine's events on the timeline: boots on the engine's track,
/// snapshots, flushes and removals on each shape's.
pub fn draw_engine_event(trace: &super::trace::SharedTrace, event: &engine::env::Event) {
    use engine::env::Event;
    let shape = |handle: &engine::handle::ShapeHandle| Track::Shape(handle.to_string());
    match event {
        Event::BootStarted {
            previous_stop_clean,
        } => {
            let name = || format!("boot (previous stop clean: {previous_stop_clean})");
            begin(trace, Track::Engine, Kind::Boot, name);
        }
        Event::Ready => end(trace, Track::Engine, Kind::Boot),
        Event::SnapshotStarted { handle } => {
            begin(trace, shape(handle), Kind::Snapshot, || {
                "snapshot".to_string()
            });
        }
        Event::SnapshotCompleted { handle, .. } => end(trace, shape(handle), Kind::Snapshot),
        Event::ShapeDurable { handle, offset } => {
            let args = vec![("offset", offset.to_string())];
            instant(
                trace,
                shape(handle),
                Kind::Flush,
                "durable".to_string(),
                args,
            );
        }
        Event::ShapeRemoved { handle, reason } | Event::BootDropped { handle, reason } => {
            let name = format!("removed: {}", reason.name());
            instant(trace, shape(handle), Kind::Removal, name, Vec::new());
        }
        Event::LogTrimmed {
            handle,
            log_bytes,
            index_bytes,
        } => {
            let args = vec![
                ("log bytes", log_bytes.to_string()),
                ("index bytes", index_bytes.to_string()),
            ];
            instant(
                trace,
                shape(handle),
                Kind::Other,
                "log trimmed".to_string(),
                args,
            );
        }
        _ => {}
    }
}
