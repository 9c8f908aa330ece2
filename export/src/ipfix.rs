//! IPFIX messages (RFC 7011) of biflow records (RFC 5103), with the
//! information elements of the IANA registry (RFC 7012) and flowtable's
//! own under a private enterprise number (docs/ipfix.md lists them all).
//!
//! Written by hand, in the style of smoltcp's `wire` modules (and this
//! project's `sw::wire`): a message is built into a reusable buffer with
//! its lengths checked before each write, and read back by a checked view
//! in the tests beside it. The crates were looked at: `netgauze-flow-pkt`
//! is well kept and complete, but it is a general codec for the whole IANA
//! registry (thousands of generated elements, nom, chrono, serde and
//! strum behind it) whose records are trees of owned values built per
//! record; flowtable writes two fixed templates of about thirty fields, so
//! the encoder it needs is a few hundred lines that allocate nothing per
//! record, and its every byte is tested here and decoded by nfdump and
//! Wireshark in `tests/ipfix.rs`.
//!
//! Templates: 256 for IPv4 flows and 257 for IPv6, the same fields but
//! the addresses. Each record is one biflow oriented by its initiator
//! (source is who sent the first packet): forward counters are the
//! initiator's, the reverse ones (RFC 5103 reverse elements, enterprise
//! 29305) the responder's.

use flowtable_hw::{Action, Placement};
use flowtable_offload::{EndReason, FlowRecord};
use std::net::IpAddr;

pub const VERSION: u16 = 10;
/// RFC 5103: reverse information elements are the forward ones under this
/// enterprise number.
pub const REVERSE_PEN: u32 = 29305;
/// RFC 5612's enterprise number for documentation and examples: flowtable's
/// own elements sit under it unless `export.enterprise_number` names one.
pub const DOCUMENTATION_PEN: u32 = 32473;
pub const TEMPLATE_SET_ID: u16 = 2;
pub const TEMPLATE_V4: u16 = 256;
pub const TEMPLATE_V6: u16 = 257;
pub const MESSAGE_HEADER_LEN: usize = 16;
pub const SET_HEADER_LEN: usize = 4;
/// A field length meaning "variable" (RFC 7011 section 7).
pub const VARIABLE: u16 = 65535;
/// Longest text a string element carries; longer is cut (on a character
/// boundary), so a record always fits a message of the smallest MTU.
pub const MAX_TEXT: usize = 128;
/// Smallest message size accepted: a template set and a record of the
/// longest texts fit.
pub const MIN_MESSAGE_LEN: usize = 1024;

/// IANA information element ids (RFC 7012 and the registry).
pub mod ie {
    pub const OCTET_DELTA_COUNT: u16 = 1;
    pub const PACKET_DELTA_COUNT: u16 = 2;
    pub const PROTOCOL_IDENTIFIER: u16 = 4;
    pub const TCP_CONTROL_BITS: u16 = 6;
    pub const SOURCE_TRANSPORT_PORT: u16 = 7;
    pub const SOURCE_IPV4_ADDRESS: u16 = 8;
    pub const INGRESS_INTERFACE: u16 = 10;
    pub const DESTINATION_TRANSPORT_PORT: u16 = 11;
    pub const DESTINATION_IPV4_ADDRESS: u16 = 12;
    pub const SOURCE_IPV6_ADDRESS: u16 = 27;
    pub const DESTINATION_IPV6_ADDRESS: u16 = 28;
    pub const VLAN_ID: u16 = 58;
    pub const FLOW_END_REASON: u16 = 136;
    pub const FLOW_ID: u16 = 148;
    pub const FLOW_START_MILLISECONDS: u16 = 152;
    pub const FLOW_END_MILLISECONDS: u16 = 153;
    pub const BIFLOW_DIRECTION: u16 = 239;
    pub const DOT1Q_CUSTOMER_VLAN_ID: u16 = 245;
    pub const LAYER2_OCTET_DELTA_COUNT: u16 = 352;
}

/// flowtable's enterprise-specific element ids (docs/ipfix.md).
pub mod ft {
    pub const HW_PACKET_DELTA_COUNT: u16 = 1;
    pub const HW_OCTET_DELTA_COUNT: u16 = 2;
    pub const REVERSE_HW_PACKET_DELTA_COUNT: u16 = 3;
    pub const REVERSE_HW_OCTET_DELTA_COUNT: u16 = 4;
    pub const OFFLOAD_ACTION: u16 = 5;
    pub const PLACEMENT: u16 = 6;
    pub const REVERSE_PLACEMENT: u16 = 7;
    pub const CLASSIFIER_RULE: u16 = 8;
    pub const LABEL: u16 = 9;
    pub const OFFLOAD_REFUSAL: u16 = 10;
}

