//! The records file: every ended flow's record as one JSON line, so none is
//! lost when no client is subscribed. Rotated by size: `path` becomes
//! `path.1`, `path.1` becomes `path.2`, and so on up to `keep` files.

use flowtable_offload::FlowRecord;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

pub struct RecordsWriter {
    path: PathBuf,
    rotate_bytes: u64,
    keep: u32,
    file: BufWriter<File>,
    size: u64,
    line: Vec<u8>,
    pub written: u64,
    pub rotations: u64,
}

fn open_append(path: &Path) -> io::Result<(BufWriter<File>, u64)> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    let size = file.metadata()?.len();
    Ok((BufWriter::with_capacity(64 * 1024, file), size))
}

/// `records.jsonl` with suffix 2: `records.jsonl.2`.
pub fn rotated_path(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

impl RecordsWriter {
    /// Opens (appending to) the records file. `rotate_bytes` 0 never rotates.
    pub fn open(path: &Path, rotate_bytes: u64, keep: u32) -> Result<RecordsWriter, String> {
        let (file, size) = open_append(path).map_err(|e| format!("records file {}: {e}", path.display()))?;
        Ok(RecordsWriter {
            path: path.to_path_buf(),
            rotate_bytes,
            keep,
            file,
            size,
            line: Vec::new(),
            written: 0,
            rotations: 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record, rotating first if it would pass the size limit.
    pub fn write(&mut self, record: &FlowRecord) -> io::Result<()> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, record).map_err(io::Error::other)?;
        self.line.push(b'\n');
        if self.rotate_bytes > 0 && self.size > 0 && self.size + self.line.len() as u64 > self.rotate_bytes {
            self.rotate()?;
        }
        self.file.write_all(&self.line)?;
        self.size += self.line.len() as u64;
        self.written += 1;
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.flush()?;
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
        let (file, size) = open_append(&self.path)?;
        self.file = file;
        self.size = size;
        self.rotations += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowtable_offload::{DirRecord, EndReason};
    use flowtable_sw::{FlowId, TcpState};

    fn record(id: u64) -> FlowRecord {
        FlowRecord {
            id: FlowId(id),
            proto: 17,
            src: "10.0.0.1".into(),
            dst: "10.0.0.2".into(),
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
            offload: None,
            refused: None,
            context: None,
            end_reason: EndReason::Idle,
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
}
