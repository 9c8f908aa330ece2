//! The configuration schema. Every section has defaults, so `{}` is a
//! valid configuration; unknown fields are errors, so a typo never passes
//! silently.

use flowtable_hw::{Action, PlacementPolicy};
use flowtable_sw::ports::PairError;
use flowtable_sw::{FullPolicy, PortMap, TableConfig, Timeouts};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

type Invalid = (String, String);

/// Bytes one flow slot may take: the 128-byte flow (its framing, first
/// packet's time, link header lengths, padding, TCP flags, ICMP type, in
/// its last 32), its share of the index (13.4 bytes: 60% of the ways full
/// at `max_flows`), the free list (4), its timer wheel entry (8) and, in
/// the 62 bytes left, the engine's per-flow state and, once rules count
/// for the flow, its framing moved beside the table (41).
pub const BYTES_PER_FLOW: u64 = 216;
/// Bytes one remembered first fragment may take in its hash table.
pub const BYTES_PER_FRAGMENT: u64 = 160;
/// The longest path a Unix socket address holds (`sun_path` is 108
/// bytes, with the terminating NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Physical memory of this machine in bytes, when the system tells.
pub fn physical_memory() -> Option<u64> {
    // SAFETY: sysconf only reads system constants.
    let (pages, size) = unsafe { (libc::sysconf(libc::_SC_PHYS_PAGES), libc::sysconf(libc::_SC_PAGESIZE)) };
    (pages > 0 && size > 0).then(|| (pages as u64).saturating_mul(size as u64))
}

fn gib(bytes: u128) -> String {
    format!("{:.1} GiB", bytes as f64 / f64::from(1u32 << 30))
}

/// Checks `log.level` the way the daemon reads it (a tracing filter), and
/// refuses a bare word that isn't a level: `"verbose"` would otherwise be
/// taken as the name of a module and silence everything else.
fn check_log_level(level: &str) -> Result<(), String> {
    const HINT: &str =
        "give one of error, warn, info, debug, trace or off, or directives such as \"info,flowtable=debug\"";
    let is_level = |s: &str| s.trim().parse::<tracing_subscriber::filter::LevelFilter>().is_ok();
    if level.trim().is_empty() {
        return Err(format!("is empty: {HINT}"));
    }
    for directive in level.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let ok = match directive.rsplit_once('=') {
            Some((_, lvl)) => is_level(lvl),
            None => is_level(directive),
        };
        if !ok {
            return Err(format!("{directive:?} is not a log level: {HINT}"));
        }
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(level)
        .map(drop)
        .map_err(|e| format!("{level:?} is not a log filter ({e}): {HINT}"))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Written into every rule's cookie; rules with another owner id are
    /// someone else's.
    #[serde(default = "default_instance_id")]
    pub instance_id: u32,
    /// Worker threads, each owning a shard of the flow table; both
    /// directions of a flow are always handled by the same worker.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// The ports, in index order: flow keys, forward and mirror actions
    /// name ports by their index here.
    #[serde(default = "default_ports")]
    pub ports: Vec<PortConfig>,
    #[serde(default)]
    pub table: TableSection,
    #[serde(default)]
    pub timeouts: TimeoutSection,
    #[serde(default)]
    pub classifier: ClassifierSection,
    #[serde(default)]
    pub offload: OffloadSection,
    #[serde(default)]
    pub backend: BackendConfig,
    #[serde(default)]
    pub records: RecordsSection,
    /// Records to flow collectors (IPFIX).
    #[serde(default)]
    pub export: ExportSection,
    #[serde(default)]
    pub control: ControlSection,
    #[serde(default)]
    pub log: LogSection,
    #[serde(default)]
    pub metrics: MetricsSection,
    /// Packet sources for `flowtable run`.
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
}

fn default_instance_id() -> u32 {
    1
}

fn default_workers() -> usize {
    1
}

/// Most worker threads (a flow id has 8 bits for its shard; past the
/// cores of any one NIC's host there is nothing to gain).
pub const MAX_WORKERS: usize = 64;

