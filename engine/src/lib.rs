//! The shape-sync engine: a pure library. It owns no clock, file system,
//! network, thread or randomness; every effect goes through [`env`].
//!
//! The modules follow the path data takes: offsets and shapes define what is
//! served, `log` stores each shape's log. See `ARCHITECTURE.md` at the
//! repository root for the map, the invariants and the crash-consistency
//! contract.

pub mod env;
pub mod offset;
pub mod schema;
pub mod shape;
