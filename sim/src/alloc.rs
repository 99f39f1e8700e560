//! The process allocator of `shapesim` and the benchmarks: mimalloc, called
//! the way C calls it when the alignment allows.
//!
//! The `mimalloc` crate sends every allocation through
//! `mi_malloc_aligned`, whose general path costs more than the allocation
//! itself (a sweep allocates about 180,000 times per seed). Every mimalloc
//! block is aligned to at least a word (8 bytes): a layout that asks for no
//! more takes the plain `mi_malloc` / `mi_realloc` path, and only larger
//! alignments go through the aligned calls. Freeing is the same either way.

use core::alloc::{GlobalAlloc, Layout};
use core::ffi::c_void;
use libmimalloc_sys as ffi;

/// The alignment every mimalloc block has.
const WORD_ALIGN: usize = 8;

pub struct Mimalloc;

// SAFETY: every call is mimalloc's; a block from `mi_malloc` is aligned to
// 8 bytes, so it serves any layout aligned to 8 or less, and `mi_free`
// frees blocks from either path.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: mimalloc's allocation calls take any size and alignment.
        unsafe {
            if layout.align() <= WORD_ALIGN {
                ffi::mi_malloc(layout.size()).cast()
            } else {
                ffi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        unsafe {
            if layout.align() <= WORD_ALIGN {
                ffi::mi_zalloc(layout.size()).cast()
            } else {
                ffi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator.
        unsafe { ffi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with `layout`'s alignment.
        unsafe {
            if layout.align() <= WORD_ALIGN {
                ffi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                ffi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The word-alignment assumption, held to mimalloc itself: blocks of
    /// every small size come back aligned as their layout asks, on both
    /// paths, and keep their bytes across a realloc.
    #[test]
    fn blocks_are_aligned_as_asked_and_survive_realloc() {
        for align in [1, 2, 4, 8, 16, 32, 64] {
            for size in 1..=96 {
                let layout = Layout::from_size_align(size, align).expect("a layout");
                // SAFETY: a non-zero layout; the block is freed with it.
                unsafe {
                    let p = Mimalloc.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    p.write_bytes(0xA5, size);
                    let q = Mimalloc.realloc(p, layout, size * 3);
                    assert_eq!(q as usize % align, 0, "realloc, size {size} align {align}");
                    assert!((0..size).all(|i| *q.add(i) == 0xA5));
                    let grown = Layout::from_size_align(size * 3, align).expect("a layout");
                    Mimalloc.dealloc(q, grown);
                    let z = Mimalloc.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0);
                    assert!((0..size).all(|i| *z.add(i) == 0));
                    Mimalloc.dealloc(z, layout);
                }
            }
        }
    }
}
