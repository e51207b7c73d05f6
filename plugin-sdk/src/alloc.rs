//! The policy's memory allocator in wasm (the `allocator` feature, on by default): size
//! classes with free lists, over the standard allocator.
//!
//! A request through a policy makes dozens of small allocations: every header value the
//! host hands over is allocated by the guest (`proxy_on_memory_allocate`), and strings,
//! keys and the per-request context follow. Under wasi-libc's dlmalloc (behind Rust's
//! `__rdl_alloc` and libc `malloc`) each allocation and free cost 40 to 100
//! instructions: about 6,000 per request for key-auth and rate-limit together, a fifth
//! of their guest time. Here a block of up to 4 KiB is popped from, or pushed onto, the
//! free list of its size class in a few instructions.
//!
//! - Classes are the powers of two from 16 bytes to 4 KiB; a block is aligned to its
//!   class size, so any alignment up to the class is honoured. Bigger or more aligned
//!   requests go to the standard allocator.
//! - Blocks are carved from 64 KiB chunks taken from the standard allocator and are
//!   never handed back to it: freed blocks wait on their class's list. A VM's memory
//!   only grows in wasm anyway; the memory limit of the plugin still bounds it.
//! - Rust passes the layout to `dealloc`, so blocks carry no header.
//!
//! A policy that brings its own `#[global_allocator]` turns this off with
//! `default-features = false`.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::UnsafeCell;
use std::ptr::{self, NonNull};

/// Smallest class: 16 bytes (a free block holds the next pointer).
const MIN_SHIFT: u32 = 4;
/// Largest class: 4 KiB.
const MAX_SHIFT: u32 = 12;
const CLASSES: usize = (MAX_SHIFT - MIN_SHIFT + 1) as usize;
/// Bytes taken from the backing allocator at a time.
const CHUNK: usize = 64 * 1024;

/// The class of a layout, `None` when the backing allocator serves it.
#[inline]
fn class(layout: Layout) -> Option<usize> {
    let size = layout.size().max(layout.align()).max(1 << MIN_SHIFT);
    if size > 1 << MAX_SHIFT {
        return None;
    }
    let shift = usize::BITS - (size - 1).leading_zeros();
    Some((shift - MIN_SHIFT) as usize)
}

#[inline]
fn class_size(class: usize) -> usize {
    1 << (class as u32 + MIN_SHIFT)
}

/// The allocator's state: a free list per class and the unused end of the current chunk.
struct Pools {
    free: [*mut u8; CLASSES],
    next: usize,
    end: usize,
}

/// Size classes over the backing allocator `B` (the standard one in a policy; any
/// allocator in tests).
pub(crate) struct SizeClasses<B> {
    backing: B,
    pools: UnsafeCell<Pools>,
}

// SAFETY: wasm32 without the atomics feature has one thread, so the pools are never
// touched concurrently. (Natively, in the tests, the type is not `Sync`.)
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
unsafe impl<B: Sync> Sync for SizeClasses<B> {}

impl<B> SizeClasses<B> {
    /// An allocator with empty pools.
    pub(crate) const fn new(backing: B) -> Self {
        SizeClasses {
            backing,
            pools: UnsafeCell::new(Pools {
                free: [ptr::null_mut(); CLASSES],
                next: 0,
                end: 0,
            }),
        }
    }
}

impl<B: GlobalAlloc> SizeClasses<B> {
    /// A block of `class`, from the chunk's unused end (a new chunk when it is short).
    #[cold]
    unsafe fn carve(&self, pools: &mut Pools, class: usize) -> *mut u8 {
        let size = class_size(class);
        let mut start = (pools.next + size - 1) & !(size - 1);
        if pools.next == 0 || start + size > pools.end {
            // SAFETY: CHUNK is non-zero and a power-of-two multiple of every class.
            let chunk = unsafe {
                self.backing
                    .alloc(Layout::from_size_align_unchecked(CHUNK, 1 << MAX_SHIFT))
            };
            if chunk.is_null() {
                return chunk;
            }
            start = chunk as usize;
            pools.end = start + CHUNK;
        }
        pools.next = start + size;
        start as *mut u8
    }
}

