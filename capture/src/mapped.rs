//! A mapped capture cut short under the replay: an error at the offset
//! where it was cut, as reading it gives, not a bare "Bus error".
//!
//! A capture file mapped into memory is read without a copy, but when
//! another process truncates it (a capture rotated in place, `truncate`,
//! a disk error under it), the next read of a page past the new end is
//! SIGBUS, and the process would die with no word of which file or where,
//! and with the records of every flow so far. The handler installed here
//! looks up the faulting address among the captures mapped now
//! ([`Watch`]); in one of them it maps zero pages over the rest of that
//! mapping, so the read goes on, and notes the fault. The source checks
//! the note before it hands out a frame ([`Watch::faulted`]) and, once it
//! is set, the file's size, and ends with an error at the first record
//! the file no longer holds; nothing read from past it is handed out, and
//! the replay ends as it does at a file that ends inside a record. A fault
//! anywhere else, or a SIGBUS sent by a process, goes on to the handler
//! that was there before (Rust's own, or the default, which kills as
//! always).
//!
//! Written by hand: signal-hook, the well-kept crate for signals, refuses
//! SIGBUS, whose handler must run on the faulting thread and repair the
//! fault before it returns.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Once, OnceLock};

/// Captures mapped at once, at most, whose faults are repaired: a replay
/// maps one, a daemon one per pcap source. Past these, files are read.
const SLOTS: usize = 32;

struct Slot {
    /// First byte of the mapping; 0 while the slot is free, `usize::MAX`
    /// while it is being claimed or given back.
    start: AtomicUsize,
    len: AtomicUsize,
    /// A read past the file's end faulted, and was repaired.
    faulted: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)]
const FREE: Slot = Slot { start: AtomicUsize::new(0), len: AtomicUsize::new(0), faulted: AtomicBool::new(false) };

static MAPPED: [Slot; SLOTS] = [FREE; SLOTS];

/// The SIGBUS action before ours, to hand other faults to.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();
static INSTALL: Once = Once::new();
/// The page size, read before the handler can run (`sysconf` is not one
/// of the calls a signal handler may make).
static PAGE: AtomicUsize = AtomicUsize::new(4096);

/// A mapped capture whose faults are repaired and noted while it lives.
/// Drop it before (or with) the mapping.
pub struct Watch {
    slot: usize,
}

impl Watch {
    /// Watches `len` bytes mapped at `start`; `None` when as many
    /// mappings are watched as can be.
    pub fn new(start: *const u8, len: usize) -> Option<Watch> {
        install();
        let slot = (0..SLOTS).find(|&i| {
            let s = &MAPPED[i];
            s.start.compare_exchange(0, usize::MAX, Ordering::AcqRel, Ordering::Relaxed).is_ok()
        });
        if let Some(i) = slot {
            let s = &MAPPED[i];
            s.faulted.store(false, Ordering::Relaxed);
            s.len.store(len, Ordering::Relaxed);
            // Published last: the handler reads the rest only for an
            // address inside, which needs `start`.
            s.start.store(start as usize, Ordering::Release);
        }
        Some(Watch { slot: slot? })
    }

    /// Whether a read past the file's end was made (the file was cut):
    /// the bytes from the page of it on read as zeros.
    #[inline]
    pub fn faulted(&self) -> bool {
        MAPPED[self.slot].faulted.load(Ordering::Acquire)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let s = &MAPPED[self.slot];
        s.start.store(usize::MAX, Ordering::Release);
        s.len.store(0, Ordering::Relaxed);
        s.start.store(0, Ordering::Release);
    }
}

/// The machine's page size.
pub fn page_size() -> usize {
    install();
    PAGE.load(Ordering::Relaxed)
}

fn install() {
    INSTALL.call_once(|| {
        // SAFETY: `sysconf` has no preconditions; the first `sigaction`
        // only reads the current action into a valid struct, the second
        // installs a zeroed struct filled with a handler of the SA_SIGINFO
        // kind and an empty mask; the kernel keeps neither pointer.
        unsafe {
            let page = libc::sysconf(libc::_SC_PAGESIZE);
            if page > 0 {
                PAGE.store(page as usize, Ordering::Relaxed);
            }
            let mut previous: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut previous) != 0 {
                previous.sa_sigaction = libc::SIG_DFL;
            }
            // Set before ours is in, so the handler always finds it.
            let _ = PREVIOUS.set(previous);
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigbus as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut());
        }
    });
}

