//! Cache prefetch hints: ask the caches for a value that will be read soon, so that a
//! loop over many values (the server's fan-out over its readers) overlaps the cache
//! misses of the next ones with the work on the current one.
//!
//! Hand-written because the standard library's prefetch is unstable; on targets other
//! than x86_64 the hints are no-ops.

/// Most cache lines of one value hinted (bounds the hints for a large value).
const MAX_LINES: usize = 8;

/// Cache line size assumed.
const LINE: usize = 64;

/// Hints that `value`'s memory (up to its first 8 cache lines) will be read soon.
/// Never reads it: only its address and size are used.
#[inline]
pub fn prefetch<T: ?Sized>(value: &T) {
    for p in lines(value) {
        hint(p);
    }
}

/// The addresses hinted for `value`: one per cache line it spans from its start, at most
/// [`MAX_LINES`], none for an empty value.
#[inline]
fn lines<T: ?Sized>(value: &T) -> impl Iterator<Item = *const u8> {
    let start = (value as *const T).cast::<u8>();
    let len = std::mem::size_of_val(value).min(MAX_LINES * LINE);
    (0..len)
        .step_by(LINE)
        .map(move |offset| start.wrapping_add(offset))
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn hint(p: *const u8) {
    use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    // SAFETY: PREFETCHT0 is a hint: it never faults and has no architectural effect,
    // whatever the address, so any pointer is fine; SSE, which provides it, is part of
    // the x86_64 baseline every x86_64 target enables.
    unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast::<i8>()) }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn hint(_: *const u8) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_hint_per_cache_line_at_most_eight() {
        let v = vec![7u8; 4096];
        let at = |p: *const u8| p as usize - v.as_ptr() as usize;
        let offsets = |s: &[u8]| lines(s).map(at).collect::<Vec<_>>();
        assert_eq!(offsets(&v[..1]), vec![0]);
        assert_eq!(offsets(&v[..64]), vec![0]);
        assert_eq!(offsets(&v[..65]), vec![0, 64]);
        assert_eq!(offsets(&v[100..300]), vec![100, 164, 228, 292]);
        assert_eq!(offsets(&v[..]), (0..8).map(|i| i * 64).collect::<Vec<_>>());
        assert_eq!(lines(&v[..0]).count(), 0);
        // A trait object's size is the concrete value's.
        let s: Box<dyn std::fmt::Debug> = Box::new([0u64; 20]);
        assert_eq!(lines(&*s).count(), 3);
        prefetch(&v[..]);
        prefetch(&*s);
    }
}
