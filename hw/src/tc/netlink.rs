//! The rtnetlink socket that TC requests go through. neli provides the
//! socket and the `nlmsghdr` framing (including error and extended-ACK
//! decoding); this module adds batching: many requests in one `sendmsg`,
//! each with `NLM_F_ACK` and its own sequence number, and the replies
//! (ACKs, errors, echoes) mapped back to their request by that number.

use std::io::Cursor;
use std::os::fd::AsRawFd;
use std::time::Duration;

use neli::consts::nl::{NlmF, Nlmsg, NlmsgerrAttr};
use neli::consts::rtnl::Rtm;
use neli::consts::socket::{Msg, NlFamily};
use neli::nl::{NlPayload, Nlmsghdr, NlmsghdrBuilder};
use neli::socket::NlSocket;
use neli::types::Buffer;
use neli::utils::Groups;
use neli::{FromBytes, ToBytes};

/// One request to send: its type, extra flags (REQUEST and ACK are always
/// set) and its payload (tcmsg and attributes).
#[derive(Debug, Clone)]
pub struct OutMsg {
    pub kind: Rtm,
    pub flags: NlmF,
    pub payload: Vec<u8>,
}

/// Why one request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NlError {
    /// The kernel refused the request; `extack` is its own explanation.
    Kernel { errno: i32, extack: Option<String> },
    /// The socket failed; whether the kernel acted on the request is unknown.
    Io(String),
    /// A reply could not be decoded.
    Decode(String),
}

impl NlError {
    pub fn errno(&self) -> Option<i32> {
        match self {
            NlError::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

impl std::fmt::Display for NlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NlError::Kernel { errno, extack } => {
                let os = std::io::Error::from_raw_os_error(*errno);
                match extack {
                    Some(msg) => write!(f, "{msg} ({}, {os})", errno_name(*errno)),
                    None => write!(f, "{os} ({}; the kernel gave no reason)", errno_name(*errno)),
                }
            }
            NlError::Io(m) => write!(f, "netlink socket: {m}"),
            NlError::Decode(m) => write!(f, "netlink reply: {m}"),
        }
    }
}

/// Symbolic names of the errnos TC requests come back with.
pub fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINVAL => "EINVAL",
        libc::EEXIST => "EEXIST",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ENOSPC => "ENOSPC",
        libc::ENOMEM => "ENOMEM",
        libc::ENOBUFS => "ENOBUFS",
        libc::ENODEV => "ENODEV",
        libc::EBUSY => "EBUSY",
        libc::EAGAIN => "EAGAIN",
        libc::E2BIG => "E2BIG",
        libc::ERANGE => "ERANGE",
        _ => "errno",
    }
}

/// How big a reply a request may cause, in receive-buffer bytes (skb
/// truesize), so a batch never overruns the socket's receive queue: the
/// kernel drops replies that don't fit rather than block.
const ACK_COST: usize = 2048;
const ECHO_COST: usize = 8192;

/// Reply bytes one sendmsg may cause at most. Well below the receive
/// buffer: replies queued at once are memory the kernel allocates and we
/// walk through, and a smaller working set is faster than fewer syscalls.
const REPLY_BUDGET: usize = 1 << 20;

const RECV_BUF_LEN: usize = 64 * 1024;
const WANT_RCVBUF: usize = 16 << 20;
const WANT_SNDBUF: usize = 4 << 20;

pub struct TcSocket {
    sock: NlSocket,
    next_seq: u32,
    recv_buf: Vec<u8>,
    send_buf: Vec<u8>,
    rcvbuf: usize,
    sndbuf: usize,
    /// Upper bound on requests per sendmsg.
    pub max_batch: usize,
    /// sendmsg calls made (for tests and benchmarks).
    pub sends: u64,
    /// When set, every datagram a batch receives is kept here (for
    /// recording fixtures and for debugging).
    pub capture: Option<Vec<Vec<u8>>>,
}

