//! Live capture from network interfaces: one AF_PACKET socket per port with
//! a TPACKET_V3 ring mapped into memory, so frames are read where the
//! kernel wrote them, a block at a time, without a syscall per packet.
//!
//! Frames whose VLAN tag the NIC stripped (rx VLAN offload) get the tag put
//! back, so the parser sees the frame as it was on the wire. Outgoing frames
//! are ignored by default: on a multi-port setup they are frames another
//! port already delivered. On a host's own interface, where the port
//! carries both directions, they are the host's half of its conversations:
//! an interface opened with an `outgoing` port index delivers them, marked
//! with that index (the port's egress twin).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowtable_sw::LinkType;

use super::{CaptureLosses, PacketSource, RawPacket, SourceError};

const TPACKET_V3: libc::c_int = 2;
const PACKET_RX_RING: libc::c_int = 5;
const PACKET_VERSION: libc::c_int = 10;
const PACKET_STATISTICS: libc::c_int = 6;
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
const PACKET_FANOUT: libc::c_int = 18;
/// Fanout by the kernel's flow hash, which is symmetric
/// (`__skb_get_hash_symmetric`): both directions of a flow, on any port,
/// go to the same member.
const PACKET_FANOUT_HASH: u32 = 0;
/// Classic BPF `ret #k`: a filter of this alone with k = 0 takes nothing.
const BPF_RET_K: u16 = 0x06;
/// Reassemble IP fragments before the fanout hashes them, so a datagram's
/// later fragments (which carry no ports) go where its first goes.
const PACKET_FANOUT_FLAG_DEFRAG: u32 = 0x8000;
/// A fanout group has one hook for all its sockets: a socket's own
/// PACKET_IGNORE_OUTGOING does not reach it, the group's flag does (on
/// kernels that know it; older ones ignore it, see `Ring::skip_outgoing`).
const PACKET_FANOUT_FLAG_IGNORE_OUTGOING: u32 = 0x4000;
/// `sll_pkttype` of a frame this host sent.
const PACKET_OUTGOING: u8 = 4;
const TP_STATUS_KERNEL: u32 = 0;
const TP_STATUS_USER: u32 = 1;
const TP_STATUS_VLAN_VALID: u32 = 1 << 4;
const TP_STATUS_VLAN_TPID_VALID: u32 = 1 << 6;
const ETH_P_ALL: u16 = 0x0003;
const ETH_P_8021Q: u16 = 0x8100;

/// Ring geometry and behaviour of a live source.
#[derive(Debug, Clone)]
pub struct AfPacketConfig {
    /// Bytes per ring block (a power of two, multiple of the page size).
    pub block_size: u32,
    pub block_count: u32,
    /// Largest frame slot; frames beyond it are cut (snap length).
    pub frame_size: u32,
    /// How long the kernel may hold a partly filled block before handing it
    /// over, in ms: the latency bound at low packet rates.
    pub block_timeout_ms: u32,
    /// How long one wait for packets lasts before the stop flag is checked.
    pub poll_interval: Duration,
    /// Join each port's socket to fanout group `base + port index`, so
    /// several sockets (one per worker) share a port's frames by flow.
    pub fanout_base: Option<u16>,
}

impl Default for AfPacketConfig {
    fn default() -> Self {
        AfPacketConfig {
            block_size: 1 << 20,
            block_count: 16,
            frame_size: 2048,
            block_timeout_ms: 10,
            poll_interval: Duration::from_millis(50),
            fanout_base: None,
        }
    }
}

/// Kernel-side counters of one port's socket (since the last read).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RingStats {
    pub packets: u64,
    /// Frames the kernel dropped because the ring was full.
    pub drops: u64,
}

/// A view over `struct tpacket_block_desc` (its `tpacket_hdr_v1` part).
struct BlockDesc(*mut u8);

