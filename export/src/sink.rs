//! The fan-out of ended flows' records to sinks. Each sink has its own
//! bounded queue and thread: handing a batch to the sinks never blocks the
//! caller (the daemon's main thread), and a sink that is slow, or whose
//! collector is gone, loses only its own records, counted.
//!
//! Counting, per sink, so no record is lost without a trace: every record
//! offered is either refused at the queue (`dropped_queue_full`), or taken
//! (`records`), and every record taken is in the end `exported` (handed to
//! the socket in a message), `dropped_unsent` (its message could not be
//! sent, or TCP was down), `dropped_unencodable` (its addresses didn't
//! parse), or still `pending` in the queue. Over UDP "exported" is as far
//! as an exporter can know: a datagram the collector never reads is lost
//! silently past the socket (a connected socket does learn of a closed
//! port, from the ICMP error the next send returns).
//!
//! Over UDP, full messages of one size wait in a train and go to the kernel
//! in one send that it cuts into one datagram per message (UDP GSO,
//! `UDP_SEGMENT`, Linux 4.18): the kernel's path per datagram, not the
//! encoding, is most of an exporter's cost (measured in
//! docs/PERFORMANCE.md), and one send of up to 64 datagrams costs about a
//! fifth of 64 sends. A collector still gets one message per datagram, as
//! RFC 7011 section 10.3.3 asks. Where the path can't cut them (a device
//! without checksum offload, an MTU in config larger than the path's) the
//! kernel refuses the first train and the sink sends one datagram a send
//! from then on.
//!
//! `QueueMode::Wait` is for `flowtable replay --ipfix`: a full queue waits
//! instead of dropping, so a capture's every record is exported.

use crate::ipfix::{Encoder, ExportFacts, MessageBuilder, MESSAGE_HEADER_LEN, MIN_MESSAGE_LEN};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use flowtable_offload::FlowRecord;
use serde::Serialize;
use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A batch of records, shared by every sink it goes to.
pub type Batch = Arc<Vec<FlowRecord>>;

/// How long records may wait in a half-filled message.
pub const FLUSH_AFTER: Duration = Duration::from_millis(500);
/// Longest a TCP connect or write may take before it counts as failed.
pub const TCP_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest wait between attempts to reach a TCP collector.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// While a sink keeps failing, how often the failure is logged again.
const REPORT_EVERY: Duration = Duration::from_secs(60);
/// Most datagrams the kernel cuts one UDP send into (`UDP_MAX_SEGMENTS`).
const GSO_MAX_SEGMENTS: usize = 64;
/// Most bytes of one UDP send over IPv4.
const UDP_MAX_PAYLOAD: usize = 65_507;
/// Batches a sink's queue holds (besides its bound in records).
const QUEUE_BATCHES: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

/// One IPFIX collector to export to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpfixConfig {
    pub address: SocketAddr,
    pub transport: Transport,
    pub observation_domain: u32,
    /// Over UDP, templates go again this often (and in the first message).
    pub template_refresh: Duration,
    /// The path MTU to the collector: a message is at most this less the
    /// IP and UDP (or TCP) headers.
    pub mtu: usize,
    /// Records the queue holds before it drops.
    pub queue_records: usize,
    /// The enterprise number of flowtable's own elements.
    pub enterprise_number: u32,
}

impl IpfixConfig {
    /// The sink's name in statistics and logs.
    pub fn name(&self) -> String {
        format!("ipfix {}/{}", self.address, self.transport.as_str())
    }

