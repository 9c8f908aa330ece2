//! Where packets come from: the [`PacketSource`] trait every source of
//! flowtable implements (capture files here; live interfaces, DPDK ports and
//! the synthetic generator in the main crate) and the reader of pcap and
//! pcapng files. A crate of its own so that what reads outside bytes can be
//! fuzzed and reused without the daemon around it.

use flowtable_sw::parse::parse_packet;
use flowtable_sw::{LinkType, PacketInfo, PortMap, SkipReason};

mod mapped;
pub mod pcap;

/// One frame as a source delivers it, borrowed until the next call.
#[derive(Debug, Clone, Copy)]
pub struct RawPacket<'a> {
    /// Capture or arrival time, ns since the Unix epoch.
    pub ts_ns: u64,
    /// The captured bytes (possibly cut at the snap length).
    pub data: &'a [u8],
    /// Length on the wire.
    pub wire_len: u32,
    /// The framing, `None` when the parser doesn't know it: the caller
    /// counts such frames as `SkipReason::UnsupportedLinkType`.
    pub link: Option<LinkType>,
    /// The capture's LINKTYPE_ value, known or not (for reports).
    pub linktype: u32,
    /// Index of the port the frame came in on.
    pub ingress: u8,
    /// The MARK id a NIC rule put on the frame (DPDK), `None` elsewhere.
    pub mark: Option<u32>,
}

impl RawPacket<'_> {
    /// Parses the frame, its flow keyed by the zone `ports` gives its
    /// ingress port; a frame of an unknown link type is skipped as
    /// `UnsupportedLinkType`.
    #[inline]
    pub fn parse(&self, ports: &PortMap) -> Result<PacketInfo, SkipReason> {
        match self.link {
            Some(link) => parse_packet(link, self.data, self.wire_len, ports.ingress(self.ingress)),
            None => Err(SkipReason::UnsupportedLinkType),
        }
    }
}

/// Where a source failed: which file or interface, at what offset.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{path}: {message}")]
    Open { path: String, message: String },
    #[error("{path}: at byte offset {offset}: {message}")]
    Corrupt { path: String, offset: u64, message: String },
    #[error("{path}: unsupported link type {linktype}")]
    LinkType { path: String, linktype: u32 },
    #[error("{what}: {message}")]
    Io { what: String, message: String },
}

/// A stream of frames. A lending interface: each frame borrows the
/// source's buffer, so reading costs no allocation per packet.
pub trait PacketSource {
    fn next_packet(&mut self) -> Result<Option<RawPacket<'_>>, SourceError>;

    /// Whether the source captures live traffic: it doesn't end on its own,
    /// and a packet loop that must not block reads it with `poll_packet`.
    fn is_live(&self) -> bool {
        false
    }

    /// Begins taking frames, for a live source opened as one of several
    /// that share its ports (a worker's fanout member, which takes nothing
    /// until every worker has joined); the others take them from opening.
    fn start(&mut self) -> Result<(), SourceError> {
        Ok(())
    }

    /// A live source's next frame if one is ready now, `Ok(None)` if none
    /// is (not the end of the stream). Other sources: `next_packet`.
    fn poll_packet(&mut self) -> Result<Option<RawPacket<'_>>, SourceError> {
        self.next_packet()
    }

    /// Frames so far whose recorded length on the wire was implausible and
    /// was clamped to the captured length (capture files: see
    /// [`pcap::wire_len`]); 0 for sources that measure lengths themselves.
    fn clamped_wire_lengths(&self) -> u64 {
        0
    }

    /// What a live capture lost or could not order, since it opened;
    /// `None` for sources that lose nothing (files, the generator).
    fn capture_losses(&mut self) -> Option<CaptureLosses> {
        None
    }
}

/// A live capture's losses, cumulative.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CaptureLosses {
    /// Frames the kernel dropped because the capture ring was full.
    pub dropped: u64,
    /// Frames handed out without knowing whether another port still held
    /// an older one (see the AF_PACKET source's merge).
    pub unordered: u64,
}

/// An I/O error in the operator's words where the system's are the usual
/// slips ("no such file", "permission denied"), else the system's own.
pub fn io_error(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}
