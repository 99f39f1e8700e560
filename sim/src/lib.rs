//! The simulation harness for the shape-sync engine, and the hosts that run it
//! on real resources (the real-disk storage).

#[cfg(madsim)]
pub mod cli;
pub mod client;
pub mod disk;
#[cfg(madsim)]
pub mod harness;
#[cfg(madsim)]
pub mod host;
pub mod oracle;
pub mod pg;
pub mod scenario;
pub mod standard;