    /// Bytes of one message: the MTU less the headers below IPFIX.
    pub fn message_len(&self) -> usize {
        let ip = if self.address.is_ipv4() { 20 } else { 40 };
        let l4 = match self.transport {
            Transport::Udp => 8,
            Transport::Tcp => 20,
        };
        self.mtu.saturating_sub(ip + l4).clamp(MIN_MESSAGE_LEN, u16::MAX as usize)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueMode {
    /// A full queue drops the batch (counted): the daemon.
    Drop,
    /// A full queue waits: a replay, which must export every record.
    Wait,
}

/// A sink's counts, changed together under one lock (once a batch or a
/// message, never a packet), so a snapshot always adds up.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    records: u64,
    /// Taken and neither exported nor dropped: queued, or in the message
    /// being filled.
    pending: u64,
    exported: u64,
    dropped_queue_full: u64,
    dropped_unsent: u64,
    dropped_unencodable: u64,
    messages: u64,
    template_sets: u64,
    errors: u64,
}

#[derive(Default)]
struct Counters {
    counts: Mutex<Counts>,
    connected: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl Counters {
    fn update(&self, f: impl FnOnce(&mut Counts)) {
        if let Ok(mut c) = self.counts.lock() {
            f(&mut c);
        }
    }
    fn get(&self) -> Counts {
        self.counts.lock().map(|c| *c).unwrap_or_default()
    }
    /// `records` pending went out in `messages` messages.
    fn sent(&self, records: u64, messages: u64) {
        self.update(|c| {
            c.pending -= records;
            c.exported += records;
            c.messages += messages;
        });
    }
    /// `records` pending could not be sent, and are dropped.
    fn unsent(&self, records: u64) {
        self.update(|c| {
            c.pending -= records;
            c.dropped_unsent += records;
        });
    }
}

/// What a sink did, for `flowtable stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SinkStatus {
    pub name: String,
    pub kind: &'static str,
    pub address: String,
    pub transport: Transport,
    /// Records taken into the queue.
    pub records: u64,
    /// Records in messages handed to the socket.
    pub exported: u64,
    /// Records lost, all causes: the sum of the three below.
    pub dropped: u64,
    pub dropped_queue_full: u64,
    pub dropped_unsent: u64,
    pub dropped_unencodable: u64,
    /// Records taken, not yet exported or dropped.
    pub pending: u64,
    pub messages: u64,
    pub template_sets: u64,
    /// Failed sends and connects.
    pub errors: u64,
    /// TCP: whether the collector is connected now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connected: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

struct Sink {
    config: IpfixConfig,
    tx: Option<Sender<Batch>>,
    counters: Arc<Counters>,
    thread: Option<JoinHandle<()>>,
}

/// The sinks records go to. Dropping it (or `close`) sends what is queued
/// and stops their threads.
pub struct Sinks {
    sinks: Vec<Sink>,
    mode: QueueMode,
}

impl Sinks {
    /// Starts one thread per IPFIX collector. Fails only if a thread or
    /// socket can't be made at all; an absent collector is no error (its
    /// records are counted dropped until it is there).
    pub fn start(ipfix: &[IpfixConfig], mode: QueueMode) -> std::io::Result<Sinks> {
        let mut sinks = Vec::new();
        for cfg in ipfix {
            let counters = Arc::new(Counters::default());
            let (tx, rx) = crossbeam_channel::bounded(if mode == QueueMode::Wait { 16 } else { QUEUE_BATCHES });
            let mut exporter = Exporter::new(cfg.clone(), counters.clone())?;
            let thread =
                std::thread::Builder::new().name(format!("export-{}", sinks.len())).spawn(move || exporter.run(rx))?;
            sinks.push(Sink { config: cfg.clone(), tx: Some(tx), counters, thread: Some(thread) });
        }
        Ok(Sinks { sinks, mode })
    }

    /// No sinks at all.
    pub fn none() -> Sinks {
        Sinks { sinks: Vec::new(), mode: QueueMode::Drop }
    }

    pub fn is_empty(&self) -> bool {
        self.sinks.is_empty()
    }

