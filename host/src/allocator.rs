//! How the process's memory allocator is set up.
//!
//! glibc's `malloc` gives threads their own arenas, up to eight per core,
//! and each arena keeps the memory its thread freed for later. Vigil's
//! threads (the async workers, the evaluation pool, the epoch ticker, file
//! watchers) each ended up with an arena of a few MiB: at 1,000 targets
//! five arenas held 16 MiB, a third of the host's peak RSS, while one arena
//! per core held the same live data in 9 MiB less (BENCHMARKS.md, "Third
//! round"). Contention stays low with one arena per core, as there are at
//! most as many threads running at once.

/// Caps glibc's arenas at one per core (at least two), unless the operator
/// set `MALLOC_ARENA_MAX`, which glibc reads itself. Call it first thing,
/// before any thread starts. Elsewhere than on glibc it does nothing.
pub fn one_arena_per_core() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
            return;
        }
        let cores = std::thread::available_parallelism().map_or(2, |cores| cores.get().max(2));
        let arenas = libc::c_int::try_from(cores).unwrap_or(libc::c_int::MAX);
        // SAFETY: `mallopt` only sets a tunable of the allocator; it is safe
        // to call at any time, and is called here before other threads
        // exist. A refusal (0) leaves glibc's default, which is only more
        // memory.
        #[allow(unsafe_code)]
        let _ = unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) };
    }
}

/// Hands the memory the allocator holds free back to the system. Compiling
/// a rule is a burst of allocations that are all freed when it ends, and
/// glibc keeps what a burst freed for later: the zero-config host, which
/// compiles the bundled rule at its first start, went from 36.7 to 32.8 MiB
/// RSS with this (a start from the compile cache is 23.8). A host with many
/// targets reuses those pages anyway, so its peak is the same either way
/// (BENCHMARKS.md, "Fourth round"). Called after each
/// compile, which is rare (at start, and when a rule file changes); it
/// walks the free lists of every arena, a few milliseconds. Elsewhere than
/// on glibc it does nothing.
pub fn give_back_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `malloc_trim` only releases pages the allocator holds
        // free; it takes each arena's lock, so it is safe from any thread.
        #[allow(unsafe_code)]
        let _ = unsafe { libc::malloc_trim(0) };
    }
}
