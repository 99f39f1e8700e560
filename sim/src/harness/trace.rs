//! The event trace: every harness event (commit, delivery, acknowledgement,
//! fault, restart, client request and response, check) is fed into a running
//! hash. Two runs of one seed must produce the same hash; when they do not,
//! the kept events show the first that differs. The most recent events are
//! kept for failure reports.

use std::collections::VecDeque;
use std::fmt::{self, Write as _};
use std::sync::{Arc, Mutex};

const RECENT: usize = 40;

#[derive(Debug, Default)]
pub struct Trace {
    hash: u64,
    count: u64,
    last_ms: u64,
    recent: VecDeque<String>,
    /// Every event, when a determinism check needs them.
    all: Option<Vec<String>>,
    /// The typed marks of a timeline, when one was asked for (never hashed).
    timeline: Option<super::timeline::Timeline>,
    /// The run's simulated clock, taken from its runtime at the first event.
    clock: Option<RunClock>,
}

/// A run's clock. A trace belongs to one run, and a run to one runtime:
/// holding the runtime's time handle spares every event asking the runtime
/// context for it.
struct RunClock(madsim::time::TimeHandle);

impl fmt::Debug for RunClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RunClock")
    }
}

/// FNV-1a: stable across builds and platforms, unlike std's hasher.
fn fnv(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// `{now_ms:>8}ms ` (an event line's prefix) without the formatting
/// machinery: every event of every seed starts with it.
fn push_time(line: &mut String, now_ms: u64) {
    // 20 digits hold any u64; at least 8 columns; then "ms ".
    let mut text = [b' '; 23];
    text[20..].copy_from_slice(b"ms ");
    let mut start = 20;
    let mut rest = now_ms;
    loop {
        start -= 1;
        text[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    let from = start.min(20 - 8);
    line.push_str(std::str::from_utf8(&text[from..]).expect("ASCII"));
}

/// What `{:?}` writes for an `Option<&str>`, without the formatter's
/// per-character escape machinery when the text needs no escape
/// (printable ASCII but `"` and `\`): client lines print a handle or two
/// each.
pub struct DebugText<'a>(pub Option<&'a str>);

impl fmt::Display for DebugText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plain = |b: u8| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\';
        match self.0 {
            None => f.write_str("None"),
            Some(text) if text.bytes().all(plain) => {
                f.write_str("Some(\"")?;
                f.write_str(text)?;
                f.write_str("\")")
            }
            Some(text) => write!(f, "{:?}", Some(text)),
        }
    }
}

impl Trace {
    pub fn new(keep_all: bool) -> Trace {
        Trace {
            hash: 0xcbf2_9ce4_8422_2325,
            count: 0,
            last_ms: 0,
            recent: VecDeque::new(),
            all: keep_all.then(Vec::new),
            timeline: None,
            clock: None,
        }
    }

    /// Also keeps the marks of a timeline.
    pub fn with_timeline(mut self) -> Trace {
        self.timeline = Some(Default::default());
        self
    }

    /// Adds a timeline mark at `now_ms` (nothing without a timeline). Marks
    /// are not part of the hash: a timeline never changes a run's trace.
    pub fn mark(&mut self, now_ms: u64, mark: super::timeline::Mark) {
        if let Some(timeline) = &mut self.timeline {
            timeline.mark(now_ms.max(self.last_ms), mark);
        }
    }

    /// Simulated milliseconds since the run's runtime started (what
    /// `host::now_ms` reads).
    fn now_ms(&mut self) -> u64 {
        let clock = self
            .clock
            .get_or_insert_with(|| RunClock(madsim::time::TimeHandle::current()));
        clock.0.elapsed().as_millis() as u64
    }

    pub fn has_timeline(&self) -> bool {
        self.timeline.is_some()
    }

    pub fn take_timeline(&mut self) -> Option<super::timeline::Timeline> {
        self.timeline.take()
    }