impl BlockDesc {
    fn status(&self) -> &AtomicU32 {
        // SAFETY: offset 8 of a mapped, 8-aligned block is the u32 block
        // status that the kernel and we hand back and forth.
        unsafe { &*(self.0.add(8) as *const AtomicU32) }
    }
    fn u32_at(&self, off: usize) -> u32 {
        // SAFETY: within the block header of a block we own (status USER).
        unsafe { (self.0.add(off) as *const u32).read() }
    }
    fn num_pkts(&self) -> u32 {
        self.u32_at(12)
    }
    fn offset_to_first_pkt(&self) -> u32 {
        self.u32_at(16)
    }
    fn blk_len(&self) -> u32 {
        self.u32_at(20)
    }
    /// Frames in the block so far; the kernel raises it as it fills the
    /// block, so it is read atomically even while the kernel owns the block.
    fn live_num_pkts(&self) -> u32 {
        // SAFETY: offset 12 of a mapped, 8-aligned block is the u32 num_pkts.
        unsafe { &*(self.0.add(12) as *const AtomicU32) }.load(Ordering::Acquire)
    }
    /// When the kernel opened the block: no frame in it is older (give or
    /// take the microseconds between a frame's timestamp and its copy).
    fn opened_ns(&self) -> u64 {
        // SAFETY: offsets 32 and 36 are ts_first_pkt's seconds and
        // nanoseconds, inside the block header.
        let (sec, nsec) = unsafe {
            (
                (&*(self.0.add(32) as *const AtomicU32)).load(Ordering::Relaxed),
                (&*(self.0.add(36) as *const AtomicU32)).load(Ordering::Relaxed),
            )
        };
        sec as u64 * 1_000_000_000 + nsec as u64
    }
}

/// Where one frame sits in a block, read from its `struct tpacket3_hdr`.
#[derive(Debug, Clone, Copy)]
struct FrameDesc {
    next_offset: u32,
    ts_ns: u64,
    snaplen: u32,
    len: u32,
    status: u32,
    mac: u16,
    vlan_tci: u16,
    vlan_tpid: u16,
    /// From the `sockaddr_ll` the kernel writes after the header.
    pkttype: u8,
}

impl FrameDesc {
    /// `struct tpacket3_hdr` (48 bytes), then `struct sockaddr_ll` up to
    /// its `sll_pkttype` (offset 10).
    const LEN: usize = 48 + 11;

    fn read(h: &[u8]) -> FrameDesc {
        let u32_at = |o: usize| u32::from_ne_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
        let u16_at = |o: usize| u16::from_ne_bytes([h[o], h[o + 1]]);
        FrameDesc {
            next_offset: u32_at(0),
            ts_ns: u32_at(4) as u64 * 1_000_000_000 + u32_at(8) as u64,
            snaplen: u32_at(12),
            len: u32_at(16),
            status: u32_at(20),
            mac: u16_at(24),
            vlan_tci: u32_at(32) as u16,
            vlan_tpid: u16_at(36),
            pkttype: h[48 + 10],
        }
    }
}

struct Ring {
    name: String,
    fd: OwnedFd,
    map: *mut u8,
    map_len: usize,
    block_size: usize,
    block_count: usize,
    block: usize,
    /// Whether we hold `block` (its status is USER and it isn't released).
    holding: bool,
    left_in_block: u32,
    next_pkt: usize,
    /// The next frame, read but not yet handed out (see `peek`).
    head: Option<(FrameDesc, usize)>,
    link: Option<LinkType>,
    linktype: u32,
    ingress: u8,
    /// The port index frames this host sent out of the interface are given;
    /// `None`: they are passed over here (a socket in a fanout group gets
    /// them even with PACKET_IGNORE_OUTGOING, on kernels older than the
    /// group's own flag, Debian 12's 6.1 among them).
    outgoing: Option<u8>,
}

// SAFETY: the mapping is owned by the ring and only touched through &mut.
unsafe impl Send for Ring {}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: unmapping the region mmap returned, once.
        unsafe { libc::munmap(self.map as *mut libc::c_void, self.map_len) };
    }
}

impl Ring {
    fn block_desc(&self, i: usize) -> BlockDesc {
        // SAFETY: i < block_count, so the block lies inside the mapping.
        BlockDesc(unsafe { self.map.add(i * self.block_size) })
    }

