//! The storage conformance suite: the behaviour every [`Storage`] must have,
//! checked the same way against the in-memory storage (here) and the real-disk
//! storage (in the `sim` crate). Durability itself cannot be checked on a real
//! disk without pulling the plug; [`super::MemStorage`] has its own tests for it.
//!
//! Each check starts from an empty storage root and leaves it empty.

use super::Storage;
use std::io::ErrorKind;

/// Runs every check; panics with the name of the first one that fails.
pub async fn run_all(storage: &dyn Storage) {
    assert_eq!(
        storage.list("").await.expect("list root"),
        Vec::<String>::new(),
        "the suite needs an empty root"
    );
    files_roundtrip(storage).await;
    read_at_clamps_to_the_end(storage).await;
    create_and_write_replace_contents(storage).await;
    truncate_shrinks_only(storage).await;
    rename_replaces_atomically(storage).await;
    directories_nest_list_sorted_and_remove(storage).await;
    missing_paths_are_not_found(storage).await;
    escaping_paths_are_rejected(storage).await;
    sync_succeeds_on_what_exists(storage).await;
    assert_eq!(
        storage.list("").await.expect("list root"),
        Vec::<String>::new(),
        "a check left files behind"
    );
}

async fn files_roundtrip(s: &dyn Storage) {
    let every_byte: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    s.create("f").await.expect("create");
    assert_eq!(
        s.size("f").await.expect("size"),
        0,
        "a created file is empty"
    );
    s.append("f", b"ab").await.expect("append");
    s.append("f", &every_byte).await.expect("append");
    assert_eq!(
        s.size("f").await.expect("size"),
        2 + every_byte.len() as u64,
        "size after appends"
    );
    let read = s.read("f").await.expect("read");
    assert_eq!(&read[..2], b"ab", "appends land in order");
    assert!(
        read[2..] == every_byte[..],
        "binary data roundtrips byte for byte"
    );
    assert!(s.exists("f").await.expect("exists"), "exists after create");
    s.remove("f").await.expect("remove");
    assert!(!s.exists("f").await.expect("exists"), "gone after remove");
}

async fn read_at_clamps_to_the_end(s: &dyn Storage) {
    s.write("f", b"0123456789").await.expect("write");
    assert_eq!(
        s.read_at("f", 2, 3).await.expect("read_at"),
        b"234",
        "read_at in range"
    );
    assert_eq!(
        s.read_at("f", 8, 100).await.expect("read_at"),
        b"89",
        "read_at past the end is short"
    );
    assert_eq!(
        s.read_at("f", 10, 5).await.expect("read_at"),
        b"",
        "read_at at the end is empty"
    );
    assert_eq!(
        s.read_at("f", 50, 5).await.expect("read_at"),
        b"",
        "read_at beyond the end is empty"
    );
    s.remove("f").await.expect("remove");
}

async fn create_and_write_replace_contents(s: &dyn Storage) {
    s.write("f", b"first contents").await.expect("write");
    s.write("f", b"second").await.expect("write");
    assert_eq!(
        s.read("f").await.expect("read"),
        b"second",
        "write replaces"
    );
    s.create("f").await.expect("create");
    assert_eq!(
        s.read("f").await.expect("read"),
        b"",
        "create truncates an existing file"
    );
    s.remove("f").await.expect("remove");
}

async fn truncate_shrinks_only(s: &dyn Storage) {
    s.write("f", b"0123456789").await.expect("write");
    s.truncate("f", 4).await.expect("truncate");
    assert_eq!(s.read("f").await.expect("read"), b"0123", "truncate cuts");
    s.append("f", b"X").await.expect("append");
    assert_eq!(
        s.read("f").await.expect("read"),
        b"0123X",
        "append after truncate continues at the cut"
    );
    assert!(
        s.truncate("f", 100).await.is_err(),
        "truncate beyond the end is an error, not an extension"
    );
    assert_eq!(
        s.size("f").await.expect("size"),
        5,
        "a failed truncate changes nothing"
    );
    s.remove("f").await.expect("remove");
}

async fn rename_replaces_atomically(s: &dyn Storage) {
    s.write("old", b"old").await.expect("write");
    s.write("new.tmp", b"new").await.expect("write");
    s.rename("new.tmp", "old").await.expect("rename over");
    assert_eq!(
        s.read("old").await.expect("read"),
        b"new",
        "rename replaces the target"
    );
    assert!(
        !s.exists("new.tmp").await.expect("exists"),
        "rename removes the source name"
    );
    s.rename("old", "moved")
        .await
        .expect("rename to a new name");
    assert_eq!(
        s.list("").await.expect("list"),
        ["moved"],
        "only the new name remains"
    );
    s.remove("moved").await.expect("remove");
}

