use super::*;
use futures::executor::block_on;

#[test]
fn passes_the_storage_conformance_suite() {
    block_on(crate::env::conformance::run_all(&MemStorage::new()));
}

#[test]
fn power_loss_keeps_synced_bytes_and_dir_synced_entries_only() {
    block_on(async {
        let s = MemStorage::new();
        s.create_dir_all("d").await.unwrap();
        s.sync_dir("").await.unwrap();
        s.write("d/synced", b"hello").await.unwrap();
        s.sync("d/synced").await.unwrap();
        s.sync_dir("d").await.unwrap();
        s.append("d/synced", b" world").await.unwrap();
        s.write("d/unlinked", b"data").await.unwrap();
        s.sync("d/unlinked").await.unwrap(); // data synced, entry not

        s.process_crash();
        assert_eq!(s.read("d/synced").await.unwrap(), b"hello world");

        let report = s.power_loss(PowerLoss::DropUnsynced);
        assert_eq!(s.read("d/synced").await.unwrap(), b"hello");
        assert!(!s.exists("d/unlinked").await.unwrap());
        assert_eq!(s.stats().power_losses, 1);
        let lost = PowerLossReport {
            bytes_dropped: 6,
            files_changed: 1,
            dirs_reverted: 1,
            ..PowerLossReport::default()
        };
        assert_eq!(report, lost, "what the power loss did is reported");
        assert!(!s.power_loss(PowerLoss::DropUnsynced).changed_anything());
    });
}

#[test]
fn power_loss_reverts_an_unsynced_truncate_and_rename() {
    block_on(async {
        let s = MemStorage::new();
        s.write("a", b"0123456789").await.unwrap();
        s.write("b", b"old").await.unwrap();
        s.sync("a").await.unwrap();
        s.sync("b").await.unwrap();
        s.sync_dir("").await.unwrap();
        s.truncate("a", 4).await.unwrap();
        s.append("a", b"XY").await.unwrap();
        s.write("tmp", b"new").await.unwrap();
        s.sync("tmp").await.unwrap();
        s.rename("tmp", "b").await.unwrap();
        assert_eq!(s.read("b").await.unwrap(), b"new");
        s.power_loss(PowerLoss::DropUnsynced);
        assert_eq!(s.read("a").await.unwrap(), b"0123456789");
        assert_eq!(s.read("b").await.unwrap(), b"old");
        assert!(!s.exists("tmp").await.unwrap());
    });
}

#[test]
fn torn_power_loss_keeps_the_durable_bytes_and_is_deterministic_per_seed() {
    let run = |seed| {
        block_on(async {
            let s = MemStorage::new();
            s.write("f", b"durable|").await.unwrap();
            s.sync("f").await.unwrap();
            s.sync_dir("").await.unwrap();
            s.append("f", b"unsynced-tail-of-some-length")
                .await
                .unwrap();
            s.power_loss(PowerLoss::Torn { seed });
            s.read("f").await.unwrap()
        })
    };
    let full = b"durable|unsynced-tail-of-some-length";
    let mut lengths = BTreeSet::new();
    for seed in 0..64 {
        let bytes = run(seed);
        // The kept tail may be as written, zeros or garbage.
        assert!(
            bytes.starts_with(b"durable|") && bytes.len() <= full.len(),
            "seed {seed}: {bytes:?}"
        );
        assert_eq!(bytes, run(seed), "seed {seed} is not deterministic");
        lengths.insert(bytes.len());
    }
    assert!(
        lengths.len() > 4,
        "torn cuts should vary across seeds: {lengths:?}"
    );
}

#[test]
fn unlinked_inodes_are_collected() {
    block_on(async {
        let s = MemStorage::new();
        for _ in 0..(GC_AFTER_UNLINKS * 2) {
            s.write("f", &[0u8; 64]).await.unwrap();
            s.write("g", b"x").await.unwrap();
            s.rename("g", "f").await.unwrap();
        }
        assert!(
            s.lock().inodes.len() < 16,
            "inodes leak: {}",
            s.lock().inodes.len()
        );
    });
}

#[test]
fn a_failed_sync_never_becomes_durable_and_leaves_zeros_after_a_power_loss() {
    block_on(async {
        let s = MemStorage::new();
        s.write("f", b"ok").await.unwrap();
        s.sync("f").await.unwrap();
        s.sync_dir("").await.unwrap();
        s.append("f", b"lost").await.unwrap();
        s.fail_sync("f");
        assert_eq!(
            s.read("f").await.unwrap(),
            b"oklost",
            "still in the page cache"
        );
        s.append("f", b"kept").await.unwrap();
        s.sync("f").await.unwrap();
        let report = s.power_loss(PowerLoss::DropUnsynced);
        assert_eq!(s.read("f").await.unwrap(), b"ok\0\0\0\0kept");
        assert_eq!(report.bytes_lost_to_failed_syncs, 4);
    });
}

#[test]
fn torn_power_losses_reach_every_outcome_and_keep_synced_data() {
    let (mut zeroed, mut garbage, mut partial_dirs) = (0, 0, 0);
    for seed in 0..200 {
        block_on(async {
            let s = MemStorage::new();
            s.create_dir_all("d").await.unwrap();
            s.sync_dir("").await.unwrap();
            s.write("d/f", b"synced").await.unwrap();
            s.sync("d/f").await.unwrap();
            s.sync_dir("d").await.unwrap();
            s.append("d/f", b"unsynced tail").await.unwrap();
            for name in ["a", "b", "c"] {
                s.write(&format!("d/{name}"), b"x").await.unwrap();
            }
            let report = s.power_loss(PowerLoss::Torn { seed });
            let data = s.read("d/f").await.unwrap();
            assert_eq!(&data[..6], b"synced", "synced bytes survive");
            assert!(data.len() <= 6 + 13);
            zeroed += report.tails_zeroed;
            garbage += report.tails_garbage;
            let names = s.list("d").await.unwrap().len();
            partial_dirs += u64::from(names > 1 && names < 4);
        });
    }
    assert!(
        zeroed > 0 && garbage > 0,
        "torn tails as zeros and as garbage"
    );
    assert!(partial_dirs > 0, "directory entries survive one by one");
}
