//! An in-memory [`Storage`] with an explicit durability model.
//!
//! Files and directories are inodes. Each file remembers which of its bytes are
//! durable (synced); each directory remembers which of its entries are durable
//! (dir-synced). Two failures can be simulated:
//!
//! - a *process crash* loses only the engine's in-process state. This storage
//!   plays the OS: everything a call returned from survives, so there is
//!   nothing to do here beyond counting it ([`MemStorage::process_crash`]);
//! - a *power loss* ([`MemStorage::power_loss`]) reverts every file to its
//!   durable bytes, possibly keeping a torn prefix of what was written after the
//!   last sync, and reverts directory entries that were not dir-synced.
//!
//! The storage is a cheap handle (`Arc`) so that a simulator can keep it alive
//! across the kills of the node that uses it.

use super::path::check_path;
use super::storage::Storage;
use async_trait::async_trait;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{Rng as _, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

type InodeId = u64;
const ROOT: InodeId = 0;
/// Unlinked inodes are collected after this many unlinks (and at power loss).
const GC_AFTER_UNLINKS: u32 = 256;

/// What a power loss does with data that was written but not synced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerLoss {
    /// Unsynced bytes and unsynced directory entries are all lost.
    DropUnsynced,
    /// Everything written reached the platter (as good as a process crash).
    KeepWritten,
    /// Per file: unsynced bytes dropped, or kept as a torn prefix cut at a random
    /// byte. Per directory: unsynced entries dropped, or (less often) kept. All
    /// choices are drawn from `seed`, in inode order.
    Torn { seed: u64 },
}

/// What one power loss did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PowerLossReport {
    /// Unsynced bytes that did not survive.
    pub bytes_dropped: u64,
    /// Files that kept part, not all, of their unsynced bytes.
    pub files_torn: u64,
    /// Files that lost unsynced bytes or had an unsynced truncate undone.
    pub files_changed: u64,
    /// Directories whose unsynced entries were reverted.
    pub dirs_reverted: u64,
}

impl PowerLossReport {
    pub fn changed_anything(&self) -> bool {
        self.files_changed > 0 || self.dirs_reverted > 0
    }
}

/// Counters of what the storage was asked to do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemStats {
    pub appends: u64,
    pub bytes_appended: u64,
    pub syncs: u64,
    pub dir_syncs: u64,
    pub process_crashes: u64,
    pub power_losses: u64,
}

#[derive(Clone, Default)]
pub struct MemStorage {
    state: Arc<Mutex<MemState>>,
}

struct MemState {
    inodes: BTreeMap<InodeId, Inode>,
    next_inode: InodeId,
    unlinks_since_gc: u32,
    stats: MemStats,
}

enum Inode {
    File(FileNode),
    Dir(DirNode),
}

/// Invariant: durable bytes = `data[..synced_len]` followed by `durable_tail`,
/// and `synced_len <= data.len()`.
#[derive(Default)]
struct FileNode {
    data: Vec<u8>,
    synced_len: usize,
    /// Durable bytes beyond `synced_len` that a truncate removed from `data`.
    durable_tail: Vec<u8>,
}

#[derive(Default)]
struct DirNode {
    entries: BTreeMap<String, InodeId>,
    durable_entries: BTreeMap<String, InodeId>,
}

impl Default for MemState {
    fn default() -> MemState {
        let mut inodes = BTreeMap::new();
        inodes.insert(ROOT, Inode::Dir(DirNode::default()));
        MemState {
            inodes,
            next_inode: ROOT + 1,
            unlinks_since_gc: 0,
            stats: MemStats::default(),
        }
    }
}

fn not_found(path: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{path:?}: no such file or directory"),
    )
}

fn other(path: &str, what: &str) -> io::Error {
    io::Error::other(format!("{path:?}: {what}"))
}

fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

impl FileNode {
    fn truncate(&mut self, len: usize) {
        if len < self.synced_len {
            let mut tail = self.data[len..self.synced_len].to_vec();
            tail.extend_from_slice(&self.durable_tail);
            self.durable_tail = tail;
            self.synced_len = len;
        }
        self.data.truncate(len);
    }

