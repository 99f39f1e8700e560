//! The simulation harness for the shape-sync engine, and the hosts that run it
//! on real resources (the real-disk storage).

pub mod disk;
