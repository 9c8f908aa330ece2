//! pcap and pcapng capture files as a [`PacketSource`].
//!
//! The format is told by the magic number: pcap in either byte order with
//! micro- or nanosecond timestamps, or pcapng with any number of sections
//! and interfaces, each interface with its own link type and timestamp
//! resolution. Timestamps come out as nanoseconds since the Unix epoch.
//!
//! Frames whose link type the parser doesn't know (PPP, PPI, Cisco HDLC,
//! ...) are still delivered, with `link: None` and the raw LINKTYPE_ value,
//! so the caller counts them as `SkipReason::UnsupportedLinkType` instead of
//! losing them or failing the whole file.
//!
//! A record's original length is believed only as far as the capture can
//! back it up ([`wire_len`]): below the captured length it is the captured
//! length, and above [`MAX_WIRE_LEN`] (a corrupt or fuzzed file: a record
//! claiming 4 GB in a file of 88 bytes) it is clamped to the captured
//! length, and counted ([`PcapFileSource::clamped_wire_lengths`]).
//!
//! A file is read in chunks into one buffer that every frame borrows from,
//! so large captures stream and reading costs no allocation per packet. A
//! capture in memory is that buffer, filled once.
//!
//! [`PcapFileSource::open`] maps a regular file into memory and parses it
//! in place: no copy from the page cache, only the lines the parser reads
//! come from DRAM, where a copy moves every byte; instead each page of the
//! file gets a page-table entry. A file the page cache holds in 2 MB
//! folios (one read from disk) is mapped a 2 MB page at a time, and a
//! replay of a 930 MB capture took 0.77x the wall time mapped that it
//! took read; one in 4 kB pages (just written in small writes) costs an
//! entry a page, about what the copy saves (docs/PERFORMANCE.md). The
//! environment variable `FLOWTABLE_PCAP_MMAP=0` reads instead
//! ([`MMAP_ENV`]); [`open_read`](PcapFileSource::open_read) always reads.
//! A mapped file that another process truncates is a SIGBUS at the next
//! read past its new end; `mapped.rs` catches it, and the source ends
//! with an error at the first record the file no longer holds, as a read
//! file that ends inside a record does, every frame before it handed out
//! as it was. Where mapping is impossible (a pipe, stdin, a device, an
//! empty file, a file system that refuses it) the file is read. All paths parse the same
//! bytes with the same code, so they give the same frames and the same
//! errors at the same offsets.
//!
//! The pcap-file crate parses the file header, the pcap record headers and
//! the pcapng block framing, section and interface blocks. The fields of
//! pcap records and pcapng packet blocks are checked and decoded here,
//! because pcap-file 2.0 rejects valid records (original length above the
//! snap length, as any `tcpdump -s` capture has), reads every
//! Enhanced Packet Block timestamp as nanoseconds whatever the interface's
//! `if_tsresol`, and collects each packet's options into a fresh vector.

use super::{PacketSource, RawPacket, SourceError};
use flowtable_sw::LinkType;
use pcap_file::pcap::PcapParser;
use pcap_file::pcapng::blocks::interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption};
use pcap_file::pcapng::PcapNgParser;
use pcap_file::{Endianness, PcapError, TsResolution};
use std::borrow::Cow;
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::ops::Range;
use std::path::Path;

/// Largest pcap record accepted: libpcap's maximum snap length. A larger
/// length field means a corrupt file, not a packet worth buffering.
pub const MAX_RECORD_LEN: u32 = 262_144;

/// Largest original (wire) length believed: libpcap's maximum snap
/// length. No link carries frames this long (jumbo frames stop near 9 kB,
/// GRO/GSO super-packets at 64 kB, BIG TCP at 512 kB only with a captured
/// length to match), so a record claiming more, with fewer bytes captured,
/// lies about the frame.
pub const MAX_WIRE_LEN: u32 = MAX_RECORD_LEN;

/// A record's length on the wire from its original and captured lengths,
/// and whether the original length was disbelieved: a frame is never
/// shorter on the wire than in the file, and an original length above
/// [`MAX_WIRE_LEN`] beyond what was captured is clamped to the captured
/// length rather than counted as gigabytes on its flow.
pub fn wire_len(original: u32, captured: u32) -> (u32, bool) {
    if original > MAX_WIRE_LEN && original > captured {
        (captured, true)
    } else {
        (original.max(captured), false)
    }
}

/// Largest pcapng block accepted (a packet block of `MAX_RECORD_LEN` plus
/// generous room for options, or a large name-resolution block).
pub const MAX_BLOCK_LEN: u32 = 16 << 20;

/// How much is read from a file at a time.
const READ_CHUNK: usize = 1 << 20;

const PCAP_RECORD_HEADER_LEN: usize = 16;
const PCAPNG_SECTION_HEADER: u32 = 0x0A0D_0D0A;
const PCAPNG_INTERFACE_DESCRIPTION: u32 = 1;
const PCAPNG_PACKET: u32 = 2;
const PCAPNG_SIMPLE_PACKET: u32 = 3;
const PCAPNG_ENHANCED_PACKET: u32 = 6;

/// A capture file (or a capture held in memory) read frame by frame.
pub struct PcapFileSource {
    /// The path, or `<memory>`, for error messages.
    name: String,
    /// Where more bytes come from; `None` once exhausted or for captures
    /// in memory.
    reader: Option<Box<dyn Read + Send>>,
    buf: Bytes,
    /// Unconsumed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    /// File offset of `buf[0]`.
    base: u64,
    format: Format,
    ingress: u8,
    packets: u64,
    /// Records whose original length was clamped by [`wire_len`].
    clamped: u64,
    /// Mapped files: the lines before this offset have been prefetched.
    ahead: usize,
    /// Mapped files: the page last read to find a cut (`cut_before`).
    probed: usize,
}

/// How far ahead of the parser a mapped file's lines are prefetched, in
/// bytes. A read file's bytes are in cache, the kernel having just copied
/// them; a mapped file's are in DRAM, a miss per record (records of ~900
/// bytes, read 64 at a time, defeat the hardware's stride detection). A
/// walk from record to record, each length read to find the next, is
/// itself a chain of misses; asking for every line a fixed distance ahead
/// is not.
const LOOKAHEAD: usize = 32768;

/// Where the bytes of the capture are.
enum Bytes {
    /// Read (or handed over) into memory of our own; grows as it streams.
    Owned(Vec<u8>),
    /// The whole file, mapped: never grows, never copied. Watched while it
    /// is (`mapped.rs`), the watch dropped first; the file kept open to
    /// tell its size if it shrinks.
    Mapped { watch: crate::mapped::Watch, file: File, map: memmap2::Mmap, page: usize },
}

impl Bytes {
    #[inline]
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Owned(v) => v,
            Bytes::Mapped { map, .. } => map,
        }
    }
}

