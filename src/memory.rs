//! The process's heap: glibc's malloc told to give large blocks back at once.
//!
//! glibc serves a block of 128 KiB or more with its own mapping, returned to the system when freed,
//! but raises that threshold to the size of each such block freed (up to 32 MiB), and the arenas'
//! trim threshold with it (to twice that). After the first ingest batches (statement parameters and
//! connection buffers of megabytes), such blocks come from the arenas, which then keep that much
//! free space before giving any back: on the 1,000,000-card backlog the worker peaked at 141-144 MiB with the
//! sliding thresholds. Fixing the threshold keeps glibc's default trim threshold (128 KiB). At 4 MiB
//! the ingest blocks below it still come from the arenas; at 256 KiB or 1 MiB every batch mapped
//! and unmapped megabytes, and ingest cost 18 % more CPU per message (`scripts/backlog`, README
//! "Memory and a large backlog").

/// The fixed threshold: blocks from this size on get their own mapping.
pub const MMAP_THRESHOLD: usize = 4 * 1024 * 1024;

/// Fixes glibc's mmap threshold at [`MMAP_THRESHOLD`], unless the operator set one
/// (`GLIBC_TUNABLES=glibc.malloc.mmap_threshold=...` or `MALLOC_MMAP_THRESHOLD_`). Call first
/// in `main`, before any thread starts. Returns whether it was set.
pub fn fix_mmap_threshold() -> bool {
    if operator_set(
        std::env::var("GLIBC_TUNABLES").ok().as_deref(),
        std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some(),
    ) {
        return false;
    }
    set_threshold(MMAP_THRESHOLD)
}

/// Whether the environment already sets the threshold.
fn operator_set(tunables: Option<&str>, malloc_env: bool) -> bool {
    malloc_env
        || tunables
            .is_some_and(|t| t.split([':', ' ']).any(|kv| kv.starts_with("glibc.malloc.mmap_threshold=")))
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_threshold(bytes: usize) -> bool {
    let Ok(bytes) = libc::c_int::try_from(bytes) else { return false };
    // SAFETY: mallopt only changes malloc's parameters; it is called before any other thread runs.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, bytes) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_threshold(_bytes: usize) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operators_threshold_is_left_alone() {
        assert!(!operator_set(None, false));
        assert!(!operator_set(Some("glibc.malloc.arena_max=2"), false));
        assert!(operator_set(Some("glibc.malloc.arena_max=2:glibc.malloc.mmap_threshold=1048576"), false));
        assert!(operator_set(Some("glibc.malloc.mmap_threshold=65536"), false));
        assert!(operator_set(None, true));
    }
}