fn setsockopt_int(fd: i32, level: i32, opt: i32, val: i32) -> std::io::Result<()> {
    // SAFETY: a valid fd and a pointer to an int of the size passed.
    let rc = unsafe {
        libc::setsockopt(fd, level, opt, &val as *const i32 as *const libc::c_void, size_of::<i32>() as libc::socklen_t)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn getsockopt_int(fd: i32, level: i32, opt: i32) -> std::io::Result<i32> {
    let mut val: i32 = 0;
    let mut len = size_of::<i32>() as libc::socklen_t;
    // SAFETY: a valid fd and an int-sized out buffer with its length.
    let rc = unsafe { libc::getsockopt(fd, level, opt, &mut val as *mut i32 as *mut libc::c_void, &mut len) };
    if rc == 0 {
        Ok(val)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl TcSocket {
    pub fn open() -> std::io::Result<TcSocket> {
        let sock = NlSocket::connect(NlFamily::Route, None, Groups::empty())?;
        sock.block()?;
        sock.enable_ext_ack(true)?;
        let fd = sock.as_raw_fd();
        // The FORCE variants pass the rmem/wmem caps but need CAP_NET_ADMIN,
        // which installing filters needs anyway; without it, take what the
        // caps allow and size batches to it.
        if setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, WANT_RCVBUF as i32).is_err() {
            let _ = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, WANT_RCVBUF as i32);
        }
        if setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, WANT_SNDBUF as i32).is_err() {
            let _ = setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, WANT_SNDBUF as i32);
        }
        let rcvbuf = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF)?.max(64 * 1024) as usize;
        let sndbuf = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF)?.max(64 * 1024) as usize;
        // A kernel that never answers must not hang the caller forever.
        let tv = libc::timeval { tv_sec: 60, tv_usec: 0 };
        // SAFETY: a valid fd and a timeval of the size passed.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const libc::timeval as *const libc::c_void,
                size_of::<libc::timeval>() as libc::socklen_t,
            );
        }
        Ok(TcSocket {
            sock,
            next_seq: std::process::id().wrapping_mul(0x9e37_79b9),
            recv_buf: vec![0; RECV_BUF_LEN],
            send_buf: Vec::with_capacity(256 * 1024),
            rcvbuf,
            sndbuf,
            max_batch: 4096,
            sends: 0,
            capture: None,
        })
    }

    /// Sets the receive timeout (how long to wait for the kernel's replies).
    pub fn set_timeout(&mut self, t: Duration) {
        let tv = libc::timeval { tv_sec: t.as_secs() as libc::time_t, tv_usec: t.subsec_micros() as libc::suseconds_t };
        // SAFETY: a valid fd and a timeval of the size passed.
        unsafe {
            libc::setsockopt(
                self.sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const libc::timeval as *const libc::c_void,
                size_of::<libc::timeval>() as libc::socklen_t,
            );
        }
    }

    fn take_seqs(&mut self, n: usize) -> u32 {
        let base = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(n as u32);
        base
    }

    /// Sends the requests in as few `sendmsg` calls as the socket buffers
    /// allow and returns one result per request, in order. Every non-ACK
    /// reply addressed to a request (an echo of the object it created or
    /// deleted) is handed to `on_reply` with the request's index, message
    /// type and payload.
    pub fn batch(&mut self, msgs: &[OutMsg], on_reply: &mut dyn FnMut(usize, u16, &[u8])) -> Vec<Result<(), NlError>> {
        let mut results: Vec<Option<Result<(), NlError>>> = vec![None; msgs.len()];
        let mut start = 0;
        while start < msgs.len() {
            // Grow the chunk while its requests fit the send buffer and its
            // replies the receive buffer.
            let mut end = start;
            let (mut out_bytes, mut reply_bytes) = (0usize, 0usize);
            while end < msgs.len() && end - start < self.max_batch {
                let m = &msgs[end];
                let cost = if m.flags.contains(NlmF::ECHO) { ACK_COST + ECHO_COST } else { ACK_COST };
                let len = 16 + m.payload.len();
                if end > start
                    && (out_bytes + len > self.sndbuf / 2 || reply_bytes + cost > (self.rcvbuf / 2).min(REPLY_BUDGET))
                {
                    break;
                }
                out_bytes += len;
                reply_bytes += cost;
                end += 1;
            }
            self.run_chunk(&msgs[start..end], start, &mut results, on_reply);
            start = end;
        }
        results.into_iter().map(|r| r.unwrap_or_else(|| Err(NlError::Io("no reply from the kernel".into())))).collect()
    }

    fn run_chunk(
        &mut self,
        msgs: &[OutMsg],
        offset: usize,
        results: &mut [Option<Result<(), NlError>>],
        on_reply: &mut dyn FnMut(usize, u16, &[u8]),
    ) {
        let base = self.take_seqs(msgs.len());
        let fail_all = |results: &mut [Option<Result<(), NlError>>], e: NlError| {
            for r in results[offset..offset + msgs.len()].iter_mut().filter(|r| r.is_none()) {
                *r = Some(Err(e.clone()));
            }
        };
        let mut cursor = Cursor::new(std::mem::take(&mut self.send_buf));
        cursor.get_mut().clear();
        for (i, m) in msgs.iter().enumerate() {
            let built = NlmsghdrBuilder::default()
                .nl_type(m.kind)
                .nl_flags(m.flags | NlmF::REQUEST | NlmF::ACK)
                .nl_seq(base.wrapping_add(i as u32))
                .nl_pid(0)
                .nl_payload(NlPayload::Payload(Buffer::from(m.payload.as_slice())))
                .build();
            let res = match built {
                Ok(h) => h.to_bytes(&mut cursor).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = res {
                self.send_buf = cursor.into_inner();
                fail_all(results, NlError::Io(format!("framing request: {e}")));
                return;
            }
        }
        let sent = self.sock.send(cursor.get_ref(), Msg::empty());
        self.send_buf = cursor.into_inner();
        self.sends += 1;
        if let Err(e) = sent {
            fail_all(results, NlError::Io(format!("sendmsg: {e}")));
            return;
        }
        let mut pending = msgs.len();
        while pending > 0 {
            let n = match self.sock.recv(&mut self.recv_buf[..], Msg::empty()) {
                Ok((n, _)) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    fail_all(results, NlError::Io(format!("recvmsg: {e}")));
                    return;
                }
            };
            if let Some(c) = self.capture.as_mut() {
                c.push(self.recv_buf[..n].to_vec());
            }
            let mut failed = None;
            for_each_msg(&self.recv_buf[..n], |seq, reply| {
                let idx = seq.wrapping_sub(base) as usize;
                if idx >= msgs.len() {
                    return; // a late reply to an earlier, abandoned chunk
                }
                let slot = &mut results[offset + idx];
                match reply {
                    Reply::Done(r) => {
                        if slot.is_none() {
                            pending -= 1;
                        }
                        *slot = Some(r);
                    }
                    Reply::Msg(ty, payload) => on_reply(offset + idx, ty, payload),
                    Reply::Undecodable(e) => failed = Some(e),
                }
            });
            if let Some(e) = failed {
                fail_all(results, NlError::Decode(e));
                return;
            }
        }
    }

    /// Runs one dump request and hands every message of the reply to
    /// `on_msg` (type, payload). Returns whether the kernel flagged the dump
    /// as interrupted (the table changed while it was being walked).
    pub fn dump(&mut self, kind: Rtm, payload: &[u8], on_msg: &mut dyn FnMut(u16, &[u8])) -> Result<bool, NlError> {
        let seq = self.take_seqs(1);
        let msg = NlmsghdrBuilder::default()
            .nl_type(kind)
            .nl_flags(NlmF::REQUEST | NlmF::DUMP)
            .nl_seq(seq)
            .nl_pid(0)
            .nl_payload(NlPayload::Payload(Buffer::from(payload)))
            .build()
            .map_err(|e| NlError::Io(format!("framing dump: {e}")))?;
        let mut cursor = Cursor::new(Vec::with_capacity(64));
        msg.to_bytes(&mut cursor).map_err(|e| NlError::Io(format!("framing dump: {e}")))?;
        self.sock.send(cursor.get_ref(), Msg::empty()).map_err(|e| NlError::Io(format!("sendmsg: {e}")))?;
        self.sends += 1;
        let mut interrupted = false;
        loop {
            let n = match self.sock.recv(&mut self.recv_buf[..], Msg::empty()) {
                Ok((n, _)) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(NlError::Io(format!("recvmsg: {e}"))),
            };
            if let Some(r) = dump_datagram(&self.recv_buf[..n], seq, &mut interrupted, on_msg) {
                return r.map(|()| interrupted);
            }
        }
    }
}