/// Set to `0` in the environment, [`PcapFileSource::open`] reads capture
/// files rather than mapping them (`1`, or unset, maps), so the two paths
/// can be compared through the real binary and a replay of a file that
/// may be truncated under it can read it instead.
pub const MMAP_ENV: &str = "FLOWTABLE_PCAP_MMAP";

/// Maps `file` if it is a non-empty regular file that the kernel agrees
/// to map; `None` sends the caller to reading it.
fn map_file(file: &File) -> Option<memmap2::Mmap> {
    let meta = file.metadata().ok()?;
    if !meta.is_file() || meta.len() == 0 {
        return None;
    }
    // SAFETY: the mapping is read-only and lives as long as the source that
    // borrows frames from it. What Rust cannot rule out is another process
    // truncating the file while it is mapped, which turns a later read of
    // the lost pages into SIGBUS: `mapped.rs` maps zeros there and notes
    // it, and `cut_before` hands out no frame the file no longer holds.
    // Appending to the file is harmless: the map covers the length it had
    // when opened.
    //
    // `populate` maps every page at once rather than a fault per 64 kB
    // touched (5k page faults instead of 19k on a 930 MB capture), so the
    // prefetches below land on mapped pages.
    unsafe { memmap2::MmapOptions::new().populate().map(file) }.ok()
}

enum Format {
    /// Before the file header has been read.
    Unknown,
    /// The file header's facts every record needs, read once.
    Pcap {
        endianness: Endianness,
        nanoseconds: bool,
        linktype: u32,
        link: Option<LinkType>,
    },
    PcapNg {
        parser: PcapNgParser,
        interfaces: Vec<Interface>,
    },
}

/// What a pcapng packet needs from its Interface Description Block.
#[derive(Debug, Clone, Copy)]
struct Interface {
    linktype: u32,
    link: Option<LinkType>,
    snaplen: u32,
    resolution: u8,
    offset_s: i64,
}

impl Interface {
    fn from_block(idb: &InterfaceDescriptionBlock<'_>) -> Interface {
        let linktype = u32::from(idb.linktype);
        let mut iface = Interface {
            linktype,
            link: LinkType::from_pcap(linktype),
            snaplen: idb.snaplen,
            resolution: 6,
            offset_s: 0,
        };
        for option in &idb.options {
            match option {
                InterfaceDescriptionOption::IfTsResol(r) => iface.resolution = *r,
                // The option is a signed 64-bit number of seconds.
                InterfaceDescriptionOption::IfTsOffset(s) => iface.offset_s = *s as i64,
                _ => {}
            }
        }
        iface
    }

    /// Converts a timestamp in this interface's units to ns since the epoch.
    fn to_ns(self, ticks: u64) -> u64 {
        let ticks = u128::from(ticks);
        let ns = if self.resolution & 0x80 == 0 {
            // Units of 10^-r seconds.
            let r = u32::from(self.resolution);
            if r <= 9 {
                ticks * 10u128.pow(9 - r)
            } else if r - 9 <= 38 {
                ticks / 10u128.pow(r - 9)
            } else {
                0
            }
        } else {
            // Units of 2^-r seconds.
            (ticks * 1_000_000_000) >> (self.resolution & 0x7f)
        };
        let ns = ns as i128 + i128::from(self.offset_s) * 1_000_000_000;
        ns.clamp(0, i128::from(u64::MAX)) as u64
    }
}

/// The outcome of looking at the bytes at the read position.
enum Step {
    /// A frame: `consumed` bytes used, the frame at `data` relative to the
    /// read position.
    Packet {
        consumed: usize,
        data: Range<usize>,
        ts_ns: u64,
        wire_len: u32,
        /// The original length was disbelieved and clamped.
        clamped: bool,
        linktype: u32,
        link: Option<LinkType>,
    },
    /// A header or non-packet block, `consumed` bytes long.
    Skip {
        consumed: usize,
    },
    /// The next record doesn't fit in what has been read.
    NeedMore,
    Corrupt(String),
}

impl PcapFileSource {
    /// Opens a capture file: mapped, or read where it can't be mapped or
    /// the environment says so ([`MMAP_ENV`]). `ingress` is the port index
    /// every frame is attributed to.
    pub fn open(path: impl AsRef<Path>, ingress: u8) -> Result<Self, SourceError> {
        let mapped = std::env::var_os(MMAP_ENV).is_none_or(|v| v != "0");
        Self::open_with(path.as_ref(), ingress, mapped)
    }

    /// Opens a capture file and maps it, or reads it where it can't be
    /// mapped ([`is_mapped`](Self::is_mapped) tells which). A mapped file
    /// truncated by another process while it is replayed ends with an
    /// error at the first record it no longer holds (`mapped.rs`).
    pub fn open_mapped(path: impl AsRef<Path>, ingress: u8) -> Result<Self, SourceError> {
        Self::open_with(path.as_ref(), ingress, true)
    }

    /// Opens a capture file and reads it, never mapping it.
    pub fn open_read(path: impl AsRef<Path>, ingress: u8) -> Result<Self, SourceError> {
        Self::open_with(path.as_ref(), ingress, false)
    }

    fn open_with(path: &Path, ingress: u8, mapped: bool) -> Result<Self, SourceError> {
        let name = path.display().to_string();
        let refused = |message: String| SourceError::Open { path: name.clone(), message };
        // Said in the operator's words: reading a directory fails only at
        // the first read, as "at byte offset 0: Is a directory (os error 21)".
        if path.is_dir() {
            return Err(refused("is a directory, not a capture file".into()));
        }
        let file = File::open(path).map_err(|e| refused(crate::io_error(&e)))?;
        if mapped {
            if let Some(map) = map_file(&file) {
                // Mapped only where a cut under it is caught (`mapped.rs`).
                if let Some(watch) = crate::mapped::Watch::new(map.as_ptr(), map.len()) {
                    let end = map.len();
                    let page = crate::mapped::page_size();
                    return Self::start(name, None, Bytes::Mapped { watch, file, map, page }, end, ingress);
                }
            }
        }
        Self::from_reader(name, Box::new(file), ingress)
    }

    /// A capture already in memory (for benchmarks: no I/O while reading).
    pub fn from_bytes(bytes: impl Into<Vec<u8>>, ingress: u8) -> Result<Self, SourceError> {
        let buf = bytes.into();
        let end = buf.len();
        Self::start(String::from("<memory>"), None, Bytes::Owned(buf), end, ingress)
    }

    /// A capture streamed from any reader; `name` appears in errors.
    pub fn from_reader(name: String, reader: Box<dyn Read + Send>, ingress: u8) -> Result<Self, SourceError> {
        Self::start(name, Some(reader), Bytes::Owned(Vec::new()), 0, ingress)
    }

    fn start(
        name: String,
        reader: Option<Box<dyn Read + Send>>,
        buf: Bytes,
        end: usize,
        ingress: u8,
    ) -> Result<Self, SourceError> {
        let mut source = PcapFileSource {
            name,
            reader,
            buf,
            start: 0,
            end,
            base: 0,
            format: Format::Unknown,
            ingress,
            packets: 0,
            clamped: 0,
            ahead: 0,
            probed: 0,
        };
        source.read_file_header()?;
        Ok(source)
    }

