//! The storage conformance suite against the real disk (a fresh temp dir).

use futures::executor::block_on;
use sim::disk::DiskStorage;

#[test]
fn disk_storage_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().expect("temp dir");
    let storage = DiskStorage::new(dir.path()).expect("storage root");
    block_on(engine::env::conformance::run_all(&storage));
}

#[test]
fn disk_storage_refuses_a_missing_root() {
    assert!(DiskStorage::new("/definitely/not/here").is_err());
}