    /// The next frame's descriptor and the offset of its header in the
    /// mapping, or `None` when the kernel has handed over nothing new. The
    /// block of the previous frame is given back only here, on the call
    /// after its last frame, so that frame stays valid until then.
    fn next_frame(&mut self) -> Option<(FrameDesc, usize)> {
        loop {
            if self.holding && self.left_in_block == 0 {
                self.block_desc(self.block).status().store(TP_STATUS_KERNEL, Ordering::Release);
                self.holding = false;
                self.block = (self.block + 1) % self.block_count;
            }
            if !self.holding {
                let bd = self.block_desc(self.block);
                if bd.status().load(Ordering::Acquire) & TP_STATUS_USER == 0 {
                    return None;
                }
                self.holding = true;
                self.left_in_block = bd.num_pkts();
                self.next_pkt = bd.offset_to_first_pkt() as usize;
                if bd.blk_len() as usize > self.block_size {
                    // A block that claims more than its size is corrupt: skip it.
                    self.left_in_block = 0;
                }
                continue;
            }
            let base = self.block * self.block_size;
            if self.next_pkt + FrameDesc::LEN > self.block_size {
                self.left_in_block = 0;
                continue;
            }
            // SAFETY: the header lies inside a block we hold.
            let hdr = unsafe { std::slice::from_raw_parts(self.map.add(base + self.next_pkt), FrameDesc::LEN) };
            let f = FrameDesc::read(hdr);
            let at = base + self.next_pkt;
            self.left_in_block -= 1;
            if f.next_offset == 0 {
                self.left_in_block = 0;
            }
            self.next_pkt += f.next_offset as usize;
            if f.mac as usize + f.snaplen as usize > self.block_size - (at - base) {
                continue; // a frame reaching past its block: skip it
            }
            if self.outgoing.is_none() && f.pkttype == PACKET_OUTGOING {
                continue;
            }
            return Some((f, at));
        }
    }

    /// The next frame without consuming it: it stays the head until taken.
    fn peek(&mut self) -> Option<FrameDesc> {
        if self.head.is_none() {
            self.head = self.next_frame();
        }
        self.head.map(|(f, _)| f)
    }

    /// Whether frames older than `ts_ns` may sit where we can't read them
    /// yet: in the block the kernel is still filling. Only asked when
    /// `peek` found nothing, so `block` is that block (or one just handed
    /// over, whose frames the next `peek` will see).
    fn may_hide_older_than(&self, ts_ns: u64) -> bool {
        let bd = self.block_desc(self.block);
        if bd.status().load(Ordering::Acquire) & TP_STATUS_USER != 0 {
            return true;
        }
        bd.live_num_pkts() > 0 && bd.opened_ns() <= ts_ns
    }

    fn stats(&self) -> RingStats {
        let mut s = [0u32; 3];
        let mut len = std::mem::size_of_val(&s) as libc::socklen_t;
        // SAFETY: a valid fd and a buffer the size of tpacket_stats_v3.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                PACKET_STATISTICS,
                s.as_mut_ptr() as *mut libc::c_void,
                &mut len,
            )
        };
        if rc != 0 {
            return RingStats::default();
        }
        RingStats { packets: s[0] as u64, drops: s[1] as u64 }
    }
}

/// What `pick` found.
enum Pick {
    /// The head of this ring goes out next.
    Frame(usize),
    /// A frame is ready but must wait, until `until` at most, for older
    /// ones the kernel has not handed over yet.
    Hold {
        until: Instant,
    },
    Nothing,
}

fn wall_clock_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// One interface to read and the port indices its frames are given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    /// The port index of the frames the interface receives.
    pub ingress: u8,
    /// The port index of the frames this host sends out of it; `None`:
    /// they are not read.
    pub outgoing: Option<u8>,
}