    /// Formats the event once, into a line recycled from the oldest recent
    /// one (no allocation once the ring is full), and hashes it.
    pub fn record(&mut self, now_ms: u64, event: impl fmt::Display) {
        self.last_ms = now_ms;
        let mut line = if self.recent.len() == RECENT {
            self.recent.pop_front().unwrap_or_default()
        } else {
            String::new()
        };
        line.clear();
        push_time(&mut line, now_ms);
        write!(line, "{event}").expect("formatting into a String");
        self.hash = fnv(self.hash, line.as_bytes());
        self.hash = fnv(self.hash, b"\n");
        self.count += 1;
        if let Some(all) = &mut self.all {
            all.push(line.clone());
        }
        self.recent.push_back(line);
    }

    pub fn hash(&self) -> String {
        format!("{:016x}", self.hash)
    }

    /// The simulated time of the last event.
    pub fn last_ms(&self) -> u64 {
        self.last_ms
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn recent(&self) -> Vec<String> {
        self.recent.iter().cloned().collect()
    }

    pub fn take_all(&mut self) -> Vec<String> {
        self.all.take().unwrap_or_default()
    }
}

/// The trace as shared by every node of a run (one OS thread: the mutex is
/// never contended, it only satisfies `Send`).
pub type SharedTrace = Arc<Mutex<Trace>>;

/// Records an event at the current simulated time (pass `format_args!` to
/// format straight into the trace).
pub fn record(trace: &SharedTrace, event: impl fmt::Display) {
    let mut trace = trace.lock().expect("trace");
    let now_ms = trace.now_ms();
    trace.record(now_ms, event);
}

/// Adds a timeline mark at the current simulated time.
pub fn mark(trace: &SharedTrace, mark: super::timeline::Mark) {
    let mut trace = trace.lock().expect("trace");
    let now_ms = trace.now_ms();
    trace.mark(now_ms, mark);
}

/// The first index where two event lists differ, with both events.
pub fn first_divergence(
    a: &[String],
    b: &[String],
) -> Option<(usize, Option<String>, Option<String>)> {
    let n = a.len().max(b.len());
    (0..n)
        .find(|&i| a.get(i) != b.get(i))
        .map(|i| (i, a.get(i).cloned(), b.get(i).cloned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_time_prefix_is_right_aligned_in_eight() {
        for ms in [0, 7, 12_345, 99_999_999, 123_456_789, u64::MAX] {
            let mut line = String::new();
            push_time(&mut line, ms);
            assert_eq!(line, format!("{ms:>8}ms "));
        }
    }

    #[test]
    fn debug_text_writes_what_debug_writes() {
        let texts = [
            "",
            "abc-123",
            "a\"b",
            "back\\slash",
            "it's",
            "tab\there",
            "new\nline",
            "é",
            "~ !",
            "\u{7f}",
        ];
        for text in texts {
            assert_eq!(
                DebugText(Some(text)).to_string(),
                format!("{:?}", Some(text))
            );
        }
        assert_eq!(DebugText(None).to_string(), format!("{:?}", None::<&str>));
    }

    proptest::proptest! {
        #![proptest_config(engine::testing::proptest_config(256))]

        #[test]
        fn debug_text_writes_what_debug_writes_for_any_text(text in "\\PC{0,24}|[ -~]{0,24}") {
            proptest::prop_assert_eq!(
                DebugText(Some(&text)).to_string(),
                format!("{:?}", Some(&text))
            );
        }
    }

    #[test]
    fn the_hash_covers_order_and_content_and_divergence_is_located() {
        let mut a = Trace::new(true);
        let mut b = Trace::new(true);
        a.record(1, "x");
        a.record(2, "y");
        b.record(1, "x");
        b.record(2, "z");
        assert_ne!(a.hash(), b.hash());
        let (ea, eb) = (a.take_all(), b.take_all());
        assert_eq!(
            first_divergence(&ea, &eb),
            Some((1, Some(ea[1].clone()), Some(eb[1].clone())))
        );
        assert_eq!(first_divergence(&ea, &ea), None);
    }
}