/// flowEndReason values (IANA registry, RFC 7012 section 5.7).
pub mod end_reason {
    pub const IDLE_TIMEOUT: u8 = 1;
    pub const ACTIVE_TIMEOUT: u8 = 2;
    pub const END_OF_FLOW: u8 = 3;
    pub const FORCED_END: u8 = 4;
    pub const LACK_OF_RESOURCES: u8 = 5;
}

/// What can go wrong turning a record into IPFIX.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpfixError {
    #[error("flow {flow}: source {src} and destination {dst} are not of one IP version")]
    MixedVersions { flow: u64, src: IpAddr, dst: IpAddr },
    #[error("a message of {max} bytes can't hold a record of {needed}")]
    TooSmall { max: usize, needed: usize },
}

/// The flowEndReason of a record's end reason.
pub fn flow_end_reason(reason: EndReason) -> u8 {
    match reason {
        EndReason::Idle => end_reason::IDLE_TIMEOUT,
        // An interim record of a flow past the active timeout.
        EndReason::Active => end_reason::ACTIVE_TIMEOUT,
        EndReason::TcpClose => end_reason::END_OF_FLOW,
        // Ended on request through the control socket: an external event,
        // RFC 7012's "forced end", as is the process stopping.
        EndReason::Evicted | EndReason::Shutdown => end_reason::FORCED_END,
        // Pushed out to make room for a new flow.
        EndReason::TableFull => end_reason::LACK_OF_RESOURCES,
    }
}

/// One template field: element id, length, and its enterprise number
/// when it has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub id: u16,
    pub len: u16,
    pub pen: Option<u32>,
}

/// Where a field's value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Src {
    SourceAddr,
    DestinationAddr,
    SourcePort,
    DestinationPort,
    Proto,
    Vlan,
    VlanInner,
    Ingress(Dir),
    Start,
    End,
    IpOctets(Dir),
    Packets(Dir),
    L2Octets(Dir),
    TcpFlags(Dir),
    EndReason,
    Biflow,
    FlowId,
    HwPackets(Dir),
    HwOctets(Dir),
    Action,
    Placement(Dir),
    Rule,
    Label,
    Refusal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Fwd,
    Rev,
}

/// The parts of a record IPFIX carries, with the addresses parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportFacts<'a> {
    pub record: &'a FlowRecord,
    pub src: IpAddr,
    pub dst: IpAddr,
}

