//! The inode table of [`super::MemStorage`].

use super::{Inode, InodeId};

/// The inode table, indexed by id (ids are handed out in order and never
/// reused, so a dense table is looked up without a search; a collected
/// inode leaves `None`). Iteration is in id order, as a map's would be.
///
/// A collected inode's slot stays behind, empty: 8 bytes per inode ever
/// created (a disk lives for one simulated run; a sweep's seed creates a
/// few thousand).
#[derive(Default)]
pub(super) struct Inodes {
    slots: Vec<Option<Box<Inode>>>,
}

impl Inodes {
    pub(super) fn get(&self, id: &InodeId) -> Option<&Inode> {
        self.slots.get(usize::try_from(*id).ok()?)?.as_deref()
    }

    pub(super) fn get_mut(&mut self, id: &InodeId) -> Option<&mut Inode> {
        self.slots
            .get_mut(usize::try_from(*id).ok()?)?
            .as_deref_mut()
    }

    /// Stores a new inode; `id` must be the next one (ids are never reused).
    pub(super) fn insert(&mut self, id: InodeId, inode: Inode) {
        assert_eq!(id, self.slots.len() as InodeId, "inode ids are dense");
        self.slots.push(Some(Box::new(inode)));
    }

    pub(super) fn retain(&mut self, mut keep: impl FnMut(&InodeId) -> bool) {
        for (id, slot) in self.slots.iter_mut().enumerate() {
            if slot.is_some() && !keep(&(id as InodeId)) {
                *slot = None;
            }
        }
    }

    /// Inodes alive (not collected).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.slots.iter().flatten().count()
    }

    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = &mut Inode> {
        self.slots.iter_mut().flatten().map(|inode| &mut **inode)
    }
}
