//! The simulation harness for the shape-sync engine, and the hosts that run it
//! on real resources (the real-disk storage).

pub mod alloc;
#[cfg(madsim)]
pub mod cli;
pub mod client;
#[cfg(madsim)]
pub mod corpus;
pub mod disk;
#[cfg(madsim)]
pub mod harness;
#[cfg(madsim)]
pub mod host;
pub mod oracle;
pub mod pg;
pub mod scenario;
#[cfg(madsim)]
pub mod shrink;
pub mod standard;
