//! Which code panicked, for a run whose simulation thread panicked.
//!
//! A panic is a failure, but not always the engine's: an assertion in the
//! engine crate, raised while the engine's node was running, is an
//! `engine-invariant` failure; madsim's own time limit or deadlock detection
//! is `liveness`; anything else (the harness's own `expect`s, engine code the
//! harness calls on another node, such as a client parsing an offset) is a
//! `harness-error`, which must never pass for an engine bug. A process-wide
//! panic hook records the first panic of every simulation thread (named
//! `seed-…`) with its source location and the node it ran on; other threads'
//! panics print as usual.
//!
//! The node: every future that runs engine code on the engine's node is
//! wrapped in [`on_engine`], which marks the thread while it is polled (all
//! nodes share the simulation thread, one task at a time).

use std::cell::Cell;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, Once};
use std::task::{Context, Poll};

thread_local! {
    /// Set while a future of the engine's node is being polled.
    static ON_ENGINE: Cell<bool> = const { Cell::new(false) };
}

/// A future that runs on the engine's node (see the module comment).
pub struct OnEngine<F> {
    inner: Pin<Box<F>>,
}

/// Marks `future` as the engine node's.
pub fn on_engine<F: Future>(future: F) -> OnEngine<F> {
    OnEngine {
        inner: Box::pin(future),
    }
}

impl<F: Future> Future for OnEngine<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        struct Restore(bool);
        impl Drop for Restore {
            fn drop(&mut self) {
                ON_ENGINE.with(|c| c.set(self.0));
            }
        }
        let _restore = Restore(ON_ENGINE.with(|c| c.replace(true)));
        self.inner.as_mut().poll(cx)
    }
}

/// The first panic seen on one simulation thread.
#[derive(Clone, Debug)]
pub struct PanicRecord {
    /// Source file of the panic, as the compiler names it (`engine/src/…`
    /// for the engine crate).
    pub file: String,
    pub line: u32,
    pub message: String,
    /// Whether the engine's node was running (see [`on_engine`]).
    pub on_engine: bool,
}

static HOOK: Once = Once::new();
static QUIET: AtomicBool = AtomicBool::new(false);
static THREADS: AtomicU64 = AtomicU64::new(0);
static FIRST_PANICS: Mutex<BTreeMap<String, PanicRecord>> = Mutex::new(BTreeMap::new());

const PREFIX: &str = "seed-";

/// Stops simulation threads from printing their panics (the failure report
/// carries the message); idempotent.
pub fn quiet() {
    QUIET.store(true, Ordering::SeqCst);
    install();
}

/// A unique name for a new simulation thread (unique so that concurrent
/// runs of one seed keep their records apart; never part of the trace).
pub fn thread_name(seed: u64) -> String {
    install();
    let n = THREADS.fetch_add(1, Ordering::SeqCst);
    format!("{PREFIX}{seed}-{n}")
}

/// Removes and returns the first panic recorded on the named thread.
pub fn take(thread: &str) -> Option<PanicRecord> {
    FIRST_PANICS.lock().expect("panic records").remove(thread)
}

fn install() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            let Some(name) = thread.name().filter(|n| n.starts_with(PREFIX)) else {
                return previous(info);
            };
            let message = info
                .payload()
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "(a panic without a message)".to_string());
            let (file, line) = info
                .location()
                .map_or((String::new(), 0), |l| (l.file().to_string(), l.line()));
            // Later panics on the thread are consequences (madsim re-raising
            // the task's panic): keep the first.
            FIRST_PANICS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(name.to_string())
                .or_insert(PanicRecord {
                    file,
                    line,
                    message,
                    on_engine: ON_ENGINE.with(Cell::get),
                });
            if !QUIET.load(Ordering::SeqCst) {
                previous(info);
            }
        }));
    });
}

impl PanicRecord {
    /// The failure check this panic is: see the module comment.
    pub fn check(&self) -> &'static str {
        let file = self.file.replace('\\', "/");
        let engine_code = file.starts_with("engine/src/") || file.contains("/engine/src/");
        if engine_code && self.on_engine {
            "engine-invariant"
        } else if file.contains("/madsim-")
            && (self.message.starts_with("time limit exceeded")
                || self
                    .message
                    .starts_with("no events, all tasks will block forever"))
        {
            "liveness"
        } else {
            "harness-error"
        }
    }

    /// The message with its run-specific parts masked ([`mask`]), so that
    /// one assertion gives one signature across seeds and shrinking.
    pub fn normalized_message(&self) -> String {
        mask(&self.message)
    }
}

/// A message with its run-specific parts (numbers, LSNs, hex handles: every
/// maximal alphanumeric run holding a digit) masked as `N`, cut to 200
/// characters.
pub fn mask(message: &str) -> String {
    const MAX_CHARS: usize = 200;
    let mut out = String::new();
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if word.chars().any(|c| c.is_ascii_digit()) {
            out.push('N');
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in message.chars() {
        if c.is_ascii_alphanumeric() {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out.chars().take(MAX_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(file: &str, message: &str) -> PanicRecord {
        PanicRecord {
            file: file.into(),
            line: 1,
            message: message.into(),
            on_engine: file.starts_with("engine/"),
        }
    }

    #[test]
    fn classifies_by_location_and_node() {
        let engine = record("engine/src/log/writer.rs", "flushed past written");
        assert_eq!(engine.check(), "engine-invariant");
        let elsewhere = PanicRecord {
            on_engine: false,
            ..engine
        };
        assert_eq!(
            elsewhere.check(),
            "harness-error",
            "engine code the harness called on another node"
        );
        let harness = record("sim/src/harness/mod.rs", "check task");
        assert_eq!(harness.check(), "harness-error");
        let limit = record(
            "/home/u/.cargo/registry/src/x/madsim-0.2.34/src/sim/task/mod.rs",
            "time limit exceeded: 10s",
        );
        assert_eq!(limit.check(), "liveness");
        let other_madsim = record(
            "/home/u/.cargo/registry/src/x/madsim-0.2.34/src/sim/task/mod.rs",
            "node not found",
        );
        assert_eq!(other_madsim.check(), "harness-error");
    }

    #[test]
    fn masks_numbers_and_handles() {
        let a = record(
            "engine/src/x.rs",
            "offset 12_3 past 7 in shape 0a1b2c3d4e5f6a7b",
        );
        let b = record(
            "engine/src/x.rs",
            "offset 9_1 past 80 in shape ab11222233334444",
        );
        assert_eq!(a.normalized_message(), b.normalized_message());
        assert_eq!(a.normalized_message(), "offset N_N past N in shape N");
        let c = record("engine/src/x.rs", "a different assertion");
        assert_ne!(a.normalized_message(), c.normalized_message());
    }
}