    fn sync(&mut self) {
        self.synced_len = self.data.len();
        self.durable_tail.clear();
    }

    /// Reverts to the durable bytes (or a torn prefix); reports what changed.
    fn lose_power(
        &mut self,
        policy: PowerLoss,
        rng: &mut ChaCha8Rng,
        report: &mut PowerLossReport,
    ) {
        let unsynced = self.data.len() - self.synced_len;
        let tail_pending = !self.durable_tail.is_empty();
        let keep_unsynced = match policy {
            PowerLoss::DropUnsynced => None,
            PowerLoss::KeepWritten => Some(unsynced),
            PowerLoss::Torn { .. } => {
                let anything_unsynced = unsynced > 0 || !self.durable_tail.is_empty();
                let keep_some = anything_unsynced && rng.next_u64().is_multiple_of(2);
                keep_some.then(|| (rng.next_u64() % (unsynced as u64 + 1)) as usize)
            }
        };
        let dropped = unsynced - keep_unsynced.unwrap_or(0);
        report.bytes_dropped += dropped as u64;
        report.files_torn += u64::from(keep_unsynced.is_some_and(|k| k > 0 && k < unsynced));
        report.files_changed += u64::from(dropped > 0 || (tail_pending && keep_unsynced.is_none()));
        match keep_unsynced {
            // The truncate (if any) reached the disk, and a prefix of the new bytes.
            Some(keep) => self.data.truncate(self.synced_len + keep),
            None => {
                self.data.truncate(self.synced_len);
                self.data.extend_from_slice(&self.durable_tail);
            }
        }
        self.sync();
    }
}

impl MemState {
    fn lookup(&self, path: &str) -> Option<InodeId> {
        if path.is_empty() {
            return Some(ROOT);
        }
        let mut id = ROOT;
        for name in path.split('/') {
            match self.inodes.get(&id)? {
                Inode::Dir(dir) => id = *dir.entries.get(name)?,
                Inode::File(_) => return None,
            }
        }
        Some(id)
    }

    fn file(&mut self, path: &str) -> io::Result<&mut FileNode> {
        let id = self.lookup(path).ok_or_else(|| not_found(path))?;
        match self.inodes.get_mut(&id).expect("linked inode exists") {
            Inode::File(file) => Ok(file),
            Inode::Dir(_) => Err(other(path, "is a directory")),
        }
    }

    fn dir(&mut self, path: &str) -> io::Result<&mut DirNode> {
        let id = self.lookup(path).ok_or_else(|| not_found(path))?;
        match self.inodes.get_mut(&id).expect("linked inode exists") {
            Inode::Dir(dir) => Ok(dir),
            Inode::File(_) => Err(other(path, "is not a directory")),
        }
    }

    fn alloc(&mut self, inode: Inode) -> InodeId {
        let id = self.next_inode;
        self.next_inode += 1;
        self.inodes.insert(id, inode);
        id
    }

    fn unlinked(&mut self) {
        self.unlinks_since_gc += 1;
        if self.unlinks_since_gc >= GC_AFTER_UNLINKS {
            self.collect_garbage();
        }
    }

    /// Drops inodes that neither the current nor the durable tree can reach.
    fn collect_garbage(&mut self) {
        self.unlinks_since_gc = 0;
        let mut reachable = BTreeSet::from([ROOT]);
        let mut stack = vec![ROOT];
        while let Some(id) = stack.pop() {
            if let Some(Inode::Dir(dir)) = self.inodes.get(&id) {
                for &child in dir.entries.values().chain(dir.durable_entries.values()) {
                    if reachable.insert(child) {
                        stack.push(child);
                    }
                }
            }
        }
        self.inodes.retain(|id, _| reachable.contains(id));
    }
}

impl MemStorage {
    pub fn new() -> MemStorage {
        MemStorage::default()
    }