/// Reads one datagram of the reply to the dump request numbered `seq`:
/// every entry goes to `on_msg` (type, payload) and `interrupted` is set
/// when the kernel flags the dump as changed under it. `Some` once the dump
/// is over (`NLMSG_DONE`, or the error that ended it), `None` while more
/// datagrams are to come.
///
/// Public (hidden) so the fuzz targets in `fuzz/` can feed it bytes
/// without a socket; [`TcSocket::dump`] is its only caller otherwise.
#[doc(hidden)]
pub fn dump_datagram(
    buf: &[u8],
    seq: u32,
    interrupted: &mut bool,
    on_msg: &mut dyn FnMut(u16, &[u8]),
) -> Option<Result<(), NlError>> {
    let mut end: Option<Result<(), NlError>> = None;
    walk_msgs(buf, |hdr, parsed| {
        if hdr.seq != seq || end.is_some() {
            return;
        }
        if hdr.flags & libc::NLM_F_DUMP_INTR as u16 != 0 {
            *interrupted = true;
        }
        match parsed {
            Ok(NlPayload::Payload(p)) if hdr.ty != u16::from(Nlmsg::Done) => on_msg(hdr.ty, p.as_ref()),
            Ok(NlPayload::Err(e)) => end = Some(Err(kernel_error(*e.error(), e.ext_ack()))),
            Ok(NlPayload::DumpExtAck(e)) if *e.error() != 0 => end = Some(Err(kernel_error(*e.error(), e.ext_ack()))),
            Ok(_) if hdr.ty == u16::from(Nlmsg::Done) => end = Some(Ok(())),
            Ok(_) => {}
            Err(e) => end = Some(Err(NlError::Decode(e))),
        }
    });
    end
}

