//! The process's heap: glibc's malloc told to give large blocks back at once.
//!
//! glibc serves a block of 128 KiB or more with its own mapping, returned to the system when freed,
//! but raises that threshold to the size of each such block freed (up to 32 MiB). After the first
//! ingest batches (statement parameters and connection buffers of megabytes), those blocks come
//! from the heap arenas instead, which keep what they grew to: on the 1,000,000-card backlog the
//! worker peaked at 143-144 MiB with the sliding threshold and at 125 MiB with it fixed at 256 KiB,
//! for the same CPU (`scripts/backlog`, README "Memory and a large backlog").

/// The fixed threshold: blocks from this size on get their own mapping.
pub const MMAP_THRESHOLD: usize = 256 * 1024;

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
