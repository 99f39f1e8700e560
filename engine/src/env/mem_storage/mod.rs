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
//!   last sync (as written, as zeros or as garbage), and reverts each
//!   directory entry that was not dir-synced (independently, when torn).
//!
//! A *failed sync* ([`MemStorage::fail_sync`], for a host that injects I/O
//! errors) has Linux's page-cache semantics: the unsynced bytes stay readable
//! but are marked clean without reaching the disk, so a later successful sync
//! does not make them durable and a power loss leaves zeros in their place.
//!
//! The storage is a cheap handle (`Arc`) so that a simulator can keep it alive
//! across the kills of the node that uses it.

mod inodes;

use super::path::check_path;
use super::storage::Storage;
use async_trait::async_trait;
use inodes::Inodes;
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
    /// Per file: unsynced bytes dropped, or a torn prefix of them kept, cut
    /// at a random byte, as written, as zeros or as garbage. Per directory
    /// entry: an unsynced change kept or reverted, each on its own. All
    /// choices are drawn from `seed`, in inode and name order.
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
    /// Kept torn tails that reached the disk as zeros, or as garbage.
    pub tails_zeroed: u64,
    pub tails_garbage: u64,
    /// Bytes a failed sync had left only in the page cache, now zeros.
    pub bytes_lost_to_failed_syncs: u64,
    /// Directories whose unsynced entries were reverted (wholly or partly).
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
    inodes: Inodes,
    next_inode: InodeId,
    unlinks_since_gc: u32,
    stats: MemStats,
}

enum Inode {
    File(FileNode),
    Dir(DirNode),
}

/// Invariant: durable bytes = `data[..synced_len]` followed by `durable_tail`,
/// and `synced_len <= data.len()`, except the `holes`, which are zeros on disk.
#[derive(Default)]
struct FileNode {
    data: Vec<u8>,
    synced_len: usize,
    /// Durable bytes beyond `synced_len` that a truncate removed from `data`.
    durable_tail: Vec<u8>,
    /// Byte ranges a failed sync marked clean without writing them.
    holes: Vec<(usize, usize)>,
}

#[derive(Default)]
struct DirNode {
    entries: BTreeMap<String, InodeId>,
    durable_entries: BTreeMap<String, InodeId>,
}

impl Default for MemState {
    fn default() -> MemState {
        let mut inodes = Inodes::default();
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
        for hole in &mut self.holes {
            hole.1 = hole.1.min(len);
        }
        self.holes.retain(|(start, end)| start < end);
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

    /// A failed fsync: the unsynced bytes are marked clean, never written.
    fn fail_sync(&mut self) {
        if self.synced_len < self.data.len() {
            self.holes.push((self.synced_len, self.data.len()));
        }
        self.sync();
    }

    /// Reverts to the durable bytes (or a torn prefix); reports what changed.
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
            Some(keep) => {
                self.data.truncate(self.synced_len + keep);
                if matches!(policy, PowerLoss::Torn { .. }) && keep > 0 {
                    self.tear(keep, rng, report);
                }
            }
            None => {
                self.data.truncate(self.synced_len);
                self.data.extend_from_slice(&self.durable_tail);
            }
        }
        for (start, end) in std::mem::take(&mut self.holes) {
            let end = end.min(self.data.len());
            if start < end {
                self.data[start..end].fill(0);
                report.bytes_lost_to_failed_syncs += (end - start) as u64;
            }
        }
        self.sync();
    }

    /// A kept unsynced tail of `kept` bytes reached the disk as written, as
    /// zeros or as garbage (one in three each).
    fn tear(&mut self, kept: usize, rng: &mut ChaCha8Rng, report: &mut PowerLossReport) {
        let tail = self.data.len() - kept..self.data.len();
        match rng.next_u64() % 3 {
            0 => {}
            1 => {
                self.data[tail].fill(0);
                report.tails_zeroed += 1;
            }
            _ => {
                self.data[tail]
                    .iter_mut()
                    .for_each(|b| *b = rng.next_u64() as u8);
                report.tails_garbage += 1;
            }
        }
    }
}

impl DirNode {
    /// Each entry whose current and durable states differ keeps its change
    /// or loses it; torn, each on its own (a change survives one time in
    /// four).
    fn lose_power(
        &mut self,
        policy: PowerLoss,
        rng: &mut ChaCha8Rng,
        report: &mut PowerLossReport,
    ) {
        if self.entries == self.durable_entries {
            return;
        }
        let names: BTreeSet<String> = self
            .entries
            .keys()
            .chain(self.durable_entries.keys())
            .cloned()
            .collect();
        let mut reverted = false;
        for name in names {
            let (now, durable) = (
                self.entries.get(&name).copied(),
                self.durable_entries.get(&name).copied(),
            );
            if now == durable {
                continue;
            }
            let keep = match policy {
                PowerLoss::DropUnsynced => false,
                PowerLoss::KeepWritten => true,
                PowerLoss::Torn { .. } => rng.next_u64().is_multiple_of(4),
            };
            let survivor = if keep { now } else { durable };
            reverted |= !keep;
            for map in [&mut self.entries, &mut self.durable_entries] {
                match survivor {
                    Some(id) => map.insert(name.clone(), id),
                    None => map.remove(&name),
                };
            }
        }
        report.dirs_reverted += u64::from(reverted);
    }
}

