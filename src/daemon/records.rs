//! The records file: every ended flow's record as one JSON line, so none is
//! lost when no client is subscribed. Rotated by size: `path` becomes
//! `path.1`, `path.1` becomes `path.2`, and so on up to `keep` files.
//!
//! The path must name a regular file (created if missing) or a character
//! device such as /dev/null; devices are never rotated. A FIFO is refused:
//! opening one without a reader blocks, and writing to one blocks the
//! packet loop whenever its reader stalls. So are directories, sockets and
//! block devices. The file is opened non-blocking and its type checked on
//! the open descriptor, so nothing swapped in under the path blocks either.
//!
//! Records are counted truthfully: `written` only once they reached the
//! file, `lost` when a write failed and they were dropped (a full disk
//! loses what was buffered, and what comes while it stays full). A failing
//! file is reported to the caller once when it starts failing and then at
//! most once every `REPORT_EVERY`, not on every attempt; `failures` counts
//! every attempt that failed.
//!
//! In the daemon the file is a sink like the IPFIX collectors
//! ([`RecordsFile`]): its own thread and bounded queue, so a slow disk
//! holds up neither the main loop (control answers, the other sinks) nor
//! the packet path. Records the queue can't take are counted lost, with
//! `queue_full` saying how many of them.

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use flowtable_offload::FlowRecord;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Buffered bytes that make a write go to the file at once.
const BUFFER_BYTES: usize = 64 * 1024;
/// While the file keeps failing, how often a failure is reported again.
pub const REPORT_EVERY: Duration = Duration::from_secs(60);

pub struct RecordsWriter {
    path: PathBuf,
    rotate_bytes: u64,
    keep: u32,
    file: File,
    /// A character device: never rotated, its size means nothing.
    device: bool,
    size: u64,
    line: Vec<u8>,
    /// Whole lines not yet written, and where each ends in `buf`.
    buf: Vec<u8>,
    ends: Vec<usize>,
    /// Records that reached the file.
    pub written: u64,
    /// Records dropped because the file could not take them.
    pub lost: u64,
    /// Write attempts that failed (reported or not).
    pub failures: u64,
    pub rotations: u64,
    /// When the current run of failures was last reported; `None` while
    /// the file works.
    reported_at: Option<Instant>,
}

/// Opens `path` for appending without blocking, and checks what it is.
/// Whether it is a character device, and its size.
fn open_append(path: &Path) -> io::Result<(File, bool, u64)> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            // A FIFO without a reader.
            Some(libc::ENXIO) => io::Error::other("is a FIFO (named pipe); records need a regular file"),
            _ => e,
        })?;
    let md = file.metadata()?;
    let kind = md.file_type();
    let device = kind.is_char_device();
    if !kind.is_file() && !device {
        let what = if kind.is_fifo() {
            "a FIFO (named pipe)"
        } else if kind.is_dir() {
            "a directory"
        } else if kind.is_socket() {
            "a socket"
        } else if kind.is_block_device() {
            "a block device"
        } else {
            "not a regular file"
        };
        return Err(io::Error::other(format!("is {what}; records need a regular file")));
    }
    // Back to blocking writes: a regular file or a device doesn't block.
    // SAFETY: fcntl on a descriptor this File owns.
    unsafe {
        use std::os::fd::AsRawFd;
        let fd = file.as_raw_fd();
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
    Ok((file, device, if device { 0 } else { md.len() }))
}

