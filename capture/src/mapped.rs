//! A mapped capture cut short under the replay: the operator's error, not
//! a bare "Bus error".
//!
//! A capture file mapped into memory is read without a copy, but when
//! another process truncates it (a capture rotated in place, `truncate`,
//! a disk error under it), the next read of a page past the new end is
//! SIGBUS, and the process dies with no word of which file or where. The
//! handler installed here looks up the faulting address among the
//! captures mapped now ([`Watch`]); in one of them it writes one line
//! naming the file and the byte offset, and ends the process with status
//! 1, since nothing read from that page can be trusted and a signal
//! handler can't unwind. A fault anywhere else goes on to the handler that
//! was there before (Rust's own, or the default, which kills as always).
//!
//! Written by hand: signal-hook, the well-kept crate for signals, refuses
//! SIGBUS, whose handler must run on the faulting thread and not return
//! to the faulting read.

use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Captures mapped at once, at most, that a fault is told against: a
/// replay maps one, a daemon one per pcap source. A mapping beyond these
/// is still read; a fault in it dies as before.
const SLOTS: usize = 32;

struct Slot {
    /// First byte of the mapping; 0 while the slot is free.
    start: AtomicUsize,
    len: AtomicUsize,
    /// The file's name, `name_len` bytes, owned by the slot's `Watch`.
    name: AtomicPtr<u8>,
    name_len: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)]
const FREE: Slot = Slot {
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    name: AtomicPtr::new(std::ptr::null_mut()),
    name_len: AtomicUsize::new(0),
};

static MAPPED: [Slot; SLOTS] = [FREE; SLOTS];

/// The SIGBUS action before ours, to hand other faults to.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

/// A mapped capture that a SIGBUS in it is reported against, while it
/// lives. Drop it before (or with) the mapping.
pub struct Watch {
    slot: Option<usize>,
    _name: Box<[u8]>,
}

impl Watch {
    /// Watches `len` bytes mapped at `start`, the capture `name`.
    pub fn new(start: *const u8, len: usize, name: &str) -> Watch {
        install();
        let name: Box<[u8]> = name.as_bytes().into();
        let start = start as usize;
        let slot = (0..SLOTS).find(|&i| {
            let s = &MAPPED[i];
            // Claimed with the start; the handler reads len and name only
            // for an address inside, which needs len set: set before.
            s.len.load(Ordering::Relaxed) == 0
                && s.start.compare_exchange(0, usize::MAX, Ordering::AcqRel, Ordering::Relaxed).is_ok()
        });
        if let Some(i) = slot {
            let s = &MAPPED[i];
            s.name.store(name.as_ptr() as *mut u8, Ordering::Relaxed);
            s.name_len.store(name.len(), Ordering::Relaxed);
            s.len.store(len, Ordering::Relaxed);
            s.start.store(start, Ordering::Release);
        }
        Watch { slot, _name: name }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            let s = &MAPPED[i];
            s.start.store(usize::MAX, Ordering::Release);
            s.name.store(std::ptr::null_mut(), Ordering::Relaxed);
            s.name_len.store(0, Ordering::Relaxed);
            s.len.store(0, Ordering::Relaxed);
            s.start.store(0, Ordering::Release);
        }
    }
}

fn install() {
    PREVIOUS.get_or_init(|| {
        // SAFETY: `sigaction` is given a zeroed struct filled with a valid
        // handler of the SA_SIGINFO kind and an empty mask, and a valid
        // struct for the old action; neither is kept by the kernel.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigbus as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut action.sa_mask);
            let mut previous: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGBUS, &action, &mut previous) != 0 {
                previous.sa_sigaction = libc::SIG_DFL;
            }
            previous
        }
    });
}

/// Writes `bytes` to stderr, as far as it takes them (async-signal-safe).
fn write_stderr(bytes: &[u8]) {
    // SAFETY: `write` reads `bytes.len()` bytes of a live slice.
    unsafe {
        libc::write(libc::STDERR_FILENO, bytes.as_ptr().cast(), bytes.len());
    }
}

/// `n` in decimal into `buf`, without allocating: the digits' slice.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