    /// The path the source reads (or `<memory>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the file is mapped rather than read.
    pub fn is_mapped(&self) -> bool {
        matches!(self.buf, Bytes::Mapped { .. })
    }

    /// Frames delivered so far.
    pub fn packets_read(&self) -> u64 {
        self.packets
    }

    /// Frames delivered so far whose original length [`wire_len`] clamped
    /// to the captured length.
    pub fn clamped_wire_lengths(&self) -> u64 {
        self.clamped
    }

    fn corrupt(&self, message: impl Into<String>) -> SourceError {
        SourceError::Corrupt { path: self.name.clone(), offset: self.base + self.start as u64, message: message.into() }
    }

    fn read_file_header(&mut self) -> Result<(), SourceError> {
        while self.end - self.start < 4 {
            if !self.fill()? {
                return Err(
                    self.corrupt(format!("file too short for a capture header ({} bytes)", self.end - self.start))
                );
            }
        }
        let magic = &self.buf.as_slice()[self.start..self.start + 4];
        let pcapng = magic == PCAPNG_SECTION_HEADER.to_be_bytes();
        let pcap = matches!(
            u32::from_be_bytes([magic[0], magic[1], magic[2], magic[3]]),
            0xa1b2_c3d4 | 0xd4c3_b2a1 | 0xa1b2_3c4d | 0x4d3c_b2a1
        );
        if !pcap && !pcapng {
            return Err(self.corrupt(format!(
                "not a pcap or pcapng file (magic {:02x}{:02x}{:02x}{:02x})",
                magic[0], magic[1], magic[2], magic[3]
            )));
        }
        loop {
            let avail = &self.buf.as_slice()[self.start..self.end];
            let parsed = if pcapng {
                PcapNgParser::new(avail)
                    .map(|(rem, parser)| (avail.len() - rem.len(), Format::PcapNg { parser, interfaces: Vec::new() }))
            } else {
                PcapParser::new(avail).map(|(rem, parser)| {
                    let header = parser.header();
                    let linktype = u32::from(header.datalink);
                    let format = Format::Pcap {
                        endianness: header.endianness,
                        nanoseconds: header.ts_resolution == TsResolution::NanoSecond,
                        linktype,
                        link: LinkType::from_pcap(linktype),
                    };
                    (avail.len() - rem.len(), format)
                })
            };
            match parsed {
                Ok((consumed, format)) => {
                    self.start += consumed;
                    self.format = format;
                    return Ok(());
                }
                Err(PcapError::IncompleteBuffer) => {
                    if !self.fill()? {
                        return Err(self.corrupt("file ends inside the capture header"));
                    }
                }
                Err(e) => return Err(self.corrupt(format!("bad capture header: {e}"))),
            }
        }
    }

    /// Reads more of the file after what is buffered. `false` at the end.
    fn fill(&mut self) -> Result<bool, SourceError> {
        let Some(reader) = self.reader.as_mut() else {
            return Ok(false);
        };
        // Only what is read has a reader; a mapped file is whole already.
        let Bytes::Owned(buf) = &mut self.buf else {
            return Ok(false);
        };
        if self.start > 0 {
            buf.copy_within(self.start..self.end, 0);
            self.base += self.start as u64;
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == buf.len() {
            // Records are bounded before more is asked for, so this stays
            // within a few times the largest record.
            let grown = (buf.len() * 2).max(READ_CHUNK);
            buf.resize(grown, 0);
        }
        loop {
            match reader.read(&mut buf[self.end..]) {
                Ok(0) => {
                    self.reader = None;
                    return Ok(false);
                }
                Ok(n) => {
                    self.end += n;
                    return Ok(true);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(SourceError::Io {
                        what: format!("{}: at byte offset {}", self.name, self.base + self.end as u64),
                        message: e.to_string(),
                    })
                }
            }
        }
    }

    /// Asks for every line up to [`LOOKAHEAD`] bytes past the read
    /// position that has not been asked for yet.
    #[inline]
    fn prefetch_ahead(&mut self) {
        let bytes = self.buf.as_slice();
        let until = (self.start + LOOKAHEAD).min(self.end);
        let mut at = self.ahead.max(self.start & !63);
        while at < until {
            flowtable_sw::index::prefetch(&bytes[at]);
            at += 64;
        }
        self.ahead = at;
    }

    /// A mapped file that another process cut short: the error for the
    /// record at the read position, which ends at `record_end` (its
    /// offset past the file's last byte), if the file no longer holds it.
    /// A read past the new end faults, and `mapped.rs` maps zeros there;
    /// this reads the first byte of the page after the record's last,
    /// which a cut before the record's end leaves wholly past the file's
    /// end, so the cut has faulted by then. It asks the file's size when
    /// one did, or when the record is in the file's last page, where
    /// bytes past a cut read as zeros without a fault. The page is read
    /// once for all the records that end in the page before it (a replay
    /// races a cut anyway: one made after the check is found at the next
    /// page).
    #[inline]
    fn cut_before(&mut self, record_end: usize) -> Option<SourceError> {
        let Bytes::Mapped { watch, map, page, .. } = &self.buf else { return None };
        let probe = ((record_end - 1) / page + 1) * page;
        if probe < map.len() {
            if probe != self.probed {
                // SAFETY: `probe` is within the mapping, and a read of it
                // never fails: a page past the file's end reads as zeros
                // (`mapped.rs`).
                unsafe { std::ptr::read_volatile(map.as_ptr().add(probe)) };
                self.probed = probe;
            }
            if !watch.faulted() {
                return None;
            }
        }
        self.cut_by_size(record_end)
    }

    /// `cut_before`'s answer from the file's size now: off the common path.
    #[cold]
    #[inline(never)]
    fn cut_by_size(&self, record_end: usize) -> Option<SourceError> {
        let Bytes::Mapped { file, .. } = &self.buf else { return None };
        let size = file.metadata().map_or(0, |m| m.len());
        (size < record_end as u64).then(|| {
            self.corrupt(format!(
                "the file was cut to {size} bytes while it was replayed (another process truncated it?): \
                 this record ends at byte {record_end}"
            ))
        })
    }

    fn step(&mut self) -> Step {
        let avail = &self.buf.as_slice()[self.start..self.end];
        match &mut self.format {
            Format::Unknown => Step::Corrupt(String::from("capture header not read")),
            Format::Pcap { endianness, nanoseconds, linktype, link } => {
                pcap_record(*endianness, *nanoseconds, *linktype, *link, avail)
            }
            Format::PcapNg { parser, interfaces } => pcapng_block(parser, interfaces, avail),
        }
    }
}

impl PacketSource for PcapFileSource {
    fn clamped_wire_lengths(&self) -> u64 {
        self.clamped
    }