/// `records.jsonl` with suffix 2: `records.jsonl.2`.
pub fn rotated_path(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// Why the records file can't be opened, in the operator's words for the
/// usual slips (a directory given, a directory missing).
fn opening_error(path: &Path, e: &std::io::Error) -> String {
    let shown = path.display();
    if path.is_dir() {
        return format!(
            "records.path: {shown} is a directory: give the path of a file in it, e.g. {shown}/records.jsonl"
        );
    }
    match (e.kind(), path.parent().filter(|p| !p.as_os_str().is_empty())) {
        (std::io::ErrorKind::NotFound, Some(dir)) if !dir.is_dir() => {
            format!("records.path: {shown}: the directory {} does not exist", dir.display())
        }
        _ => format!("records.path: {shown}: {}", crate::report::io_error(e)),
    }
}

impl RecordsWriter {
    /// Opens (appending to) the records file. `rotate_bytes` 0 never rotates.
    pub fn open(path: &Path, rotate_bytes: u64, keep: u32) -> Result<RecordsWriter, String> {
        let (file, device, size) = open_append(path).map_err(|e| opening_error(path, &e))?;
        Ok(RecordsWriter {
            path: path.to_path_buf(),
            rotate_bytes,
            keep,
            file,
            device,
            size,
            line: Vec::new(),
            buf: Vec::with_capacity(BUFFER_BYTES),
            ends: Vec::new(),
            written: 0,
            lost: 0,
            failures: 0,
            rotations: 0,
            reported_at: None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records buffered, neither written nor lost yet.
    pub fn pending(&self) -> u64 {
        self.ends.len() as u64
    }

    /// Appends one record, rotating first if it would pass the size limit.
    /// An error is a failure to report (see the module doc).
    pub fn write(&mut self, record: &FlowRecord) -> io::Result<()> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, record).map_err(io::Error::other)?;
        self.line.push(b'\n');
        let mut flushed = Ok(());
        if !self.device
            && self.rotate_bytes > 0
            && self.size + self.buf.len() as u64 > 0
            && self.size + (self.buf.len() + self.line.len()) as u64 > self.rotate_bytes
        {
            flushed = self.flush();
            if let Err(e) = self.rotate() {
                // This record was bound for the new file.
                self.lost += 1;
                let failed = self.failed(e, 0);
                return flushed.and(failed);
            }
        }
        self.buf.extend_from_slice(&self.line);
        self.ends.push(self.buf.len());
        flushed?;
        if self.buf.len() >= BUFFER_BYTES {
            return self.flush();
        }
        Ok(())
    }

    /// Writes out what is buffered. On failure the buffered records are
    /// lost (counted in `lost`), and the error is returned only when it is
    /// to be reported: the first failure of a run, then one every
    /// `REPORT_EVERY`.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            // Nothing written proves nothing about a failing file.
            return Ok(());
        }
        let mut done = 0;
        while done < self.buf.len() {
            match self.file.write(&self.buf[done..]) {
                Ok(0) => {
                    let e = io::Error::new(io::ErrorKind::WriteZero, "the file took no more bytes");
                    return self.failed(e, done);
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.failed(e, done),
            }
        }
        self.wrote(done);
        if let Some(since) = self.reported_at.take() {
            tracing::info!(
                file = %self.path.display(),
                lost = self.lost,
                failing_for_s = since.elapsed().as_secs(),
                "writing flow records works again"
            );
        }
        Ok(())
    }

    /// Accounts the first `done` buffered bytes as written: the records
    /// whose line ends within them.
    fn wrote(&mut self, done: usize) {
        let complete = self.ends.partition_point(|&end| end <= done);
        self.written += complete as u64;
        self.size += done as u64;
        self.buf.clear();
        self.ends.clear();
    }

    /// A failed attempt after `done` bytes went out: the rest is dropped
    /// and counted lost. Returns the error when it is to be reported.
    fn failed(&mut self, e: io::Error, done: usize) -> io::Result<()> {
        let complete = self.ends.partition_point(|&end| end <= done);
        self.lost += (self.ends.len() - complete) as u64;
        self.wrote(done);
        self.failures += 1;
        let report = self.reported_at.is_none_or(|t| t.elapsed() >= REPORT_EVERY);
        if !report {
            return Ok(());
        }
        self.reported_at = Some(Instant::now());
        Err(io::Error::new(e.kind(), format!("{e} ({} records lost so far)", self.lost)))
    }

    fn rotate(&mut self) -> io::Result<()> {
        if self.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            for n in (1..self.keep).rev() {
                match std::fs::rename(rotated_path(&self.path, n), rotated_path(&self.path, n + 1)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            std::fs::rename(&self.path, rotated_path(&self.path, 1))?;
        }
        let (file, device, size) = open_append(&self.path)?;
        self.file = file;
        self.device = device;
        self.size = size;
        self.rotations += 1;
        Ok(())
    }
}

/// Records the file's queue holds before it drops (counted lost).
pub const QUEUE_RECORDS: u64 = 262_144;
/// How often the file's thread writes out what it buffered.
const FLUSH_EVERY: Duration = Duration::from_millis(10);

/// What the records file did, as the main thread reads it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FileCounts {
    pub written: u64,
    /// Dropped: the file failed, or its queue was full (`queue_full`).
    pub lost: u64,
    pub queue_full: u64,
    pub failures: u64,
    pub rotations: u64,
    /// Queued or buffered, neither written nor lost yet.
    pub pending: u64,
}

/// The records file on its own thread.
pub struct RecordsFile {
    path: PathBuf,
    tx: Option<Sender<Arc<Vec<FlowRecord>>>>,
    counts: Arc<Mutex<FileCounts>>,
    thread: Option<JoinHandle<()>>,
}

impl RecordsFile {
    /// Opens the file here (so a bad path fails the start) and hands it to
    /// its thread.
    pub fn open(path: &Path, rotate_bytes: u64, keep: u32) -> Result<RecordsFile, String> {
        let writer = RecordsWriter::open(path, rotate_bytes, keep)?;
        let counts = Arc::new(Mutex::new(FileCounts::default()));
        let (tx, rx) = crossbeam_channel::unbounded();
        let shared = counts.clone();
        let thread = std::thread::Builder::new()
            .name("records".into())
            .spawn(move || file_thread(writer, rx, shared))
            .map_err(|e| format!("records.path: {}: starting its thread: {e}", path.display()))?;
        Ok(RecordsFile { path: path.to_path_buf(), tx: Some(tx), counts, thread: Some(thread) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn counts(&self) -> FileCounts {
        self.counts.lock().map(|c| *c).unwrap_or_default()
    }

    /// Queues a batch; never blocks. Past `QUEUE_RECORDS` waiting, the
    /// batch is dropped and counted lost.
    pub fn send(&self, batch: &Arc<Vec<FlowRecord>>) {
        let n = batch.len() as u64;
        let (Some(tx), Ok(mut c)) = (&self.tx, self.counts.lock()) else { return };
        if c.pending + n > QUEUE_RECORDS || tx.send(batch.clone()).is_err() {
            c.lost += n;
            c.queue_full += n;
            return;
        }
        c.pending += n;
    }

    /// Writes out what is queued and buffered, stops the thread, and
    /// returns the final counts.
    pub fn close(mut self) -> FileCounts {
        self.stop();
        self.counts()
    }

    fn stop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for RecordsFile {
    fn drop(&mut self) {
        self.stop();
    }
}

fn file_thread(mut w: RecordsWriter, rx: Receiver<Arc<Vec<FlowRecord>>>, counts: Arc<Mutex<FileCounts>>) {
    let mut last_flush = Instant::now();
    let publish = |w: &RecordsWriter, taken: u64| {
        if let Ok(mut c) = counts.lock() {
            c.pending -= taken;
            c.pending += w.pending();
            c.written = w.written;
            c.lost = w.lost + c.queue_full;
            c.failures = w.failures;
            c.rotations = w.rotations;
        }
    };
    let mut buffered = 0u64;
    loop {
        let got = rx.recv_timeout(FLUSH_EVERY);
        let done = matches!(got, Err(RecvTimeoutError::Disconnected));
        let mut taken = 0;
        for batch in got.ok().into_iter().chain(rx.try_iter()) {
            for r in batch.iter() {
                // The writer counts every failure and what it lost, and
                // returns an error only when one is due to be told.
                if let Err(e) = w.write(r) {
                    tracing::error!(file = %w.path().display(), error = %e, "writing a flow record failed");
                }
            }
            taken += batch.len() as u64;
        }
        if done || last_flush.elapsed() >= FLUSH_EVERY {
            last_flush = Instant::now();
            if let Err(e) = w.flush() {
                tracing::error!(file = %w.path().display(), error = %e, "writing flow records failed");
            }
        }
        // What was buffered before is in the writer's counts now.
        publish(&w, taken + buffered);
        buffered = w.pending();
        if done {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowtable_offload::{DirRecord, EndReason, RecordKind};
    use flowtable_sw::{FlowId, TcpState};

    fn record(id: u64) -> FlowRecord {
        FlowRecord {
            id: FlowId(id),
            proto: 17,
            src: [10, 0, 0, 1].into(),
            dst: [10, 0, 0, 2].into(),
            sport: 1000,
            dport: 53,
            vlan: 0,
            vlan_inner: 0,
            ingress: 0,
            start_ns: 1,
            end_ns: 2,
            orig: DirRecord::default(),
            reply: DirRecord::default(),
            tcp_state: TcpState::NotTcp,
            class: None,
            class_removed_in_generation: None,
            offload: None,
            refused: None,
            context: None,
            end_reason: EndReason::Idle,
            kind: RecordKind::Final,
        }
    }

    fn ids_in(path: &Path) -> Vec<u64> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_u64().unwrap())
            .collect()
    }

    #[test]
    fn rotates_by_size_and_keeps_n_files_without_losing_a_line_in_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("records.jsonl");
        // Ids of two digits: every line is as long as this one.
        let one = serde_json::to_vec(&record(10)).unwrap().len() as u64 + 1;
        // Three records fit in a file, the fourth rotates.
        let mut w = RecordsWriter::open(&path, one * 3 + 1, 2).unwrap();
        for id in 10..20 {
            w.write(&record(id)).unwrap();
        }
        w.flush().unwrap();
        assert_eq!(w.rotations, 3);
        assert_eq!(ids_in(&path), vec![19]);
        assert_eq!(ids_in(&rotated_path(&path, 1)), vec![16, 17, 18]);
        assert_eq!(ids_in(&rotated_path(&path, 2)), vec![13, 14, 15]);
        assert!(!rotated_path(&path, 3).exists(), "only `keep` rotated files stay");
        // Reopening appends and counts what is already there.
        drop(w);
        let mut w = RecordsWriter::open(&path, one * 3 + 1, 2).unwrap();
        for id in 20..23 {
            w.write(&record(id)).unwrap();
        }
        w.flush().unwrap();
        assert_eq!(ids_in(&path), vec![22]);
        assert_eq!(ids_in(&rotated_path(&path, 1)), vec![19, 20, 21]);
    }

    #[test]
    fn refuses_a_fifo_without_blocking_and_other_non_files() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("records.fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let started = Instant::now();
        let err = RecordsWriter::open(&fifo, 0, 3).err().unwrap();
        assert!(started.elapsed() < Duration::from_secs(1), "opening the FIFO blocked");
        assert!(err.starts_with("records.path: ") && err.contains("FIFO"), "{err}");
        assert!(err.contains(fifo.to_str().unwrap()), "{err}");
        // With a reader it is refused all the same.
        let reader = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&fifo).unwrap();
        let err = RecordsWriter::open(&fifo, 0, 3).err().unwrap();
        assert!(err.contains("FIFO"), "{err}");
        drop(reader);
        let err = RecordsWriter::open(dir.path(), 0, 3).err().unwrap();
        assert!(err.starts_with("records.path: "), "{err}");
        let sock = dir.path().join("s.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        assert!(RecordsWriter::open(&sock, 0, 3).is_err());
    }

    #[test]
    fn a_character_device_is_written_and_never_rotated() {
        let mut w = RecordsWriter::open(Path::new("/dev/null"), 1, 3).unwrap();
        for id in 0..5 {
            w.write(&record(id)).unwrap();
        }
        w.flush().unwrap();
        assert_eq!((w.written, w.lost, w.rotations), (5, 0, 0));
        assert!(Path::new("/dev/null").exists());
    }

    /// /dev/full fails every write with ENOSPC, as a full disk does.
    #[test]
    fn a_full_disk_counts_lost_records_and_reports_once() {
        let mut w = RecordsWriter::open(Path::new("/dev/full"), 0, 3).unwrap();
        for id in 0..10 {
            w.write(&record(id)).unwrap();
        }
        assert_eq!(w.pending(), 10);
        let e = w.flush().unwrap_err();
        assert_eq!(e.raw_os_error(), None);
        assert!(e.to_string().contains("10 records lost"), "{e}");
        assert_eq!((w.written, w.lost, w.failures, w.pending()), (0, 10, 1, 0));
        // While it keeps failing, it is not reported again every time.
        for round in 0..100 {
            w.write(&record(100 + round)).unwrap();
            assert!(w.flush().is_ok(), "reported again in round {round}");
        }
        assert_eq!((w.written, w.lost, w.failures), (0, 110, 101));
        // Nothing buffered: flushing is no failure.
        w.flush().unwrap();
        assert_eq!(w.failures, 101);
        // Enough records to fill the buffer fail in write itself.
        let before = w.lost;
        let mut n = 0;
        while w.pending() > 0 || n == 0 {
            w.write(&record(1000 + n)).unwrap();
            n += 1;
        }
        assert_eq!(w.lost - before, n);
        assert_eq!(w.written, 0);
    }

    #[test]
    fn the_file_thread_writes_every_batch_and_counts_add_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("records.jsonl");
        let f = RecordsFile::open(&path, 0, 3).unwrap();
        for b in 0..10 {
            f.send(&Arc::new((b * 10..b * 10 + 10).map(record).collect()));
        }
        let c = f.close();
        assert_eq!(c, FileCounts { written: 100, ..FileCounts::default() });
        assert_eq!(ids_in(&path), (0..100).collect::<Vec<_>>());
        // A full disk: lost, counted, and nothing pending at the end.
        let f = RecordsFile::open(Path::new("/dev/full"), 0, 3).unwrap();
        f.send(&Arc::new((0..5).map(record).collect()));
        let c = f.close();
        assert_eq!((c.written, c.lost, c.pending), (0, 5, 0));
    }

    #[test]
    fn written_counts_what_reached_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("records.jsonl");
        let mut w = RecordsWriter::open(&path, 0, 3).unwrap();
        for id in 0..3 {
            w.write(&record(id)).unwrap();
        }
        // Buffered, not yet written.
        assert_eq!((w.written, w.pending()), (0, 3));
        w.flush().unwrap();
        assert_eq!((w.written, w.lost, w.pending()), (3, 0, 0));
        assert_eq!(ids_in(&path), vec![0, 1, 2]);
    }
}