extern "C" fn on_sigbus(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // SAFETY: the kernel hands an SA_SIGINFO handler a valid siginfo.
    let addr = unsafe { (*info).si_addr() } as usize;
    for s in &MAPPED {
        let start = s.start.load(Ordering::Acquire);
        if start == 0 || start == usize::MAX || addr < start || addr - start >= s.len.load(Ordering::Relaxed) {
            continue;
        }
        let (name, len) = (s.name.load(Ordering::Relaxed), s.name_len.load(Ordering::Relaxed));
        let name: &[u8] = if name.is_null() {
            b"a capture"
        } else {
            // SAFETY: the slot's `Watch` owns these bytes and outlives the
            // mapping, which a fault is in.
            unsafe { std::slice::from_raw_parts(name, len) }
        };
        let mut digits = [0u8; 20];
        for part in [
            b"flowtable: ".as_slice(),
            name,
            b": the file shrank while it was replayed, at byte offset ",
            decimal((addr - start) as u64, &mut digits),
            b" (truncated by another process, or a read error of its disk); the replay stops here. \
              FLOWTABLE_PCAP_MMAP=0 reads captures instead of mapping them.\n",
        ] {
            write_stderr(part);
        }
        // SAFETY: `_exit` ends the process at once, as a signal handler may.
        unsafe { libc::_exit(1) };
    }
    // Not a capture's page: the handler before ours has it.
    let Some(previous) = PREVIOUS.get() else { return };
    match previous.sa_sigaction {
        libc::SIG_DFL | libc::SIG_IGN => {
            // SAFETY: the default action restored, the faulting read runs
            // again on return and the process dies of SIGBUS as it would
            // have without us.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = libc::SIG_DFL;
                libc::sigemptyset(&mut action.sa_mask);
                libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut());
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
    use crate::PacketSource;

    /// Set in the child process of the truncation test: the capture to map.
    const CHILD_ENV: &str = "FLOWTABLE_TEST_MAPPED_CAPTURE";
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
            b.resize(b.len() + len as usize, 0);
        }
        b
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

    /// Maps the capture the parent named, cuts it to one page, reads on.
    fn child(path: &std::ffi::OsStr) -> ! {
        let mut source = PcapFileSource::open_mapped(path, 0).unwrap();
        assert!(source.is_mapped());
        std::fs::OpenOptions::new().write(true).open(path).unwrap().set_len(4096).unwrap();
        while source.next_packet().unwrap().is_some() {}
        panic!("read to the end of a capture cut short without a fault");
    }

    #[test]
    fn a_capture_cut_short_while_mapped_ends_the_process_naming_it_and_the_offset() {
        if let Some(path) = std::env::var_os(CHILD_ENV) {
            child(&path);
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cut-under-us.pcap");
        std::fs::write(&path, capture(64)).unwrap();
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "mapped::tests::a_capture_cut_short_while_mapped_ends_the_process_naming_it_and_the_offset",
            ])
            .args(["--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        let lead = format!("flowtable: {}: the file shrank while it was replayed, at byte offset ", path.display());
        let at = stderr.find(&lead).unwrap_or_else(|| panic!("{stderr}")) + lead.len();
        let offset: usize = stderr[at..].split(' ').next().unwrap().parse().unwrap();
        // The first record header past the cut: the fourth record's at 24 +
        // 4 x 1024, or a field of it.
        assert!((4120..4136).contains(&offset), "{offset}: {stderr}");
        assert!(stderr.contains("FLOWTABLE_PCAP_MMAP=0 reads captures instead"), "{stderr}");
    }

    #[test]
    fn decimal_writes_every_digit() {
        let mut buf = [0u8; 20];
        assert_eq!(decimal(0, &mut buf), b"0");
        assert_eq!(decimal(1_048_576, &mut buf), b"1048576");
        assert_eq!(decimal(u64::MAX, &mut buf), b"18446744073709551615");
    }

    #[test]
    fn watches_take_and_give_back_their_slots() {
        let bytes = [0u8; 64];
        let taken = |start: usize| MAPPED.iter().filter(|s| s.start.load(Ordering::Acquire) == start).count();
        let a = Watch::new(bytes.as_ptr(), 64, "a.pcap");
        let b = Watch::new(bytes[32..].as_ptr(), 32, "b.pcap");
        assert_eq!((taken(bytes.as_ptr() as usize), taken(bytes[32..].as_ptr() as usize)), (1, 1));
        assert_ne!(a.slot, b.slot);
        drop(a);
        assert_eq!(taken(bytes.as_ptr() as usize), 0);
        drop(b);
        assert_eq!(taken(bytes[32..].as_ptr() as usize), 0);
    }
}
