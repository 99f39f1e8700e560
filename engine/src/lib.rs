//! The shape-sync engine: a pure library. It owns no clock, file system,
//! network, thread or randomness; every effect goes through [`env`].
//!
//! The modules follow the path data takes: offsets and shapes define what is
//! served, `log` stores each shape's log. See `ARCHITECTURE.md` at the
//! repository root for the map, the invariants and the crash-consistency
//! contract.

pub mod api;
mod consumer;
pub mod env;
pub mod flush_tracker;
pub mod handle;
pub mod log;
pub mod metadata;
pub mod moves;
pub mod offset;
#[cfg(feature = "plants")]
pub mod plants;
pub mod replication;
pub mod router;
pub mod schema;
pub mod shape;
pub mod stack;
pub mod wire;

/// `planted!(config, switch)`: whether `config.plants.switch` is on; the
/// constant `false` (and `config` unevaluated) without the `plants` feature.
#[cfg(feature = "plants")]
#[macro_export]
macro_rules! planted {
    ($config:expr, $switch:ident) => {
        $config.plants.$switch
    };
}

/// `planted!(config, switch)`: whether `config.plants.switch` is on; the
/// constant `false` (and `config` unevaluated) without the `plants` feature.
#[cfg(not(feature = "plants"))]
#[macro_export]
macro_rules! planted {
    ($config:expr, $switch:ident) => {
        false
    };
}

#[cfg(any(test, feature = "testing"))]
pub mod testing {
    /// The configuration of every property test in the workspace:
    /// deterministic by default (a fixed seed, so CI runs the same cases on
    /// the same commit), explorable through `PROPTEST_RNG_SEED` and
    /// `PROPTEST_CASES`, and without regression files (a failure prints its
    /// minimal case; minimized failures are kept as corpus entries).
    #[allow(clippy::disallowed_methods)] // test support only: proptest's own knobs
    pub fn proptest_config(default_cases: u32) -> proptest::test_runner::Config {
        use proptest::test_runner::{Config, RngSeed};
        let mut config = Config::default();
        if std::env::var_os("PROPTEST_CASES").is_none() {
            config.cases = default_cases;
        }
        if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
            config.rng_seed = RngSeed::Fixed(0x5eed_0001);
        }
        config.failure_persistence = None;
        config
    }
}
