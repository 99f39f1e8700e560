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
