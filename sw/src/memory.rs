//! Memory hints for the large, long-lived arrays of the flow table.

/// Asks the kernel to back `[ptr, ptr+len)` with huge pages where it can:
/// a million flows span 128 MiB, and with 4 KiB pages nearly every random
/// lookup would also miss the TLB. Best effort; nothing fails without it.
pub fn advise_huge_pages(ptr: *mut u8, len: usize) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = (ptr as usize).next_multiple_of(HUGE);
        let end = (ptr as usize + len) & !(HUGE - 1);
        if end > start {
            // SAFETY: madvise only changes how the kernel backs pages of a
            // range we own; MADV_HUGEPAGE never changes their contents.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (ptr, len);
}