/// Live frames from one or more interfaces; the frame's `ingress` is the
/// interface's index in the list it was opened with.
pub struct AfPacketSource {
    rings: Vec<Ring>,
    cfg: AfPacketConfig,
    next_ring: usize,
    /// Rings a held frame waits for (see `pick`), reused between calls.
    waiting_on: Vec<bool>,
    /// Frames handed out after waiting the longest a kernel block can stay
    /// open, not knowing whether an older frame was still hidden.
    released_unmerged: u64,
    /// Kernel drops summed over the reads of `stats` (which reset them).
    dropped: u64,
    stop: Arc<AtomicBool>,
    /// Where a frame is rebuilt when its VLAN tag must be put back.
    scratch: Vec<u8>,
    pollfds: Vec<libc::pollfd>,
}

fn os_err(what: &str, name: &str) -> SourceError {
    SourceError::Open { path: name.to_string(), message: format!("{what}: {}", std::io::Error::last_os_error()) }
}

fn setsockopt<T>(fd: &OwnedFd, level: libc::c_int, opt: libc::c_int, val: &T) -> bool {
    // SAFETY: a valid fd and a value of the size passed.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            val as *const T as *const libc::c_void,
            size_of::<T>() as libc::socklen_t,
        ) == 0
    }
}

/// The framing of an interface, from its ARPHRD type.
fn link_of(name: &str) -> (Option<LinkType>, u32) {
    let ty: u32 = std::fs::read_to_string(format!("/sys/class/net/{name}/type"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1);
    match ty {
        // Ethernet, and loopback, which carries Ethernet headers.
        1 | 772 => (Some(LinkType::Ethernet), 1),
        // ARPHRD_NONE (tun) and raw IP devices: bare IP packets.
        65534 | 519 => (Some(LinkType::RawIp), 101),
        other => (None, other),
    }
}

impl AfPacketSource {
    /// Opens a ring on each named interface (port i = `ifaces[i]`), frames
    /// the host sends left out.
    pub fn open(ifaces: &[String], cfg: AfPacketConfig) -> Result<AfPacketSource, SourceError> {
        let ports: Vec<Interface> = ifaces
            .iter()
            .enumerate()
            .map(|(i, n)| Interface { name: n.clone(), ingress: i as u8, outgoing: None })
            .collect();
        Self::open_ports(&ports, cfg)
    }

    /// Opens a ring on each interface, its frames marked with the port
    /// index given for their direction.
    pub fn open_ports(ports: &[Interface], cfg: AfPacketConfig) -> Result<AfPacketSource, SourceError> {
        if ports.is_empty() {
            return Err(SourceError::Open { path: "af_packet".into(), message: "no interface given".into() });
        }
        if ports.len() > 256 {
            return Err(SourceError::Open { path: "af_packet".into(), message: "more than 256 interfaces".into() });
        }
        let page = 4096;
        if cfg.block_size < page
            || !cfg.block_size.is_power_of_two()
            || cfg.frame_size < 128
            || cfg.block_size % cfg.frame_size != 0
        {
            return Err(SourceError::Open {
                path: "af_packet".into(),
                message: format!(
                    "bad ring geometry: block_size {} (power of two >= {page}), frame_size {} (>= 128, divides the block)",
                    cfg.block_size, cfg.frame_size
                ),
            });
        }
        let mut rings = Vec::with_capacity(ports.len());
        for (i, port) in ports.iter().enumerate() {
            let name = &port.name;
            let ring = Self::open_ring(port, &cfg)?;
            if let Some(base) = cfg.fanout_base {
                // Members of a group are numbered in the order they join:
                // the caller joins every port's group in the same worker
                // order, so a flow's hash picks the same worker on each port.
                let mut kind = PACKET_FANOUT_HASH | PACKET_FANOUT_FLAG_DEFRAG;
                if port.outgoing.is_none() {
                    kind |= PACKET_FANOUT_FLAG_IGNORE_OUTGOING;
                }
                let arg = (base.wrapping_add(i as u16) as u32) | kind << 16;
                if !setsockopt(&ring.fd, libc::SOL_PACKET, PACKET_FANOUT, &arg) {
                    return Err(os_err("PACKET_FANOUT", name));
                }
            }
            rings.push(ring);
        }
        let pollfds = rings
            .iter()
            .map(|r| libc::pollfd { fd: r.fd.as_raw_fd(), events: libc::POLLIN | libc::POLLERR, revents: 0 })
            .collect();
        Ok(AfPacketSource {
            rings,
            scratch: Vec::with_capacity(cfg.frame_size as usize + 4),
            cfg,
            next_ring: 0,
            waiting_on: vec![false; ports.len()],
            released_unmerged: 0,
            dropped: 0,
            stop: Arc::new(AtomicBool::new(false)),
            pollfds,
        })
    }

    fn open_ring(port: &Interface, cfg: &AfPacketConfig) -> Result<Ring, SourceError> {
        let (name, ingress) = (port.name.as_str(), port.ingress);
        let c = std::ffi::CString::new(name)
            .map_err(|_| SourceError::Open { path: name.into(), message: "bad interface name".into() })?;
        // SAFETY: a NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
        if ifindex == 0 {
            return Err(SourceError::Open { path: name.into(), message: "no such interface".into() });
        }
        // Protocol 0 until bound: the socket receives nothing from other
        // interfaces while the ring is being set up.
        // SAFETY: plain socket creation; ownership goes to OwnedFd.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(os_err("socket(AF_PACKET)", name));
        }
        // SAFETY: raw was just created and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        if !setsockopt(&fd, libc::SOL_PACKET, PACKET_VERSION, &TPACKET_V3) {
            return Err(os_err("PACKET_VERSION v3", name));
        }
        // struct tpacket_req3: block_size, block_nr, frame_size, frame_nr,
        // retire_blk_tov, sizeof_priv, feature_req_word.
        let frames_per_block = cfg.block_size / cfg.frame_size;
        let req: [u32; 7] = [
            cfg.block_size,
            cfg.block_count,
            cfg.frame_size,
            frames_per_block * cfg.block_count,
            cfg.block_timeout_ms,
            0,
            0,
        ];
        if !setsockopt(&fd, libc::SOL_PACKET, PACKET_RX_RING, &req) {
            return Err(os_err("PACKET_RX_RING", name));
        }
        if port.outgoing.is_none() && !setsockopt(&fd, libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, &1i32) {
            return Err(os_err("PACKET_IGNORE_OUTGOING", name));
        }
        let map_len = cfg.block_size as usize * cfg.block_count as usize;
        // SAFETY: mapping the ring the kernel just allocated for this fd.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(os_err("mmap of the ring", name));
        }
        let (link, linktype) = link_of(name);
        let ring = Ring {
            name: name.to_string(),
            fd,
            map: map as *mut u8,
            map_len,
            block_size: cfg.block_size as usize,
            block_count: cfg.block_count as usize,
            block: 0,
            holding: false,
            left_in_block: 0,
            next_pkt: 0,
            head: None,
            link,
            linktype,
            ingress,
            outgoing: port.outgoing,
        };
        if cfg.fanout_base.is_some() {
            // A fanout member takes nothing until every worker has joined
            // (`start`): bound before its group, it would see every frame
            // of the port, and a group short of members hashes the flows
            // of the ones still to come onto those already in it.
            let drop_all = [libc::sock_filter { code: BPF_RET_K, jt: 0, jf: 0, k: 0 }];
            let prog = libc::sock_fprog { len: 1, filter: drop_all.as_ptr() as *mut libc::sock_filter };
            if !setsockopt(&ring.fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &prog) {
                return Err(os_err("SO_ATTACH_FILTER", name));
            }
        }
        // SAFETY: sockaddr_ll is plain data; zero is a valid start.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ETH_P_ALL.to_be();
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: a valid fd and a sockaddr_ll of the size passed.
        let rc = unsafe {
            libc::bind(
                ring.fd.as_raw_fd(),
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(os_err("bind", name));
        }
        Ok(ring)
    }

    /// A flag that makes `next_packet` return `None` (end of stream) within
    /// one poll interval once set; for signal handlers and other threads.
    pub fn stop_handle(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.stop)
    }

    /// Kernel counters per port, in port order, since the last read.
    pub fn stats(&mut self) -> Vec<RingStats> {
        let stats: Vec<RingStats> = self.rings.iter().map(Ring::stats).collect();
        self.dropped += stats.iter().map(|s| s.drops).sum::<u64>();
        stats
    }

    pub fn interfaces(&self) -> impl Iterator<Item = &str> {
        self.rings.iter().map(|r| r.name.as_str())
    }

    /// The next frame from any port, waiting at most `timeout`: `Ok(None)`
    /// when none came in time (or the stop flag is set). Frames of all
    /// ports come out in timestamp order (see `pick`).
    pub fn next_packet_within(&mut self, timeout: Duration) -> Result<Option<RawPacket<'_>>, SourceError> {
        Ok(self.wait_frame(timeout)?.map(|(i, f, at)| self.frame(i, f, at)))
    }

    /// Finds the next frame (port, descriptor, offset) without borrowing it.
    fn wait_frame(&mut self, timeout: Duration) -> Result<Option<(usize, FrameDesc, usize)>, SourceError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Ok(None);
            }
            let mut wake = deadline;
            let holding = match self.pick() {
                Pick::Frame(i) => {
                    let (f, at) = self.rings[i].head.take().expect("picked ring has a head");
                    self.next_ring = (i + 1) % self.rings.len();
                    return Ok(Some((i, f, at)));
                }
                Pick::Hold { until } => {
                    wake = wake.min(until);
                    true
                }
                Pick::Nothing => false,
            };
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let wait = wake.saturating_duration_since(now).min(self.cfg.poll_interval);
            for (k, p) in self.pollfds.iter_mut().enumerate() {
                p.revents = 0;
                // A ring with frames ready would wake poll at once: while a
                // frame is held, wait only for the rings it waits on.
                let watch = !holding || self.waiting_on[k];
                p.fd = if watch { self.rings[k].fd.as_raw_fd() } else { -1 };
            }
            // SAFETY: pollfds is a valid array of the length passed.
            let rc = unsafe {
                libc::poll(
                    self.pollfds.as_mut_ptr(),
                    self.pollfds.len() as libc::nfds_t,
                    wait.as_millis().max(1) as i32,
                )
            };
            if rc < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(SourceError::Io { what: "af_packet poll".into(), message: e.to_string() });
                }
            }
            for (p, r) in self.pollfds.iter().zip(&self.rings) {
                if p.revents & libc::POLLERR != 0 {
                    // SO_ERROR clears a pending error (e.g. the interface went down).
                    let mut err: i32 = 0;
                    let mut len = size_of::<i32>() as libc::socklen_t;
                    // SAFETY: a valid fd and an int-sized out buffer.
                    unsafe {
                        libc::getsockopt(
                            r.fd.as_raw_fd(),
                            libc::SOL_SOCKET,
                            libc::SO_ERROR,
                            &mut err as *mut i32 as *mut libc::c_void,
                            &mut len,
                        )
                    };
                    if err == libc::ENETDOWN || err == libc::ENXIO || err == libc::ENODEV {
                        return Err(SourceError::Io {
                            what: r.name.clone(),
                            message: std::io::Error::from_raw_os_error(err).to_string(),
                        });
                    }
                }
            }
        }
    }

    /// The oldest frame any port has ready, so that the ports' frames come
    /// out in capture order: a reply is never handed out before the request
    /// that another port captured earlier. The kernel hands a ring over a
    /// block at a time, so a port may hold older frames in a block still
    /// being filled; the frame then waits for that block (the ports it
    /// waits on are marked in `waiting_on`), at most as long as a block can
    /// stay open, after which it goes out anyway.
    fn pick(&mut self) -> Pick {
        let n = self.rings.len();
        let mut oldest: Option<(usize, u64)> = None;
        for k in 0..n {
            let i = (self.next_ring + k) % n;
            if let Some(f) = self.rings[i].peek() {
                if oldest.is_none_or(|(_, t)| f.ts_ns < t) {
                    oldest = Some((i, f.ts_ns));
                }
            }
        }
        let Some((i, ts)) = oldest else { return Pick::Nothing };
        let mut waits = false;
        for (j, r) in self.rings.iter().enumerate() {
            let w = j != i && r.head.is_none() && r.may_hide_older_than(ts);
            self.waiting_on[j] = w;
            waits |= w;
        }
        if !waits {
            return Pick::Frame(i);
        }
        let age_ns = wall_clock_ns().saturating_sub(ts);
        let limit_ns = self.hold_limit().as_nanos() as u64;
        if age_ns >= limit_ns {
            self.released_unmerged += 1;
            return Pick::Frame(i);
        }
        Pick::Hold { until: Instant::now() + Duration::from_nanos(limit_ns - age_ns) }
    }

    /// The longest a frame waits for older ones: a kernel block is handed
    /// over within about two block timeouts (its timer is re-armed when a
    /// block opens, and runs on jiffies), plus slack for a loaded machine.
    fn hold_limit(&self) -> Duration {
        Duration::from_millis(3 * self.cfg.block_timeout_ms as u64 + 20)
    }

    /// Frames handed out without knowing that no older one was hidden (the
    /// hold limit passed); each may be out of order with another port's.
    pub fn released_unmerged(&self) -> u64 {
        self.released_unmerged
    }

    fn frame(&mut self, i: usize, f: FrameDesc, at: usize) -> RawPacket<'_> {
        let r = &self.rings[i];
        // SAFETY: next_frame checked the frame lies within its block, which
        // we hold until the next call.
        let data = unsafe { std::slice::from_raw_parts(r.map.add(at + f.mac as usize), f.snaplen as usize) };
        let (link, linktype) = (r.link, r.linktype);
        // next_frame passed over outgoing frames of a ring without an index for them.
        let ingress = if f.pkttype == PACKET_OUTGOING { r.outgoing.unwrap_or(r.ingress) } else { r.ingress };
        let stripped = f.status & TP_STATUS_VLAN_VALID != 0 && link == Some(LinkType::Ethernet) && data.len() >= 12;
        if !stripped {
            return RawPacket { ts_ns: f.ts_ns, data, wire_len: f.len, link, linktype, ingress, mark: None };
        }
        let tpid =
            if f.status & TP_STATUS_VLAN_TPID_VALID != 0 && f.vlan_tpid != 0 { f.vlan_tpid } else { ETH_P_8021Q };
        self.scratch.clear();
        self.scratch.extend_from_slice(&data[..12]);
        self.scratch.extend_from_slice(&tpid.to_be_bytes());
        self.scratch.extend_from_slice(&f.vlan_tci.to_be_bytes());
        self.scratch.extend_from_slice(&data[12..]);
        RawPacket { ts_ns: f.ts_ns, data: &self.scratch, wire_len: f.len + 4, link, linktype, ingress, mark: None }
    }
}

