//! The offload journal: what a run knows of each offloaded flow that its
//! rules don't carry, so that a later run can take the flow over with its
//! rules (after a `kill -9`, or a stop with `keep_rules` for an upgrade)
//! and lose nothing of it. A rule read back from the NIC gives its match,
//! its action and what it counted since it went in; the journal gives the
//! rest: the packets software counted before, the flow's start, its TCP
//! state and class.
//!
//! One JSON object per line, appended by the offload thread: a flow's
//! entry when its rules are in (and again when a stop leaves them for
//! the next run, with its software part settled), a `gone` line when they
//! are out. The last line of a flow wins. A run rewrites the file at start
//! with only the flows it took over, so it never grows past the live
//! rules by much.

use flowtable_hw::Action;
use flowtable_sw::{DirCounters, Direction, FlowKey, TcpState};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};

/// A flow as the journal keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// The flow id, as in its rules' cookies.
    pub flow: u64,
    pub key: FlowKey,
    /// 0: the first packet went lo to hi; 1: hi to lo.
    pub initiator: u8,
    /// Each direction's port.
    pub ports: [u8; 2],
    pub tcp: TcpState,
    /// The classifier rule that offloaded it, by name.
    pub class: Option<String>,
    pub action: Action,
    pub first_ns: u64,
    pub installed_ns: u64,
    /// What software counted of each direction (`Direction::index`).
    pub sw: [DirCounters; 2],
    /// Each direction's link-header length, for IP octets in its records.
    pub l2_len: [u8; 2],
    /// TCP flags software saw move the state, by direction.
    #[serde(default)]
    pub tcp_flags: [u8; 2],
    /// Offloaded on request (the control API), not by the classifier.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub requested: bool,
    /// What the flow's rules had counted (`hw`), and their cumulative
    /// counters when this line was written (`rules_at`): a later run adds
    /// what the rules counted beyond `rules_at`, and without the rules
    /// still has `hw` for the record.
    #[serde(default)]
    pub hw: [DirCounters; 2],
    #[serde(default)]
    pub rules_at: [DirCounters; 2],
    /// How many workers the run had: a flow's worker is in its id, and
    /// the kernel spreads packets over as many as there are.
    #[serde(default)]
    pub workers: u8,
    /// What the flow's interim records carried so far (orig, reply), when
    /// it outlasted the active timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported: Option<[crate::record::DirRecord; 2]>,
}

impl JournalEntry {
    pub fn initiator(&self) -> Direction {
        Direction::from_index(usize::from(self.initiator & 1))
    }
}

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum JournalLine {
    Flow(Box<JournalEntry>),
    Gone { flow: u64, gone: bool },
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("the offload journal {path} (backend.journal) can't be read or written: {source}; give a file in a directory the daemon can write (the systemd unit's is /var/lib/flowtable)")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the offload journal {path} (backend.journal) is in use by another flowtable run; give each instance its own journal file")]
    InUse { path: PathBuf },
}

/// Holds `<journal>.lock` for as long as a run may write the journal: two
/// runs on one file would each take the other's flows for ones whose rules
/// are gone, and end them. A lock file apart from the journal, because a
/// rewrite renames a new journal into place.
struct JournalLock(#[allow(dead_code)] std::fs::File);

impl JournalLock {
    fn take(path: &Path) -> Result<JournalLock, JournalError> {
        use std::os::fd::AsRawFd;
        let mut name = path.as_os_str().to_owned();
        name.push(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&name)
            .map_err(|source| JournalError::Io { path: path.to_path_buf(), source })?;
        // std's `File::try_lock` is newer than the supported toolchain.
        // SAFETY: flock on a descriptor `file` owns and keeps open; it
        // touches no memory.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = std::io::Error::last_os_error();
            return Err(if err.kind() == std::io::ErrorKind::WouldBlock {
                JournalError::InUse { path: path.to_path_buf() }
            } else {
                JournalError::Io { path: path.to_path_buf(), source: err }
            });
        }
        Ok(JournalLock(file))
    }
}