    /// Hands a batch to every sink. Never blocks in `QueueMode::Drop`: a
    /// sink whose queue is full drops the batch and counts it.
    pub fn send(&self, batch: &Batch) {
        let n = batch.len() as u64;
        if n == 0 {
            return;
        }
        for s in &self.sinks {
            let Some(tx) = &s.tx else { continue };
            let c = &s.counters;
            if self.mode == QueueMode::Drop && c.get().pending + n > s.config.queue_records as u64 {
                c.update(|c| c.dropped_queue_full += n);
                continue;
            }
            // Counted taken before the sink thread can see them.
            c.update(|c| {
                c.records += n;
                c.pending += n;
            });
            let sent = match self.mode {
                QueueMode::Drop => match tx.try_send(batch.clone()) {
                    Ok(()) => true,
                    Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
                },
                QueueMode::Wait => tx.send(batch.clone()).is_ok(),
            };
            if !sent {
                c.update(|c| {
                    c.records -= n;
                    c.pending -= n;
                    c.dropped_queue_full += n;
                });
            }
        }
    }

    pub fn status(&self) -> Vec<SinkStatus> {
        self.sinks.iter().map(|s| status(&s.config, &s.counters)).collect()
    }

    /// Sends what is queued, stops the threads and returns what they did.
    pub fn close(mut self) -> Vec<SinkStatus> {
        self.stop();
        self.status()
    }

    fn stop(&mut self) {
        for s in &mut self.sinks {
            s.tx.take();
        }
        for s in &mut self.sinks {
            if let Some(t) = s.thread.take() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Sinks {
    fn drop(&mut self) {
        self.stop();
    }
}

fn status(cfg: &IpfixConfig, counters: &Counters) -> SinkStatus {
    let c = counters.get();
    let (full, unsent, bad) = (c.dropped_queue_full, c.dropped_unsent, c.dropped_unencodable);
    SinkStatus {
        name: cfg.name(),
        kind: "ipfix",
        address: cfg.address.to_string(),
        transport: cfg.transport,
        records: c.records,
        exported: c.exported,
        dropped: full + unsent + bad,
        dropped_queue_full: full,
        dropped_unsent: unsent,
        dropped_unencodable: bad,
        pending: c.pending,
        messages: c.messages,
        template_sets: c.template_sets,
        errors: c.errors,
        connected: (cfg.transport == Transport::Tcp).then(|| counters.connected.load(Relaxed)),
        last_error: counters.last_error.lock().ok().and_then(|e| e.clone()),
    }
}

enum Socket {
    Udp(UdpSocket),
    Tcp(Option<TcpStream>),
}

/// A sink's thread: records into messages, messages onto the socket.
struct Exporter {
    cfg: IpfixConfig,
    c: Arc<Counters>,
    encoder: Encoder,
    msg: MessageBuilder,
    socket: Socket,
    /// Data records sent in this stream (RFC 7011's sequence number).
    sequence: u32,
    /// When templates last went (None: due in the next message).
    templates_at: Option<Instant>,
    /// When the first record of the message being filled went in.
    filling_since: Option<Instant>,
    next_connect: Instant,
    backoff: Duration,
    /// When the current run of failures was last logged.
    reported_at: Option<Instant>,
    /// UDP messages waiting to go in one segmented send; `None` over TCP,
    /// where the MTU allows no two messages a send, or once the kernel has
    /// refused to cut a train.
    train: Option<Train>,
}

/// Finished messages of one length (but the last, which may be shorter and
/// ends the train) back to back, for one send the kernel cuts into a
/// datagram each.
#[derive(Default)]
struct Train {
    buf: Vec<u8>,
    /// Data records of each message, in order.
    records: Vec<u32>,
    templates: bool,
    /// The sequence number of its first message.
    first_sequence: u32,
    /// When its first message went in.
    since: Option<Instant>,
}

impl Train {
    fn records(&self) -> u64 {
        self.records.iter().map(|&n| u64::from(n)).sum()
    }
}

/// Messages of `segment` bytes one train may carry.
fn train_len(segment: usize) -> usize {
    GSO_MAX_SEGMENTS.min(UDP_MAX_PAYLOAD / segment.max(1))
}

/// Sends `buf` in one `sendmsg` that the kernel cuts into datagrams of
/// `segment` bytes (the last one may be shorter). std's `UdpSocket` has no
/// way to pass `UDP_SEGMENT`, hence libc.
fn send_segmented(socket: &UdpSocket, buf: &[u8], segment: u16) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // Room for one control message holding a u16, aligned as a cmsghdr.
    #[repr(C, align(8))]
    struct Control([u8; 32]);
    let mut control = Control([0; 32]);
    let mut iov = libc::iovec { iov_base: buf.as_ptr() as *mut libc::c_void, iov_len: buf.len() };
    // SAFETY: msghdr is plain data; all-zero is a valid empty one.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE only computes a length.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) } as usize;
    debug_assert!(msg.msg_controllen <= control.0.len());
    // SAFETY: msg_control points at `control`, aligned and large enough for
    // one cmsghdr and a u16 (CMSG_SPACE above), so CMSG_FIRSTHDR is that
    // buffer's start and CMSG_DATA lies within it; the data is written
    // unaligned as the kernel reads it.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_UDP;
        (*cmsg).cmsg_type = libc::UDP_SEGMENT;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), segment);
    }
    // SAFETY: msg, its iovec and its control buffer outlive the call; the
    // iovec covers `buf`, which the kernel only reads.
    let sent = unsafe { libc::sendmsg(socket.as_raw_fd(), &msg, 0) };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if sent as usize != buf.len() {
        return Err(std::io::Error::other(format!("the kernel took {sent} of {} bytes", buf.len())));
    }
    Ok(())
}

/// Whether the kernel knows `UDP_SEGMENT` at all (Linux 4.18 and later).
/// One before it would ignore the control message and send a whole train
/// as one datagram, so ask first.
fn kernel_cuts_datagrams(socket: &UdpSocket) -> bool {
    use std::os::fd::AsRawFd;
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `value`, an int,
    // and the new length into `len`.
    let got = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    got == 0
}

/// The kernel can't cut datagrams on this path (rather than: the send
/// failed).
fn segmentation_refused(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EIO | libc::EINVAL | libc::ENOPROTOOPT | libc::EOPNOTSUPP))
}

