//! The binary's global allocator: mimalloc (version 2, transparent huge pages off), called the
//! way the standard library calls `malloc`.
//!
//! The `mimalloc` crate's allocator passes every request to `mi_malloc_aligned`, which serves a
//! block over 1 KiB (hyper's 8 KiB read buffers, header maps) through mimalloc's generic
//! aligned path: about 370 instructions per proxied request of ~30k. `mi_malloc` already
//! aligns every block to 16 bytes when the size allows, so, as `std`'s `System` does with
//! `malloc`, the aligned entry points are used only for the alignments it does not give.
//!
//! A module of the binary (src/main.rs), not of the library, which forbids unsafe code.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// mimalloc's `MI_MAX_ALIGN_SIZE`: `mi_malloc(n)` is aligned to this, or to `n` when smaller.
const MALLOC_ALIGN: usize = 16;

/// mimalloc as a [`GlobalAlloc`]; see the module documentation.
pub struct MiMalloc;

/// Whether plain `mi_malloc(size)` gives a block aligned as `align` asks.
#[inline]
fn plain_fits(align: usize, size: usize) -> bool {
    align <= MALLOC_ALIGN && align <= size
}

// SAFETY: every block comes from mimalloc and goes back to it; the aligned entry points are
// used whenever plain `mi_malloc` would not honour the layout's alignment.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if plain_fits(layout.align(), layout.size()) {
            mi::mi_malloc(layout.size()).cast()
        } else {
            mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if plain_fits(layout.align(), layout.size()) {
            mi::mi_zalloc(layout.size()).cast()
        } else {
            mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi::mi_free(ptr.cast::<c_void>());
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if plain_fits(layout.align(), new_size) {
            mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
        } else {
            mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every alignment a layout can ask of it is honoured, on the plain path and the aligned
    /// one, across realloc, and zeroed memory is zero.
    #[test]
    fn blocks_are_aligned_as_asked() {
        let a = MiMalloc;
        for align in [1usize, 2, 4, 8, 16, 32, 64, 4096] {
            for size in [1usize, 3, 8, 15, 16, 17, 100, 1024, 1025, 8192, 100_000] {
                let layout = Layout::from_size_align(size, align).expect("valid layout");
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "alloc size {size} align {align}");
                    p.write_bytes(0xA5, size);
                    let grown = size * 3 + 1;
                    let q = a.realloc(p, layout, grown);
                    assert!(!q.is_null());
                    assert_eq!(q as usize % align, 0, "realloc to {grown} align {align}");
                    assert!(
                        (0..size).all(|i| *q.add(i) == 0xA5),
                        "realloc kept the bytes"
                    );
                    a.dealloc(
                        q,
                        Layout::from_size_align(grown, align).expect("valid layout"),
                    );
                    let z = a.alloc_zeroed(layout);
                    assert_eq!(
                        z as usize % align,
                        0,
                        "alloc_zeroed size {size} align {align}"
                    );
                    assert!((0..size).all(|i| *z.add(i) == 0), "zeroed");
                    a.dealloc(z, layout);
                }
            }
        }
    }
}
