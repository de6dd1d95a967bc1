//! The system allocator, except for small over-aligned blocks, which come from per-size free
//! lists carved out of 64 KiB slabs.
//!
//! Why: tokio aligns every task and every socket's readiness record to 128 bytes (against false
//! sharing between cores). glibc's `memalign` serves such a request by cutting an aligned block
//! out of a larger free chunk and putting the piece in front of it (112 bytes or more) back in
//! a bin. A server holding idle sockets asks for nothing of that size again, so each socket's
//! two aligned blocks leave two holes behind: at 15,000 idle sockets, ~20,000 free chunks of
//! 112–368 bytes, ~320 bytes of resident memory per socket (docs/benchmarks.md, round two,
//! fourth pass). Here those blocks sit back to back in slabs, without holes or chunk headers.
//!
//! Every other request (alignment up to 16, or larger than [`MAX_POOLED_BYTES`]) goes to the
//! system allocator unchanged, so the CPU cost of ordinary allocations, and glibc's in-place
//! `realloc`, are kept.
//!
//! A freed pooled block returns to its size's list and is reused by the next request of that
//! size; slabs are never given back to the system. After a peak of connections, what they used
//! stays resident until new ones reuse it, which is also what glibc's fragmented heap does.
//!
//! One ordinary size is kept back as well: up to [`RECYCLED_MAX`] freed blocks of exactly
//! [`RECYCLED_BYTES`] (8 KiB), handed out again as they are. hyper gives every HTTP request a
//! new read buffer of that size (the previous one is still held by the request's head and body
//! while it reads ahead) and frees the old one when the request ends. In glibc a request that
//! large first merges every freed small block (`malloc_consolidate`), undoing the fast reuse of
//! small blocks, on every HTTP request (docs/benchmarks.md, round two, eighth pass). They stay
//! `malloc`'s blocks: one the shelf has no room for is simply freed, and `realloc` works on them.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr::{self, NonNull};
use std::sync::Mutex;

/// The alignment every pooled block has; requests with an alignment above 16 and up to this
/// are pooled. On x86_64 and aarch64 tokio's padding is 128 bytes.
pub const POOLED_ALIGN: usize = 128;
/// The largest pooled request; larger ones (rare: a task whose future is bigger) go to the system.
pub const MAX_POOLED_BYTES: usize = 4096;
/// What `malloc` aligns every block to on its own: `2 * size_of::<usize>()` in glibc and musl
/// (16 bytes on 64-bit targets), whatever the size asked for.
const SYSTEM_ALIGN: usize = 2 * size_of::<usize>();
/// Each size's blocks are cut from slabs of this size, one at a time as they are needed.
const SLAB_BYTES: usize = 64 * 1024;
const CLASSES: usize = MAX_POOLED_BYTES / POOLED_ALIGN;

/// The one ordinary size whose freed blocks are kept for reuse: hyper's read buffer.
pub const RECYCLED_BYTES: usize = 8192;
/// Most blocks of [`RECYCLED_BYTES`] kept: enough for the requests of a busy moment, and at
/// most 128 KiB held back from the system.
pub const RECYCLED_MAX: usize = 16;

/// Freed `malloc` blocks of [`RECYCLED_BYTES`], waiting for the next request of that size.
struct Shelf {
    blocks: [*mut u8; RECYCLED_MAX],
    len: usize,
}

// SAFETY: the blocks are `malloc`'s, owned by the shelf and only used under its mutex.
unsafe impl Send for Shelf {}

static SHELF: Mutex<Shelf> = Mutex::new(Shelf { blocks: [ptr::null_mut(); RECYCLED_MAX], len: 0 });

fn shelf_lock() -> std::sync::MutexGuard<'static, Shelf> {
    // As with `class_lock`: nothing panics while it is held.
    SHELF.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A block of [`RECYCLED_BYTES`]: a recycled one, else a new one. Out of line, so that `alloc`
/// and `dealloc` stay small enough to be inlined for every other size.
#[inline(never)]
fn take_recycled() -> *mut u8 {
    let mut shelf = shelf_lock();
    match shelf.len.checked_sub(1) {
        Some(last) => {
            shelf.len = last;
            shelf.blocks[last]
        }
        // SAFETY: any size may be asked of `malloc`.
        None => unsafe { libc::malloc(RECYCLED_BYTES) }.cast(),
    }
}

/// Keeps `block` (of at least [`RECYCLED_BYTES`], from `malloc`) for [`take_recycled`], or
/// frees it when the shelf is full.
///
/// # Safety
/// `block` is a live `malloc` block of at least `RECYCLED_BYTES`, given up by the caller.
#[inline(never)]
unsafe fn recycle(block: *mut u8) {
    let mut shelf = shelf_lock();
    let len = shelf.len;
    match shelf.blocks.get_mut(len) {
        Some(slot) => {
            *slot = block;
            shelf.len = len + 1;
        }
        // SAFETY: the caller gives the block up, and it is `malloc`'s.
        None => unsafe { libc::free(block.cast()) },
    }
}

