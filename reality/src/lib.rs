//! Reality checks (issue 12; ARCHITECTURE.md, "Reality checks"): the
//! harness's three models (the WHERE evaluators, the Postgres model and
//! `MemStorage`'s crash semantics) checked against a real PostgreSQL and
//! real process crashes on a real disk.
//!
//! - [`server`]: a private PostgreSQL server per check;
//! - [`clauses`]: the WHERE differential (engine, oracle, PostgreSQL);
//! - [`model`]: the Postgres model against PostgreSQL (transactions,
//!   snapshots, the replication slot and its replay);
//! - [`crash`]: SIGKILLed processes on a real disk, and `MemStorage`
//!   against the same crashes.

pub mod clauses;
pub mod crash;
pub mod model;
pub mod server;

/// A caught panic's message.
pub fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic".to_string())
}