impl Exporter {
    fn new(cfg: IpfixConfig, c: Arc<Counters>) -> std::io::Result<Exporter> {
        let socket = match cfg.transport {
            Transport::Udp => {
                let local: SocketAddr =
                    if cfg.address.is_ipv4() { "0.0.0.0:0".parse() } else { "[::]:0".parse() }.expect("literal");
                let s = UdpSocket::bind(local)?;
                s.connect(cfg.address)?;
                Socket::Udp(s)
            }
            Transport::Tcp => Socket::Tcp(None),
        };
        let msg = MessageBuilder::new(cfg.message_len());
        let cuts = match &socket {
            Socket::Udp(s) => kernel_cuts_datagrams(s),
            Socket::Tcp(_) => false,
        };
        let train = (cuts && train_len(msg.max_len()) >= 2)
            .then(|| Train { buf: Vec::with_capacity(train_len(msg.max_len()) * msg.max_len()), ..Train::default() });
        Ok(Exporter {
            encoder: Encoder::new(cfg.enterprise_number),
            msg,
            train,
            cfg,
            c,
            socket,
            sequence: 0,
            templates_at: None,
            filling_since: None,
            next_connect: Instant::now(),
            backoff: Duration::from_millis(250),
            reported_at: None,
        })
    }

    fn run(&mut self, rx: Receiver<Batch>) {
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(batch) => {
                    self.take(&batch);
                    // Whatever else is queued goes in the same messages.
                    while let Ok(b) = rx.try_recv() {
                        self.take(&b);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.send();
                    self.send_train();
                    return;
                }
            }
            if self.filling_since.is_some_and(|t| t.elapsed() >= FLUSH_AFTER) {
                self.send();
            }
            if self.train.as_ref().and_then(|t| t.since).is_some_and(|t| t.elapsed() >= FLUSH_AFTER) {
                self.send_train();
            }
            self.refresh_templates();
        }
    }

    fn take(&mut self, batch: &[FlowRecord]) {
        for r in batch {
            self.add(r);
        }
    }

    /// Over UDP, templates on their period even while no record comes, so
    /// a collector started late learns them.
    fn refresh_templates(&mut self) {
        if matches!(self.socket, Socket::Udp(_))
            && self.msg.is_empty()
            && self.templates_at.is_some_and(|t| t.elapsed() >= self.cfg.template_refresh)
        {
            self.templates_at = None;
            self.start_message();
            self.send();
        }
    }

    fn connected(&mut self) -> bool {
        let Socket::Tcp(stream) = &mut self.socket else { return true };
        if stream.is_some() {
            return true;
        }
        if Instant::now() < self.next_connect {
            return false;
        }
        match TcpStream::connect_timeout(&self.cfg.address, TCP_TIMEOUT) {
            Ok(s) => {
                let _ = s.set_write_timeout(Some(TCP_TIMEOUT));
                let _ = s.set_nodelay(true);
                *stream = Some(s);
                // A new connection is a new stream: its sequence starts
                // over and it needs the templates.
                self.sequence = 0;
                self.templates_at = None;
                self.backoff = Duration::from_millis(250);
                self.c.connected.store(true, Relaxed);
                self.recovered();
                true
            }
            Err(e) => {
                self.next_connect = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                self.failed(format!("connecting to {}: {e}", self.cfg.address));
                false
            }
        }
    }

    /// Templates first in a message when they are due.
    fn start_message(&mut self) {
        let due = match self.templates_at {
            None => true,
            Some(t) => matches!(self.socket, Socket::Udp(_)) && t.elapsed() >= self.cfg.template_refresh,
        };
        if due && self.msg.is_empty() && self.msg.add_templates(&self.encoder).is_ok() {
            self.templates_at = Some(Instant::now());
            self.c.update(|c| c.template_sets += 1);
        }
    }

    fn add(&mut self, r: &FlowRecord) {
        let facts = match ExportFacts::of(r) {
            Ok(f) => f,
            Err(e) => {
                self.c.update(|c| {
                    c.pending -= 1;
                    c.dropped_unencodable += 1;
                });
                self.failed(e.to_string());
                return;
            }
        };
        if self.msg.is_empty() && !self.connected() {
            self.c.unsent(1);
            return;
        }
        if self.msg.is_empty() {
            self.start_message();
        }
        if self.msg.add_record(&self.encoder, &facts).is_err() {
            self.send();
            if !self.connected() {
                self.c.unsent(1);
                return;
            }
            self.start_message();
            if self.msg.add_record(&self.encoder, &facts).is_err() {
                // Can't happen for MTUs config allows (texts are capped).
                self.c.update(|c| {
                    c.pending -= 1;
                    c.dropped_unencodable += 1;
                });
                return;
            }
        }
        self.filling_since.get_or_insert_with(Instant::now);
    }

    /// Sends the message being filled, if any.
    fn send(&mut self) {
        let filling_since = self.filling_since.take();
        if self.msg.is_empty() || self.msg.len() <= MESSAGE_HEADER_LEN {
            self.msg.clear();
            return;
        }
        let records = self.msg.records();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as u32);
        if let Some(train) = self.train.as_mut() {
            // Padded to the train's length where the RFC allows; a message
            // that can't be is the train's last.
            let segment = self.msg.max_len();
            let whole = self.msg.pad_to(&self.encoder, segment);
            if train.records.is_empty() {
                train.first_sequence = self.sequence;
                // The train leaves when its oldest record has waited
                // FLUSH_AFTER, however long that record sat in its message.
                train.since = Some(filling_since.unwrap_or_else(Instant::now));
            }
            train.templates |= self.msg.has_templates();
            train.buf.extend_from_slice(self.msg.finish(now, self.sequence, self.cfg.observation_domain));
            train.records.push(records);
            self.sequence = self.sequence.wrapping_add(records);
            let full = train.records.len() >= train_len(segment);
            self.msg.clear();
            if !whole || full {
                self.send_train();
            }
            return;
        }
        let bytes = self.msg.finish(now, self.sequence, self.cfg.observation_domain);
        let result = match &mut self.socket {
            Socket::Udp(s) => s.send(bytes).map(|_| ()),
            Socket::Tcp(Some(s)) => s.write_all(bytes),
            Socket::Tcp(None) => Err(std::io::Error::new(std::io::ErrorKind::NotConnected, "not connected")),
        };
        match result {
            Ok(()) => {
                self.sequence = self.sequence.wrapping_add(records);
                self.c.sent(u64::from(records), 1);
                self.recovered();
            }
            Err(e) => {
                self.c.unsent(u64::from(records));
                if let Socket::Tcp(stream) = &mut self.socket {
                    // Broken: reconnect, with its own stream and templates.
                    *stream = None;
                    self.c.connected.store(false, Relaxed);
                    self.next_connect = Instant::now() + self.backoff;
                } else if records == 0 {
                    // Templates that didn't go are due again.
                    self.templates_at = None;
                }
                self.failed(format!("sending to {}: {e}", self.cfg.address));
            }
        }
        self.msg.clear();
    }

    /// Sends the train's messages, in one segmented send.
    fn send_train(&mut self) {
        let Some(mut train) = self.train.take() else { return };
        let Socket::Udp(socket) = &self.socket else {
            self.train = Some(train);
            return;
        };
        if train.records.is_empty() {
            self.train = Some(train);
            return;
        }
        let segment = self.msg.max_len();
        let result = if train.records.len() == 1 {
            socket.send(&train.buf).map(|_| ())
        } else {
            send_segmented(socket, &train.buf, segment as u16)
        };
        let mut keep = true;
        match result {
            Ok(()) => {
                let (records, messages) = (train.records(), train.records.len() as u64);
                self.c.sent(records, messages);
                self.recovered();
            }
            Err(e) if train.records.len() > 1 && segmentation_refused(&e) => {
                // This path can't cut datagrams: these one by one, and every
                // message after them in a send of its own.
                tracing::info!(sink = %self.cfg.name(), error = %e, "the kernel can't cut this path's datagrams (UDP GSO); sending one at a time");
                keep = false;
                let mut errors = None;
                // Sequence numbers count only what went: each message's is
                // written again as the ones before it fared.
                let mut sequence = train.first_sequence;
                for (message, &records) in train.buf.chunks_mut(segment).zip(&train.records) {
                    message[8..12].copy_from_slice(&sequence.to_be_bytes());
                    match socket.send(message) {
                        Ok(_) => {
                            sequence = sequence.wrapping_add(records);
                            self.c.sent(u64::from(records), 1);
                        }
                        Err(e) => {
                            self.c.unsent(u64::from(records));
                            errors = Some(e);
                        }
                    }
                }
                self.sequence = sequence;
                if errors.is_some() && train.templates {
                    // Templates that may not have gone are due again.
                    self.templates_at = None;
                }
                match errors {
                    Some(e) => self.failed(format!("sending to {}: {e}", self.cfg.address)),
                    None => self.recovered(),
                }
            }
            Err(e) => {
                let records = train.records();
                self.c.unsent(records);
                // Not sent: not counted in the stream's sequence.
                self.sequence = train.first_sequence;
                if train.templates {
                    self.templates_at = None;
                }
                self.failed(format!("sending to {}: {e}", self.cfg.address));
            }
        }
        train.buf.clear();
        train.records.clear();
        train.templates = false;
        train.since = None;
        if keep {
            self.train = Some(train);
        }
    }

    fn failed(&mut self, error: String) {
        self.c.update(|c| c.errors += 1);
        if self.reported_at.is_none_or(|t| t.elapsed() >= REPORT_EVERY) {
            self.reported_at = Some(Instant::now());
            tracing::warn!(sink = %self.cfg.name(), error = %error, dropped = self.c.get().dropped_unsent, "flow export failing; its records are dropped and counted");
        }
        if let Ok(mut e) = self.c.last_error.lock() {
            *e = Some(error);
        }
    }

    fn recovered(&mut self) {
        if self.reported_at.take().is_some() {
            tracing::info!(sink = %self.cfg.name(), "flow export works again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipfix::{Message, DOCUMENTATION_PEN, TEMPLATE_SET_ID, TEMPLATE_V4};
    use flowtable_offload::{DirRecord, EndReason, RecordKind};
    use flowtable_sw::{FlowId, TcpState};
    use std::net::TcpListener;

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
            start_ns: 1_000_000,
            end_ns: 2_000_000,
            orig: DirRecord { packets: 1, bytes: 60, ip_bytes: 46, ..DirRecord::default() },
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

    fn config(address: SocketAddr, transport: Transport) -> IpfixConfig {
        IpfixConfig {
            address,
            transport,
            observation_domain: 5,
            template_refresh: Duration::from_secs(600),
            mtu: 1500,
            queue_records: 100_000,
            enterprise_number: DOCUMENTATION_PEN,
        }
    }

    /// Bytes of one test record in a data set.
    fn record_len() -> usize {
        crate::ipfix::Encoder::new(DOCUMENTATION_PEN).record_len(&ExportFacts::of(&record(0)).unwrap())
    }

    fn batch(ids: std::ops::Range<u64>) -> Batch {
        Arc::new(ids.map(record).collect())
    }

    #[test]
    fn udp_messages_carry_templates_first_and_count_records_in_sequence() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let sinks = Sinks::start(&[config(rx.local_addr().unwrap(), Transport::Udp)], QueueMode::Wait).unwrap();
        sinks.send(&batch(0..50));
        sinks.send(&batch(50..120));
        let st = sinks.close();
        assert_eq!((st[0].records, st[0].exported, st[0].dropped, st[0].pending), (120, 120, 0, 0));
        let mut buf = [0u8; 65536];
        let (mut seen, mut expected_seq) = (0u32, 0u32);
        for i in 0..st[0].messages {
            let n = rx.recv(&mut buf).unwrap();
            assert!(n <= 1500 - 28, "{n}");
            let m = Message::new_checked(&buf[..n]).unwrap();
            assert_eq!((m.domain(), m.sequence()), (5, expected_seq));
            let sets: Vec<_> = m.sets().collect();
            if i == 0 {
                assert_eq!(sets[0].0, TEMPLATE_SET_ID, "templates lead the first message");
            }
            let records: u32 =
                sets.iter().filter(|s| s.0 == TEMPLATE_V4).map(|s| (s.1.len() / record_len()) as u32).sum();
            seen += records;
            expected_seq += records;
        }
        assert_eq!(seen, 120);
    }

    #[test]
    fn udp_trains_arrive_as_one_message_a_datagram_padded_to_one_length() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // Large enough a receive buffer for every datagram of the run.
        let big = 8 << 20;
        // SAFETY: setsockopt reads an int of the size given.
        unsafe {
            use std::os::fd::AsRawFd;
            let v: libc::c_int = big;
            libc::setsockopt(rx.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, (&v as *const libc::c_int).cast(), 4);
        }
        let cfg = config(rx.local_addr().unwrap(), Transport::Udp);
        let segment = cfg.message_len();
        let sinks = Sinks::start(&[cfg], QueueMode::Wait).unwrap();
        let n = 3000u64;
        sinks.send(&batch(0..n));
        let st = sinks.close();
        assert_eq!((st[0].exported, st[0].dropped, st[0].pending), (n, 0, 0));
        let enc = crate::ipfix::Encoder::new(DOCUMENTATION_PEN);
        let shortest = enc.min_record_len(TEMPLATE_V4);
        let mut buf = [0u8; 65536];
        let (mut seen, mut padded, mut full) = (0u64, 0, 0);
        for _ in 0..st[0].messages {
            let len = rx.recv(&mut buf).unwrap();
            assert!(len <= segment, "a datagram of {len} bytes: more than one message in it");
            let m = Message::new_checked(&buf[..len]).unwrap();
            assert_eq!(m.length(), len, "one message, the whole datagram");
            assert_eq!(m.sequence() as u64, seen, "sequence numbers count the records before");
            for (id, body) in m.sets().filter(|s| s.0 == TEMPLATE_V4) {
                let records = body.len() / record_len();
                let pad = body.len() - records * record_len();
                assert!(
                    pad < shortest && body[body.len() - pad..].iter().all(|&b| b == 0),
                    "set {id}: {pad} bytes over"
                );
                padded += usize::from(pad > 0);
                seen += records as u64;
            }
            full += usize::from(len == segment);
        }
        assert_eq!(seen, n);
        // All but the last of the run were filled to one length.
        assert!(full as u64 >= st[0].messages - 2 && padded > 0, "{full} full, {padded} padded of {}", st[0].messages);
    }

    #[test]
    fn udp_templates_are_sent_again_on_their_period_records_or_not() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut cfg = config(rx.local_addr().unwrap(), Transport::Udp);
        cfg.template_refresh = Duration::from_millis(150);
        let sinks = Sinks::start(&[cfg], QueueMode::Wait).unwrap();
        sinks.send(&batch(0..3));
        let mut buf = [0u8; 65536];
        let mut sets = |rx: &UdpSocket| {
            let n = rx.recv(&mut buf).unwrap();
            let m = Message::new_checked(&buf[..n]).unwrap();
            (m.sequence(), m.sets().map(|s| s.0).collect::<Vec<_>>())
        };
        // Templates and the records (sent after FLUSH_AFTER).
        assert_eq!(sets(&rx), (0, vec![TEMPLATE_SET_ID, TEMPLATE_V4]));
        // With nothing to send, the templates alone, on their period.
        assert_eq!(sets(&rx), (3, vec![TEMPLATE_SET_ID]));
        assert_eq!(sets(&rx), (3, vec![TEMPLATE_SET_ID]));
        let st = sinks.close();
        assert!(st[0].template_sets >= 3 && st[0].exported == 3, "{st:?}");
    }

    #[test]
    fn no_tcp_collector_drops_and_counts_without_blocking() {
        // A port nothing listens on.
        let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let sinks = Sinks::start(&[config(addr, Transport::Tcp)], QueueMode::Drop).unwrap();
        let started = Instant::now();
        for i in 0..100 {
            sinks.send(&batch(i * 10..i * 10 + 10));
        }
        assert!(started.elapsed() < Duration::from_millis(100), "sending blocked");
        let st = sinks.close();
        assert_eq!(st[0].records + st[0].dropped_queue_full, 1000);
        assert_eq!((st[0].exported, st[0].dropped, st[0].pending), (0, 1000, 0));
        assert_eq!(st[0].connected, Some(false));
        assert!(st[0].errors > 0 && st[0].last_error.as_deref().unwrap().contains("connecting to"), "{st:?}");
    }

    #[test]
    fn a_full_queue_drops_whole_batches_and_counts_them() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut cfg = config(rx.local_addr().unwrap(), Transport::Udp);
        cfg.queue_records = 0;
        let sinks = Sinks::start(&[cfg], QueueMode::Drop).unwrap();
        sinks.send(&batch(0..7));
        let st = sinks.close();
        assert_eq!((st[0].records, st[0].dropped_queue_full, st[0].dropped), (0, 7, 7));
    }

    #[test]
    fn tcp_stream_gets_templates_and_every_record() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let reader = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut all = Vec::new();
            std::io::Read::read_to_end(&mut s, &mut all).unwrap();
            all
        });
        let sinks = Sinks::start(&[config(addr, Transport::Tcp)], QueueMode::Wait).unwrap();
        sinks.send(&batch(0..300));
        let st = sinks.close();
        assert_eq!((st[0].exported, st[0].dropped), (300, 0));
        let bytes = reader.join().unwrap();
        let (mut at, mut records, mut templates) = (0, 0, 0);
        while at < bytes.len() {
            let len = u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize;
            let m = Message::new_checked(&bytes[at..at + len]).unwrap();
            assert_eq!(m.sequence() as usize, records);
            for (id, body) in m.sets() {
                match id {
                    TEMPLATE_SET_ID => templates += 1,
                    TEMPLATE_V4 => records += body.len() / record_len(),
                    other => panic!("set {other}"),
                }
            }
            at += len;
        }
        assert_eq!((records, templates), (300, 1));
    }
}