async fn directories_nest_list_sorted_and_remove(s: &dyn Storage) {
    s.create_dir_all("d/e/f").await.expect("create_dir_all");
    s.create_dir_all("d/e")
        .await
        .expect("create_dir_all is idempotent");
    for name in ["d/zeta", "d/alpha", "d/Beta", "d/e/f/leaf"] {
        s.write(name, name.as_bytes()).await.expect("write");
    }
    assert_eq!(
        s.list("d").await.expect("list"),
        ["Beta", "alpha", "e", "zeta"],
        "list is sorted bytewise"
    );
    assert!(
        s.create_dir_all("d/zeta/x").await.is_err(),
        "cannot create a directory under a file"
    );
    assert!(s.remove("d/e").await.is_err(), "remove refuses a directory");
    s.remove_dir_all("d/e").await.expect("remove_dir_all");
    assert!(
        !s.exists("d/e/f/leaf").await.expect("exists"),
        "remove_dir_all removes the subtree"
    );
    s.remove_dir_all("d").await.expect("remove_dir_all");
    assert!(
        !s.exists("d").await.expect("exists"),
        "the directory is gone"
    );
}

async fn missing_paths_are_not_found(s: &dyn Storage) {
    let kind = |r: std::io::Result<()>| r.expect_err("must fail on a missing path").kind();
    assert_eq!(
        kind(s.read("nope").await.map(drop)),
        ErrorKind::NotFound,
        "read"
    );
    assert_eq!(
        kind(s.size("nope").await.map(drop)),
        ErrorKind::NotFound,
        "size"
    );
    assert_eq!(
        kind(s.append("nope", b"x").await),
        ErrorKind::NotFound,
        "append does not create"
    );
    assert_eq!(kind(s.remove("nope").await), ErrorKind::NotFound, "remove");
    assert_eq!(
        kind(s.remove_dir_all("nope").await),
        ErrorKind::NotFound,
        "remove_dir_all"
    );
    assert_eq!(
        kind(s.rename("nope", "x").await),
        ErrorKind::NotFound,
        "rename"
    );
    assert_eq!(
        kind(s.list("nope").await.map(drop)),
        ErrorKind::NotFound,
        "list"
    );
    assert_eq!(
        kind(s.create("nodir/f").await),
        ErrorKind::NotFound,
        "create needs its directory"
    );
    assert!(
        !s.exists("nope").await.expect("exists"),
        "exists is false, not an error"
    );
}

async fn escaping_paths_are_rejected(s: &dyn Storage) {
    for bad in ["../x", "/etc/passwd", "a//b", "a/../../b", "./x", "x/"] {
        let kind = |r: std::io::Result<()>| r.expect_err(bad).kind();
        assert_eq!(
            kind(s.create(bad).await),
            ErrorKind::InvalidInput,
            "create {bad:?}"
        );
        assert_eq!(
            kind(s.read(bad).await.map(drop)),
            ErrorKind::InvalidInput,
            "read {bad:?}"
        );
        assert_eq!(
            kind(s.create_dir_all(bad).await),
            ErrorKind::InvalidInput,
            "create_dir_all {bad:?}"
        );
        assert_eq!(
            kind(s.remove_dir_all(bad).await),
            ErrorKind::InvalidInput,
            "remove_dir_all {bad:?}"
        );
        assert_eq!(
            kind(s.rename("x", bad).await),
            ErrorKind::InvalidInput,
            "rename to {bad:?}"
        );
        assert_eq!(
            kind(s.exists(bad).await.map(drop)),
            ErrorKind::InvalidInput,
            "exists {bad:?}"
        );
    }
}

async fn sync_succeeds_on_what_exists(s: &dyn Storage) {
    s.create_dir_all("d").await.expect("create_dir_all");
    s.write("d/f", b"x").await.expect("write");
    s.sync("d/f").await.expect("sync a file");
    s.sync_dir("d").await.expect("sync a directory");
    s.sync_dir("").await.expect("sync the root");
    assert!(
        s.sync("d/missing").await.is_err(),
        "sync of a missing file fails"
    );
    assert!(
        s.sync_dir("missing").await.is_err(),
        "sync of a missing directory fails"
    );
    s.remove_dir_all("d").await.expect("remove_dir_all");
}
