//! Hints to the CPU that memory is about to be read, for the forwarding loop: a listener's
//! state is spread over a few boxes (its connection, its slots, its keys), and the loop asks
//! for the next listeners' while it works on this one. A hint never faults and reads nothing,
//! so a stale address is harmless.

/// A cache line on the machines Stoa runs on.
const LINE: usize = 64;

/// Asks for the `lines` cache lines from `addr` on.
#[inline(always)]
pub fn lines(addr: *const u8, lines: usize) {
    #[cfg(target_arch = "x86_64")]
    for i in 0..lines {
        // SAFETY: `_mm_prefetch` needs SSE, which every x86_64 CPU has, and only hints: it
        // dereferences nothing and cannot fault, whatever the address.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                addr.wrapping_add(i * LINE).cast(),
            );
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (addr, lines);
}

/// Asks for the first cache line of `value`.
#[inline(always)]
pub fn of<T: ?Sized>(value: &T) {
    lines((value as *const T).cast(), 1);
}