fn default_ports() -> Vec<PortConfig> {
    vec![PortConfig::named("port0"), PortConfig::named("port1")]
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortConfig {
    /// Interface name (tc, AF_PACKET) or a label (sim, dpdk).
    pub name: String,
    /// The name of the port this one is joined with in an inline pair (a
    /// bump-in-the-wire): a conversation whose directions cross the two
    /// ports is one flow, each direction's rule on the port it arrives on.
    /// Naming the pair on one of its ports is enough.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pair: Option<String>,
    /// This host is itself an endpoint on the port (its own interface), so
    /// the port carries both directions of its conversations: the frames
    /// the host sends out of it are read too, as the port's egress twin (a
    /// port index of their own, after the listed ports, see
    /// [`Config::egress_twins`]), joined to the port so a conversation is
    /// one flow, and the rules of that direction go on the device's egress
    /// hook (tc: clsact egress).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub egress: bool,
    /// An explanation for the reader (JSON has no comments); ignored.
    #[serde(rename = "_comment", default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

impl PortConfig {
    /// A port of that name, unpaired, ingress only.
    pub fn named(name: &str) -> PortConfig {
        PortConfig { name: name.into(), pair: None, egress: false, comment: None }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TableSection {
    pub max_flows: usize,
    pub full_policy: FullPolicy,
    pub fragment_timeout_s: f64,
    pub max_fragments: usize,
    /// Most bytes all flows' application context may hold together
    /// (labels and metadata); an update past it is refused.
    pub max_context_bytes: usize,
}

impl Default for TableSection {
    fn default() -> Self {
        let t = TableConfig::default();
        TableSection {
            max_flows: t.max_flows,
            full_policy: t.full_policy,
            fragment_timeout_s: t.fragment_timeout_ns as f64 / 1e9,
            max_fragments: t.max_fragments,
            max_context_bytes: flowtable_sw::context::DEFAULT_MAX_TOTAL_BYTES,
        }
    }
}

/// Idle timeouts in seconds (fractions allowed).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutSection {
    pub tcp_handshake_s: f64,
    pub tcp_established_s: f64,
    pub tcp_closing_s: f64,
    pub tcp_closed_s: f64,
    pub udp_s: f64,
    pub icmp_s: f64,
    pub other_s: f64,
}

impl Default for TimeoutSection {
    fn default() -> Self {
        let t = Timeouts::default();
        let s = |ns: u64| ns as f64 / 1e9;
        TimeoutSection {
            tcp_handshake_s: s(t.tcp_handshake),
            tcp_established_s: s(t.tcp_established),
            tcp_closing_s: s(t.tcp_closing),
            tcp_closed_s: s(t.tcp_closed),
            udp_s: s(t.udp),
            icmp_s: s(t.icmp),
            other_s: s(t.other),
        }
    }
}

/// More than zero and a number (NaN is neither).
fn positive(v: f64) -> bool {
    v.is_finite() && v > 0.0
}

fn secs_to_ns(s: f64) -> u64 {
    (s * 1e9) as u64
}

impl TimeoutSection {
    pub fn to_timeouts(&self) -> Timeouts {
        Timeouts {
            tcp_handshake: secs_to_ns(self.tcp_handshake_s),
            tcp_established: secs_to_ns(self.tcp_established_s),
            tcp_closing: secs_to_ns(self.tcp_closing_s),
            tcp_closed: secs_to_ns(self.tcp_closed_s),
            udp: secs_to_ns(self.udp_s),
            icmp: secs_to_ns(self.icmp_s),
            other: secs_to_ns(self.other_s),
        }
    }

    fn validate(&self) -> Result<(), Invalid> {
        let all = [
            ("tcp_handshake_s", self.tcp_handshake_s),
            ("tcp_established_s", self.tcp_established_s),
            ("tcp_closing_s", self.tcp_closing_s),
            ("tcp_closed_s", self.tcp_closed_s),
            ("udp_s", self.udp_s),
            ("icmp_s", self.icmp_s),
            ("other_s", self.other_s),
        ];
        for (name, v) in all {
            if !(v > 0.0 && v <= 86_400.0 * 365.0) {
                return Err((
                    format!("timeouts.{name}"),
                    format!("{v} is not a timeout: give seconds, more than 0 and at most a year"),
                ));
            }
        }
        Ok(())
    }
}

impl Config {
    /// The egress twins, as (port, twin) indices: the ports with `egress`
    /// set, in order, give the indices after the listed ports to the frames
    /// the host sends out of them (ports `a`, `b` with egress on `b` alone:
    /// `b`'s twin is 2).
    pub fn egress_twins(&self) -> Vec<(u8, u8)> {
        let n = self.ports.len();
        self.ports
            .iter()
            .enumerate()
            .filter(|(_, p)| p.egress)
            .enumerate()
            .map(|(k, (i, _))| (i as u8, (n + k).min(255) as u8))
            .collect()
    }

    /// The index the frames the host sends out of port `port` are given,
    /// if that port has `egress` set.
    pub fn egress_twin(&self, port: u8) -> Option<u8> {
        self.egress_twins().into_iter().find(|&(p, _)| p == port).map(|(_, t)| t)
    }

    /// Every port index in use: the listed ports and their egress twins.
    pub fn port_count(&self) -> usize {
        self.ports.len() + self.ports.iter().filter(|p| p.egress).count()
    }

    /// What to call port index `port`: its name, or for an egress twin its
    /// port's name and `egress` (as tc names the hook).
    pub fn port_label(&self, port: u8) -> String {
        if let Some(p) = self.ports.get(port as usize) {
            return p.name.clone();
        }
        match self.egress_twins().into_iter().find(|&(_, t)| t == port) {
            Some((p, _)) => format!("{} egress", self.ports[p as usize].name),
            None => format!("port{port}"),
        }
    }

    /// The ports' inline pairs and egress twins, by index. Checked by
    /// `validate`; an error names the `pair` (or `egress`) field that
    /// breaks the map.
    pub fn port_map(&self) -> Result<PortMap, Invalid> {
        let name = |p: u8| self.ports.get(p as usize).map_or("?", |x| x.name.as_str());
        let mut pairs = Vec::new();
        let mut map = PortMap::unpaired();
        for (i, port) in self.ports.iter().enumerate() {
            let Some(other) = &port.pair else { continue };
            let at = format!("ports[{i}].pair");
            let j = self.ports.iter().position(|p| &p.name == other).ok_or_else(|| {
                let names: Vec<&str> = self.ports.iter().map(|p| p.name.as_str()).collect();
                (at.clone(), format!("no port is named {other:?}; ports: {}", names.join(", ")))
            })?;
            pairs.push((i as u8, j as u8));
            map = PortMap::with_pairs(&pairs).map_err(|e| {
                let message = match e {
                    PairError::SelfPair(_) => format!("port {:?} can't be paired with itself", port.name),
                    PairError::TwoPairs { port, first, second } => format!(
                        "port {:?} is already paired with {:?}; it can't also pair with {:?}",
                        name(port),
                        name(first),
                        name(second)
                    ),
                };
                (at.clone(), message)
            })?;
        }
        for (port, twin) in self.egress_twins() {
            let p = &self.ports[port as usize];
            if map.partner(port).is_some() {
                let other = map.partner(port).map_or("?", name);
                return Err((
                    format!("ports[{port}].egress"),
                    format!(
                        "port {:?} is in an inline pair with {other:?}: what it sends is what the pair forwards, \
                         already seen on the other port; `egress` is for a host's own interface",
                        p.name
                    ),
                ));
            }
            map.join_egress(port, twin).map_err(|e| (format!("ports[{port}].egress"), e.to_string()))?;
        }
        Ok(map)
    }

    pub fn table_config(&self) -> TableConfig {
        TableConfig {
            max_flows: self.table.max_flows,
            full_policy: self.table.full_policy,
            timeouts: self.timeouts.to_timeouts(),
            fragment_timeout_ns: secs_to_ns(self.table.fragment_timeout_s),
            max_fragments: self.table.max_fragments,
            ..TableConfig::default()
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierSection {
    /// Rules in order; the first whose match and trigger fit decides.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// What happens to flows no rule takes, once they reach
    /// `default_after_packets` packets.
    #[serde(default = "default_result")]
    pub default: ClassResult,
    #[serde(default = "default_after_packets")]
    pub default_after_packets: u64,
}

fn default_result() -> ClassResult {
    ClassResult::Software
}

fn default_after_packets() -> u64 {
    1
}

impl Default for ClassifierSection {
    fn default() -> Self {
        ClassifierSection { rules: vec![], default: default_result(), default_after_packets: default_after_packets() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    #[serde(rename = "match", default)]
    pub matches: MatchConfig,
    #[serde(default)]
    pub trigger: TriggerConfig,
    pub result: ClassResult,
}

/// What a rule matches. Every field given must match; lists match when
/// any element does. `client`/`server` are relative to the flow's first
/// packet (its sender is the client); the plain forms match either side.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MatchConfig {
    pub proto: Option<ProtoName>,
    pub ports: Vec<PortSpec>,
    pub server_ports: Vec<PortSpec>,
    pub client_ports: Vec<PortSpec>,
    #[serde(deserialize_with = "prefixes")]
    pub prefixes: Vec<IpNet>,
    #[serde(deserialize_with = "prefixes")]
    pub server_prefixes: Vec<IpNet>,
    #[serde(deserialize_with = "prefixes")]
    pub client_prefixes: Vec<IpNet>,
    /// Outer VLAN id (0 = untagged).
    pub vlan: Option<u16>,
    /// Ingress port index.
    pub ingress: Option<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProtoName {
    Tcp,
    Udp,
    Sctp,
    /// ICMP and ICMPv6.
    Icmp,
    Gre,
    Esp,
}

impl ProtoName {
    pub fn matches(self, proto: u8) -> bool {
        match self {
            ProtoName::Tcp => proto == 6,
            ProtoName::Udp => proto == 17,
            ProtoName::Sctp => proto == 132,
            ProtoName::Icmp => proto == 1 || proto == 58,
            ProtoName::Gre => proto == 47,
            ProtoName::Esp => proto == 50,
        }
    }
}

/// A port or an inclusive range: `443`, `"443"` or `"8000-8999"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum PortSpec {
    Number(u16),
    Text(String),
}

/// By hand rather than derived: an untagged enum's error is "data did not
/// match any variant of untagged enum PortSpec", which says nothing of what
/// is wrong (a port past 65535, a range written backwards).
impl<'de> Deserialize<'de> for PortSpec {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<PortSpec, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = PortSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a port (0 to 65535) or a range such as \"8000-8999\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<PortSpec, E> {
                u16::try_from(v)
                    .map(PortSpec::Number)
                    .map_err(|_| E::custom(format!("{v} is not a port: give 0 to 65535")))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<PortSpec, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom(format!("{v} is not a port: give 0 to 65535"))),
                }
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<PortSpec, E> {
                Err(E::custom(format!("{v} is not a port: give a whole number, 0 to 65535")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PortSpec, E> {
                let spec = PortSpec::Text(v.to_string());
                spec.range().map_err(E::custom)?;
                Ok(spec)
            }
        }
        de.deserialize_any(Visitor)
    }
}

/// Address prefixes (`"10.0.0.0/8"`, `"2001:db8::/32"`, or one address),
/// parsed by hand so that an error says which part is wrong: ipnet's own
/// says "invalid IP address syntax" for `10.0.0.0/33`, whose address is fine.
fn prefixes<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Vec<IpNet>, D::Error> {
    // Element by element, so that an error names its index.
    struct Prefix(IpNet);
    impl<'de> Deserialize<'de> for Prefix {
        fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Prefix, D::Error> {
            let text = String::deserialize(de)?;
            parse_prefix(&text).map(Prefix).map_err(serde::de::Error::custom)
        }
    }
    Ok(Vec::<Prefix>::deserialize(de)?.into_iter().map(|p| p.0).collect())
}

/// One prefix or address, or why it is neither, in the words of the part
/// that is wrong.
pub fn parse_prefix(text: &str) -> Result<IpNet, String> {
    let (addr, len) = match text.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (text, None),
    };
    let addr: std::net::IpAddr =
        addr.trim().parse().map_err(|_| format!("{addr:?} is not an IPv4 or IPv6 address (in prefix {text:?})"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => match l.trim().parse::<u8>() {
            Ok(n) if n <= max => n,
            _ => {
                let family = if addr.is_ipv4() { "IPv4" } else { "IPv6" };
                return Err(format!(
                    "prefix {text:?}: the length {l:?} is not 0 to {max}, as an {family} prefix needs"
                ));
            }
        },
    };
    IpNet::new(addr, len).map_err(|e| format!("prefix {text:?}: {e}"))
}

impl PortSpec {
    /// The inclusive range, or why the text isn't one.
    pub fn range(&self) -> Result<(u16, u16), String> {
        match self {
            PortSpec::Number(p) => Ok((*p, *p)),
            PortSpec::Text(t) => {
                let parse =
                    |s: &str| s.trim().parse::<u16>().map_err(|_| format!("{s:?} is not a port number (0-65535)"));
                match t.split_once('-') {
                    None => parse(t).map(|p| (p, p)),
                    Some((a, b)) => {
                        let (a, b) = (parse(a)?, parse(b)?);
                        if a > b {
                            Err(format!("range {t:?} runs backwards"))
                        } else {
                            Ok((a, b))
                        }
                    }
                }
            }
        }
    }
}

/// When a rule decides: once all the conditions given hold (after this
/// many packets, and this many bytes, and the TCP handshake completed).
/// With none given, it decides on the first packet.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TriggerConfig {
    pub after_packets: Option<u64>,
    pub after_bytes: Option<u64>,
    pub tcp_established: bool,
    /// An explanation for the reader (JSON has no comments); ignored.
    #[serde(rename = "_comment", skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// A classification result: `"software"` or `{"offload": ACTION}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClassResult {
    /// Keep the flow in software.
    Software,
    /// Offload the flow with this action.
    Offload(Action),
}

const RESULT_HINT: &str = r#"give "software" or {"offload": ACTION}, e.g. {"offload": {"type": "drop"}}"#;

/// By hand rather than derived: serde's words for an enum written the
/// wrong way are Rust's ("unit variant ... give newtype variant" for a
/// bare `"offload"`, "give unit" for `{"software": {}}`).
impl<'de> Deserialize<'de> for ClassResult {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<ClassResult, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = ClassResult;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(r#""software" or {"offload": ACTION}, e.g. {"offload": {"type": "drop"}}"#)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ClassResult, E> {
                match v {
                    "software" => Ok(ClassResult::Software),
                    "offload" => Err(E::custom(
                        r#""offload" needs its action: write {"offload": {"type": "drop"}} (or "pass", or "forward", "mirror" with a "port", or "mark" with a "mark")"#,
                    )),
                    other => Err(E::custom(format!("{other:?} is not a result: {RESULT_HINT}"))),
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<ClassResult, A::Error> {
                use serde::de::Error;
                let Some(key) = map.next_key::<String>()? else {
                    return Err(A::Error::custom(format!("an empty object is not a result: {RESULT_HINT}")));
                };
                let result = match key.as_str() {
                    "offload" => ClassResult::Offload(map.next_value::<Action>()?),
                    // `{"software": null}` is how serde writes a unit variant
                    // in an object; taken, as it always was.
                    "software" => match map.next_value::<serde_json::Value>()? {
                        serde_json::Value::Null => ClassResult::Software,
                        _ => {
                            return Err(A::Error::custom(r#""software" takes no settings: write "result": "software""#))
                        }
                    },
                    other => return Err(A::Error::custom(format!("{other:?} is not a result: {RESULT_HINT}"))),
                };
                if let Some(more) = map.next_key::<String>()? {
                    return Err(A::Error::custom(format!(
                        "{more:?} after {key:?}: a result is one of \"software\" or {{\"offload\": ACTION}}"
                    )));
                }
                Ok(result)
            }
        }
        de.deserialize_any(Visitor)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OffloadSection {
    /// How often hardware counters are read and idle rules aged.
    pub poll_interval_ms: u64,
    /// Most rules handed to the backend in one call.
    pub batch_size: usize,
    /// Where rules go: `hardware` (skip_sw), `software` (skip_hw), `auto`.
    pub placement: PlacementPolicy,
    /// For rules whose counters can't be read (a PMD that refuses COUNT)
    /// and whose action hides the packets from software (drop, forward):
    /// they are removed this long after install.
    pub hard_timeout_s: f64,
    /// Most flows waiting for install; past it the smallest wait longer.
    pub max_queued: usize,
}

impl Default for OffloadSection {
    fn default() -> Self {
        OffloadSection {
            poll_interval_ms: 1000,
            batch_size: 256,
            placement: PlacementPolicy::Auto,
            hard_timeout_s: 300.0,
            max_queued: 65536,
        }
    }
}

/// Which NIC to program.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum BackendConfig {
    /// The embedded simulated NIC.
    Sim(SimBackendConfig),
    /// Linux tc-flower on the ports' interfaces.
    Tc(TcBackendConfig),
    /// DPDK rte_flow; the section is read by the DPDK backend
    /// (`flowtable_hw::dpdk_config::DpdkConfig`), and checked against it
    /// by `Config::validate` in every build.
    Dpdk(serde_json::Map<String, serde_json::Value>),
}

/// `{"kind": "sim", ...}`: a struct of its own (not fields of the enum's
/// variant) so that an error in it can be named by its field (serde's
/// internally tagged enums lose the path; see `check_backend` in lib.rs).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimBackendConfig {
    #[serde(default)]
    pub profile: SimProfile,
    /// Overrides the profile's capacity.
    #[serde(default)]
    pub max_rules: Option<usize>,
    /// Overrides the profile's insertion rate (rules per second).
    #[serde(default)]
    pub insert_rate: Option<u32>,
    /// How long its calls take, to stand in for a slow NIC or kernel.
    #[serde(default)]
    pub latency: SimLatencyConfig,
}

/// `{"kind": "tc", ...}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcBackendConfig {
    /// Leave rules in place on shutdown (for an upgrade: the next run
    /// takes them over, see `adopt_rules`).
    #[serde(default)]
    pub keep_rules: bool,
    /// At start, take over the rules an earlier run of this instance
    /// left (killed, or stopped with `keep_rules`) whose flows the
    /// journal knows and this configuration still offloads so: they
    /// stay in place and count on. The rest are removed. Off: every
    /// rule an earlier run left is removed.
    #[serde(default = "yes")]
    pub adopt_rules: bool,
    /// The offload journal: what the rules don't carry of each
    /// offloaded flow (its software part, start, TCP state, class),
    /// for a restart to take it over. Without one, a restart removes
    /// what an earlier run left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal: Option<std::path::PathBuf>,
    /// Offload ICMP flows with rules on the two hosts and the protocol
    /// alone (flower has no key for the echo identifier), which take
    /// every ICMP packet between the hosts, other flows' included, and
    /// count them to the flow that got the rule. Off: ICMP stays in
    /// software.
    #[serde(default)]
    pub icmp_by_hosts: bool,
}

fn yes() -> bool {
    true
}

impl BackendConfig {
    /// The offload journal's path, when restarts take rules over.
    pub fn journal(&self) -> Option<&std::path::Path> {
        match self {
            BackendConfig::Tc(TcBackendConfig { adopt_rules: true, journal: Some(p), .. }) => Some(p),
            _ => None,
        }
    }

    /// Whether the backend leaves its rules in place on shutdown
    /// (`keep_rules`, for tc and dpdk).
    pub fn keep_rules(&self) -> bool {
        match self {
            BackendConfig::Sim(_) => false,
            BackendConfig::Tc(tc) => tc.keep_rules,
            BackendConfig::Dpdk(map) => map.get("keep_rules") == Some(&serde_json::Value::Bool(true)),
        }
    }
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig::Sim(SimBackendConfig::default())
    }
}

/// The sim NIC's call latencies: each install or removal call takes
/// `per_rule_us` per rule, each counter read `per_read_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SimLatencyConfig {
    pub per_rule_us: u64,
    pub per_read_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SimProfile {
    /// Takes every match and action, 64k rules, 100k inserts/s, counters.
    #[default]
    Full,
    /// Refuses every rule, as netdevsim does for flower.
    RefuseAll,
    /// A small NIC: 1024 rules, 1000 inserts/s, no mirror, no IPv6.
    Small,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordsSection {
    /// JSON-lines file for expired flows' records (none: not written).
    pub path: Option<String>,
    /// Rotate when the file passes this size (0: never).
    pub rotate_bytes: u64,
    /// Rotated files kept.
    pub keep: u32,
}

/// Where ended flows' records go besides the records file: IPFIX
/// collectors (nfcapd, pmacct, goflow2, ...), each with its own queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExportSection {
    #[serde(rename = "_comment", skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// IPFIX collectors (none: no export).
    pub ipfix: Vec<IpfixCollector>,
    /// The observation domain id every message carries.
    pub observation_domain: u32,
    /// Over UDP, templates are sent again this often (and at the start).
    pub template_refresh_s: f64,
    /// The path MTU to the collectors: messages are filled up to it, less
    /// the IP and UDP or TCP headers.
    pub mtu: u32,
    /// Records each collector's queue holds; past it, records are dropped
    /// and counted (`flowtable stats`).
    pub queue_records: usize,
    /// The private enterprise number of flowtable's own elements (32473,
    /// the number RFC 5612 sets aside for documentation, unless yours).
    pub enterprise_number: u32,
    /// A flow lasting longer than this gives an interim record every
    /// period, with what it carried since the previous one (end reason
    /// `active`), to every sink; 0: one record per flow, at its end.
    pub active_timeout_s: f64,
}

impl Default for ExportSection {
    fn default() -> Self {
        ExportSection {
            comment: None,
            ipfix: Vec::new(),
            observation_domain: 1,
            template_refresh_s: 60.0,
            mtu: 1500,
            queue_records: 65536,
            enterprise_number: 32473,
            active_timeout_s: 0.0,
        }
    }
}

/// One IPFIX collector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpfixCollector {
    /// IP address and port, e.g. "127.0.0.1:4739" or "[2001:db8::1]:4739".
    pub address: String,
    #[serde(default)]
    pub transport: ExportTransport,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportTransport {
    #[default]
    Udp,
    Tcp,
}

/// Smallest `export.mtu`: a message must hold the templates and a record.
pub const MIN_EXPORT_MTU: u32 = 1100;

impl ExportSection {
    /// Each collector's address, parsed.
    pub fn addresses(&self) -> Result<Vec<std::net::SocketAddr>, Invalid> {
        self.ipfix
            .iter()
            .enumerate()
            .map(|(i, c)| {
                c.address.parse().map_err(|_| {
                    (
                        format!("export.ipfix[{i}].address"),
                        format!("{:?} is not an IP address and port: give e.g. \"127.0.0.1:4739\"", c.address),
                    )
                })
            })
            .collect()
    }

    fn validate(&self) -> Result<(), Invalid> {
        self.addresses()?;
        if !(MIN_EXPORT_MTU..=65535).contains(&self.mtu) {
            return Err((
                "export.mtu".into(),
                format!("{} is out of range: give {MIN_EXPORT_MTU} to 65535 bytes", self.mtu),
            ));
        }
        if !positive(self.template_refresh_s) {
            return Err(("export.template_refresh_s".into(), "must be more than 0".into()));
        }
        if self.queue_records == 0 {
            return Err(("export.queue_records".into(), "must be at least 1".into()));
        }
        // A day at most: past it a flow's interim records say little a
        // final one wouldn't, and the value is most likely a unit slip.
        if !(self.active_timeout_s == 0.0 || (1.0..=86_400.0).contains(&self.active_timeout_s)) {
            return Err((
                "export.active_timeout_s".into(),
                format!("{} is out of range: give 0 (off) or 1 to 86400 seconds", self.active_timeout_s),
            ));
        }
        Ok(())
    }
}

/// Where the daemon listens and clients look when told nothing: in the
/// directory systemd makes for the unit (RuntimeDirectory=flowtable in
/// packaging/flowtable.service), which `ProtectSystem=strict` leaves writable.
pub const DEFAULT_SOCKET: &str = "/run/flowtable/flowtable.sock";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlSection {
    pub socket: String,
}

impl Default for ControlSection {
    fn default() -> Self {
        ControlSection { socket: DEFAULT_SOCKET.into() }
    }
}

/// Prometheus metrics over HTTP (`GET /metrics`); off unless `listen`
/// is given. Taken at start only: a reload leaves the server as it is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// `address:port` to serve on, e.g. `"127.0.0.1:9464"` or `"[::]:9464"`.
    pub listen: Option<String>,
    /// An explanation for the reader (JSON has no comments); ignored.
    #[serde(rename = "_comment", skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

impl MetricsSection {
    /// The address to serve on, if any; an error in the operator's words
    /// if `listen` is not one.
    pub fn address(&self) -> Result<Option<std::net::SocketAddr>, String> {
        let Some(text) = &self.listen else { return Ok(None) };
        let addr: std::net::SocketAddr = text.trim().parse().map_err(|_| {
            format!(
                "{text:?} is not an IP address and port: give e.g. \"127.0.0.1:9464\", \"0.0.0.0:9464\" or \"[::1]:9464\" (host names are not looked up)"
            )
        })?;
        if addr.port() == 0 {
            return Err(format!(
                "{text:?}: port 0 would be a different port at every start; give the port Prometheus scrapes, e.g. 9464"
            ));
        }
        Ok(Some(addr))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    pub format: LogFormat,
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection { format: LogFormat::Human, level: "info".into() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// A packet source for `flowtable run`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum SourceConfig {
    /// A pcap or pcapng file, replayed once; the daemon keeps running after.
    Pcap {
        path: String,
        #[serde(default)]
        ingress: u8,
        #[serde(default)]
        pace: Pace,
    },
    /// The synthetic generator; settings as in `flowtable demo`, plus
    /// `"pace"` as for files.
    Synthetic(serde_json::Map<String, serde_json::Value>),
    /// A live interface (AF_PACKET).
    Interface {
        name: String,
        #[serde(default)]
        ingress: u8,
    },
    /// Every rx queue of the DPDK backend's ports (`{"dpdk": {}}`); needs
    /// backend kind `dpdk`, whose ports it reads.
    Dpdk {},
}

/// How `flowtable run` replays a file or the generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Pace {
    /// At the packets' own timestamps, as they were captured.
    #[default]
    Timestamps,
    /// As fast as possible; the daemon's clock follows the packets' time.
    Fast,
}

impl Pace {
    /// As the configuration writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Pace::Timestamps => "timestamps",
            Pace::Fast => "fast",
        }
    }
}

impl MatchConfig {
    /// Whether every flow `later` matches, this matches too (so a rule
    /// with this match, placed first, leaves `later`'s rule nothing). Only
    /// what can be shown is claimed: lists compare range by range and
    /// prefix by prefix, so overlaps it can't prove give false.
    pub fn covers(&self, later: &MatchConfig) -> bool {
        fn ranges(specs: &[PortSpec]) -> Vec<(u16, u16)> {
            specs.iter().filter_map(|s| s.range().ok()).collect()
        }
        // `wide` (empty: any) holds every port of one of `narrow`'s lists.
        let ports_cover = |wide: &[PortSpec], narrow: &[&[PortSpec]]| {
            let wide = ranges(wide);
            wide.is_empty()
                || narrow.iter().any(|n| {
                    let n = ranges(n);
                    !n.is_empty() && n.iter().all(|&(a, b)| wide.iter().any(|&(wa, wb)| wa <= a && b <= wb))
                })
        };
        let prefixes_cover = |wide: &[IpNet], narrow: &[&[IpNet]]| {
            wide.is_empty()
                || narrow.iter().any(|n| !n.is_empty() && n.iter().all(|p| wide.iter().any(|w| w.contains(p))))
        };
        let l = later;
        (self.proto.is_none() || self.proto == l.proto)
            && (self.vlan.is_none() || self.vlan == l.vlan)
            && (self.ingress.is_none() || self.ingress == l.ingress)
            && ports_cover(&self.ports, &[&l.ports, &l.server_ports, &l.client_ports])
            && ports_cover(&self.server_ports, &[&l.server_ports])
            && ports_cover(&self.client_ports, &[&l.client_ports])
            && prefixes_cover(&self.prefixes, &[&l.prefixes, &l.server_prefixes, &l.client_prefixes])
            && prefixes_cover(&self.server_prefixes, &[&l.server_prefixes])
            && prefixes_cover(&self.client_prefixes, &[&l.client_prefixes])
    }
}

impl Config {
    /// What the daemon runs with but most likely not as meant: a rule an
    /// earlier one leaves nothing to (the first rule whose match fits owns
    /// a flow, whatever its trigger), no packet source. `flowtable run`
    /// logs them at start and reload; `config check` prints them.
    pub fn warnings(&self) -> Vec<Invalid> {
        let mut out = Vec::new();
        let rules = &self.classifier.rules;
        for (j, later) in rules.iter().enumerate() {
            if let Some((i, first)) = rules[..j].iter().enumerate().find(|(_, r)| r.matches.covers(&later.matches)) {
                out.push((
                    format!("classifier.rules[{j}]"),
                    format!(
                        "rule {:?} can never decide a flow: rule {:?} (classifier.rules[{i}]) comes first and matches every flow it would; put {:?} before {:?} or narrow {:?}'s match",
                        later.name, first.name, later.name, first.name, first.name
                    ),
                ));
            }
        }
        if let BackendConfig::Tc(TcBackendConfig { keep_rules: true, adopt_rules, journal, .. }) = &self.backend {
            if !*adopt_rules || journal.is_none() {
                out.push((
                    "backend.keep_rules".into(),
                    "the rules kept at a stop are removed by the next start, which has no journal to take them over from: set backend.journal (and leave adopt_rules on)".into(),
                ));
            }
        }
        if self.sources.is_empty() {
            out.push((
                "sources".into(),
                "none given: `flowtable run` would read no packets (give an interface, pcap, synthetic or dpdk source)"
                    .into(),
            ));
        }
        out
    }

    /// Checks what serde's types can't: ranges, references between
    /// sections. Returns the offending field's path and the problem.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.workers == 0 || self.workers > MAX_WORKERS {
            return Err(("workers".into(), format!("{} is out of range: give 1 to {MAX_WORKERS}", self.workers)));
        }
        if self.table.max_flows == 0 || self.table.max_flows > u32::MAX as usize {
            return Err((
                "table.max_flows".into(),
                format!("{} is out of range: give 1 to {}", self.table.max_flows, u32::MAX),
            ));
        }
        if let Some(p) = &self.records.path {
            if std::path::Path::new(p).is_dir() {
                return Err((
                    "records.path".into(),
                    format!(
                        "{p} is a directory: give the path of a file in it, e.g. {}/records.jsonl",
                        p.trim_end_matches('/')
                    ),
                ));
            }
        }
        if self.table.max_fragments == 0 {
            return Err(("table.max_fragments".into(), "must be at least 1".into()));
        }
        if self.table.max_context_bytes == 0 {
            return Err((
                "table.max_context_bytes".into(),
                "must be at least 1: 0 would refuse every flow context an application sets".into(),
            ));
        }
        // Sizes the machine can hold: the table is allocated for its
        // maximum when it starts.
        if let Some(memory) = physical_memory() {
            let flows = self.table.max_flows as u128 * u128::from(BYTES_PER_FLOW);
            if flows > u128::from(memory) {
                return Err((
                    "table.max_flows".into(),
                    format!(
                        "{} flows need about {} ({BYTES_PER_FLOW} bytes each), more than the {} of memory this \
                         machine has",
                        self.table.max_flows,
                        gib(flows),
                        gib(memory.into())
                    ),
                ));
            }
            let frags = self.table.max_fragments as u128 * u128::from(BYTES_PER_FRAGMENT);
            if flows + frags > u128::from(memory) {
                return Err((
                    "table.max_fragments".into(),
                    format!(
                        "{} fragments need about {} ({BYTES_PER_FRAGMENT} bytes each), which with the flow table's \
                         {} is more than the {} of memory this machine has",
                        self.table.max_fragments,
                        gib(frags),
                        gib(flows),
                        gib(memory.into())
                    ),
                ));
            }
        }
        if !positive(self.table.fragment_timeout_s) {
            return Err(("table.fragment_timeout_s".into(), "must be more than 0".into()));
        }
        self.timeouts.validate()?;
        self.export.validate()?;
        if self.ports.is_empty() || self.ports.len() > 256 {
            return Err(("ports".into(), "give 1 to 256 ports".into()));
        }
        if self.port_count() > 256 {
            let first = self.ports.iter().position(|p| p.egress).unwrap_or(0);
            return Err((
                format!("ports[{first}].egress"),
                format!(
                    "{} ports and {} egress twins make more than 256 port indexes",
                    self.ports.len(),
                    self.port_count() - self.ports.len()
                ),
            ));
        }
        if let (BackendConfig::Dpdk(_), Some(i)) = (&self.backend, self.ports.iter().position(|p| p.egress)) {
            return Err((
                format!("ports[{i}].egress"),
                "the dpdk backend reads and programs what ports receive; it has no egress hook for what this \
                 host sends (the tc backend has)"
                    .into(),
            ));
        }
        for (i, port) in self.ports.iter().enumerate() {
            if let Some(j) = self.ports[..i].iter().position(|p| p.name == port.name) {
                return Err((format!("ports[{i}].name"), format!("{:?} is also the name of ports[{j}]", port.name)));
            }
        }
        self.port_map()?;
        if self.offload.poll_interval_ms == 0 {
            return Err(("offload.poll_interval_ms".into(), "must be at least 1".into()));
        }
        if self.offload.batch_size == 0 {
            return Err(("offload.batch_size".into(), "must be at least 1".into()));
        }
        if !positive(self.offload.hard_timeout_s) {
            return Err(("offload.hard_timeout_s".into(), "must be more than 0".into()));
        }
        if self.offload.max_queued == 0 {
            return Err((
                "offload.max_queued".into(),
                "must be at least 1: with no room to wait for its rules, no flow would ever be offloaded".into(),
            ));
        }
        if let BackendConfig::Sim(SimBackendConfig { max_rules, insert_rate, .. }) = &self.backend {
            // Every offloaded flow takes two rules (one per direction),
            // installed together.
            if let Some(n @ 1) = max_rules {
                return Err((
                    "backend.max_rules".into(),
                    format!(
                        "{n} rule can't hold a flow: each offloaded flow takes 2 (one per direction); \
                         give 0 for no limit, or at least 2"
                    ),
                ));
            }
            if let Some(r @ 1) = insert_rate {
                return Err((
                    "backend.insert_rate".into(),
                    format!(
                        "{r} rule per second can't install a flow: its 2 rules go in together; give 0 for no \
                         limit, or at least 2"
                    ),
                ));
            }
        }
        let check_action = |path: String, action: &Action| -> Result<(), Invalid> {
            if let Action::Forward { port } | Action::Mirror { port } = action {
                if *port as usize >= self.ports.len() {
                    return Err((
                        format!("{path}.port"),
                        format!(
                            "port {port} does not exist: {} port(s) are configured (indexes 0 to {})",
                            self.ports.len(),
                            self.ports.len() - 1
                        ),
                    ));
                }
            }
            Ok(())
        };
        if let ClassResult::Offload(a) = &self.classifier.default {
            check_action("classifier.default.offload".into(), a)?;
        }
        for (i, rule) in self.classifier.rules.iter().enumerate() {
            let base = format!("classifier.rules[{i}]");
            if rule.name.is_empty() {
                return Err((format!("{base}.name"), "must not be empty".into()));
            }
            if let Some(dup) = self.classifier.rules[..i].iter().position(|r| r.name == rule.name) {
                return Err((format!("{base}.name"), format!("{:?} is already the name of rule {dup}", rule.name)));
            }
            let m = &rule.matches;
            for (name, list) in
                [("ports", &m.ports), ("server_ports", &m.server_ports), ("client_ports", &m.client_ports)]
            {
                for (j, p) in list.iter().enumerate() {
                    p.range().map_err(|e| (format!("{base}.match.{name}[{j}]"), e))?;
                }
            }
            if let Some(v) = m.vlan {
                if v > 4095 {
                    return Err((format!("{base}.match.vlan"), format!("{v} is not a VLAN id (0-4095)")));
                }
            }
            if let Some(p) = m.ingress {
                // An egress twin is a port a flow can start on (the host
                // sent its first packet).
                if p as usize >= self.port_count() {
                    return Err((format!("{base}.match.ingress"), format!("port {p} does not exist")));
                }
            }
            if rule.trigger.after_packets == Some(0) {
                return Err((format!("{base}.trigger.after_packets"), "must be at least 1".into()));
            }
            if let ClassResult::Offload(a) = &rule.result {
                check_action(format!("{base}.result.offload"), a)?;
            }
        }
        if let Some(p) = &self.records.path {
            if p.is_empty() {
                return Err(("records.path".into(), "must not be empty".into()));
            }
        }
        if self.control.socket.is_empty() {
            return Err(("control.socket".into(), "must not be empty".into()));
        }
        if self.control.socket.len() > MAX_SOCKET_PATH {
            return Err((
                "control.socket".into(),
                format!(
                    "the path is {} bytes long; a Unix socket path can be at most {MAX_SOCKET_PATH}",
                    self.control.socket.len()
                ),
            ));
        }
        if self.control.socket.contains('\0') {
            return Err(("control.socket".into(), "must not contain a NUL byte".into()));
        }
        self.check_paths()?;
        check_log_level(&self.log.level).map_err(|m| ("log.level".to_string(), m))?;
        self.metrics.address().map_err(|m| ("metrics.listen".to_string(), m))?;
        for (i, source) in self.sources.iter().enumerate() {
            if let SourceConfig::Synthetic(map) = source {
                check_synthetic(&format!("sources[{i}].synthetic"), map)?;
            }
            // An interface's frames arrive on a listed port; a file's or
            // the generator's may be given an egress twin's index.
            let (at, ingress, ports) = match source {
                SourceConfig::Interface { ingress, .. } => ("interface", u64::from(*ingress), self.ports.len()),
                SourceConfig::Pcap { ingress, .. } => ("pcap", u64::from(*ingress), self.port_count()),
                SourceConfig::Synthetic(map) => {
                    ("synthetic", map.get("ingress").and_then(|v| v.as_u64()).unwrap_or(0), self.port_count())
                }
                SourceConfig::Dpdk {} => continue,
            };
            if ingress as usize >= ports {
                return Err((
                    format!("sources[{i}].{at}.ingress"),
                    format!(
                        "port {ingress} does not exist: {} port(s) are configured (indexes 0 to {}); \
                         list it in `ports`, or give one of those",
                        ports,
                        ports - 1
                    ),
                ));
            }
        }
        if let BackendConfig::Dpdk(map) = &self.backend {
            // Its fields and their types are checked as the file is read
            // (lib.rs, `backend_fields`); then what the DPDK backend checks.
            let dpdk: flowtable_hw::dpdk_config::DpdkConfig =
                serde_json::from_value(serde_json::Value::Object(map.clone()))
                    .map_err(|e| ("backend".to_string(), crate::in_plain_words(&e.to_string())))?;
            dpdk.check().map_err(|e| match e.split_once(": ") {
                Some((field, message)) if field.starts_with("backend") => (field.to_string(), message.to_string()),
                _ => ("backend".to_string(), e),
            })?;
            if dpdk.ports.len() != self.ports.len() {
                return Err((
                    "backend.ports".into(),
                    format!(
                        "{} DPDK port(s), but the top-level `ports` lists {}: give one device per port, in the same order",
                        dpdk.ports.len(),
                        self.ports.len()
                    ),
                ));
            }
        }
        let mut dpdk_sources = self.sources.iter().enumerate().filter(|(_, s)| matches!(s, SourceConfig::Dpdk {}));
        if let Some((i, _)) = dpdk_sources.next() {
            if !matches!(self.backend, BackendConfig::Dpdk(_)) {
                return Err((
                    format!("sources[{i}].dpdk"),
                    "reads the DPDK backend's ports: needs backend kind \"dpdk\"".into(),
                ));
            }
        }
        if let Some((i, _)) = dpdk_sources.next() {
            return Err((
                format!("sources[{i}].dpdk"),
                "a second dpdk source: one already polls every rx queue".into(),
            ));
        }
        Ok(())
    }
}

/// The directories the packaged unit (packaging/flowtable.service) makes
/// when it starts (RuntimeDirectory=, LogsDirectory=, StateDirectory=): a
/// path in one is fine before the first start, when it doesn't exist yet.
pub const UNIT_DIRECTORIES: [&str; 3] = ["/run/flowtable", "/var/log/flowtable", "/var/lib/flowtable"];

impl Config {
    /// What `flowtable run` finds on the file system before it starts and
    /// refuses: the records file in a directory that doesn't exist, a
    /// control socket path taken by something that is no socket, or whose
    /// directory's parent doesn't exist.
    fn check_paths(&self) -> Result<(), Invalid> {
        use std::os::unix::fs::FileTypeExt;
        let missing_dir = |p: &str| -> Option<String> {
            let dir = std::path::Path::new(p).parent().filter(|d| !d.as_os_str().is_empty())?;
            if dir.is_dir() || UNIT_DIRECTORIES.iter().any(|u| dir == std::path::Path::new(u)) {
                return None;
            }
            Some(if dir.exists() {
                format!("{p}: {} is not a directory", dir.display())
            } else {
                format!("{p}: the directory {} does not exist", dir.display())
            })
        };
        if let Some(p) = &self.records.path {
            if let Some(message) = missing_dir(p) {
                return Err(("records.path".into(), message));
            }
        }
        let socket = &self.control.socket;
        if let Ok(md) = std::fs::symlink_metadata(socket) {
            if !md.file_type().is_socket() {
                let what = if md.is_dir() {
                    " but a directory"
                } else if md.is_file() {
                    " but a regular file"
                } else {
                    ""
                };
                return Err((
                    "control.socket".into(),
                    format!(
                        "{socket} exists and is not a socket{what}: the daemon would not replace it; \
                         give the path of the socket to make, e.g. {DEFAULT_SOCKET}"
                    ),
                ));
            }
        } else if let Some(dir) = std::path::Path::new(socket).parent().filter(|d| !d.as_os_str().is_empty()) {
            // The daemon makes the socket's own directory (as /run/flowtable
            // for one started by hand), not its parents.
            if !dir.exists() {
                if let Some(message) = missing_dir(&dir.to_string_lossy()) {
                    return Err((
                        "control.socket".into(),
                        format!("{message} (the daemon makes only the socket's own directory, {})", dir.display()),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Checks a synthetic source's settings as the generator will read them:
/// `pace` is the source's, the rest the generator's.
fn check_synthetic(at: &str, map: &serde_json::Map<String, serde_json::Value>) -> Result<(), Invalid> {
    let mut map = map.clone();
    if let Some(pace) = map.remove("pace") {
        serde_json::from_value::<Pace>(pace)
            .map_err(|_| (format!("{at}.pace"), "give \"timestamps\" or \"fast\"".to_string()))?;
    }
    // serde fills a struct from an array too, field by field in order
    // (`"mix": [1, 2]` would be tcp_short 1, tcp_elephant 2).
    if let Some(mix) = map.get("mix").filter(|m| !m.is_object()) {
        return Err((
            format!("{at}.mix"),
            format!(
                "must be a JSON object of weights such as {{\"tcp_short\": 1, \"udp_dns\": 0.5}}, not {}",
                crate::kind(mix)
            ),
        ));
    }
    let cfg: crate::synth::SynthConfig =
        serde_path_to_error::deserialize(serde_json::Value::Object(map)).map_err(|e| {
            let field = match e.path().to_string() {
                p if p == "." => at.to_string(),
                p => format!("{at}.{p}"),
            };
            (field, crate::in_plain_words(&crate::strip_position(&e.into_inner().to_string())))
        })?;
    cfg.validate().map_err(|e| (format!("{at}.{}", e.field), e.message))
}

/// What `flowtable config example` prints.
pub const EXAMPLE: &str = r#"{
  "instance_id": 1,
  "ports": [{ "name": "port0" },
            { "name": "port1", "egress": false,
              "_comment": "egress true: this host is an endpoint on port1 (its own interface): what it sends is tracked too, as port index 2, rules on tc's egress hook" }],
  "table": { "max_flows": 1048576, "full_policy": "evict-idle" },
  "timeouts": {
    "tcp_handshake_s": 30, "tcp_established_s": 300, "tcp_closing_s": 30,
    "tcp_closed_s": 5, "udp_s": 60, "icmp_s": 30, "other_s": 60
  },
  "classifier": {
    "rules": [
      { "name": "block-telnet", "match": { "proto": "tcp", "server_ports": [23] },
        "result": { "offload": { "type": "drop" } } },
      { "name": "bypass-established-tls", "match": { "proto": "tcp", "server_ports": [443] },
        "trigger": { "_comment": "all conditions must hold: handshake done and 8 packets seen",
                     "tcp_established": true, "after_packets": 8 },
        "result": { "offload": { "type": "pass" } } },
      { "name": "inspect-dns", "match": { "proto": "udp", "server_ports": [53] },
        "result": "software" },
      { "name": "elephants", "match": {}, "trigger": { "after_bytes": 1000000 },
        "result": { "offload": { "type": "forward", "port": 1 } } }
    ],
    "default": "software"
  },
  "offload": { "poll_interval_ms": 1000, "batch_size": 256, "placement": "auto" },
  "backend": { "kind": "tc", "keep_rules": false, "adopt_rules": true, "journal": "/var/lib/flowtable/journal.jsonl" },
  "records": { "path": null, "rotate_bytes": 104857600, "keep": 5 },
  "export": {
    "_comment": "IPFIX to collectors such as nfcapd; none listed: no export",
    "ipfix": [{ "address": "127.0.0.1:4739", "transport": "udp" }],
    "observation_domain": 1, "template_refresh_s": 60, "mtu": 1500,
    "queue_records": 65536, "enterprise_number": 32473, "active_timeout_s": 300
  },
  "control": { "socket": "/run/flowtable/flowtable.sock" },
  "log": { "format": "human", "level": "info" },
  "metrics": { "_comment": "e.g. \"127.0.0.1:9464\": Prometheus scrapes http://127.0.0.1:9464/metrics; null: off",
               "listen": null },
  "sources": [{ "interface": { "name": "port0", "ingress": 0 } }, { "interface": { "name": "port1", "ingress": 1 } }]
}
"#;
