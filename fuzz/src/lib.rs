//! The bodies of flowtable's fuzz targets, one function per target, each
//! taking the fuzzer's bytes. The binaries in `src/bin/` wrap them in
//! `afl::fuzz!`; `src/bin/replay.rs` runs them over files without AFL, which
//! is how a crash is reproduced and how the seed corpora are checked.
//!
//! Every target feeds outside bytes to the code that meets them in
//! production (a capture file, a frame, the kernel's netlink replies, a
//! control-socket line, a configuration file) and then checks what holds
//! for any input, by panicking: a panic is what AFL counts as a crash.

use std::io::Read;

use flowtable_capture::pcap::PcapFileSource;
use flowtable_capture::{PacketSource, RawPacket};
use flowtable_hw::tc::action::{self, ActionRepr, ActionView, COOKIE_MAX};
use flowtable_hw::tc::attr::{Attr, AttrWriter};
use flowtable_hw::tc::flower::{self, FilterView, FlowerMatch, FlowerView};
use flowtable_hw::tc::netlink::{self, Reply};
use flowtable_hw::tc::tcmsg::TcmsgRepr;
use flowtable_sw::parse::{check_invariants, parse_any, parse_packet, plain_ethernet};
use flowtable_sw::{Ingress, LinkType, PortMap};

/// Every link type the parser knows, indexed by a target's first byte.
pub const LINKS: [LinkType; 9] = [
    LinkType::Ethernet,
    LinkType::RawIp,
    LinkType::LinuxSll,
    LinkType::LinuxSll2,
    LinkType::Null,
    LinkType::Loop,
    LinkType::Ppp,
    LinkType::CiscoHdlc,
    LinkType::Ppi,
];

/// An ingress that is neither port 0 nor its own zone, so a parser that
/// dropped or swapped them would be caught.
const INGRESS: Ingress = Ingress { port: 5, zone: 3 };

/// Target `parse`: the first byte picks the link type (modulo 9), the rest
/// is the frame. Invariant: any successful parse satisfies
/// [`check_invariants`] (payload offset inside the frame, key canonical,
/// ingress carried through, ...), and the plain-Ethernet fast path says
/// what the full walk says of any frame it takes.
pub fn parse(data: &[u8]) {
    let Some((&sel, frame)) = data.split_first() else { return };
    let link = LINKS[usize::from(sel) % LINKS.len()];
    let parsed = parse_packet(link, frame, frame.len() as u32, INGRESS);
    if let Ok(info) = parsed {
        check_invariants(frame, &info, INGRESS);
        assert_eq!(info.wire_len, frame.len() as u32);
    }
    if link == LinkType::Ethernet {
        if let Some(fast) = plain_ethernet(frame, frame.len() as u32, INGRESS) {
            assert_eq!(Ok(fast), parse_any(link, frame, frame.len() as u32, INGRESS));
        }
    }
}

/// One delivered frame, owned, to compare two readers' output.
#[derive(Debug, PartialEq, Eq)]
struct Frame {
    ts_ns: u64,
    data: Vec<u8>,
    wire_len: u32,
    link: Option<LinkType>,
    linktype: u32,
}

impl From<RawPacket<'_>> for Frame {
    fn from(p: RawPacket<'_>) -> Frame {
        Frame { ts_ns: p.ts_ns, data: p.data.to_vec(), wire_len: p.wire_len, link: p.link, linktype: p.linktype }
    }
}

/// A reader that hands out the bytes in small chunks of varying sizes, so
/// records straddle reads at many offsets.
struct Chunked {
    bytes: Vec<u8>,
    at: usize,
    turn: usize,
}