    fn next_packet(&mut self) -> Result<Option<RawPacket<'_>>, SourceError> {
        loop {
            match self.step() {
                Step::Packet { consumed, data, ts_ns, wire_len, clamped, linktype, link } => {
                    let at = self.start;
                    if let Some(cut) = self.cut_before(at + consumed) {
                        return Err(cut);
                    }
                    self.start += consumed;
                    // A whole capture in memory (mapped, or bytes handed
                    // over) is read from DRAM, a line per record at least;
                    // one read in pieces sits in the cache the copy just
                    // filled.
                    if self.reader.is_none() {
                        self.prefetch_ahead();
                    }
                    self.packets += 1;
                    self.clamped += u64::from(clamped);
                    return Ok(Some(RawPacket {
                        ts_ns,
                        data: &self.buf.as_slice()[at + data.start..at + data.end],
                        wire_len,
                        link,
                        linktype,
                        ingress: self.ingress,
                        mark: None,
                    }));
                }
                Step::Skip { consumed } => self.start += consumed,
                Step::NeedMore => {
                    if !self.fill()? {
                        if self.start == self.end {
                            return Ok(None);
                        }
                        // Left unconsumed: asking again reports it again.
                        return Err(self.corrupt(format!(
                            "file ends inside a record ({} bytes of it present)",
                            self.end - self.start
                        )));
                    }
                }
                // Zeros past a cut read as a record of no sense.
                Step::Corrupt(message) => {
                    return Err(self.cut_by_size(self.end).unwrap_or_else(|| self.corrupt(message)))
                }
            }
        }
    }
}

fn read_u32(endian: Endianness, bytes: &[u8], at: usize) -> u32 {
    let b = [bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]];
    match endian {
        Endianness::Big => u32::from_be_bytes(b),
        Endianness::Little => u32::from_le_bytes(b),
    }
}

fn read_u16(endian: Endianness, bytes: &[u8], at: usize) -> u16 {
    let b = [bytes[at], bytes[at + 1]];
    match endian {
        Endianness::Big => u16::from_be_bytes(b),
        Endianness::Little => u16::from_le_bytes(b),
    }
}

/// One classic pcap record: its 16-byte header (seconds, fraction, captured
/// and original length) and the frame after it.
///
/// Read by hand rather than with the pcap-file crate's `next_raw_packet`
/// (which reads the same four fields and checks the same length): through
/// its `Cow` and its `Result`, whose error carries a `String`, that cost
/// about 60 instructions a record (callgrind) on the one thread every
/// replayed packet crosses. The crate still reads the file header and
/// every pcapng block.
fn pcap_record(endian: Endianness, nanoseconds: bool, linktype: u32, link: Option<LinkType>, avail: &[u8]) -> Step {
    if avail.len() < PCAP_RECORD_HEADER_LEN {
        return Step::NeedMore;
    }
    // Bound the length before asking for that many bytes.
    let incl_len = read_u32(endian, avail, 8);
    if incl_len > MAX_RECORD_LEN {
        return Step::Corrupt(format!("record length {incl_len} exceeds the maximum of {MAX_RECORD_LEN}"));
    }
    let end = PCAP_RECORD_HEADER_LEN + incl_len as usize;
    if avail.len() < end {
        return Step::NeedMore;
    }
    let ts_frac = u64::from(read_u32(endian, avail, 4));
    let frac_ns = if nanoseconds { ts_frac } else { ts_frac * 1_000 };
    let (wire_len, clamped) = wire_len(read_u32(endian, avail, 12), incl_len);
    Step::Packet {
        consumed: end,
        data: PCAP_RECORD_HEADER_LEN..end,
        ts_ns: u64::from(read_u32(endian, avail, 0)) * 1_000_000_000 + frac_ns,
        wire_len,
        clamped,
        linktype,
        link,
    }
}

/// Peeks at the total length of the pcapng block at the start of `avail`.
fn pcapng_block_len(section: Endianness, avail: &[u8]) -> Option<u32> {
    if avail.len() < 12 {
        return None;
    }
    // A new section may switch byte order; its own magic says which.
    let endian = if read_u32(Endianness::Big, avail, 0) == PCAPNG_SECTION_HEADER {
        match read_u32(Endianness::Big, avail, 8) {
            0x4d3c_2b1a => Endianness::Little,
            _ => Endianness::Big,
        }
    } else {
        section
    };
    Some(read_u32(endian, avail, 4))
}

fn pcapng_block(parser: &mut PcapNgParser, interfaces: &mut Vec<Interface>, avail: &[u8]) -> Step {
    let Some(block_len) = pcapng_block_len(parser.section().endianness, avail) else {
        return Step::NeedMore;
    };
    if block_len > MAX_BLOCK_LEN {
        return Step::Corrupt(format!("block length {block_len} exceeds the maximum of {MAX_BLOCK_LEN}"));
    }
    let (rem, block) = match parser.next_raw_block(avail) {
        Ok(r) => r,
        Err(PcapError::IncompleteBuffer) => return Step::NeedMore,
        Err(e) => return Step::Corrupt(e.to_string()),
    };
    let consumed = avail.len() - rem.len();
    // The parser keeps the section's interfaces; mirror the few fields a
    // packet needs.
    match block.type_ {
        PCAPNG_SECTION_HEADER => interfaces.clear(),
        PCAPNG_INTERFACE_DESCRIPTION => {
            if let Some(idb) = parser.interfaces().last() {
                interfaces.push(Interface::from_block(idb));
            }
        }
        _ => {}
    }
    let body = match &block.body {
        Cow::Borrowed(body) => *body,
        Cow::Owned(_) => return Step::Corrupt(String::from("block body not borrowed")),
    };
    // The body follows the 8-byte block type and length.
    let body_at = 8;
    let endian = parser.section().endianness;
    let packet = match block.type_ {
        PCAPNG_ENHANCED_PACKET => {
            if body.len() < 20 {
                return Step::Corrupt(format!("enhanced packet block of {} bytes", body.len()));
            }
            let interface = read_u32(endian, body, 0);
            let ticks = u64::from(read_u32(endian, body, 4)) << 32 | u64::from(read_u32(endian, body, 8));
            let captured = read_u32(endian, body, 12);
            let original = read_u32(endian, body, 16);
            PacketFields { interface, ticks: Some(ticks), captured, original, data_at: 20 }
        }
        PCAPNG_PACKET => {
            if body.len() < 20 {
                return Step::Corrupt(format!("packet block of {} bytes", body.len()));
            }
            let interface = u32::from(read_u16(endian, body, 0));
            let ticks = u64::from(read_u32(endian, body, 4)) << 32 | u64::from(read_u32(endian, body, 8));
            let captured = read_u32(endian, body, 12);
            let original = read_u32(endian, body, 16);
            PacketFields { interface, ticks: Some(ticks), captured, original, data_at: 20 }
        }
        PCAPNG_SIMPLE_PACKET => {
            if body.len() < 4 {
                return Step::Corrupt(format!("simple packet block of {} bytes", body.len()));
            }
            let original = read_u32(endian, body, 0);
            // The captured length is implied: the original length, cut by
            // the interface's snap length and the block's size.
            let mut captured = original.min((body.len() - 4) as u32);
            if let Some(iface) = interfaces.first() {
                if iface.snaplen != 0 {
                    captured = captured.min(iface.snaplen);
                }
            }
            PacketFields { interface: 0, ticks: None, captured, original, data_at: 4 }
        }
        _ => return Step::Skip { consumed },
    };
    let Some(iface) = interfaces.get(packet.interface as usize) else {
        return Step::Corrupt(format!(
            "packet of interface {} but the section describes {}",
            packet.interface,
            interfaces.len()
        ));
    };
    let data_end = packet.data_at + packet.captured as usize;
    if data_end > body.len() {
        return Step::Corrupt(format!(
            "captured length {} overruns its block of {} bytes",
            packet.captured,
            body.len()
        ));
    }
    let (wire_len, clamped) = wire_len(packet.original, packet.captured);
    Step::Packet {
        consumed,
        data: body_at + packet.data_at..body_at + data_end,
        ts_ns: packet.ticks.map_or(0, |t| iface.to_ns(t)),
        wire_len,
        clamped,
        linktype: iface.linktype,
        link: iface.link,
    }
}