impl<'a> ExportFacts<'a> {
    pub fn of(record: &'a FlowRecord) -> Result<ExportFacts<'a>, IpfixError> {
        let (src, dst) = (record.src, record.dst);
        if src.is_ipv4() != dst.is_ipv4() {
            return Err(IpfixError::MixedVersions { flow: record.id.0, src, dst });
        }
        Ok(ExportFacts { record, src, dst })
    }

    pub fn template_id(&self) -> u16 {
        if self.src.is_ipv4() {
            TEMPLATE_V4
        } else {
            TEMPLATE_V6
        }
    }
}

/// `s` cut to at most `MAX_TEXT` bytes on a character boundary.
fn text(s: &str) -> &[u8] {
    let mut end = s.len().min(MAX_TEXT);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s.as_bytes()[..end]
}

/// The two templates and how to fill their records.
#[derive(Debug, Clone)]
pub struct Encoder {
    v4: Vec<(Field, Src)>,
    v6: Vec<(Field, Src)>,
    /// Bytes of each template's fixed-length fields, and its texts' sources:
    /// a record's length without walking every field.
    fixed_len: [usize; 2],
    texts: [Vec<Src>; 2],
    pen: u32,
}

impl Encoder {
    /// Templates with flowtable's own elements under enterprise `pen`.
    pub fn new(pen: u32) -> Encoder {
        let iana = |id, len| Field { id, len, pen: None };
        let rev = |id, len| Field { id, len, pen: Some(REVERSE_PEN) };
        let own = |id, len| Field { id, len, pen: Some(pen) };
        let fields = |v6: bool| {
            let (sa, da, alen) = if v6 {
                (ie::SOURCE_IPV6_ADDRESS, ie::DESTINATION_IPV6_ADDRESS, 16)
            } else {
                (ie::SOURCE_IPV4_ADDRESS, ie::DESTINATION_IPV4_ADDRESS, 4)
            };
            vec![
                (iana(ie::FLOW_START_MILLISECONDS, 8), Src::Start),
                (iana(ie::FLOW_END_MILLISECONDS, 8), Src::End),
                (iana(sa, alen), Src::SourceAddr),
                (iana(da, alen), Src::DestinationAddr),
                (iana(ie::SOURCE_TRANSPORT_PORT, 2), Src::SourcePort),
                (iana(ie::DESTINATION_TRANSPORT_PORT, 2), Src::DestinationPort),
                (iana(ie::PROTOCOL_IDENTIFIER, 1), Src::Proto),
                (iana(ie::VLAN_ID, 2), Src::Vlan),
                (iana(ie::DOT1Q_CUSTOMER_VLAN_ID, 2), Src::VlanInner),
                (iana(ie::INGRESS_INTERFACE, 4), Src::Ingress(Dir::Fwd)),
                (rev(ie::INGRESS_INTERFACE, 4), Src::Ingress(Dir::Rev)),
                (iana(ie::OCTET_DELTA_COUNT, 8), Src::IpOctets(Dir::Fwd)),
                (iana(ie::PACKET_DELTA_COUNT, 8), Src::Packets(Dir::Fwd)),
                (rev(ie::OCTET_DELTA_COUNT, 8), Src::IpOctets(Dir::Rev)),
                (rev(ie::PACKET_DELTA_COUNT, 8), Src::Packets(Dir::Rev)),
                (iana(ie::LAYER2_OCTET_DELTA_COUNT, 8), Src::L2Octets(Dir::Fwd)),
                (rev(ie::LAYER2_OCTET_DELTA_COUNT, 8), Src::L2Octets(Dir::Rev)),
                (iana(ie::TCP_CONTROL_BITS, 2), Src::TcpFlags(Dir::Fwd)),
                (rev(ie::TCP_CONTROL_BITS, 2), Src::TcpFlags(Dir::Rev)),
                (iana(ie::FLOW_END_REASON, 1), Src::EndReason),
                (iana(ie::BIFLOW_DIRECTION, 1), Src::Biflow),
                (iana(ie::FLOW_ID, 8), Src::FlowId),
                (own(ft::HW_PACKET_DELTA_COUNT, 8), Src::HwPackets(Dir::Fwd)),
                (own(ft::HW_OCTET_DELTA_COUNT, 8), Src::HwOctets(Dir::Fwd)),
                (own(ft::REVERSE_HW_PACKET_DELTA_COUNT, 8), Src::HwPackets(Dir::Rev)),
                (own(ft::REVERSE_HW_OCTET_DELTA_COUNT, 8), Src::HwOctets(Dir::Rev)),
                (own(ft::OFFLOAD_ACTION, VARIABLE), Src::Action),
                (own(ft::PLACEMENT, VARIABLE), Src::Placement(Dir::Fwd)),
                (own(ft::REVERSE_PLACEMENT, VARIABLE), Src::Placement(Dir::Rev)),
                (own(ft::CLASSIFIER_RULE, VARIABLE), Src::Rule),
                (own(ft::LABEL, VARIABLE), Src::Label),
                (own(ft::OFFLOAD_REFUSAL, VARIABLE), Src::Refusal),
            ]
        };
        let (v4, v6) = (fields(false), fields(true));
        let fixed = |l: &[(Field, Src)]| l.iter().filter(|(f, _)| f.len != VARIABLE).map(|(f, _)| f.len as usize).sum();
        let texts = |l: &[(Field, Src)]| l.iter().filter(|(f, _)| f.len == VARIABLE).map(|(_, s)| *s).collect();
        Encoder { fixed_len: [fixed(&v4), fixed(&v6)], texts: [texts(&v4), texts(&v6)], v4, v6, pen }
    }

    pub fn enterprise_number(&self) -> u32 {
        self.pen
    }

    /// The fields of template `id` (256 or 257).
    pub fn fields(&self, id: u16) -> impl Iterator<Item = Field> + '_ {
        let list = if id == TEMPLATE_V6 { &self.v6 } else { &self.v4 };
        list.iter().map(|(f, _)| *f)
    }

    fn list(&self, template: u16) -> &[(Field, Src)] {
        if template == TEMPLATE_V6 {
            &self.v6
        } else {
            &self.v4
        }
    }

    /// Bytes of the template set holding both templates.
    pub fn template_set_len(&self) -> usize {
        let one = |fields: &[(Field, Src)]| {
            4 + fields.iter().map(|(f, _)| if f.pen.is_some() { 8 } else { 4 }).sum::<usize>()
        };
        SET_HEADER_LEN + one(&self.v4) + one(&self.v6)
    }