impl Read for Chunked {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        const SIZES: [usize; 6] = [1, 7, 16, 3, 64, 1000];
        let n = SIZES[self.turn % SIZES.len()].min(out.len()).min(self.bytes.len() - self.at);
        self.turn += 1;
        out[..n].copy_from_slice(&self.bytes[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// The next frame and the source's counters after it was read.
fn step(source: &mut PcapFileSource) -> (Result<Option<Frame>, String>, u64, u64) {
    let next = match source.next_packet() {
        Ok(p) => Ok(p.map(Frame::from)),
        Err(e) => Err(e.to_string()),
    };
    (next, source.packets_read(), PacketSource::clamped_wire_lengths(source))
}

/// Target `pcap`: the input is a capture file (pcap or pcapng, any byte
/// order). Invariants: the packet count goes up by exactly one per frame
/// and never otherwise, the clamped-length count never goes backwards nor
/// past the packet count, no frame is shorter on the wire than captured,
/// every frame of a known link type parses within the invariants of
/// [`parse`], and reading the same bytes streamed in small chunks gives
/// exactly what reading them from memory gives, errors included.
pub fn pcap(data: &[u8]) {
    let mem = PcapFileSource::from_bytes(data.to_vec(), 2);
    let streamed = PcapFileSource::from_reader(
        "<memory>".into(),
        Box::new(Chunked { bytes: data.to_vec(), at: 0, turn: data.len() }),
        2,
    );
    let (mut mem, mut streamed) = match (mem, streamed) {
        (Ok(m), Ok(s)) => (m, s),
        (Err(a), Err(b)) => {
            assert_eq!(a.to_string(), b.to_string());
            return;
        }
        (a, b) => panic!("memory and streamed readers disagree on the header: {:?} / {:?}", a.err(), b.err()),
    };
    let ports = PortMap::default();
    let (mut packets, mut clamped) = (0u64, 0u64);
    loop {
        // Read through the memory source, parse the frame, then compare
        // with the streamed one.
        let (next, n, c) = match mem.next_packet() {
            Ok(Some(p)) => {
                assert!(
                    p.wire_len as usize >= p.data.len(),
                    "wire length {} below captured {}",
                    p.wire_len,
                    p.data.len()
                );
                if let Ok(info) = p.parse(&ports) {
                    check_invariants(p.data, &info, ports.ingress(p.ingress));
                }
                (Ok(Some(Frame::from(p))), mem.packets_read(), PacketSource::clamped_wire_lengths(&mem))
            }
            Ok(None) => (Ok(None), mem.packets_read(), PacketSource::clamped_wire_lengths(&mem)),
            Err(e) => (Err(e.to_string()), mem.packets_read(), PacketSource::clamped_wire_lengths(&mem)),
        };
        let delivered = matches!(next, Ok(Some(_)));
        assert_eq!(n, packets + u64::from(delivered), "packet count moved by other than the frames delivered");
        assert!(c >= clamped && c <= n, "clamped count {c} after {clamped}, {n} packets");
        packets = n;
        clamped = c;
        let (other, sn, sc) = step(&mut streamed);
        let other = other.map_err(|e| e.to_string());
        assert_eq!(next, other, "streamed reading differs from reading from memory");
        assert_eq!((n, c), (sn, sc));
        if !delivered {
            break;
        }
    }
}

/// Reads a tc filter message (a dump entry or an echo) and checks that
/// what was decoded encodes back to the same values: the tcmsg header and
/// chain; the flower keys, when they form a match our encoder can write;
/// each gact or mirred action with its cookie; our cookie, byte for byte.
pub fn check_filter(payload: &[u8]) {
    let Ok(v) = FilterView::parse(payload) else { return };
    let hdr = TcmsgRepr::filter(v.ifindex, v.parent, v.prio, v.protocol, v.handle);
    let mut out = Vec::new();
    flower::emit_filter_ref(&mut out, &hdr, v.chain);
    let back = FilterView::parse(&out).expect("our own filter reference parses");
    assert_eq!(
        (back.ifindex, back.parent, back.prio, back.protocol, back.handle, back.chain, back.kind),
        (v.ifindex, v.parent, v.prio, v.protocol, v.handle, v.chain, "flower")
    );
    if let Some(fl) = v.flower {
        check_keys(&fl);
        let _ = (fl.in_hw(), fl.not_in_hw(), fl.cookie_action());
        for a in fl.actions().flatten() {
            check_action(&a);
        }
    }
    let now = 1u64 << 62;
    if let Ok(Some(info)) = flowtable_hw::tc::filter_info(payload, 1, now) {
        let fl = v.flower.expect("a filter with our cookie is a flower filter");
        let act = fl.cookie_action().ok().flatten().expect("the cookie's action is found again");
        assert_eq!(Some(&info.cookie.to_bytes()[..]), act.cookie, "cookie does not re-encode to its bytes");
        assert!(info.counters.last_used_ns.is_none_or(|t| t <= now), "last use after now");
        assert_eq!((info.prio, info.protocol, info.handle, info.flags), (v.prio, v.protocol, v.handle, fl.flags));
        let _ = info.placement();
    }
}

/// The flower keys, when they are ones [`FlowerMatch::emit_keys`] can write
/// (ethertype, protocol and both addresses present, of one family; ports
/// both or neither), written and read back give the same keys.
fn check_keys(fl: &FlowerView<'_>) {
    let (Some(protocol), Some(ip_proto), Some(src), Some(dst)) = (fl.eth_type, fl.ip_proto, fl.src, fl.dst) else {
        return;
    };
    if src.is_ipv6() != dst.is_ipv6() || fl.sport.is_some() != fl.dport.is_some() {
        return;
    }
    let m = FlowerMatch {
        protocol,
        vlan: fl.vlan,
        cvlan: fl.cvlan,
        ip_ethertype: if src.is_ipv6() { flower::ETH_P_IPV6 } else { flower::ETH_P_IP },
        ip_proto,
        src,
        dst,
        ports: fl.sport.zip(fl.dport),
    };
    let mut out = Vec::new();
    m.emit_keys(&mut AttrWriter::new(&mut out));
    let back = FlowerView::parse(&out).expect("our own keys parse");
    assert_eq!(
        (back.eth_type, back.ip_proto, back.src, back.dst, back.sport, back.dport, back.vlan, back.cvlan),
        (fl.eth_type, fl.ip_proto, fl.src, fl.dst, fl.sport, fl.dport, fl.vlan, fl.cvlan),
        "flower keys do not re-encode to themselves"
    );
}

/// Every accessor of an action runs without panicking; a gact or mirred
/// action (what we install) with a cookie the kernel would keep, written
/// back, reads back the same.
fn check_action(a: &ActionView<'_>) {
    let (stats, tm, verdict, target) = (a.stats(), a.tm(), a.verdict(), a.mirred_target().ok().flatten());
    if let Ok(Some(t)) = tm {
        let _ = (t.install_age(), t.last_hit_age_ticks());
    }
    let _ = stats;
    let Ok(Some(verdict)) = verdict else { return };
    let repr = match (a.kind, target) {
        ("gact", _) => ActionRepr::Gact { verdict },
        ("mirred", Some((eaction, ifindex))) => ActionRepr::Mirred { eaction, ifindex, verdict },
        _ => return,
    };
    if a.cookie.is_some_and(|c| c.len() > COOKIE_MAX) {
        return;
    }
    let mut out = Vec::new();
    repr.emit(&mut AttrWriter::new(&mut out), a.order, a.cookie);
    let back = ActionView::parse(Attr::new_checked(&out[..]).expect("our own action is well formed"))
        .expect("our own action parses");
    assert_eq!((back.order, back.kind, back.cookie), (a.order, a.kind, a.cookie));
    assert_eq!(back.verdict(), Ok(Some(verdict)));
    assert_eq!(back.mirred_target().ok().flatten(), target);
    let _ = action::actions(&out).count();
}

/// Target `tc`: the kernel's replies as the tc backend meets them. The
/// first byte picks how the rest is read (modulo 3): 0, one filter message
/// (the payload of an `RTM_NEWTFILTER` dump entry or echo); 1, a datagram
/// of replies to a batch (ACKs, errors with extack, echoes); 2, a datagram
/// of a dump's reply, for the request numbered as its first message is.
/// Every message payload a datagram carries is then read as a filter.
/// Invariants: [`check_filter`]'s re-encoding on every message; malformed
/// framing is an undecodable reply, never a panic (neli takes lengths on
/// trust: `netlink::check_framing` checks them first).
pub fn tc(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else { return };
    match sel % 3 {
        0 => check_filter(rest),
        1 => netlink::for_each_msg(rest, |_seq, reply| match reply {
            Reply::Msg(_ty, payload) => check_filter(payload),
            Reply::Done(r) => check_error(r),
            Reply::Undecodable(_) => {}
        }),
        _ => {
            let seq = rest.get(8..12).map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]])).unwrap_or(0);
            let mut interrupted = false;
            if let Some(r) = netlink::dump_datagram(rest, seq, &mut interrupted, &mut |_ty, p| check_filter(p)) {
                check_error(r);
            }
        }
    }
}