/// Maps zero pages over the watched mapping in `s` from the page of `addr`
/// to its end, and notes the fault: whether that worked.
fn repair(s: &Slot, start: usize, addr: usize) -> bool {
    let page = PAGE.load(Ordering::Relaxed);
    let from = addr & !(page - 1);
    let end = (start + s.len.load(Ordering::Relaxed)).next_multiple_of(page);
    // SAFETY: `from..end` lies within a read-only mapping of a capture
    // that its source owns and reads only through `Watch::faulted`'s check;
    // replacing those pages (MAP_FIXED) with private zero pages leaves
    // every byte readable. `mmap` is a system call, safe in a handler.
    let at = unsafe {
        libc::mmap(
            from as *mut libc::c_void,
            end - from,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    if at as usize != from {
        return false;
    }
    s.faulted.store(true, Ordering::Release);
    true
}

extern "C" fn on_sigbus(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // SAFETY: the kernel hands an SA_SIGINFO handler a valid siginfo.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    // A fault (code above 0), not a signal another process sent.
    if code > 0 {
        for s in &MAPPED {
            let start = s.start.load(Ordering::Acquire);
            if start == 0 || start == usize::MAX || addr < start || addr - start >= s.len.load(Ordering::Relaxed) {
                continue;
            }
            if repair(s, start, addr) {
                return;
            }
            break;
        }
    }
    // Not a capture's page: the handler before ours has it.
    let Some(previous) = PREVIOUS.get() else { return };
    match previous.sa_sigaction {
        libc::SIG_IGN if code <= 0 => {}
        libc::SIG_DFL | libc::SIG_IGN => {
            // SAFETY: the default action restored, a fault's read runs
            // again on return, and a sent signal is raised again: the
            // process dies of SIGBUS as it would have without us.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = libc::SIG_DFL;
                libc::sigemptyset(&mut action.sa_mask);
                libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut());
                if code <= 0 {
                    libc::raise(libc::SIGBUS);
                }
            }
        }
        handler if previous.sa_flags & libc::SA_SIGINFO != 0 => {
            // SAFETY: an SA_SIGINFO handler takes these three arguments.
            let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                unsafe { std::mem::transmute(handler) };
            handler(signal, info, context);
        }
        handler => {
            // SAFETY: a plain handler takes the signal's number.
            let handler: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(handler) };
            handler(signal);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pcap::{PcapFileSource, MMAP_ENV};
    use crate::{PacketSource, SourceError};

    const RECORD: usize = 1024;

    /// A little-endian Ethernet pcap of `records` records of `RECORD`
    /// bytes each, header included.
    fn capture(records: usize) -> Vec<u8> {
        let mut b = 0xa1b2_c3d4u32.to_le_bytes().to_vec();
        b.extend_from_slice(&2u16.to_le_bytes());
        b.extend_from_slice(&4u16.to_le_bytes());
        for word in [0u32, 0, 65535, 1] {
            b.extend_from_slice(&word.to_le_bytes());
        }
        for i in 0..records as u32 {
            let len = (RECORD - 16) as u32;
            for word in [i, 0, len, len] {
                b.extend_from_slice(&word.to_le_bytes());
            }
            // Frames of 0xff, so a zero page read as one shows.
            b.resize(b.len() + len as usize, 0xff);
        }
        b
    }

    #[test]
    fn watches_take_and_give_back_their_slots() {
        let bytes = [0u8; 64];
        let taken = |start: usize| MAPPED.iter().filter(|s| s.start.load(Ordering::Acquire) == start).count();
        let a = Watch::new(bytes.as_ptr(), 64).unwrap();
        let b = Watch::new(bytes[32..].as_ptr(), 32).unwrap();
        assert_eq!((taken(bytes.as_ptr() as usize), taken(bytes[32..].as_ptr() as usize)), (1, 1));
        assert_ne!(a.slot, b.slot);
        assert!(!a.faulted() && !b.faulted());
        drop(a);
        assert_eq!(taken(bytes.as_ptr() as usize), 0);
        drop(b);
        assert_eq!(taken(bytes[32..].as_ptr() as usize), 0);
    }

    #[test]
    fn open_maps_unless_told_to_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.pcap");
        std::fs::write(&path, capture(4)).unwrap();
        let read_asked = std::env::var_os(MMAP_ENV).is_some_and(|v| v == "0");
        assert_eq!(PcapFileSource::open(&path, 0).unwrap().is_mapped(), !read_asked);
        assert!(!PcapFileSource::open_read(&path, 0).unwrap().is_mapped());
        let mut mapped = PcapFileSource::open_mapped(&path, 0).unwrap();
        assert!(mapped.is_mapped());
        let mut n = 0;
        while mapped.next_packet().unwrap().is_some() {
            n += 1;
        }
        assert_eq!(n, 4);
    }

    /// Maps a capture, cuts it to `cut` bytes, and reads on: the frames
    /// wholly before the cut, each as written, and the error.
    fn cut_under_the_reader(records: usize, cut: u64) -> (usize, SourceError) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cut-under-us.pcap");
        std::fs::write(&path, capture(records)).unwrap();
        let mut source = PcapFileSource::open_mapped(&path, 0).unwrap();
        assert!(source.is_mapped());
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(cut).unwrap();
        let mut whole = 0;
        loop {
            match source.next_packet() {
                Ok(Some(p)) => {
                    assert!(p.data.iter().all(|&b| b == 0xff), "frame {whole} read past the cut");
                    whole += 1;
                }
                Ok(None) => panic!("{whole} frames and no word of the cut"),
                Err(e) => return (whole, e),
            }
        }
    }

    #[test]
    fn a_capture_cut_short_while_mapped_ends_at_the_cut_with_every_frame_before_it() {
        let page = page_size();
        // Cut on a page, mid-page, and in the file's last page, where the
        // bytes past the cut read as zeros without a fault.
        let records = 64 * page / RECORD;
        let len = 24 + records * RECORD;
        for cut in [page, page + 100, 3 * page + 1000, len - 10] {
            let (whole, err) = cut_under_the_reader(records, cut as u64);
            // Every record that ends at or before the cut, none after.
            let before = (cut - 24) / RECORD;
            assert_eq!(whole, before, "cut at {cut}");
            let at = 24 + before * RECORD;
            let SourceError::Corrupt { path, offset, message } = &err else { panic!("{err}") };
            assert!(path.ends_with("cut-under-us.pcap"), "{err}");
            assert_eq!(*offset, at as u64, "cut at {cut}: {err}");
            assert!(message.contains(&format!("the file was cut to {cut} bytes while it was replayed")), "{err}");
        }
    }
}