/// One message of a batch's replies, as [`for_each_msg`] hands it out.
#[doc(hidden)]
pub enum Reply<'a> {
    /// The ACK or error that settles a request.
    Done(Result<(), NlError>),
    /// Any other message addressed to the request (an echo).
    Msg(u16, &'a [u8]),
    Undecodable(String),
}

struct Hdr {
    ty: u16,
    flags: u16,
    seq: u32,
}

/// Checks the lengths that neli 0.7 takes on trust before it subtracts
/// them, for the message at the start of `rest` (`last`: nothing follows
/// it in the datagram): a message no shorter than its header and within
/// the datagram; an `NLMSG_ERROR` holding its code and the request's
/// header, and for an error (not an ACK, whose request the kernel always
/// cuts to its header) the request within the message; a multipart
/// `NLMSG_DONE` with something after it holding its code; extack
/// attributes each within the message and no shorter than their header.
/// Without this, such bytes make neli panic (overflow checks) or ask for
/// a buffer of nearly `usize::MAX` bytes (release).
fn check_framing(rest: &[u8]) -> Result<(), String> {
    let u32_at = |b: &[u8], at: usize| b.get(at..at + 4).map(|x| u32::from_ne_bytes([x[0], x[1], x[2], x[3]]));
    let len = u32_at(rest, 0)
        .filter(|_| rest.len() >= 16)
        .ok_or_else(|| format!("{} bytes: no room for a message header", rest.len()))? as usize;
    if len < 16 || len > rest.len() {
        return Err(format!("message length {len} with {} bytes left in the datagram", rest.len()));
    }
    let ty = u16::from_ne_bytes([rest[4], rest[5]]);
    let flags = u16::from_ne_bytes([rest[6], rest[7]]);
    let payload = &rest[16..len];
    let extack = if ty == u16::from(Nlmsg::Error) {
        let (Some(code), Some(request)) = (u32_at(payload, 0), u32_at(payload, 4).filter(|_| payload.len() >= 20))
        else {
            return Err(format!("error message of {len} bytes: no room for its code and request header"));
        };
        let request = request as usize;
        if request < 16 {
            return Err(format!("error message: request length {request} below its header"));
        }
        if code == 0 {
            return Ok(());
        }
        let padded = super::attr::align(request);
        if padded > payload.len() - 4 {
            return Err(format!("error message of {len} bytes: its request of {request} bytes overruns it"));
        }
        &payload[4 + padded..]
    } else if ty == u16::from(Nlmsg::Done) && flags & libc::NLM_F_MULTI as u16 != 0 && rest.len() > 16 {
        match payload.get(4..) {
            Some(extack) => extack,
            None => return Err(format!("multipart done message of {len} bytes: no room for its code")),
        }
    } else {
        return Ok(());
    };
    for a in super::attr::AttrIter::new(extack) {
        a.map_err(|e| format!("extended ack: {e}"))?;
    }
    Ok(())
}