/// The global allocator: `#[global_allocator] static A: reprise_alloc::Allocator = reprise_alloc::Allocator;`
pub struct Allocator;

/// A freed block, linked through its first word.
struct FreeBlock {
    next: *mut FreeBlock,
}

/// One size's blocks: the freed ones, and the untouched rest of the current slab (cut lazily,
/// so a slab's pages become resident only as its blocks are used).
struct Class {
    free: *mut FreeBlock,
    next_fresh: *mut u8,
    slab_end: *mut u8,
}

// SAFETY: the pointers are owned by the class and only used under its mutex.
unsafe impl Send for Class {}

/// A std `Mutex` on purpose: it never allocates, the critical sections are a few instructions,
/// and nothing is awaited while it is held.
static CLASSES_BY_SIZE: [Mutex<Class>; CLASSES] =
    [const { Mutex::new(Class { free: ptr::null_mut(), next_fresh: ptr::null_mut(), slab_end: ptr::null_mut() }) };
        CLASSES];

/// Which class serves `layout`, if it is pooled at all. `alloc` and `dealloc` both decide by
/// this alone, so a block always returns to where it came from.
fn class_of(layout: Layout) -> Option<usize> {
    let pooled = layout.align() > SYSTEM_ALIGN && layout.align() <= POOLED_ALIGN && layout.size() <= MAX_POOLED_BYTES;
    pooled.then(|| layout.size().max(1).div_ceil(POOLED_ALIGN) - 1)
}

fn block_bytes(class: usize) -> usize {
    (class + 1) * POOLED_ALIGN
}

impl Class {
    /// A block of `block_bytes(class)`, or null if the system has no memory for a new slab.
    fn take(&mut self, class: usize) -> *mut u8 {
        if let Some(block) = NonNull::new(self.free) {
            // SAFETY: every block on the list was freed to it by `give` and is not in use;
            // its first word holds the next link.
            self.free = unsafe { block.as_ref().next };
            return block.as_ptr().cast();
        }
        let size = block_bytes(class);
        if (self.slab_end as usize).saturating_sub(self.next_fresh as usize) < size {
            let slab_layout = Layout::from_size_align(SLAB_BYTES, POOLED_ALIGN).expect("a valid slab layout");
            // SAFETY: the layout's size is not zero.
            let slab = unsafe { System.alloc(slab_layout) };
            if slab.is_null() {
                return slab;
            }
            self.next_fresh = slab;
            // SAFETY: the end of the slab just allocated.
            self.slab_end = unsafe { slab.add(SLAB_BYTES) };
        }
        let block = self.next_fresh;
        // SAFETY: at most `slab_end`, checked above.
        self.next_fresh = unsafe { block.add(size) };
        block
    }

    /// Puts a block of this class back on the free list.
    fn give(&mut self, block: *mut u8) {
        let block = block.cast::<FreeBlock>();
        // SAFETY: the block is this class's, no longer in use, at least 128 bytes and aligned
        // to 128, so it can hold the link.
        unsafe { block.write(FreeBlock { next: self.free }) };
        self.free = block;
    }
}

fn class_lock(class: usize) -> std::sync::MutexGuard<'static, Class> {
    // A panic cannot happen while the lock is held (the sections do not panic), but if one
    // did, the lists are still consistent between statements: go on with them.
    CLASSES_BY_SIZE[class].lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