    /// Appends the template set holding both templates.
    fn write_template_set(&self, out: &mut Vec<u8>) {
        let start = out.len();
        put16(out, TEMPLATE_SET_ID);
        put16(out, 0);
        for (id, fields) in [(TEMPLATE_V4, &self.v4), (TEMPLATE_V6, &self.v6)] {
            put16(out, id);
            put16(out, fields.len() as u16);
            for (f, _) in fields.iter() {
                match f.pen {
                    None => {
                        put16(out, f.id);
                        put16(out, f.len);
                    }
                    Some(pen) => {
                        put16(out, f.id | 0x8000);
                        put16(out, f.len);
                        put32(out, pen);
                    }
                }
            }
        }
        let len = (out.len() - start) as u16;
        out[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
    }

    /// Bytes of the shortest record template `id` can have (every text
    /// empty): set padding must stay below it (RFC 7011 section 3.3.1).
    pub fn min_record_len(&self, id: u16) -> usize {
        self.list(id).iter().map(|(f, _)| if f.len == VARIABLE { 1 } else { f.len as usize }).sum()
    }

    /// Bytes the record of `facts` takes in a data set.
    pub fn record_len(&self, facts: &ExportFacts) -> usize {
        self.record_len_with(facts, &Strings::of(facts))
    }

    fn record_len_with(&self, facts: &ExportFacts, strings: &Strings) -> usize {
        let t = usize::from(facts.template_id() == TEMPLATE_V6);
        self.fixed_len[t]
            + self.texts[t]
                .iter()
                .map(|src| {
                    let n = string_of(strings, *src).len();
                    n + if n < 255 { 1 } else { 3 }
                })
                .sum::<usize>()
    }

    /// Writes the record of `facts` (without a set header) into `out`,
    /// which is `record_len_with` bytes long: one bounds check a field
    /// instead of a vector growing field by field (a third of the time).
    fn write_record(&self, facts: &ExportFacts, strings: &Strings, out: &mut [u8]) {
        let r = facts.record;
        let dir = |d: Dir| if d == Dir::Fwd { &r.orig } else { &r.reply };
        let mut w = Cursor { out, at: 0 };
        for (f, src) in self.list(facts.template_id()) {
            match *src {
                Src::SourceAddr => w.addr(facts.src),
                Src::DestinationAddr => w.addr(facts.dst),
                Src::SourcePort => w.put(&r.sport.to_be_bytes()),
                Src::DestinationPort => w.put(&r.dport.to_be_bytes()),
                Src::Proto => w.put(&[r.proto]),
                Src::Vlan => w.put(&(r.vlan & 0x0fff).to_be_bytes()),
                Src::VlanInner => w.put(&(r.vlan_inner & 0x0fff).to_be_bytes()),
                Src::Ingress(d) => w.put(&u32::from(dir(d).ingress).to_be_bytes()),
                Src::Start => w.put(&(r.start_ns / 1_000_000).to_be_bytes()),
                Src::End => w.put(&(r.end_ns / 1_000_000).to_be_bytes()),
                Src::IpOctets(d) => w.put(&dir(d).ip_bytes.to_be_bytes()),
                Src::Packets(d) => w.put(&dir(d).packets.to_be_bytes()),
                Src::L2Octets(d) => w.put(&dir(d).bytes.to_be_bytes()),
                Src::TcpFlags(d) => w.put(&u16::from(dir(d).tcp_flags).to_be_bytes()),
                Src::EndReason => w.put(&[flow_end_reason(r.end_reason)]),
                // The source is the flow's initiator.
                Src::Biflow => w.put(&[1]),
                Src::FlowId => w.put(&r.id.0.to_be_bytes()),
                Src::HwPackets(d) => w.put(&dir(d).hw_packets.to_be_bytes()),
                Src::HwOctets(d) => w.put(&dir(d).hw_ip_bytes.to_be_bytes()),
                Src::Action | Src::Placement(_) | Src::Rule | Src::Label | Src::Refusal => {
                    let s = string_of(strings, *src);
                    if s.len() < 255 {
                        w.put(&[s.len() as u8]);
                    } else {
                        w.put(&[255]);
                        w.put(&(s.len() as u16).to_be_bytes());
                    }
                    w.put(s);
                }
            }
            debug_assert!(f.len == VARIABLE || f.len > 0);
        }
        debug_assert_eq!(w.at, w.out.len(), "the record's length as computed");
    }
}

/// Writes fields one after another into a record's bytes.
struct Cursor<'b> {
    out: &'b mut [u8],
    at: usize,
}

impl Cursor<'_> {
    #[inline(always)]
    fn put(&mut self, bytes: &[u8]) {
        self.out[self.at..self.at + bytes.len()].copy_from_slice(bytes);
        self.at += bytes.len();
    }

    #[inline(always)]
    fn addr(&mut self, a: IpAddr) {
        match a {
            IpAddr::V4(a) => self.put(&a.octets()),
            IpAddr::V6(a) => self.put(&a.octets()),
        }
    }
}

/// A record's texts, borrowed from it (only an action with a port is
/// written out).
struct Strings<'a> {
    action: std::borrow::Cow<'a, str>,
    placement: [&'static str; 2],
    rule: &'a str,
    label: &'a str,
    refusal: &'a str,
}