    fn lock(&self) -> MutexGuard<'_, MemState> {
        self.state.lock().expect("mem storage lock poisoned")
    }

    pub fn stats(&self) -> MemStats {
        self.lock().stats
    }

    /// A process crash: the OS keeps everything, so only the count changes.
    pub fn process_crash(&self) {
        self.lock().stats.process_crashes += 1;
    }

    /// A power loss: unsynced data and directory entries revert as `policy` says.
    pub fn power_loss(&self, policy: PowerLoss) -> PowerLossReport {
        let mut report = PowerLossReport::default();
        let mut state = self.lock();
        state.stats.power_losses += 1;
        let seed = match policy {
            PowerLoss::Torn { seed } => seed,
            _ => 0,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for inode in state.inodes.values_mut() {
            match inode {
                Inode::File(file) => file.lose_power(policy, &mut rng, &mut report),
                Inode::Dir(dir) => {
                    let keep = match policy {
                        PowerLoss::DropUnsynced => false,
                        PowerLoss::KeepWritten => true,
                        PowerLoss::Torn { .. } => {
                            dir.entries != dir.durable_entries && rng.next_u64().is_multiple_of(4)
                        }
                    };
                    if keep {
                        dir.durable_entries = dir.entries.clone();
                    } else {
                        report.dirs_reverted += u64::from(dir.entries != dir.durable_entries);
                        dir.entries = dir.durable_entries.clone();
                    }
                }
            }
        }
        state.collect_garbage();
        report
    }

    /// Bytes of `path` that would survive a power loss that drops all unsynced data.
    pub fn durable_contents(&self, path: &str) -> Option<Vec<u8>> {
        let mut state = self.lock();
        let file = state.file(path).ok()?;
        let mut bytes = file.data[..file.synced_len].to_vec();
        bytes.extend_from_slice(&file.durable_tail);
        Some(bytes)
    }
}

#[async_trait]
impl Storage for MemStorage {
    async fn create_dir_all(&self, dir: &str) -> io::Result<()> {
        check_path(dir)?;
        let mut state = self.lock();
        let mut id = ROOT;
        for name in dir.split('/').filter(|n| !n.is_empty()) {
            let existing = match state.inodes.get(&id).expect("walked inode exists") {
                Inode::Dir(d) => d.entries.get(name).copied(),
                Inode::File(_) => return Err(other(dir, "a path component is a file")),
            };
            id = match existing {
                Some(child) => child,
                None => {
                    let child = state.alloc(Inode::Dir(DirNode::default()));
                    let Some(Inode::Dir(parent)) = state.inodes.get_mut(&id) else {
                        unreachable!()
                    };
                    parent.entries.insert(name.to_string(), child);
                    child
                }
            };
        }
        match state.inodes.get(&id).expect("walked inode exists") {
            Inode::Dir(_) => Ok(()),
            Inode::File(_) => Err(other(dir, "exists and is a file")),
        }
    }

    async fn create(&self, path: &str) -> io::Result<()> {
        check_path(path)?;
        if path.is_empty() {
            return Err(other(path, "cannot create the root"));
        }
        let mut state = self.lock();
        if let Some(id) = state.lookup(path) {
            return match state.inodes.get_mut(&id).expect("linked inode exists") {
                Inode::File(file) => {
                    file.truncate(0);
                    Ok(())
                }
                Inode::Dir(_) => Err(other(path, "is a directory")),
            };
        }
        let (dir, name) = split(path);
        state.dir(dir)?;
        let id = state.alloc(Inode::File(FileNode::default()));
        state.dir(dir)?.entries.insert(name.to_string(), id);
        Ok(())
    }

    async fn append(&self, path: &str, data: &[u8]) -> io::Result<()> {
        check_path(path)?;
        let mut state = self.lock();
        state.file(path)?.data.extend_from_slice(data);
        state.stats.appends += 1;
        state.stats.bytes_appended += data.len() as u64;
        Ok(())
    }

    async fn read_at(&self, path: &str, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        check_path(path)?;
        let mut state = self.lock();
        let file = state.file(path)?;
        let start = (offset as usize).min(file.data.len());
        let end = start.saturating_add(len as usize).min(file.data.len());
        Ok(file.data[start..end].to_vec())
    }