impl MemState {
    fn lookup(&self, path: &str) -> Option<InodeId> {
        self.lookup_with_parent(path).map(|(_, id)| id)
    }

    /// `path`'s inode and the directory holding it (the root holds
    /// itself).
    fn lookup_with_parent(&self, path: &str) -> Option<(InodeId, InodeId)> {
        let (mut parent, mut id) = (ROOT, ROOT);
        if path.is_empty() {
            return Some((parent, id));
        }
        for name in crate::env::path::components(path) {
            match self.inodes.get(&id)? {
                Inode::Dir(dir) => (parent, id) = (id, *dir.entries.get(name)?),
                Inode::File(_) => return None,
            }
        }
        Some((parent, id))
    }

    fn file(&mut self, path: &str) -> io::Result<&mut FileNode> {
        let id = self.lookup(path).ok_or_else(|| not_found(path))?;
        match self.inodes.get_mut(&id).expect("linked inode exists") {
            Inode::File(file) => Ok(file),
            Inode::Dir(_) => Err(other(path, "is a directory")),
        }
    }

    fn dir(&mut self, path: &str) -> io::Result<&mut DirNode> {
        let id = self.dir_id(path)?;
        Ok(self.dir_node(id))
    }

    /// The directory at `path`, by id (one walk, for several changes).
    fn dir_id(&self, path: &str) -> io::Result<InodeId> {
        let id = self.lookup(path).ok_or_else(|| not_found(path))?;
        match self.inodes.get(&id).expect("linked inode exists") {
            Inode::Dir(_) => Ok(id),
            Inode::File(_) => Err(other(path, "is not a directory")),
        }
    }

    /// The directory `id`, which a walk just found.
    fn dir_node(&mut self, id: InodeId) -> &mut DirNode {
        match self.inodes.get_mut(&id) {
            Some(Inode::Dir(dir)) => dir,
            _ => panic!("inode {id} was walked to as a directory"),
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
        self.inodes.retain(|id| reachable.contains(id));
    }
}

impl MemStorage {
    pub fn new() -> MemStorage {
        MemStorage::default()
    }

    /// Whether `other` is this same disk (a clone of it), not another one.
    pub fn same_disk(&self, other: &MemStorage) -> bool {
        Arc::ptr_eq(&self.state, &other.state)
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
        for inode in state.inodes.iter_mut() {
            match inode {
                Inode::File(file) => file.lose_power(policy, &mut rng, &mut report),
                Inode::Dir(dir) => dir.lose_power(policy, &mut rng, &mut report),
            }
        }
        state.collect_garbage();
        report
    }

    /// A failed fsync of `path` (for a host injecting I/O errors): its
    /// unsynced bytes stay readable but will never be durable (see the
    /// module comment). Missing files are ignored.
    pub fn fail_sync(&self, path: &str) {
        if let Ok(file) = self.lock().file(path) {
            file.fail_sync();
        }
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
        let (dir, name) = split(path);
        let parent = state.dir_id(dir)?;
        if let Some(&id) = state.dir_node(parent).entries.get(name) {
            return match state.inodes.get_mut(&id).expect("linked inode exists") {
                Inode::File(file) => {
                    file.truncate(0);
                    Ok(())
                }
                Inode::Dir(_) => Err(other(path, "is a directory")),
            };
        }
        let id = state.alloc(Inode::File(FileNode::default()));
        state.dir_node(parent).entries.insert(name.to_string(), id);
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
        let (from_parent, id) = state
            .lookup_with_parent(from)
            .ok_or_else(|| not_found(from))?;
        let into_itself = to
            .strip_prefix(from)
            .is_some_and(|rest| rest.starts_with('/'));
        if from.is_empty() || to.is_empty() || into_itself {
            return Err(other(
                to,
                "cannot rename a directory into itself or the root",
            ));
        }
        let moving_dir = matches!(state.inodes.get(&id), Some(Inode::Dir(_)));
        // A missing or non-directory parent fails as it would have after
        // the checks below (which need `to` to exist).
        let (to_dir, to_name) = split(to);
        let to_parent = state.dir_id(to_dir)?;
        if let Some(&target) = state.dir_node(to_parent).entries.get(to_name) {
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
        let (_, from_name) = split(from);
        state.dir_node(from_parent).entries.remove(from_name);
        let replaced = state
            .dir_node(to_parent)
            .entries
            .insert(to_name.to_string(), id);
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
mod tests;