impl<'a> Strings<'a> {
    fn of(facts: &ExportFacts<'a>) -> Strings<'a> {
        let r = facts.record;
        let placement = |i: usize| -> &'static str {
            match r.offload.as_ref().and_then(|o| o.placement[i]) {
                Some(Placement::Hardware) => "hardware",
                Some(Placement::KernelSoftware) => "kernel-software",
                None => "",
            }
        };
        let action = match r.offload.as_ref().map(|o| &o.action) {
            None => "".into(),
            Some(Action::Drop) => "drop".into(),
            Some(Action::Pass) => "pass".into(),
            // As the CLI writes it (`forward:1`, `mark:0xff`).
            Some(a) => a.to_string().into(),
        };
        Strings {
            action,
            placement: [placement(0), placement(1)],
            rule: r.class.as_deref().unwrap_or(""),
            label: r.context.as_ref().and_then(|c| c.label.as_deref()).unwrap_or(""),
            refusal: r.refused.as_deref().unwrap_or(""),
        }
    }
}

fn string_of<'s>(s: &'s Strings, src: Src) -> &'s [u8] {
    match src {
        Src::Action => text(&s.action),
        Src::Placement(Dir::Fwd) => text(s.placement[0]),
        Src::Placement(Dir::Rev) => text(s.placement[1]),
        Src::Rule => text(s.rule),
        Src::Label => text(s.label),
        Src::Refusal => text(s.refusal),
        _ => &[],
    }
}

fn put16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}
fn put32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// One IPFIX message being filled: a header, then sets, each record only
/// if the whole of it fits in `max_len` bytes.
#[derive(Debug)]
pub struct MessageBuilder {
    buf: Vec<u8>,
    max_len: usize,
    /// The data set being filled: its set id and where its header is.
    open: Option<(u16, usize)>,
    records: u32,
    templates: bool,
}

/// The message has no room for what was to be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

impl MessageBuilder {
    /// A builder of messages of at most `max_len` bytes (at least
    /// `MIN_MESSAGE_LEN`, at most 65535).
    pub fn new(max_len: usize) -> MessageBuilder {
        let max_len = max_len.clamp(MIN_MESSAGE_LEN, u16::MAX as usize);
        let mut b =
            MessageBuilder { buf: Vec::with_capacity(max_len), max_len, open: None, records: 0, templates: false };
        b.clear();
        b
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Starts over with an empty message.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.buf.resize(MESSAGE_HEADER_LEN, 0);
        self.open = None;
        self.records = 0;
        self.templates = false;
    }

    /// Data records in the message.
    pub fn records(&self) -> u32 {
        self.records
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0 && !self.templates
    }

    /// Whether the message holds the template set.
    pub fn has_templates(&self) -> bool {
        self.templates
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    fn close_set(&mut self) {
        if let Some((_, start)) = self.open.take() {
            let len = (self.buf.len() - start) as u16;
            self.buf[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
        }
    }

    /// Adds the template set (both templates).
    pub fn add_templates(&mut self, enc: &Encoder) -> Result<(), Full> {
        if self.buf.len() + enc.template_set_len() > self.max_len {
            return Err(Full);
        }
        self.close_set();
        enc.write_template_set(&mut self.buf);
        self.templates = true;
        Ok(())
    }

    /// Adds one record, opening a data set of its template if the last set
    /// is another. `Err(Full)` leaves the message as it was.
    pub fn add_record(&mut self, enc: &Encoder, facts: &ExportFacts) -> Result<(), Full> {
        let template = facts.template_id();
        let new_set = self.open.is_none_or(|(id, _)| id != template);
        let strings = Strings::of(facts);
        let need = enc.record_len_with(facts, &strings) + if new_set { SET_HEADER_LEN } else { 0 };
        if self.buf.len() + need > self.max_len {
            return Err(Full);
        }
        if new_set {
            self.close_set();
            self.open = Some((template, self.buf.len()));
            put16(&mut self.buf, template);
            put16(&mut self.buf, 0);
        }
        let start = self.buf.len();
        self.buf.resize(start + need - if new_set { SET_HEADER_LEN } else { 0 }, 0);
        enc.write_record(facts, &strings, &mut self.buf[start..]);
        self.records += 1;
        Ok(())
    }

    /// Whether a message holding only `facts` fits at all.
    pub fn fits_alone(&self, enc: &Encoder, facts: &ExportFacts) -> Result<(), IpfixError> {
        let needed = MESSAGE_HEADER_LEN + SET_HEADER_LEN + enc.record_len(facts);
        if needed > self.max_len {
            return Err(IpfixError::TooSmall { max: self.max_len, needed });
        }
        Ok(())
    }

    /// Pads the last data set with zero octets so the message is `len`
    /// bytes, where RFC 7011 (section 3.3.1) allows it: the padding must be
    /// shorter than any record the set could hold, so a collector can't
    /// mistake it for one. True when the message is now `len` bytes.
    pub fn pad_to(&mut self, enc: &Encoder, len: usize) -> bool {
        let have = self.buf.len();
        if have >= len {
            return have == len;
        }
        match self.open {
            Some((template, _)) if len - have < enc.min_record_len(template) => {
                self.buf.resize(len, 0);
                true
            }
            _ => false,
        }
    }

    /// The finished message: header written with its export time (seconds
    /// since the epoch), sequence number (data records sent before it in
    /// this stream, RFC 7011 section 3.1) and observation domain.
    pub fn finish(&mut self, export_time_s: u32, sequence: u32, domain: u32) -> &[u8] {
        self.close_set();
        let len = self.buf.len() as u16;
        let h = &mut self.buf[..MESSAGE_HEADER_LEN];
        h[0..2].copy_from_slice(&VERSION.to_be_bytes());
        h[2..4].copy_from_slice(&len.to_be_bytes());
        h[4..8].copy_from_slice(&export_time_s.to_be_bytes());
        h[8..12].copy_from_slice(&sequence.to_be_bytes());
        h[12..16].copy_from_slice(&domain.to_be_bytes());
        &self.buf
    }
}

/// A checked view of a received message, for tests and tools: header
/// fields and its sets.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    buf: &'a [u8],
}

/// What is wrong with a message read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("message of {0} bytes is shorter than its header")]
    Truncated(usize),
    #[error("version {0}, not 10")]
    Version(u16),
    #[error("header says {said} bytes, the message has {has}")]
    Length { said: usize, has: usize },
    #[error("set at offset {0} runs past the message")]
    Set(usize),
}

