//! Handing freed heap memory back to the operating system.

/// Returns memory freed since the last call to the operating system (glibc's
/// `malloc_trim(0)`): glibc keeps freed pages in its per-thread arenas and only trims the
/// top of the main heap by itself, so a process whose peak has passed keeps its peak's
/// RSS otherwise. A no-op on other C libraries.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and trims the allocator's own free lists; it takes
    // the arena locks itself and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn trimming_leaves_live_allocations_intact() {
        let kept = vec![5u8; 1 << 20];
        drop(vec![0u8; 8 << 20]);
        super::release_freed_memory();
        assert!(kept.iter().all(|&b| b == 5));
    }
}