struct PacketFields {
    interface: u32,
    /// Timestamp in interface units; simple packet blocks have none.
    ticks: Option<u64>,
    captured: u32,
    original: u32,
    /// Offset of the frame in the block body.
    data_at: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Collects everything a source yields until the end or an error.
    fn drain(source: &mut PcapFileSource) -> (Vec<Frame>, Option<SourceError>) {
        let mut frames = Vec::new();
        loop {
            match source.next_packet() {
                Ok(Some(p)) => frames.push(Frame::from(p)),
                Ok(None) => return (frames, None),
                Err(e) => return (frames, Some(e)),
            }
        }
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Frame {
        ts_ns: u64,
        data: Vec<u8>,
        wire_len: u32,
        link: Option<LinkType>,
        linktype: u32,
        ingress: u8,
    }

    impl From<RawPacket<'_>> for Frame {
        fn from(p: RawPacket<'_>) -> Frame {
            Frame {
                ts_ns: p.ts_ns,
                data: p.data.to_vec(),
                wire_len: p.wire_len,
                link: p.link,
                linktype: p.linktype,
                ingress: p.ingress,
            }
        }
    }

    /// Writes pcap bytes: `big` for big-endian, `nanos` for the ns magic.
    fn pcap(big: bool, nanos: bool, snaplen: u32, linktype: u32, records: &[(u32, u32, u32, &[u8])]) -> Vec<u8> {
        let w32 = |v: u32| if big { v.to_be_bytes() } else { v.to_le_bytes() };
        let w16 = |v: u16| if big { v.to_be_bytes() } else { v.to_le_bytes() };
        let mut out = Vec::new();
        out.extend_from_slice(&w32(if nanos { 0xa1b2_3c4d } else { 0xa1b2_c3d4 }));
        out.extend_from_slice(&w16(2));
        out.extend_from_slice(&w16(4));
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&w32(snaplen));
        out.extend_from_slice(&w32(linktype));
        for &(sec, frac, orig, data) in records {
            out.extend_from_slice(&w32(sec));
            out.extend_from_slice(&w32(frac));
            out.extend_from_slice(&w32(data.len() as u32));
            out.extend_from_slice(&w32(orig));
            out.extend_from_slice(data);
        }
        out
    }

    const FRAME_A: &[u8] = &[0xaa; 60];
    const FRAME_B: &[u8] = &[0xbb; 42];

    #[test]
    fn pcap_in_both_byte_orders_and_resolutions() {
        for big in [false, true] {
            for nanos in [false, true] {
                let bytes =
                    pcap(big, nanos, 65535, 1, &[(1_700_000_000, 250, 60, FRAME_A), (1_700_000_001, 0, 1514, FRAME_B)]);
                let mut src = PcapFileSource::from_bytes(bytes, 3).unwrap();
                let (frames, err) = drain(&mut src);
                assert!(err.is_none(), "{err:?}");
                let frac = if nanos { 250 } else { 250_000 };
                assert_eq!(
                    frames,
                    vec![
                        Frame {
                            ts_ns: 1_700_000_000_000_000_000 + frac,
                            data: FRAME_A.to_vec(),
                            wire_len: 60,
                            link: Some(LinkType::Ethernet),
                            linktype: 1,
                            ingress: 3
                        },
                        Frame {
                            ts_ns: 1_700_000_001_000_000_000,
                            data: FRAME_B.to_vec(),
                            wire_len: 1514,
                            link: Some(LinkType::Ethernet),
                            linktype: 1,
                            ingress: 3
                        },
                    ],
                    "big {big} nanos {nanos}"
                );
                assert_eq!(src.packets_read(), 2);
                // The end stays the end.
                assert!(src.next_packet().unwrap().is_none());
            }
        }
    }

    #[test]
    fn original_length_beyond_snap_length_is_normal() {
        let bytes = pcap(false, false, 60, 101, &[(0, 0, 9000, FRAME_A)]);
        let (frames, err) = drain(&mut PcapFileSource::from_bytes(bytes, 0).unwrap());
        assert!(err.is_none());
        assert_eq!(frames[0].wire_len, 9000);
        assert_eq!(frames[0].link, Some(LinkType::RawIp));
    }

    #[test]
    fn original_length_the_capture_cant_back_up_is_clamped_and_counted() {
        // As in fuzz-2021-06-07-c6c72a0a56.pcap: 4 093 509 168 bytes claimed,
        // 60 captured.
        let bytes = pcap(
            false,
            false,
            65535,
            1,
            &[(1, 0, 4_093_509_168, FRAME_A), (2, 0, MAX_WIRE_LEN, FRAME_A), (3, 0, MAX_WIRE_LEN + 1, FRAME_A)],
        );
        let mut src = PcapFileSource::from_bytes(bytes, 0).unwrap();
        let (frames, err) = drain(&mut src);
        assert!(err.is_none());
        let lens: Vec<u32> = frames.iter().map(|f| f.wire_len).collect();
        assert_eq!(lens, [FRAME_A.len() as u32, MAX_WIRE_LEN, FRAME_A.len() as u32]);
        assert_eq!(src.clamped_wire_lengths(), 2);
        assert_eq!(PacketSource::clamped_wire_lengths(&src), 2);

        // pcapng Enhanced Packet Blocks follow the same rule.
        let mut bytes = shb(false);
        bytes.extend(idb(false, 1, 0, None, None));
        bytes.extend(epb(false, 0, 1, u32::MAX, FRAME_A));
        bytes.extend(epb(false, 0, 2, 1514, FRAME_A));
        let mut src = PcapFileSource::from_bytes(bytes, 0).unwrap();
        let (frames, err) = drain(&mut src);
        assert!(err.is_none(), "{err:?}");
        assert_eq!((frames[0].wire_len, frames[1].wire_len), (FRAME_A.len() as u32, 1514));
        assert_eq!(src.clamped_wire_lengths(), 1);
    }

    #[test]
    fn wire_length_rule() {
        assert_eq!(wire_len(1514, 60), (1514, false));
        assert_eq!(wire_len(40, 60), (60, false));
        assert_eq!(wire_len(MAX_WIRE_LEN, 60), (MAX_WIRE_LEN, false));
        assert_eq!(wire_len(MAX_WIRE_LEN + 1, 60), (60, true));
        assert_eq!(wire_len(u32::MAX, 0), (0, true));
    }

    #[test]
    fn wire_length_never_below_captured_length() {
        let bytes = pcap(false, false, 65535, 1, &[(0, 0, 10, FRAME_A)]);
        let (frames, _) = drain(&mut PcapFileSource::from_bytes(bytes, 0).unwrap());
        assert_eq!(frames[0].wire_len, 60);
    }

    #[test]
    fn out_of_range_microseconds_do_not_fail() {
        let bytes = pcap(false, false, 65535, 1, &[(1, u32::MAX, 60, FRAME_A)]);
        let (frames, err) = drain(&mut PcapFileSource::from_bytes(bytes, 0).unwrap());
        assert!(err.is_none());
        assert_eq!(frames[0].ts_ns, 1_000_000_000 + u64::from(u32::MAX) * 1000);
    }

    #[test]
    fn unsupported_link_type_is_delivered_without_link() {
        // 802.11, which the parser doesn't read.
        let bytes = pcap(false, false, 65535, 105, &[(0, 0, 60, FRAME_A)]);
        let (frames, err) = drain(&mut PcapFileSource::from_bytes(bytes, 0).unwrap());
        assert!(err.is_none());
        assert_eq!((frames[0].link, frames[0].linktype), (None, 105));
    }

    #[test]
    fn truncated_last_record_is_an_error_at_its_offset() {
        let full = pcap(false, false, 65535, 1, &[(0, 0, 60, FRAME_A), (0, 0, 42, FRAME_B)]);
        let second_at = 24 + 16 + 60;
        // Cut inside the second record's header, then inside its data.
        for cut in [second_at + 1, second_at + 15, second_at + 16, full.len() - 1] {
            let mut src = PcapFileSource::from_bytes(full[..cut].to_vec(), 0).unwrap();
            let (frames, err) = drain(&mut src);
            assert_eq!(frames.len(), 1, "cut {cut}");
            match err {
                Some(SourceError::Corrupt { path, offset, message }) => {
                    assert_eq!(path, "<memory>");
                    assert_eq!(offset, second_at as u64);
                    assert!(message.contains("ends inside a record"), "{message}");
                }
                other => panic!("cut {cut}: {other:?}"),
            }
            // Asking again gives the same error, not a silent end.
            assert!(src.next_packet().is_err());
        }
        // Cut exactly after the first record: a clean end.
        let (frames, err) = drain(&mut PcapFileSource::from_bytes(full[..second_at].to_vec(), 0).unwrap());
        assert_eq!((frames.len(), err.is_none()), (1, true));
    }

    #[test]
    fn absurd_record_length_is_corrupt() {
        let mut bytes = pcap(false, false, 65535, 1, &[(0, 0, 60, FRAME_A)]);
        bytes[24 + 8..24 + 12].copy_from_slice(&(MAX_RECORD_LEN + 1).to_le_bytes());
        let (_, err) = drain(&mut PcapFileSource::from_bytes(bytes, 0).unwrap());
        match err {
            Some(SourceError::Corrupt { offset: 24, message, .. }) => {
                assert!(message.contains("exceeds"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_headers() {
        let err = |bytes: Vec<u8>| PcapFileSource::from_bytes(bytes, 0).err().map(|e| e.to_string());
        assert_eq!(
            err(vec![]),
            Some("<memory>: at byte offset 0: file too short for a capture header (0 bytes)".into())
        );
        assert_eq!(
            err(b"# Test captures\n".to_vec()),
            Some("<memory>: at byte offset 0: not a pcap or pcapng file (magic 23205465)".into())
        );
        let header = pcap(false, false, 65535, 1, &[]);
        assert!(err(header[..23].to_vec()).unwrap().contains("ends inside the capture header"));
        // A header and nothing else: an empty capture.
        let mut src = PcapFileSource::from_bytes(header, 0).unwrap();
        assert!(src.next_packet().unwrap().is_none());
    }

    /// A pcapng block in the given byte order, padded to 4 bytes.
    fn block(big: bool, kind: u32, body: &[u8]) -> Vec<u8> {
        let w32 = |v: u32| if big { v.to_be_bytes() } else { v.to_le_bytes() };
        let padded = body.len().next_multiple_of(4);
        let total = (12 + padded) as u32;
        let mut out = w32(kind).to_vec();
        out.extend_from_slice(&w32(total));
        out.extend_from_slice(body);
        out.resize(8 + padded, 0);
        out.extend_from_slice(&w32(total));
        out
    }

    fn shb(big: bool) -> Vec<u8> {
        let mut body = if big { 0x1a2b_3c4du32.to_be_bytes() } else { 0x1a2b_3c4du32.to_le_bytes() }.to_vec();
        body.extend_from_slice(&if big { [0, 1, 0, 0] } else { [1, 0, 0, 0] });
        body.extend_from_slice(&[0xff; 8]);
        block(big, PCAPNG_SECTION_HEADER, &body)
    }

    /// Interface description with an optional if_tsresol and if_tsoffset.
    fn idb(big: bool, linktype: u16, snaplen: u32, tsresol: Option<u8>, tsoffset: Option<i64>) -> Vec<u8> {
        let w16 = |v: u16| if big { v.to_be_bytes() } else { v.to_le_bytes() };
        let mut body = w16(linktype).to_vec();
        body.extend_from_slice(&[0, 0]);
        body.extend_from_slice(&if big { snaplen.to_be_bytes() } else { snaplen.to_le_bytes() });
        if let Some(r) = tsresol {
            body.extend_from_slice(&w16(9));
            body.extend_from_slice(&w16(1));
            body.extend_from_slice(&[r, 0, 0, 0]);
        }
        if let Some(s) = tsoffset {
            body.extend_from_slice(&w16(14));
            body.extend_from_slice(&w16(8));
            body.extend_from_slice(&if big { s.to_be_bytes() } else { s.to_le_bytes() });
        }
        if tsresol.is_some() || tsoffset.is_some() {
            body.extend_from_slice(&[0; 4]);
        }
        block(big, PCAPNG_INTERFACE_DESCRIPTION, &body)
    }

    fn epb(big: bool, interface: u32, ticks: u64, original: u32, data: &[u8]) -> Vec<u8> {
        let w32 = |v: u32| if big { v.to_be_bytes() } else { v.to_le_bytes() };
        let mut body = w32(interface).to_vec();
        body.extend_from_slice(&w32((ticks >> 32) as u32));
        body.extend_from_slice(&w32(ticks as u32));
        body.extend_from_slice(&w32(data.len() as u32));
        body.extend_from_slice(&w32(original));
        body.extend_from_slice(data);
        block(big, PCAPNG_ENHANCED_PACKET, &body)
    }

    fn frame(ts_ns: u64, data: &[u8], wire_len: u32, link: Option<LinkType>, linktype: u32) -> Frame {
        Frame { ts_ns, data: data.to_vec(), wire_len, link, linktype, ingress: 5 }
    }

    #[test]
    fn pcapng_interfaces_with_their_own_link_types_and_resolutions() {
        for big in [false, true] {
            let mut bytes = shb(big);
            bytes.extend(idb(big, 1, 0, None, None)); // Ethernet, µs
            bytes.extend(idb(big, 101, 65535, Some(9), None)); // raw IP, ns
            bytes.extend(idb(big, 113, 65535, Some(0x80 | 10), Some(-5))); // SLL, 2^-10 s, -5 s
            bytes.extend(idb(big, 105, 65535, Some(3), None)); // 802.11, ms
            bytes.extend(block(big, 4, &[0; 8])); // name resolution: skipped
            bytes.extend(epb(big, 0, 1_700_000_000_123_456, 1514, FRAME_A));
            bytes.extend(epb(big, 1, 1_700_000_000_123_456_789, 42, FRAME_B));
            bytes.extend(epb(big, 2, 1024 * 100 + 512, 42, FRAME_B));
            bytes.extend(epb(big, 3, 1_500, 60, &FRAME_A[..3]));
            let mut src = PcapFileSource::from_bytes(bytes, 5).unwrap();
            let (frames, err) = drain(&mut src);
            assert!(err.is_none(), "{err:?}");
            assert_eq!(
                frames,
                vec![
                    frame(1_700_000_000_123_456_000, FRAME_A, 1514, Some(LinkType::Ethernet), 1),
                    frame(1_700_000_000_123_456_789, FRAME_B, 42, Some(LinkType::RawIp), 101),
                    frame(95_500_000_000, FRAME_B, 42, Some(LinkType::LinuxSll), 113),
                    frame(1_500_000_000, &FRAME_A[..3], 60, None, 105),
                ],
                "big {big}"
            );
        }
    }

    #[test]
    fn pcapng_sections_reset_interfaces_and_may_switch_byte_order() {
        let mut bytes = shb(false);
        bytes.extend(idb(false, 1, 0, None, None));
        bytes.extend(epb(false, 0, 7, 60, FRAME_A));
        bytes.extend(shb(true));
        bytes.extend(idb(true, 276, 0, Some(9), None));
        bytes.extend(epb(true, 0, 8, 42, FRAME_B));
        let (frames, err) = drain(&mut PcapFileSource::from_bytes(bytes.clone(), 5).unwrap());
        assert!(err.is_none(), "{err:?}");
        assert_eq!(frames[0], frame(7_000, FRAME_A, 60, Some(LinkType::Ethernet), 1));
        assert_eq!(frames[1], frame(8, FRAME_B, 42, Some(LinkType::LinuxSll2), 276));

        // Interface 1 of the second section doesn't exist (the first
        // section's interface is forgotten).
        let second_section = bytes.len();
        bytes.extend(epb(true, 1, 9, 42, FRAME_B));
        let (frames, err) = drain(&mut PcapFileSource::from_bytes(bytes, 5).unwrap());
        assert_eq!(frames.len(), 2);
        match err {
            Some(SourceError::Corrupt { offset, message, .. }) => {
                assert_eq!(offset, second_section as u64);
                assert!(message.contains("interface 1"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pcapng_simple_and_obsolete_packet_blocks() {
        let mut bytes = shb(false);
        bytes.extend(idb(false, 1, 50, None, None));
        let mut spb = 1514u32.to_le_bytes().to_vec();
        spb.extend_from_slice(FRAME_A);
        bytes.extend(block(false, PCAPNG_SIMPLE_PACKET, &spb));
        let mut pb = vec![0, 0, 0, 0];
        pb.extend_from_slice(&0u32.to_le_bytes());
        pb.extend_from_slice(&2_000_000u32.to_le_bytes());
        pb.extend_from_slice(&42u32.to_le_bytes());
        pb.extend_from_slice(&42u32.to_le_bytes());
        pb.extend_from_slice(FRAME_B);
        bytes.extend(block(false, PCAPNG_PACKET, &pb));
        let (frames, err) = drain(&mut PcapFileSource::from_bytes(bytes, 5).unwrap());
        assert!(err.is_none(), "{err:?}");
        // The simple packet is cut at the interface's snap length of 50.
        assert_eq!(frames[0], frame(0, &FRAME_A[..50], 1514, Some(LinkType::Ethernet), 1));
        assert_eq!(frames[1], frame(2_000_000_000, FRAME_B, 42, Some(LinkType::Ethernet), 1));
    }

    #[test]
    fn pcapng_corruptions() {
        let mut head = shb(false);
        head.extend(idb(false, 1, 0, None, None));
        let at = head.len() as u64;
        let corrupt = |tail: Vec<u8>| {
            let mut bytes = head.clone();
            bytes.extend(tail);
            match drain(&mut PcapFileSource::from_bytes(bytes, 0).unwrap()) {
                (frames, Some(SourceError::Corrupt { offset, message, .. })) if frames.is_empty() => {
                    assert_eq!(offset, at);
                    message
                }
                other => panic!("{other:?}"),
            }
        };
        // Captured length larger than the block.
        let mut bad = epb(false, 0, 0, 60, FRAME_A);
        bad[8 + 12..8 + 16].copy_from_slice(&1000u32.to_le_bytes());
        assert!(corrupt(bad).contains("overruns"));
        // Trailer length disagreeing with the header.
        let mut bad = epb(false, 0, 0, 60, FRAME_A);
        let n = bad.len();
        bad[n - 4] ^= 4;
        assert!(corrupt(bad).contains("initial_length != trailer_length"));
        // A block that claims 1 GiB.
        let mut bad = epb(false, 0, 0, 60, FRAME_A);
        bad[4..8].copy_from_slice(&(1u32 << 30).to_le_bytes());
        assert!(corrupt(bad).contains("exceeds"));
        // Cut short.
        let good = epb(false, 0, 0, 60, FRAME_A);
        assert!(corrupt(good[..good.len() - 1].to_vec()).contains("ends inside a record"));
    }

    /// Hands out one byte per read, so every record straddles reads.
    struct Trickle(Vec<u8>, usize);

    impl Read for Trickle {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            if self.1 == self.0.len() || out.is_empty() {
                return Ok(0);
            }
            out[0] = self.0[self.1];
            self.1 += 1;
            Ok(1)
        }
    }

    #[test]
    fn streaming_reads_give_what_memory_gives() {
        let mut ng = shb(false);
        ng.extend(idb(false, 1, 0, Some(9), None));
        for i in 0..50 {
            ng.extend(epb(false, 0, i, 60 + i as u32, &FRAME_A[..(i as usize % 60)]));
        }
        let records: Vec<(u32, u32, u32, &[u8])> =
            (0..50).map(|i| (i, i, 100, &FRAME_B[..(i as usize % 42)])).collect();
        for bytes in [ng, pcap(true, false, 65535, 1, &records)] {
            let (mem, err) = drain(&mut PcapFileSource::from_bytes(bytes.clone(), 1).unwrap());
            assert!(err.is_none());
            assert_eq!(mem.len(), 50);
            let mut streamed =
                PcapFileSource::from_reader("trickle".into(), Box::new(Trickle(bytes.clone(), 0)), 1).unwrap();
            let (frames, err) = drain(&mut streamed);
            assert!(err.is_none());
            assert_eq!(frames, mem);
            // Truncated stream: the error names the reader and the offset.
            let cut = bytes.len() - 3;
            let mut streamed =
                PcapFileSource::from_reader("trickle".into(), Box::new(Trickle(bytes[..cut].to_vec(), 0)), 1).unwrap();
            let (frames, err) = drain(&mut streamed);
            assert_eq!(frames.len(), 49);
            let err = err.unwrap().to_string();
            assert!(err.starts_with("trickle: at byte offset "), "{err}");
        }
    }

    #[test]
    fn opens_files_and_names_them_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("two.pcap");
        std::fs::write(&path, pcap(false, true, 65535, 1, &[(1, 2, 60, FRAME_A), (3, 4, 42, FRAME_B)])).unwrap();
        let mut src = PcapFileSource::open(&path, 2).unwrap();
        assert_eq!(src.name(), path.display().to_string());
        let (frames, err) = drain(&mut src);
        assert!(err.is_none());
        assert_eq!(frames.iter().map(|f| f.ts_ns).collect::<Vec<_>>(), vec![1_000_000_002, 3_000_000_004]);

        let missing = dir.path().join("missing.pcap");
        let err = PcapFileSource::open(&missing, 0).err().unwrap();
        assert!(matches!(err, SourceError::Open { .. }));
        assert!(err.to_string().starts_with(&missing.display().to_string()));

        let text = dir.path().join("notes.txt");
        std::fs::write(&text, "hello").unwrap();
        let err = PcapFileSource::open(&text, 0).err().unwrap().to_string();
        assert_eq!(err, format!("{}: at byte offset 0: not a pcap or pcapng file (magic 68656c6c)", text.display()));
    }
    /// Everything a source opened on `path` yields, and how it ends, as
    /// text (errors name the path, so both sources must name it alike).
    fn drain_path(path: &Path, mapped: bool) -> (bool, Vec<Frame>, Option<String>) {
        let opened = if mapped { PcapFileSource::open_mapped(path, 3) } else { PcapFileSource::open_read(path, 3) };
        match opened {
            Ok(mut src) => {
                let (frames, err) = drain(&mut src);
                (src.is_mapped(), frames, err.map(|e| e.to_string()))
            }
            Err(e) => (false, Vec::new(), Some(e.to_string())),
        }
    }

    #[test]
    fn mapped_files_give_what_read_files_give_errors_included() {
        let dir = tempfile::tempdir().unwrap();
        let mut ng = shb(false);
        ng.extend(idb(false, 1, 0, Some(9), None));
        for i in 0..300u64 {
            ng.extend(epb(false, 0, i, 60 + i as u32, &FRAME_A[..(i as usize % 60)]));
        }
        let records: Vec<(u32, u32, u32, &[u8])> =
            (0..300).map(|i| (i, i, 100, &FRAME_B[..(i as usize % 42)])).collect();
        let plain = pcap(true, false, 65535, 1, &records);
        let mut absurd = pcap(false, false, 65535, 1, &[(0, 0, 60, FRAME_A), (0, 0, 60, FRAME_A)]);
        absurd[24 + 16 + 60 + 8..24 + 16 + 60 + 12].copy_from_slice(&(MAX_RECORD_LEN + 1).to_le_bytes());
        let mut cases: Vec<(&str, Vec<u8>)> = vec![
            ("ng", ng.clone()),
            ("plain", plain.clone()),
            ("absurd-length", absurd),
            ("header-only", pcap(false, false, 65535, 1, &[])),
            ("cut-header", plain[..23].to_vec()),
            ("text", b"# not a capture\n".to_vec()),
            ("tiny", vec![0xd4, 0xc3]),
        ];
        // Cut anywhere in the last records: an error at the same offset.
        for back in [1, 3, 16, 17, 40] {
            cases.push(("ng-cut", ng[..ng.len() - back].to_vec()));
            cases.push(("plain-cut", plain[..plain.len() - back].to_vec()));
        }
        for (i, (what, bytes)) in cases.iter().enumerate() {
            let path = dir.path().join(format!("{i}-{what}.pcap"));
            std::fs::write(&path, bytes).unwrap();
            let (was_mapped, mapped, mapped_err) = drain_path(&path, true);
            let (read_was_mapped, read, read_err) = drain_path(&path, false);
            assert!(!read_was_mapped);
            // Headers that fail fail before there is a source to ask.
            if bytes.len() > 24 {
                assert!(was_mapped, "{what}");
            }
            assert_eq!(mapped, read, "{what}");
            assert_eq!(mapped_err, read_err, "{what}");
            if what.ends_with("-cut") {
                assert!(read_err.as_deref().unwrap().contains("ends inside a record"), "{what}: {read_err:?}");
            }
        }
        // The empty file can't be mapped and is read: the same error.
        let empty = dir.path().join("empty.pcap");
        std::fs::write(&empty, b"").unwrap();
        assert_eq!(drain_path(&empty, true), drain_path(&empty, false));
        assert!(drain_path(&empty, true).2.unwrap().contains("file too short"));
    }

    #[test]
    fn a_pipe_is_read_not_mapped() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("capture.fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `c` is a NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let bytes = pcap(false, true, 65535, 1, &[(1, 2, 60, FRAME_A), (3, 4, 42, FRAME_B)]);
        let writer = {
            let (fifo, bytes) = (fifo.clone(), bytes.clone());
            std::thread::spawn(move || std::fs::write(fifo, bytes).unwrap())
        };
        let mut src = PcapFileSource::open_mapped(&fifo, 0).unwrap();
        assert!(!src.is_mapped());
        let (frames, err) = drain(&mut src);
        writer.join().unwrap();
        assert!(err.is_none(), "{err:?}");
        assert_eq!(frames.iter().map(|f| f.ts_ns).collect::<Vec<_>>(), vec![1_000_000_002, 3_000_000_004]);
    }
}