// Ordinary requests (alignment up to `SYSTEM_ALIGN`: nearly all of them) go straight to
// `malloc`, `free` and `realloc`, inlined, with one comparison in front: this wrapper sits under
// every allocation of the process.
//
// SAFETY: pooled blocks are `block_bytes(class) >= layout.size()` bytes, aligned to 128 (slabs
// are aligned to 128 and cut in multiples of 128), handed out once until freed; every other
// request is the system allocator's, with its own guarantees.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= SYSTEM_ALIGN {
            if layout.size() == RECYCLED_BYTES {
                return take_recycled();
            }
            // SAFETY: `malloc` aligns every block to `SYSTEM_ALIGN`.
            return unsafe { libc::malloc(layout.size()) }.cast();
        }
        match class_of(layout) {
            Some(class) => class_lock(class).take(class),
            // SAFETY: the caller's guarantees are passed on.
            None => unsafe { System.alloc(layout) },
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= SYSTEM_ALIGN {
            // SAFETY: as in `alloc`; `calloc` skips zeroing pages that are fresh from the system.
            return unsafe { libc::calloc(layout.size(), 1) }.cast();
        }
        // SAFETY: the caller's guarantees are passed on.
        let block = unsafe { self.alloc(layout) };
        if !block.is_null() {
            // SAFETY: the block holds at least `layout.size()` bytes.
            unsafe { block.write_bytes(0, layout.size()) };
        }
        block
    }

    #[inline]
    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        if layout.align() <= SYSTEM_ALIGN {
            if layout.size() == RECYCLED_BYTES {
                // SAFETY: a block of this layout holds at least `RECYCLED_BYTES`, whichever of
                // `malloc`, `calloc`, `realloc` or the shelf made it, and it is `malloc`'s.
                return unsafe { recycle(block) };
            }
            // SAFETY: the block came from `malloc`, `calloc` or `realloc` (`alloc` decided by
            // the same alignment), or from the shelf, which holds only `malloc`'s blocks.
            return unsafe { libc::free(block.cast()) };
        }
        match class_of(layout) {
            Some(class) => class_lock(class).give(block),
            // SAFETY: the block came from `System.alloc` with this layout (`class_of` decided
            // the same way when it was allocated).
            None => unsafe { System.dealloc(block, layout) },
        }
    }

    #[inline]
    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.align() <= SYSTEM_ALIGN {
            // SAFETY: the block is `malloc`'s (see `dealloc`; a recycled one too); `realloc`
            // keeps the alignment, and grows in place when it can.
            return unsafe { libc::realloc(block.cast(), new_size) }.cast();
        }
        // SAFETY: the caller guarantees the new size, rounded up to the alignment, does not
        // overflow `isize`.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (class_of(layout), class_of(new_layout)) {
            // SAFETY: the caller's guarantees are passed on; neither side is pooled.
            (None, None) => unsafe { System.realloc(block, layout, new_size) },
            (Some(old), Some(new)) if old == new => block,
            _ => {
                // SAFETY: the caller's guarantees are passed on.
                let moved = unsafe { self.alloc(new_layout) };
                if !moved.is_null() {
                    // SAFETY: both blocks are valid for the smaller size and distinct.
                    unsafe { ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size)) };
                    // SAFETY: `block` was allocated with `layout`.
                    unsafe { self.dealloc(block, layout) };
                }
                moved
            }
        }
    }
}

// Each test's unsafe calls use blocks the test itself allocated, with their own layouts.
#[cfg(test)]
#[allow(clippy::undocumented_unsafe_blocks)]
mod tests {
    use super::*;

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    /// Freed blocks of `RECYCLED_BYTES` are handed out again (the first `RECYCLED_MAX` freed;
    /// the rest go back to `malloc`), the last kept first out, with their contents; a recycled
    /// block grows and shrinks with `realloc` (it is `malloc`'s). No other test asks for this
    /// size with an ordinary alignment, so nothing else touches the shelf meanwhile.
    #[test]
    fn blocks_of_the_recycled_size_are_reused_and_remain_mallocs() {
        let a = Allocator;
        let l = layout(RECYCLED_BYTES, 8);
        unsafe {
            let held: Vec<*mut u8> = (0..RECYCLED_MAX + 4).map(|_| a.alloc(l)).collect();
            for (i, block) in held.iter().enumerate() {
                block.write_bytes(u8::try_from(i).unwrap(), RECYCLED_BYTES);
            }
            for block in &held {
                a.dealloc(*block, l);
            }
            // Kept: the first RECYCLED_MAX freed, taken back last first.
            let again: Vec<*mut u8> = (0..RECYCLED_MAX).map(|_| a.alloc(l)).collect();
            let expected: Vec<*mut u8> = held[..RECYCLED_MAX].iter().rev().copied().collect();
            assert_eq!(again, expected);
            for (i, block) in again.iter().enumerate() {
                let kept = u8::try_from(RECYCLED_MAX - 1 - i).unwrap();
                assert!((0..RECYCLED_BYTES).all(|at| *block.add(at) == kept), "block {i} changed while kept");
            }
            // A recycled block is a malloc block: it grows and shrinks in place or moves, with
            // its contents.
            let grown = a.realloc(again[0], l, 3 * RECYCLED_BYTES);
            assert!(!grown.is_null());
            let kept = u8::try_from(RECYCLED_MAX - 1).unwrap();
            assert!((0..RECYCLED_BYTES).all(|at| *grown.add(at) == kept));
            a.dealloc(grown, layout(3 * RECYCLED_BYTES, 8));
            for block in &again[1..] {
                a.dealloc(*block, l);
            }
        }
    }

    /// The pattern byte at offset `i`.
    fn byte(i: usize) -> u8 {
        u8::try_from(i % 251).unwrap()
    }