/// Decodes every message in one datagram with neli, after
/// [`check_framing`].
fn walk_msgs(buf: &[u8], mut f: impl FnMut(&Hdr, Result<&NlPayload<u16, Buffer>, String>)) {
    let mut cursor = Cursor::new(buf);
    while (cursor.position() as usize) < buf.len() {
        let parsed = check_framing(&buf[cursor.position() as usize..])
            .and_then(|()| Nlmsghdr::<u16, Buffer>::from_bytes(&mut cursor).map_err(|e| e.to_string()));
        match parsed {
            Ok(m) => {
                let hdr = Hdr { ty: *m.nl_type(), flags: m.nl_flags().bits(), seq: *m.nl_seq() };
                f(&hdr, Ok(m.nl_payload()));
            }
            Err(e) => {
                // Framing lost: nothing after this point can be trusted.
                let seq = buf.get(8..12).map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]])).unwrap_or(0);
                f(&Hdr { ty: 0, flags: 0, seq }, Err(e));
                return;
            }
        }
    }
}

/// Decodes the replies (ACKs, errors with their extack, echoes) in one
/// datagram of a batch, handing each to `f` with its sequence number.
///
/// Public (hidden) so the fuzz targets in `fuzz/` can feed it bytes
/// without a socket; the batch loop is its only caller otherwise.
#[doc(hidden)]
pub fn for_each_msg(buf: &[u8], mut f: impl FnMut(u32, Reply<'_>)) {
    walk_msgs(buf, |hdr, parsed| match parsed {
        Ok(NlPayload::Ack(_)) => f(hdr.seq, Reply::Done(Ok(()))),
        Ok(NlPayload::Err(e)) => f(hdr.seq, Reply::Done(Err(kernel_error(*e.error(), e.ext_ack())))),
        Ok(NlPayload::Payload(p)) => f(hdr.seq, Reply::Msg(hdr.ty, p.as_ref())),
        Ok(_) => {}
        Err(e) => f(hdr.seq, Reply::Undecodable(e)),
    });
}

fn kernel_error(error: i32, ext_ack: &neli::types::GenlBuffer<NlmsgerrAttr, Buffer>) -> NlError {
    let extack = ext_ack.iter().find(|a| a.nla_type().nla_type() == &NlmsgerrAttr::Msg).map(|a| {
        let b: &[u8] = a.nla_payload().as_ref();
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    });
    // The kernel sends a negative errno; INT_MIN, which has no positive
    // counterpart, saturates rather than overflows.
    NlError::Kernel { errno: error.saturating_neg(), extack }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_recorded_extack_error() {
        let buf = include_bytes!("testdata/reply-netdevsim-extack.bin");
        let mut seen = Vec::new();
        for_each_msg(buf, |seq, r| match r {
            Reply::Done(res) => seen.push((seq, res)),
            Reply::Msg(..) => panic!("an error reply, not a message"),
            Reply::Undecodable(e) => panic!("{e}"),
        });
        assert_eq!(seen.len(), 1);
        let (seq, res) = &seen[0];
        assert_eq!(*seq, 0x4e8f_199f);
        let err = res.clone().unwrap_err();
        assert_eq!(
            err,
            NlError::Kernel {
                errno: libc::EOPNOTSUPP,
                extack: Some("netdevsim: only offload of BPF classifiers supported".into())
            }
        );
        assert_eq!(
            err.to_string(),
            "netdevsim: only offload of BPF classifiers supported (EOPNOTSUPP, Operation not supported (os error 95))"
        );
    }

    /// Datagrams that neli 0.7 mis-reads, found by the `tc` fuzz target
    /// (`fuzz/`): with overflow checks they panic inside neli, without
    /// them a length wraps around. Each must come out as one undecodable
    /// reply, from the batch path and from the dump path alike.
    #[test]
    fn malformed_framing_is_undecodable_not_a_panic() {
        let hex = |s: &str| {
            (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect::<Vec<u8>>()
        };
        for (what, bytes) in [
            // nlmsg_len 0: shorter than its own header.
            ("fuzz tc-6848e3", hex("00000000303030303030303030303030")),
            // NLMSG_ERROR (code non-zero) claiming more than the datagram
            // holds, its request header's length 15.
            ("fuzz tc-2d4aa3", hex("30303030020030303030303030303030303030300f000000303030303030303030303030")),
            // The same with the request header's length 0.
            ("fuzz tc-a5c562", hex("303030300200303030303030303030303030303000000000303030303030303030303030")),
            // NLMSG_DONE flagged MULTI with no room for its error code, a
            // message after it.
            ("done without its code", {
                let mut b = Vec::new();
                b.extend_from_slice(&16u32.to_ne_bytes());
                b.extend_from_slice(&3u16.to_ne_bytes());
                b.extend_from_slice(&2u16.to_ne_bytes());
                b.extend_from_slice(&[0; 8]);
                b.extend_from_slice(&b.clone());
                b
            }),
            // An extack attribute whose length is below its own header.
            ("extack attribute of length 2", {
                let mut b = Vec::new();
                b.extend_from_slice(&40u32.to_ne_bytes());
                b.extend_from_slice(&2u16.to_ne_bytes());
                b.extend_from_slice(&0x200u16.to_ne_bytes());
                b.extend_from_slice(&[0; 8]);
                b.extend_from_slice(&(-22i32).to_ne_bytes());
                b.extend_from_slice(&16u32.to_ne_bytes());
                b.extend_from_slice(&[0; 12]);
                b.extend_from_slice(&2u16.to_ne_bytes());
                b.extend_from_slice(&1u16.to_ne_bytes());
                b
            }),
        ] {
            let mut seen = Vec::new();
            for_each_msg(&bytes, |_, r| {
                seen.push(match r {
                    Reply::Undecodable(_) => "undecodable",
                    Reply::Done(_) => "done",
                    Reply::Msg(..) => "message",
                })
            });
            assert_eq!(seen, ["undecodable"], "{what}");
            let seq = u32::from_ne_bytes(bytes[8..12].try_into().unwrap());
            let end = dump_datagram(&bytes, seq, &mut false, &mut |_, _| panic!("{what}: no message here"));
            assert!(matches!(end, Some(Err(NlError::Decode(_)))), "{what}: {end:?}");
        }
    }

    /// An `NLMSG_ERROR` carrying `INT_MIN`, found by the `tc` fuzz target
    /// (tc-258367): negating it overflowed. It is a kernel error still,
    /// with the errno saturated.
    #[test]
    fn error_code_int_min_does_not_overflow() {
        let mut b = Vec::new();
        b.extend_from_slice(&36u32.to_ne_bytes());
        b.extend_from_slice(&2u16.to_ne_bytes());
        b.extend_from_slice(&0u16.to_ne_bytes());
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&i32::MIN.to_ne_bytes());
        b.extend_from_slice(&16u32.to_ne_bytes());
        b.extend_from_slice(&[0; 12]);
        let mut seen = Vec::new();
        for_each_msg(&b, |_, r| {
            if let Reply::Done(r) = r {
                seen.push(r)
            }
        });
        assert_eq!(seen, [Err(NlError::Kernel { errno: i32::MAX, extack: None })]);
    }

    #[test]
    fn a_cut_datagram_is_reported_undecodable() {
        let buf = include_bytes!("testdata/reply-netdevsim-extack.bin");
        let mut undecodable = 0;
        for_each_msg(&buf[..100], |_, r| {
            if let Reply::Undecodable(_) = r {
                undecodable += 1
            }
        });
        assert_eq!(undecodable, 1);
    }
}
