//! An arena behind `cabi_realloc` for a call's arguments.
//!
//! Why: before each `evaluate` the host copies the sample into the rule's
//! memory, calling the guest's `cabi_realloc` once per string and list (66
//! times for a 20-metric sample), and after the call the rule frees every
//! one of them again when the `Sample` drops. With the default allocator a
//! third of a call's time went to those `malloc`s and `free`s
//! (BENCHMARKS.md, "What the cost is"). Here the copies are bump-allocated
//! from one block, their frees do nothing, and the block is reset in one
//! step once the sample is gone.
//!
//! What it guarantees: only allocations the host makes *between* two export
//! calls (the arguments) come from the arena. Once the export body runs
//! ([`begin_call`]), `cabi_realloc` goes to the normal allocator again, so a
//! string the host returns from an import (`state-get`) is an ordinary
//! allocation the rule may keep. The SDK hands the rule `&Sample` and drops
//! the sample itself before [`end_call`] resets the block, so nothing the
//! rule can hold points into it. A sample larger than the block spills to
//! the normal allocator and the next block is twice as large (up to
//! [`MAX_BLOCK`]).
//!
//! It installs the `#[global_allocator]` of the component (the system
//! allocator, except that freeing an arena pointer does nothing), so a rule
//! built with the SDK cannot install its own.

/// The first block: a 20-metric sample takes about 2 KiB.
#[cfg(target_arch = "wasm32")]
const FIRST_BLOCK: usize = 16 * 1024;
/// Blocks stop growing here; larger samples spill to the normal allocator.
pub const MAX_BLOCK: usize = 4 * 1024 * 1024;

#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
mod wasm {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};

    use super::{FIRST_BLOCK, MAX_BLOCK};

    // A component instance is single-threaded; atomics are only the safe way
    // to have mutable statics and compile to plain loads and stores.
    static BASE: AtomicUsize = AtomicUsize::new(0);
    static SIZE: AtomicUsize = AtomicUsize::new(0);
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    /// Whether `cabi_realloc` serves from the block (between calls).
    static ACTIVE: AtomicBool = AtomicBool::new(false);
    /// Whether an allocation did not fit since the last reset.
    static SPILLED: AtomicBool = AtomicBool::new(false);

    fn in_block(ptr: *mut u8) -> bool {
        let base = BASE.load(Relaxed);
        let addr = ptr as usize;
        base != 0 && addr >= base && addr < base + SIZE.load(Relaxed)
    }

    /// The system allocator, except that arena pointers are never freed.
    struct ArenaAware;

    // SAFETY: every method forwards to `System` with the caller's arguments,
    // except for pointers inside the block, which `System` never handed out
    // to the caller and must not see: freeing them is a no-op, and growing
    // one copies it into a fresh `System` allocation.
    unsafe impl GlobalAlloc for ArenaAware {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            unsafe { System.alloc(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            if !in_block(ptr) {
                unsafe { System.dealloc(ptr, layout) }
            }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            if !in_block(ptr) {
                return unsafe { System.realloc(ptr, layout, new_size) };
            }
            // SAFETY: `layout.align()` is a valid alignment (it came in a
            // `Layout`) and `new_size` is non-zero per `GlobalAlloc::realloc`.
            let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
            let new = unsafe { System.alloc(new_layout) };
            if !new.is_null() {
                // SAFETY: both regions are valid for the smaller size and
                // do not overlap (one is in the block, one is not).
                unsafe { std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size)) };
            }
            new
        }
    }

    #[global_allocator]
    static ALLOCATOR: ArenaAware = ArenaAware;

    /// Bump-allocates from the block, or `None` when it does not fit.
    fn bump(size: usize, align: usize) -> Option<*mut u8> {
        let base = BASE.load(Relaxed);
        if base == 0 {
            return None;
        }
        let start = NEXT.load(Relaxed).checked_add(align - 1)? & !(align - 1);
        let end = start.checked_add(size)?;
        if end > base + SIZE.load(Relaxed) {
            return None;
        }
        NEXT.store(end, Relaxed);
        Some(start as *mut u8)
    }

    /// The canonical ABI's allocator, as the host calls it to copy
    /// arguments and import results into the rule's memory.
    ///
    /// # Safety
    ///
    /// Called by the host per the canonical ABI: `align` is a power of two,
    /// and a non-null `old_ptr` is a live allocation of `old_len` bytes.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn cabi_realloc(
        old_ptr: *mut u8,
        old_len: usize,
        align: usize,
        new_len: usize,
    ) -> *mut u8 {
        if new_len == 0 {
            return align as *mut u8;
        }
        if old_len == 0 && ACTIVE.load(Relaxed) {
            if let Some(ptr) = bump(new_len, align) {
                return ptr;
            }
            SPILLED.store(true, Relaxed);
        }
        // SAFETY: the canonical ABI passes a power-of-two `align`, and
        // `new_len` is non-zero (checked above).
        let ptr = unsafe {
            if old_len == 0 {
                std::alloc::alloc(Layout::from_size_align_unchecked(new_len, align))
            } else {
                std::alloc::realloc(
                    old_ptr,
                    Layout::from_size_align_unchecked(old_len, align),
                    new_len,
                )
            }
        };
        if ptr.is_null() {
            // Out of memory: trap, as the default `cabi_realloc` does.
            std::process::abort();
        }
        ptr
    }

    pub fn begin_call() {
        ACTIVE.store(false, Relaxed);
    }

    pub fn end_call() {
        let size = SIZE.load(Relaxed);
        if BASE.load(Relaxed) == 0 || (SPILLED.load(Relaxed) && size < MAX_BLOCK) {
            let new_size = if size == 0 {
                FIRST_BLOCK
            } else {
                (size * 2).min(MAX_BLOCK)
            };
            // SAFETY: 16 is a power of two and the size is non-zero.
            let layout = unsafe { Layout::from_size_align_unchecked(new_size, 16) };
            let new = unsafe { System.alloc(layout) };
            if new.is_null() {
                // Keep the block we have; a sample that does not fit spills.
                SPILLED.store(false, Relaxed);
            } else {
                let old = BASE.swap(new as usize, Relaxed);
                if old != 0 {
                    // SAFETY: the old block came from `System.alloc` with
                    // this layout, and nothing points into it any more:
                    // `end_call` runs after the call's arguments dropped.
                    unsafe {
                        System.dealloc(old as *mut u8, Layout::from_size_align_unchecked(size, 16))
                    };
                }
                SIZE.store(new_size, Relaxed);
            }
        }
        NEXT.store(BASE.load(Relaxed), Relaxed);
        SPILLED.store(false, Relaxed);
        ACTIVE.store(true, Relaxed);
    }
}

/// Marks the start of an export's body: from here on `cabi_realloc` (for
/// import results) gives out ordinary allocations the rule may keep.
pub fn begin_call() {
    #[cfg(target_arch = "wasm32")]
    wasm::begin_call();
}

/// Marks the end of an export's body, after its arguments are dropped:
/// resets the block and serves the next call's arguments from it.
pub fn end_call() {
    #[cfg(target_arch = "wasm32")]
    wasm::end_call();
}
