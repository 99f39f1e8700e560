//! Benchmark: seeds per second of the harness, per scenario, with 1 and 2
//! jobs, and what each seed costs.
//!
//!     cargo bench -p sim --bench sweep [-- <repeats>]
//!
//! Fixed seed ranges of `smoke`, `default`, `subqueries` and
//! `restart-heavy`; each configuration runs `<repeats>` times (default 5)
//! and reports the median: seeds/s, simulated over wall time, CPU ms per
//! seed (user + system, from getrusage), heap allocations per seed and the
//! peak live heap (counted by a wrapper around the allocator shapesim
//! uses, `sim::alloc::Mimalloc`). Speed is measured here, never asserted by a test.
#![allow(clippy::disallowed_types)] // wall-clock measurement is the point here

use sim::harness::{self, RunOptions};
use sim::scenario::ScenarioFile;
use std::alloc::{GlobalAlloc, Layout};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Instant;

/// Counts allocations and live bytes around mimalloc.
struct Counting;

/// Counting is switched on only for the one counting pass per scenario:
/// shared counters slow two jobs down (their cache line moves between
/// cores on every allocation), so speed is measured with them off.
static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
/// Signed: blocks allocated before counting began may be freed during it.
static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);
static PEAK_BYTES: AtomicI64 = AtomicI64::new(0);

// SAFETY: every call is forwarded to mimalloc unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            let size = layout.size() as i64;
            let live = LIVE_BYTES.fetch_add(size, Ordering::Relaxed) + size;
            PEAK_BYTES.fetch_max(live, Ordering::Relaxed);
        }
        // SAFETY: the caller's layout contract is passed on.
        unsafe { sim::alloc::Mimalloc.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if COUNTING.load(Ordering::Relaxed) {
            LIVE_BYTES.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        }
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { sim::alloc::Mimalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !COUNTING.load(Ordering::Relaxed) {
            // SAFETY: as for `alloc` and `dealloc`.
            return unsafe { sim::alloc::Mimalloc.realloc(ptr, layout, new_size) };
        }
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        let grown = new_size as i64 - layout.size() as i64;
        let live = LIVE_BYTES.fetch_add(grown, Ordering::Relaxed) + grown;
        PEAK_BYTES.fetch_max(live, Ordering::Relaxed);
        // SAFETY: as for `alloc` and `dealloc`.
        unsafe { sim::alloc::Mimalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Scenarios and their seed ranges.
const SCENARIOS: [(&str, u64); 4] = [
    ("smoke", 400),
    ("default", 200),
    ("subqueries", 100),
    ("restart-heavy", 100),
];

/// User + system CPU time of this process, in ms.
fn cpu_ms() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    ms(usage.ru_utime) + ms(usage.ru_stime)
}

struct Sample {
    seeds_per_s: f64,
    sim_over_wall: f64,
    cpu_ms_per_seed: f64,
    allocs_per_seed: f64,
    peak_mib: f64,
}

/// One sweep of `seeds` seeds of `scenario` with `jobs` threads; counting
/// allocations if `count`.
fn sweep(scenario: &str, seeds: u64, jobs: usize, count: bool) -> Sample {
    let path = format!(
        "{}/../scenarios/{scenario}.toml",
        env!("CARGO_MANIFEST_DIR")
    );
    let knobs = ScenarioFile::load(std::path::Path::new(&path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .knobs;
    let next = AtomicU64::new(0);
    let sim_ms = Mutex::new(0u64);
    ALLOCATIONS.store(0, Ordering::Relaxed);
    LIVE_BYTES.store(0, Ordering::Relaxed);
    PEAK_BYTES.store(0, Ordering::Relaxed);
    COUNTING.store(count, Ordering::SeqCst);
    let (started, cpu) = (Instant::now(), cpu_ms());
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, Ordering::SeqCst);
                    if seed >= seeds {
                        return;
                    }
                    let scenario = sim::scenario::generate::expand(seed, &knobs);
                    let outcome = harness::execute(&scenario, &RunOptions::default());
                    assert!(outcome.passed(), "{scenario:?} seed {seed} fails");
                    *sim_ms.lock().expect("sim ms") += outcome.sim_ms;
                }
            });
        }
    });
    let wall_s = started.elapsed().as_secs_f64();
    COUNTING.store(false, Ordering::SeqCst);
    let n = seeds as f64;
    Sample {
        seeds_per_s: n / wall_s,
        sim_over_wall: *sim_ms.lock().expect("sim ms") as f64 / 1e3 / wall_s,
        cpu_ms_per_seed: (cpu_ms() - cpu) / n,
        allocs_per_seed: ALLOCATIONS.load(Ordering::Relaxed) as f64 / n,
        peak_mib: PEAK_BYTES.load(Ordering::Relaxed).max(0) as f64
            / (1024.0 * 1024.0)
            / jobs as f64,
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let repeats: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(|a| a.parse().expect("repeats: a number"))
        .unwrap_or(5);
    sim::harness::quiet_seed_panics();
    println!(
        "{:<14} {:>4} {:>8} {:>10} {:>10} {:>12} {:>10}",
        "scenario", "jobs", "seeds", "seeds/s", "sim/wall", "cpu ms/seed", "allocs/seed"
    );
    for (scenario, seeds) in SCENARIOS {
        // Allocations and the peak live heap of one job, counted apart.
        let counted = sweep(scenario, seeds, 1, true);
        for jobs in [1, 2] {
            let samples: Vec<Sample> = (0..repeats)
                .map(|_| sweep(scenario, seeds, jobs, false))
                .collect();
            let pick = |f: fn(&Sample) -> f64| median(samples.iter().map(f).collect());
            println!(
                "{scenario:<14} {jobs:>4} {seeds:>8} {:>10.1} {:>9.0}x {:>12.2} {:>11.0}  peak heap {:.1} MiB/job",
                pick(|s| s.seeds_per_s),
                pick(|s| s.sim_over_wall),
                pick(|s| s.cpu_ms_per_seed),
                counted.allocs_per_seed,
                counted.peak_mib,
            );
        }
    }
    println!("median of {repeats} runs per line; `cargo bench -p sim --bench sweep -- <repeats>`");
}