impl<'a> Message<'a> {
    pub fn new_checked(buf: &'a [u8]) -> Result<Message<'a>, ParseError> {
        if buf.len() < MESSAGE_HEADER_LEN {
            return Err(ParseError::Truncated(buf.len()));
        }
        let m = Message { buf };
        if m.version() != VERSION {
            return Err(ParseError::Version(m.version()));
        }
        if m.length() != buf.len() {
            return Err(ParseError::Length { said: m.length(), has: buf.len() });
        }
        let mut at = MESSAGE_HEADER_LEN;
        while at < buf.len() {
            let len = buf.get(at + 2..at + 4).map(|b| u16::from_be_bytes([b[0], b[1]]) as usize);
            match len {
                Some(len) if len >= SET_HEADER_LEN && at + len <= buf.len() => at += len,
                _ => return Err(ParseError::Set(at)),
            }
        }
        Ok(m)
    }
    fn u16_at(&self, at: usize) -> u16 {
        u16::from_be_bytes([self.buf[at], self.buf[at + 1]])
    }
    fn u32_at(&self, at: usize) -> u32 {
        u32::from_be_bytes([self.buf[at], self.buf[at + 1], self.buf[at + 2], self.buf[at + 3]])
    }
    pub fn version(&self) -> u16 {
        self.u16_at(0)
    }
    pub fn length(&self) -> usize {
        self.u16_at(2) as usize
    }
    pub fn export_time(&self) -> u32 {
        self.u32_at(4)
    }
    pub fn sequence(&self) -> u32 {
        self.u32_at(8)
    }
    pub fn domain(&self) -> u32 {
        self.u32_at(12)
    }
    /// Each set's id and body (after its 4-byte header).
    pub fn sets(&self) -> impl Iterator<Item = (u16, &'a [u8])> + 'a {
        let buf = self.buf;
        let mut at = MESSAGE_HEADER_LEN;
        std::iter::from_fn(move || {
            if at >= buf.len() {
                return None;
            }
            let id = u16::from_be_bytes([buf[at], buf[at + 1]]);
            let len = u16::from_be_bytes([buf[at + 2], buf[at + 3]]) as usize;
            let body = &buf[at + SET_HEADER_LEN..at + len];
            at += len;
            Some((id, body))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowtable_offload::{DirRecord, OffloadRecord, RecordKind};
    use flowtable_sw::context::FlowContext;
    use flowtable_sw::{FlowId, TcpState};

    fn record(src: &str, dst: &str) -> FlowRecord {
        FlowRecord {
            id: FlowId(7),
            proto: 6,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            sport: 40000,
            dport: 443,
            vlan: 100,
            vlan_inner: 0,
            ingress: 1,
            start_ns: 1_700_000_000_123_456_789,
            end_ns: 1_700_000_005_987_000_000,
            orig: DirRecord {
                ingress: 1,
                packets: 10,
                bytes: 1140,
                ip_bytes: 1000,
                sw_packets: 4,
                sw_bytes: 456,
                sw_ip_bytes: 400,
                hw_packets: 6,
                hw_bytes: 684,
                hw_ip_bytes: 600,
                tcp_flags: 0x13,
                ..DirRecord::default()
            },
            reply: DirRecord {
                ingress: 2,
                packets: 8,
                bytes: 912,
                ip_bytes: 800,
                sw_packets: 8,
                sw_bytes: 912,
                sw_ip_bytes: 800,
                tcp_flags: 0x12,
                ..DirRecord::default()
            },
            tcp_state: TcpState::Closed,
            class: Some("web".into()),
            class_removed_in_generation: None,
            offload: Some(OffloadRecord {
                backend: "sim".into(),
                action: Action::Forward { port: 3 },
                placement: [Some(Placement::Hardware), None],
                hw_counters: true,
                installed_ns: 1,
                removed_ns: None,
                teardown: None,
                adopted_ns: None,
            }),
            refused: None,
            context: Some(FlowContext { label: Some("é".repeat(100)), ..FlowContext::default() }),
            end_reason: EndReason::TcpClose,
            kind: RecordKind::Final,
        }
    }

    /// Reads a template set back: (template id, fields).
    fn templates(body: &[u8]) -> Vec<(u16, Vec<Field>)> {
        let mut out = Vec::new();
        let mut at = 0;
        let u16_at = |at: usize| u16::from_be_bytes([body[at], body[at + 1]]);
        while at + 4 <= body.len() {
            let (id, n) = (u16_at(at), u16_at(at + 2));
            at += 4;
            let mut fields = Vec::new();
            for _ in 0..n {
                let (raw, len) = (u16_at(at), u16_at(at + 2));
                at += 4;
                let pen = (raw & 0x8000 != 0).then(|| {
                    at += 4;
                    u32::from_be_bytes(body[at - 4..at].try_into().unwrap())
                });
                fields.push(Field { id: raw & 0x7fff, len, pen });
            }
            out.push((id, fields));
        }
        out
    }

    /// Splits a data record by its template: each field's bytes.
    fn fields_of<'b>(fields: &[Field], mut rec: &'b [u8]) -> (Vec<&'b [u8]>, &'b [u8]) {
        let mut out = Vec::new();
        for f in fields {
            let n = if f.len == VARIABLE {
                let (n, skip) = if rec[0] < 255 {
                    (rec[0] as usize, 1)
                } else {
                    (u16::from_be_bytes([rec[1], rec[2]]) as usize, 3)
                };
                rec = &rec[skip..];
                n
            } else {
                f.len as usize
            };
            out.push(&rec[..n]);
            rec = &rec[n..];
        }
        (out, rec)
    }

    #[test]
    fn a_message_of_templates_and_records_reads_back_field_for_field() {
        let enc = Encoder::new(DOCUMENTATION_PEN);
        let r4 = record("10.0.0.1", "10.0.0.2");
        let r6 = record("2001:db8::1", "2001:db8::2");
        let (f4, f6) = (ExportFacts::of(&r4).unwrap(), ExportFacts::of(&r6).unwrap());
        let mut b = MessageBuilder::new(1400);
        b.add_templates(&enc).unwrap();
        b.add_record(&enc, &f4).unwrap();
        b.add_record(&enc, &f4).unwrap();
        b.add_record(&enc, &f6).unwrap();
        assert_eq!(b.records(), 3);
        let bytes = b.finish(1_700_000_010, 42, 9).to_vec();
        let m = Message::new_checked(&bytes).unwrap();
        assert_eq!((m.export_time(), m.sequence(), m.domain(), m.length()), (1_700_000_010, 42, 9, bytes.len()));
        let sets: Vec<_> = m.sets().collect();
        assert_eq!(sets.iter().map(|s| s.0).collect::<Vec<_>>(), vec![TEMPLATE_SET_ID, TEMPLATE_V4, TEMPLATE_V6]);
        let tpl = templates(sets[0].1);
        assert_eq!(tpl.len(), 2);
        assert_eq!(tpl[0].1, enc.fields(TEMPLATE_V4).collect::<Vec<_>>());
        assert_eq!(tpl[1].1, enc.fields(TEMPLATE_V6).collect::<Vec<_>>());
        // Two IPv4 records in one set, read by the template.
        let (first, rest) = fields_of(&tpl[0].1, sets[1].1);
        let (_, rest) = fields_of(&tpl[0].1, rest);
        assert!(rest.is_empty());
        let by = |id: u16, pen: Option<u32>| {
            let i = tpl[0].1.iter().position(|f| f.id == id && f.pen == pen).unwrap();
            first[i]
        };
        assert_eq!(by(ie::SOURCE_IPV4_ADDRESS, None), &[10, 0, 0, 1]);
        assert_eq!(by(ie::FLOW_START_MILLISECONDS, None), &1_700_000_000_123u64.to_be_bytes());
        assert_eq!(by(ie::FLOW_END_MILLISECONDS, None), &1_700_000_005_987u64.to_be_bytes());
        assert_eq!(by(ie::OCTET_DELTA_COUNT, None), &1000u64.to_be_bytes());
        assert_eq!(by(ie::OCTET_DELTA_COUNT, Some(REVERSE_PEN)), &800u64.to_be_bytes());
        assert_eq!(by(ie::PACKET_DELTA_COUNT, Some(REVERSE_PEN)), &8u64.to_be_bytes());
        assert_eq!(by(ie::LAYER2_OCTET_DELTA_COUNT, None), &1140u64.to_be_bytes());
        assert_eq!(by(ie::INGRESS_INTERFACE, Some(REVERSE_PEN)), &2u32.to_be_bytes());
        assert_eq!(by(ie::TCP_CONTROL_BITS, None), &0x13u16.to_be_bytes());
        assert_eq!(by(ie::FLOW_END_REASON, None), &[end_reason::END_OF_FLOW]);
        assert_eq!(by(ie::VLAN_ID, None), &100u16.to_be_bytes());
        assert_eq!(by(ft::HW_OCTET_DELTA_COUNT, Some(DOCUMENTATION_PEN)), &600u64.to_be_bytes());
        assert_eq!(by(ft::OFFLOAD_ACTION, Some(DOCUMENTATION_PEN)), b"forward:3");
        assert_eq!(by(ft::PLACEMENT, Some(DOCUMENTATION_PEN)), b"hardware");
        assert_eq!(by(ft::REVERSE_PLACEMENT, Some(DOCUMENTATION_PEN)), b"");
        assert_eq!(by(ft::CLASSIFIER_RULE, Some(DOCUMENTATION_PEN)), b"web");
        // 200 bytes of label, cut to 128 on a character boundary.
        assert_eq!(by(ft::LABEL, Some(DOCUMENTATION_PEN)), "é".repeat(64).as_bytes());
        let (v6, rest) = fields_of(&tpl[1].1, sets[2].1);
        assert!(rest.is_empty());
        assert_eq!(v6[2], "2001:db8::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
    }

    #[test]
    fn records_go_in_only_while_they_fit() {
        let enc = Encoder::new(DOCUMENTATION_PEN);
        let r = record("10.0.0.1", "10.0.0.2");
        let f = ExportFacts::of(&r).unwrap();
        let mut b = MessageBuilder::new(1200);
        b.add_templates(&enc).unwrap();
        let mut n = 0;
        while b.add_record(&enc, &f).is_ok() {
            n += 1;
        }
        let len = b.len();
        assert!(len <= 1200 && len + enc.record_len(&f) > 1200, "{len}");
        assert!(n >= 2, "{n}");
        // A refused record left the message whole.
        let bytes = b.finish(0, 0, 0).to_vec();
        assert_eq!(Message::new_checked(&bytes).unwrap().sets().count(), 2);
        b.clear();
        assert!(b.is_empty());
        assert_eq!(b.len(), MESSAGE_HEADER_LEN);
    }

    #[test]
    fn padding_fills_a_full_message_only_below_the_shortest_record() {
        let enc = Encoder::new(DOCUMENTATION_PEN);
        let r = record("10.0.0.1", "10.0.0.2");
        let f = ExportFacts::of(&r).unwrap();
        let min = enc.min_record_len(TEMPLATE_V4);
        assert!(min <= enc.record_len(&f) && min > 100, "{min}");
        let mut b = MessageBuilder::new(1472);
        // Templates alone are never padded.
        b.add_templates(&enc).unwrap();
        assert!(!b.pad_to(&enc, 1472));
        while b.add_record(&enc, &f).is_ok() {}
        let gap = 1472 - b.len();
        assert_eq!(b.pad_to(&enc, 1472), gap < min, "gap {gap}, shortest record {min}");
        if gap < min {
            let bytes = b.finish(0, 0, 0).to_vec();
            assert_eq!(bytes.len(), 1472);
            let m = Message::new_checked(&bytes).unwrap();
            let (id, body) = m.sets().last().unwrap();
            assert_eq!(id, TEMPLATE_V4);
            // The set's length covers the padding, all of it zero.
            assert!(body.ends_with(&vec![0u8; gap]));
        }
        // A message one record short of full is not padded: the gap would
        // hold a record.
        let mut b = MessageBuilder::new(1472);
        b.add_record(&enc, &f).unwrap();
        assert!(!b.pad_to(&enc, 1472));
        assert_eq!(b.len(), MESSAGE_HEADER_LEN + 4 + enc.record_len(&f));
    }

    #[test]
    fn end_reasons_map_to_the_registry() {
        assert_eq!(flow_end_reason(EndReason::Idle), 1);
        assert_eq!(flow_end_reason(EndReason::Active), 2);
        assert_eq!(flow_end_reason(EndReason::TcpClose), 3);
        assert_eq!(flow_end_reason(EndReason::Shutdown), 4);
        assert_eq!(flow_end_reason(EndReason::Evicted), 4);
        assert_eq!(flow_end_reason(EndReason::TableFull), 5);
    }

    #[test]
    fn addresses_of_two_ip_versions_are_refused() {
        let r = record("10.0.0.1", "::1");
        assert!(matches!(ExportFacts::of(&r), Err(IpfixError::MixedVersions { .. })));
    }
}