/// Lines appended before the journal is compacted, at the least.
const COMPACT_AFTER_LINES: u64 = 100_000;

/// The writing end, held by the offload thread.
pub struct Journal {
    path: PathBuf,
    out: BufWriter<std::fs::File>,
    _lock: JournalLock,
    /// Lines written since the file was last rewritten.
    lines: u64,
    /// Lines that failed to go out (counted, logged once).
    pub write_errors: u64,
}

impl Journal {
    /// Reads what an earlier run left at `path` (the last entry of each
    /// flow still offloaded; lines that don't parse are skipped and
    /// counted), then opens it for appending.
    pub fn open(path: &Path) -> Result<(Journal, HashMap<u64, JournalEntry>, usize), JournalError> {
        let io = |source| JournalError::Io { path: path.to_path_buf(), source };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let lock = JournalLock::take(path)?;
        let (entries, unreadable) = Self::read(path)?;
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(io)?;
        let journal =
            Journal { path: path.to_path_buf(), out: BufWriter::new(file), _lock: lock, lines: 0, write_errors: 0 };
        Ok((journal, entries, unreadable))
    }

    /// Whether the journal at `path` can be opened for writing (its
    /// directory made) and no other run holds it, before anything depends
    /// on it.
    pub fn probe(path: &Path) -> Result<(), JournalError> {
        let io = |source| JournalError::Io { path: path.to_path_buf(), source };
        if path.is_dir() {
            return Err(io(std::io::Error::new(std::io::ErrorKind::IsADirectory, "it is a directory")));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        drop(JournalLock::take(path)?);
        std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(io).map(drop)
    }

    /// The last entry of each flow still offloaded, and how many lines
    /// didn't parse.
    fn read(path: &Path) -> Result<(HashMap<u64, JournalEntry>, usize), JournalError> {
        let io = |source| JournalError::Io { path: path.to_path_buf(), source };
        let mut entries = HashMap::new();
        let mut unreadable = 0;
        match std::fs::File::open(path) {
            Ok(f) => {
                for line in std::io::BufReader::new(f).lines() {
                    let line = line.map_err(io)?;
                    match serde_json::from_str::<JournalLine>(&line) {
                        Ok(JournalLine::Flow(e)) => {
                            entries.insert(e.flow, *e);
                        }
                        Ok(JournalLine::Gone { flow, .. }) => {
                            entries.remove(&flow);
                        }
                        // A line cut short by a kill mid-write, most likely.
                        Err(_) => unreadable += 1,
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        Ok((entries, unreadable))
    }

    /// Rewrites the file with only the flows still offloaded once it holds
    /// many more lines than flows (`offloaded`), so it stays near the size
    /// of the live rules' entries. On the offload thread, never the
    /// packet path.
    pub fn compact_if_due(&mut self, offloaded: usize) {
        if self.lines < COMPACT_AFTER_LINES.max(4 * offloaded as u64) {
            return;
        }
        self.flush();
        let res = Self::read(&self.path).and_then(|(entries, _)| self.rewrite(entries.values()));
        if let Err(e) = res {
            self.note(Err(std::io::Error::other(e.to_string())));
        }
        // Not again for as many lines, should the rewrite have failed.
        self.lines = 0;
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the file with `entries` alone (the flows this run took
    /// over), through a new file renamed into place.
    pub fn rewrite<'a>(&mut self, entries: impl Iterator<Item = &'a JournalEntry>) -> Result<(), JournalError> {
        let io = |source| JournalError::Io { path: self.path.clone(), source };
        let tmp = self.path.with_extension("new");
        let mut w = BufWriter::new(std::fs::File::create(&tmp).map_err(io)?);
        for e in entries {
            serde_json::to_writer(&mut w, &JournalLine::Flow(Box::new(e.clone()))).map_err(|e| io(e.into()))?;
            w.write_all(b"\n").map_err(io)?;
        }
        w.flush().map_err(io)?;
        w.get_ref().sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        let file = std::fs::OpenOptions::new().append(true).open(&self.path).map_err(io)?;
        self.out = BufWriter::new(file);
        self.lines = 0;
        Ok(())
    }

    pub fn write(&mut self, line: &JournalLine) {
        let res = serde_json::to_writer(&mut self.out, line)
            .map_err(std::io::Error::from)
            .and_then(|()| self.out.write_all(b"\n"));
        self.note(res);
        self.lines += 1;
    }

    /// Hands what was written to the kernel: a kill after this loses none of it.
    pub fn flush(&mut self) {
        let res = self.out.flush();
        self.note(res);
    }

    fn note(&mut self, res: std::io::Result<()>) {
        if let Err(e) = res {
            if self.write_errors == 0 {
                tracing::error!(path = %self.path.display(), error = %e, "writing the offload journal failed; a restart will not take over the flows it misses");
            }
            self.write_errors += 1;
        }
    }

    /// Lines written since the last rewrite.
    pub fn lines(&self) -> u64 {
        self.lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(flow: u64, sw: u64) -> JournalEntry {
        let (key, _) = FlowKey::from_v4([10, 0, 0, 1].into(), [10, 0, 0, 2].into(), 1000, 80, 6);
        JournalEntry {
            flow,
            key,
            initiator: 0,
            ports: [0, 1],
            tcp: TcpState::Established,
            class: Some("bulk".into()),
            action: Action::Drop,
            first_ns: 1,
            installed_ns: 2,
            sw: [DirCounters { packets: sw, bytes: sw * 100 }, DirCounters { packets: 1, bytes: 60 }],
            l2_len: [14, 14],
            tcp_flags: [0x12, 0x12],
            reported: None,
            requested: false,
            hw: [DirCounters::default(); 2],
            rules_at: [DirCounters::default(); 2],
            workers: 1,
        }
    }

    #[test]
    fn the_last_line_of_a_flow_wins_and_gone_flows_and_torn_lines_are_dropped() {
        let dir = std::env::temp_dir().join(format!("ft-journal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("sub").join("journal.jsonl");
        let (mut j, found, bad) = Journal::open(&path).unwrap();
        assert!(found.is_empty() && bad == 0);
        j.write(&JournalLine::Flow(Box::new(entry(1, 5))));
        j.write(&JournalLine::Flow(Box::new(entry(2, 6))));
        j.write(&JournalLine::Flow(Box::new(entry(1, 7))));
        j.write(&JournalLine::Gone { flow: 2, gone: true });
        j.flush();
        drop(j);
        // A kill in the middle of a line.
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"flow\": 3, \"key\"").unwrap();
        drop(f);
        let (mut j, found, bad) = Journal::open(&path).unwrap();
        assert_eq!(bad, 1);
        assert_eq!(found.len(), 1);
        assert_eq!(found[&1].sw[0].packets, 7);
        assert_eq!(found[&1].key, entry(1, 7).key);
        j.rewrite(found.values()).unwrap();
        j.write(&JournalLine::Flow(Box::new(entry(4, 1))));
        j.flush();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_second_run_on_the_same_journal_is_refused_until_the_first_lets_go() {
        let dir = std::env::temp_dir().join(format!("ft-journal-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("journal.jsonl");
        let (first, _, _) = Journal::open(&path).unwrap();
        for refused in [Journal::probe(&path).err(), Journal::open(&path).err()] {
            let err = refused.expect("another run holds the journal");
            assert!(matches!(err, JournalError::InUse { .. }), "{err}");
            assert!(err.to_string().contains("in use by another flowtable run"), "{err}");
        }
        drop(first);
        Journal::probe(&path).expect("free once the first run is gone");
        let _ = Journal::open(&path).expect("free once the first run is gone");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
