//! Cache prefetch hints: ask the CPU to start loading a value's memory before it is read. On a
//! large cluster an instance's state is evicted between two of its events; the event loop names
//! the next event's instance while the current one runs, so its first reads need not wait.
//! Hints only: no effect on results, and none at all on other architectures.

/// Hints that all of `value`'s bytes (not what it points to) will be read soon.
#[inline(always)]
pub fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let start = value as *const T as *const i8;
        let mut offset = 0;
        while offset < std::mem::size_of::<T>() {
            // SAFETY: a prefetch never faults and reads nothing the program sees; the address is
            // inside `value`, which the reference keeps alive.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.add(offset)) };
            offset += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}