unsafe impl<B: GlobalAlloc> GlobalAlloc for SizeClasses<B> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(c) = class(layout) else {
            // SAFETY: forwarded as the caller gave it.
            return unsafe { self.backing.alloc(layout) };
        };
        // SAFETY: single-threaded (see `Sync`); no other reference to the pools lives.
        let pools = unsafe { &mut *self.pools.get() };
        let head = pools.free[c];
        if let Some(block) = NonNull::new(head) {
            // SAFETY: a free block holds the next free block of its class.
            pools.free[c] = unsafe { block.as_ptr().cast::<*mut u8>().read() };
            return head;
        }
        // SAFETY: as above.
        unsafe { self.carve(pools, c) }
    }

    #[inline]
    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        let Some(c) = class(layout) else {
            // SAFETY: the backing allocator made this block with this layout.
            return unsafe { self.backing.dealloc(block, layout) };
        };
        // SAFETY: single-threaded; the block is at least 16 bytes and aligned to its class.
        unsafe {
            let pools = &mut *self.pools.get();
            block.cast::<*mut u8>().write(pools.free[c]);
            pools.free[c] = block;
        }
    }

    #[inline]
    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size`, rounded up to the alignment, fits.
        let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (class(layout), class(new)) {
            // Still fits its block.
            (Some(a), Some(b)) if a == b => block,
            // SAFETY: both the backing allocator's.
            (None, None) => unsafe { self.backing.realloc(block, layout, new_size) },
            _ => {
                // SAFETY: a fresh block for the new layout; the old one is valid for
                // `layout.size()` bytes and freed once copied.
                unsafe {
                    let to = self.alloc(new);
                    if !to.is_null() {
                        ptr::copy_nonoverlapping(block, to, layout.size().min(new_size));
                        self.dealloc(block, layout);
                    }
                    to
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::System;

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn classes_are_the_powers_of_two_from_16_to_4096() {
        assert_eq!(class(layout(1, 1)), Some(0));
        assert_eq!(class(layout(16, 8)), Some(0));
        assert_eq!(class(layout(17, 1)), Some(1));
        assert_eq!(class(layout(8, 64)), Some(2));
        assert_eq!(class(layout(4096, 8)), Some(8));
        assert_eq!(class(layout(4097, 8)), None);
        assert_eq!(class(layout(8, 8192)), None);
    }

    /// Blocks are aligned, do not overlap, keep their bytes, and freed ones are reused.
    #[test]
    fn blocks_are_aligned_disjoint_and_reused() {
        let a = SizeClasses::new(System);
        let mut live: Vec<(*mut u8, Layout, u8)> = Vec::new();
        let mut seed = 12345u32;
        let mut rand = move || {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            seed >> 8
        };
        for round in 0..20_000u32 {
            if live.len() > 64 || (rand() % 3 == 0 && !live.is_empty()) {
                let i = rand() as usize % live.len();
                let (p, l, fill) = live.swap_remove(i);
                let bytes = unsafe { std::slice::from_raw_parts(p, l.size()) };
                assert!(bytes.iter().all(|&b| b == fill), "a block was overwritten");
                unsafe { a.dealloc(p, l) };
                continue;
            }
            let size = [1, 7, 16, 24, 100, 255, 1000, 4096, 5000, 70_000][rand() as usize % 10];
            let align = [1, 8, 16, 64, 256][rand() as usize % 5];
            let l = layout(size, align);
            let p = if round % 5 == 0 && size < 4096 {
                // Grown from a smaller block, keeping its bytes.
                let small = layout(size / 2 + 1, align);
                let q = unsafe { a.alloc(small) };
                unsafe { q.write_bytes(0xAB, small.size()) };
                let p = unsafe { a.realloc(q, small, size) };
                let kept = unsafe { std::slice::from_raw_parts(p, small.size()) };
                assert!(kept.iter().all(|&b| b == 0xAB), "realloc lost bytes");
                p
            } else {
                unsafe { a.alloc(l) }
            };
            assert!(!p.is_null());
            assert_eq!(p as usize % align, 0, "{size} bytes aligned to {align}");
            let (lo, hi) = (p as usize, p as usize + size);
            for (q, m, _) in &live {
                assert!(
                    hi <= *q as usize || *q as usize + m.size() <= lo,
                    "blocks overlap"
                );
            }
            let fill = (round % 251) as u8;
            unsafe { p.write_bytes(fill, size) };
            live.push((p, l, fill));
        }
        // A freed block is the next one of its class.
        let l = layout(48, 8);
        let p = unsafe { a.alloc(l) };
        unsafe { a.dealloc(p, l) };
        assert_eq!(unsafe { a.alloc(layout(64, 8)) }, p);
        for (p, l, _) in live {
            unsafe { a.dealloc(p, l) };
        }
    }
}