    async fn size(&self, path: &str) -> io::Result<u64> {
        check_path(path)?;
        Ok(self.lock().file(path)?.data.len() as u64)
    }

    async fn truncate(&self, path: &str, len: u64) -> io::Result<()> {
        check_path(path)?;
        let mut state = self.lock();
        let file = state.file(path)?;
        if len as usize > file.data.len() {
            return Err(other(path, "truncate beyond the end of the file"));
        }
        file.truncate(len as usize);
        Ok(())
    }

    async fn sync(&self, path: &str) -> io::Result<()> {
        check_path(path)?;
        let mut state = self.lock();
        state.file(path)?.sync();
        state.stats.syncs += 1;
        Ok(())
    }

    async fn sync_dir(&self, dir: &str) -> io::Result<()> {
        check_path(dir)?;
        let mut state = self.lock();
        let node = state.dir(dir)?;
        let changed = node.entries != node.durable_entries;
        node.durable_entries = node.entries.clone();
        state.stats.dir_syncs += 1;
        if changed {
            // Entries dropped from the durable set may have been the last link.
            state.unlinked();
        }
        Ok(())
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        check_path(from)?;
        check_path(to)?;
        let mut state = self.lock();
        let id = state.lookup(from).ok_or_else(|| not_found(from))?;
        if from.is_empty() || to.is_empty() || to.starts_with(&format!("{from}/")) {
            return Err(other(
                to,
                "cannot rename a directory into itself or the root",
            ));
        }
        let moving_dir = matches!(state.inodes.get(&id), Some(Inode::Dir(_)));
        if let Some(target) = state.lookup(to) {
            if target == id {
                return Ok(());
            }
            if moving_dir || matches!(state.inodes.get(&target), Some(Inode::Dir(_))) {
                return Err(other(
                    to,
                    "rename onto an existing directory, or of a directory onto a file",
                ));
            }
        }
        let (to_dir, to_name) = split(to);
        state.dir(to_dir)?;
        let (from_dir, from_name) = split(from);
        state.dir(from_dir)?.entries.remove(from_name);
        let replaced = state.dir(to_dir)?.entries.insert(to_name.to_string(), id);
        if replaced.is_some() {
            state.unlinked();
        }
        Ok(())
    }

    async fn remove(&self, path: &str) -> io::Result<()> {
        check_path(path)?;
        let mut state = self.lock();
        state.file(path)?;
        let (dir, name) = split(path);
        state.dir(dir)?.entries.remove(name);
        state.unlinked();
        Ok(())
    }

    async fn remove_dir_all(&self, dir: &str) -> io::Result<()> {
        check_path(dir)?;
        if dir.is_empty() {
            return Err(other(dir, "cannot remove the root"));
        }
        let mut state = self.lock();
        state.dir(dir)?;
        // Like a real file system, unlink entry by entry (children first): a
        // power loss half-way may keep any subset of the unsynced unlinks.
        let mut stack = vec![state.lookup(dir).expect("checked above")];
        while let Some(id) = stack.pop() {
            if let Some(Inode::Dir(node)) = state.inodes.get_mut(&id) {
                let children = std::mem::take(&mut node.entries);
                for child in children.into_values() {
                    if matches!(state.inodes.get(&child), Some(Inode::Dir(_))) {
                        stack.push(child);
                    }
                }
            }
        }
        let (parent, name) = split(dir);
        state.dir(parent)?.entries.remove(name);
        state.unlinked();
        Ok(())
    }

    async fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        check_path(dir)?;
        Ok(self.lock().dir(dir)?.entries.keys().cloned().collect())
    }

    async fn exists(&self, path: &str) -> io::Result<bool> {
        check_path(path)?;
        Ok(self.lock().lookup(path).is_some())
    }
}

#[cfg(test)]
mod tests {
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
                files_torn: 0,
                files_changed: 1,
                dirs_reverted: 1,
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
    fn torn_power_loss_keeps_a_prefix_and_is_deterministic_per_seed() {
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
            assert!(
                full.starts_with(&bytes) && bytes.len() >= 8,
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
}