impl PacketSource for AfPacketSource {
    fn is_live(&self) -> bool {
        true
    }

    /// Lifts the filter a fanout member was opened with: frames of its
    /// share of the flows come in from now on.
    fn start(&mut self) -> Result<(), SourceError> {
        if self.cfg.fanout_base.is_none() {
            return Ok(());
        }
        for ring in &self.rings {
            if !setsockopt(&ring.fd, libc::SOL_SOCKET, libc::SO_DETACH_FILTER, &0u32) {
                return Err(os_err("SO_DETACH_FILTER", &ring.name));
            }
        }
        Ok(())
    }

    fn poll_packet(&mut self) -> Result<Option<RawPacket<'_>>, SourceError> {
        if self.stop.load(Ordering::Relaxed) {
            return Ok(None);
        }
        self.next_packet_within(Duration::ZERO)
    }

    fn capture_losses(&mut self) -> Option<CaptureLosses> {
        self.stats();
        Some(CaptureLosses { dropped: self.dropped, unordered: self.released_unmerged })
    }

    /// Blocks until a frame arrives; `None` only once the stop flag is set.
    fn next_packet(&mut self) -> Result<Option<RawPacket<'_>>, SourceError> {
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Ok(None);
            }
            let interval = self.cfg.poll_interval;
            if let Some((i, f, at)) = self.wait_frame(interval)? {
                return Ok(Some(self.frame(i, f, at)));
            }
        }
    }
}