fn check_error(r: Result<(), netlink::NlError>) {
    if let Err(e) = r {
        let _ = e.to_string();
        if let Some(errno) = e.errno() {
            let _ = netlink::errno_name(errno);
        }
    }
}

/// Target `control`: one request line of the control protocol.
/// Invariants: a request that decodes, written back as the client writes
/// it, decodes to the same id and command; a filter expression (`flows`,
/// `unoffload`, `flush`, `subscribe`) parses or is refused without
/// panicking, naming a column within it.
pub fn control(data: &[u8]) {
    use flowtable_control::{parse_request, Command, Request, VERSION};
    let (id, cmd) = parse_request(data);
    let Ok(cmd) = cmd else { return };
    if let Command::Flows { filter: Some(f), .. }
    | Command::Unoffload { filter: Some(f), .. }
    | Command::Flush { filter: Some(f) }
    | Command::Subscribe { filter: Some(f) } = &cmd
    {
        if let Err(e) = flowtable_control::filter::Filter::parse(f) {
            assert!(e.column >= 1 && e.column <= f.chars().count() + 1, "{f:?}: {e}");
        }
    }
    let line = serde_json::to_vec(&Request { v: VERSION, id: id.clone(), cmd: &cmd }).expect("a request serialises");
    let (id2, cmd2) = parse_request(&line);
    assert_eq!(id2, id, "id does not survive a round trip: {}", String::from_utf8_lossy(&line));
    assert_eq!(cmd2.as_ref(), Ok(&cmd), "command does not survive a round trip: {}", String::from_utf8_lossy(&line));
}

/// Target `config`: a configuration file's text, through the same parse
/// and validation that `config check`, start-up and SIGHUP use.
/// Invariants: an error names its field; a configuration that loads gives
/// its port map, table configuration and timeouts without panicking, and
/// written back as JSON loads again.
pub fn config(data: &[u8]) {
    // `load` reads the file as UTF-8 and refuses anything else before parsing.
    let Ok(text) = std::str::from_utf8(data) else { return };
    match flowtable_config::parse("fuzz.json", text) {
        Err(e) => {
            let _ = e.to_string();
            assert!(e.field().is_some_and(|f| !f.is_empty()), "an error without its field: {e}");
        }
        Ok(c) => {
            let _ = (c.port_map(), c.table_config(), c.timeouts.to_timeouts());
            let back = serde_json::to_string(&c).expect("a configuration serialises");
            if let Err(e) = flowtable_config::parse("fuzz.json", &back) {
                panic!("a loaded configuration written back does not load: {e}\n{back}");
            }
        }
    }
}