    /// The requests tokio makes (a 384-byte task, a 256-byte readiness record, both aligned
    /// to 128) are pooled; ordinary ones and large ones are not.
    #[test]
    fn only_small_over_aligned_requests_are_pooled() {
        assert_eq!(class_of(layout(384, 128)), Some(2));
        assert_eq!(class_of(layout(256, 128)), Some(1));
        assert_eq!(class_of(layout(1, 32)), Some(0));
        assert_eq!(class_of(layout(4096, 64)), Some(CLASSES - 1));
        assert_eq!(class_of(layout(384, 16)), None);
        assert_eq!(class_of(layout(384, 8)), None);
        assert_eq!(class_of(layout(4097, 128)), None);
        assert_eq!(class_of(layout(256, 256)), None);
    }

    #[test]
    fn pooled_blocks_are_aligned_writable_and_reused_after_free() {
        let a = Allocator;
        let l = layout(384, 128);
        unsafe {
            let first = a.alloc(l);
            assert_eq!(first as usize % 128, 0);
            first.write_bytes(0xAB, 384);
            let second = a.alloc(l);
            assert_ne!(first, second);
            assert_eq!(second as usize % 128, 0);
            second.write_bytes(0xCD, 384);
            assert!((0..384).all(|i| *first.add(i) == 0xAB), "a block was handed out twice");
            a.dealloc(first, l);
            // Other tests share the class, but this thread holds no lock in between: the block
            // freed last is the one taken next unless another test frees one meanwhile.
            let third = a.alloc(l);
            assert_eq!(third as usize % 128, 0);
            a.dealloc(third, l);
            a.dealloc(second, l);
        }
    }

    #[test]
    fn zeroed_blocks_are_zero_even_when_reused() {
        let a = Allocator;
        let l = layout(1000, 64);
        unsafe {
            let dirty = a.alloc(l);
            dirty.write_bytes(0xFF, 1000);
            a.dealloc(dirty, l);
            let zeroed = a.alloc_zeroed(l);
            assert!((0..1000).all(|i| *zeroed.add(i) == 0));
            a.dealloc(zeroed, l);
        }
    }

    /// A realloc keeps the contents whether the block moves into, out of or within the pool.
    #[test]
    fn realloc_keeps_contents_across_the_pools_edge() {
        let a = Allocator;
        unsafe {
            let mut size = 100;
            let mut block = a.alloc(layout(size, 128));
            for i in 0..size {
                *block.add(i) = byte(i);
            }
            for new_size in [120, 300, 4096, 10_000, 200, 5000, 64] {
                block = a.realloc(block, layout(size, 128), new_size);
                assert!(!block.is_null());
                assert_eq!(block as usize % 128, 0);
                let kept = size.min(new_size);
                assert!((0..kept).all(|i| *block.add(i) == byte(i)), "lost contents at {size} -> {new_size}");
                for i in kept..new_size {
                    *block.add(i) = byte(i);
                }
                size = new_size;
            }
            a.dealloc(block, layout(size, 128));
        }
    }

    /// Ordinary requests (`malloc` underneath) are aligned as asked, whatever their size, and
    /// keep their contents when they grow in place or move.
    #[test]
    fn ordinary_requests_are_aligned_and_keep_contents() {
        let a = Allocator;
        for align in [1, 2, 4, 8, 16] {
            unsafe {
                let mut block = a.alloc(layout(1, align));
                assert_eq!(block as usize % align, 0);
                *block = 7;
                for new_size in [3, 64, 1000, 200_000, 17] {
                    block = a.realloc(block, layout(1, align), new_size);
                    assert_eq!(block as usize % align, 0);
                    assert_eq!(*block, 7);
                }
                a.dealloc(block, layout(17, align));
                let zeroed = a.alloc_zeroed(layout(5000, align));
                assert!((0..5000).all(|i| *zeroed.add(i) == 0));
                a.dealloc(zeroed, layout(5000, align));
            }
        }
    }

    /// Blocks of every class allocated and freed from several threads at once are never handed
    /// out twice: each thread stamps its blocks and checks the stamps before freeing them.
    #[test]
    fn threads_never_share_a_block() {
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                std::thread::spawn(move || {
                    let a = Allocator;
                    for round in 0..200 {
                        let held: Vec<(*mut u8, Layout)> = (0..CLASSES)
                            .map(|class| {
                                let l = layout(block_bytes(class) - (round % 100), 128);
                                let block = unsafe { a.alloc(l) };
                                assert!(!block.is_null());
                                unsafe { block.write_bytes(t, l.size()) };
                                (block, l)
                            })
                            .collect();
                        for (block, l) in held {
                            assert!((0..l.size()).all(|i| unsafe { *block.add(i) } == t));
                            unsafe { a.dealloc(block, l) };
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
    }
}
