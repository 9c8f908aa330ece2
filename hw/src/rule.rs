//! The vocabulary shared by the engine and every backend: rule specs,
//! cookies, actions, placements, counters, capabilities and refusals.

use core::fmt;
use flowtable_sw::{Direction, FlowKey};
use serde::{Deserialize, Serialize};

/// Ties a hardware rule to its flow and direction, and marks it as ours.
///
/// On the wire (tc cookie, rte_flow MARK/group metadata) it is 16 bytes:
/// a magic, the owner instance id, the flow id and the direction. Rules
/// whose cookie lacks the magic belong to someone else and are never
/// touched.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Cookie {
    /// Identifies the flowtable instance (from config) that owns the rule.
    pub owner: u32,
    /// The flow id (`FlowId::as_u64`).
    pub flow: u64,
    /// 0 = lo-to-hi, 1 = hi-to-lo.
    pub dir: u8,
}

pub const COOKIE_MAGIC: [u8; 3] = *b"FTB";
pub const COOKIE_VERSION: u8 = 1;
pub const COOKIE_LEN: usize = 16;

impl Cookie {
    pub fn new(owner: u32, flow: u64, dir: Direction) -> Cookie {
        Cookie { owner, flow, dir: dir as u8 }
    }

    pub fn direction(&self) -> Direction {
        Direction::from_index(self.dir as usize)
    }

    /// Byte form: "FTB", version, owner (BE u32), flow (BE u64) with the
    /// direction in the version byte's high bit.
    pub fn to_bytes(&self) -> [u8; COOKIE_LEN] {
        let mut b = [0u8; COOKIE_LEN];
        b[..3].copy_from_slice(&COOKIE_MAGIC);
        b[3] = COOKIE_VERSION | (self.dir & 1) << 7;
        b[4..8].copy_from_slice(&self.owner.to_be_bytes());
        b[8..16].copy_from_slice(&self.flow.to_be_bytes());
        b
    }

    /// Parses a cookie; `None` when it isn't one of ours.
    pub fn from_bytes(b: &[u8]) -> Option<Cookie> {
        if b.len() != COOKIE_LEN || b[..3] != COOKIE_MAGIC || b[3] & 0x7f != COOKIE_VERSION {
            return None;
        }
        Some(Cookie {
            owner: u32::from_be_bytes(b[4..8].try_into().ok()?),
            flow: u64::from_be_bytes(b[8..16].try_into().ok()?),
            dir: b[3] >> 7,
        })
    }
}

impl fmt::Debug for Cookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}:{}:{}", self.owner, self.flow, self.dir)
    }
}

/// What a rule does with the packets it matches. In JSON an object with
/// its `type` and that type's one field, if it has one:
/// `{"type": "drop"}`, `{"type": "forward", "port": 1}`,
/// `{"type": "mark", "mark": 255}` (read by hand, see the `Deserialize`
/// impl, so that a field the type doesn't take is refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Action {
    /// Drop in hardware (firewall deny, DDoS scrub).
    Drop,
    /// Send out of another port (index in the configured port list).
    Forward { port: u8 },
    /// Copy to a port and let the packet continue as it would have.
    Mirror { port: u8 },
    /// Tag packets with a mark and deliver them to software (partial offload).
    Mark { mark: u32 },
    /// Let packets go on as they would have, only counting them: the
    /// bypass of an inline IPS. On a port of an inline pair the engine
    /// makes it a forward to the partner port; elsewhere the backend lets
    /// the packet continue (tc: to the host; DPDK: to the port's peer, or
    /// dropped on a monitoring port, where not delivering it is the bypass).
    Pass,
}

impl Action {
    pub fn kind(&self) -> ActionKind {
        match self {
            Action::Drop => ActionKind::Drop,
            Action::Forward { .. } => ActionKind::Forward,
            Action::Mirror { .. } => ActionKind::Mirror,
            Action::Mark { .. } => ActionKind::Mark,
            Action::Pass => ActionKind::Pass,
        }
    }
}

/// As an operator writes it on the command line (`flowtable offload ID
/// --action ...`): `drop`, `pass`, `forward:1`, `mirror:1`, `mark:0xff`.
impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Drop => f.write_str("drop"),
            Action::Pass => f.write_str("pass"),
            Action::Forward { port } => write!(f, "forward:{port}"),
            Action::Mirror { port } => write!(f, "mirror:{port}"),
            Action::Mark { mark } => write!(f, "mark:{mark:#x}"),
        }
    }
}

const ACTION_TYPES: &str = r#""drop", "pass", "forward", "mirror" or "mark""#;

impl Action {
    /// The action an object's fields describe, or why they describe none,
    /// in the words of the configuration: a field the type doesn't take
    /// (`{"type": "drop", "port": 1}`) is refused rather than ignored.
    fn from_fields(fields: &[(String, serde_json::Value)]) -> Result<Action, String> {
        let get = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v);
        let kind = match get("type") {
            None => return Err(format!(r#"an action needs "type": give {ACTION_TYPES}"#)),
            Some(serde_json::Value::String(t)) => t.as_str(),
            Some(other) => return Err(format!(r#""type": {other} is not an action type: give {ACTION_TYPES}"#)),
        };
        let (field, takes) = match kind {
            "drop" | "pass" => (None, r#"only "type""#),
            "forward" | "mirror" => (Some("port"), r#""type" and "port""#),
            "mark" => (Some("mark"), r#""type" and "mark""#),
            other => return Err(format!("{other:?} is not an action type: give {ACTION_TYPES}")),
        };
        if let Some((stray, _)) = fields.iter().find(|(k, _)| k != "type" && Some(k.as_str()) != field) {
            return Err(format!("{stray:?} is not a field of a {kind} action: {kind} takes {takes}"));
        }
        let number = |name: &str, max: u64, what: &str| -> Result<u64, String> {
            match get(name) {
                None => Err(format!("a {kind} action needs {name:?}: {what}, a whole number 0 to {max}")),
                Some(v) => v
                    .as_u64()
                    .filter(|n| *n <= max)
                    .ok_or_else(|| format!("{name:?}: {v} is not {what}: give a whole number, 0 to {max}")),
            }
        };
        Ok(match kind {
            "drop" => Action::Drop,
            "pass" => Action::Pass,
            "forward" => Action::Forward { port: number("port", 255, "a port index")? as u8 },
            "mirror" => Action::Mirror { port: number("port", 255, "a port index")? as u8 },
            _ => Action::Mark { mark: number("mark", u32::MAX.into(), "a mark")? as u32 },
        })
    }
}

impl<'de> Deserialize<'de> for Action {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Action, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Action;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#"an action object such as {"type": "drop"} or {"type": "forward", "port": 1}"#)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Action, A::Error> {
                use serde::de::Error;
                let mut fields: Vec<(String, serde_json::Value)> = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    let value = map.next_value::<serde_json::Value>()?;
                    if fields.iter().any(|(k, _)| *k == key) {
                        return Err(A::Error::custom(format!("{key:?} is given twice")));
                    }
                    fields.push((key, value));
                }
                Action::from_fields(&fields).map_err(A::Error::custom)
            }
        }
        de.deserialize_map(Visitor)
    }
}

impl fmt::Display for ActionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ActionKind::Drop => "drop",
            ActionKind::Forward => "forward",
            ActionKind::Mirror => "mirror",
            ActionKind::Mark => "mark",
            ActionKind::Pass => "pass",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ActionKind {
    Drop,
    Forward,
    Mirror,
    Mark,
    Pass,
}

impl ActionKind {
    /// Every kind, for backends that take them all.
    pub const ALL: [ActionKind; 5] =
        [ActionKind::Drop, ActionKind::Forward, ActionKind::Mirror, ActionKind::Mark, ActionKind::Pass];
}

/// The fields of one direction of a flow that a rule matches on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MatchFields {
    pub key: FlowKey,
    pub dir: Direction,
    /// The port this direction's packets arrive on, where the rule goes.
    /// For an inline pair it differs between the directions of one key.
    pub port: u8,
}

/// Which match fields a backend can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatchSupport {
    pub ipv4: bool,
    pub ipv6: bool,
    pub tcp: bool,
    pub udp: bool,
    pub sctp: bool,
    pub icmp: bool,
    /// Protocols with no ports (GRE, ESP, ...), matched on addresses and proto.
    pub other_ip: bool,
    pub vlan: bool,
    pub qinq: bool,
    /// Bits of `flowtable_sw::key::encap` (PPPoE, MPLS, FabricPath, PPP or
    /// Cisco HDLC framing) the backend matches through. None of the
    /// backends builds such matches, so flows that came through one stay in
    /// software, refused with the encapsulation named.
    #[serde(default)]
    pub encap: u8,
}

impl MatchSupport {
    /// Every field of an IP packet in Ethernet with VLAN tags; no
    /// encapsulation (see `encap`).
    pub const ALL: MatchSupport = MatchSupport {
        ipv4: true,
        ipv6: true,
        tcp: true,
        udp: true,
        sctp: true,
        icmp: true,
        other_ip: true,
        vlan: true,
        qinq: true,
        encap: 0,
    };

    /// Why this key can't be matched, if it can't.
    pub fn check(&self, key: &FlowKey) -> Result<(), String> {
        if let Some(name) = flowtable_sw::key::encap::first_name(key.encap & !self.encap) {
            return Err(format!("{name} encapsulation match not supported"));
        }
        let ok_l3 = if key.is_ipv6() { self.ipv6 } else { self.ipv4 };
        if !ok_l3 {
            return Err(format!("{} match not supported", if key.is_ipv6() { "ipv6" } else { "ipv4" }));
        }
        let ok_l4 = match key.proto {
            6 => self.tcp,
            17 => self.udp,
            132 => self.sctp,
            1 | 58 => self.icmp,
            _ => self.other_ip,
        };
        if !ok_l4 {
            return Err(format!("{} match not supported", key.proto_name()));
        }
        if key.vlan_inner != 0 && !self.qinq {
            return Err("qinq match not supported".into());
        }
        if key.vlan_outer != 0 && !self.vlan {
            return Err("vlan match not supported".into());
        }
        Ok(())
    }
}

/// What a backend reports about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    pub matches: MatchSupport,
    pub actions: Vec<ActionKind>,
    /// Most rules the NIC holds at once (0 = unknown / unlimited).
    pub max_rules: usize,
    /// Most rule insertions per second it sustains (0 = unlimited).
    pub max_insert_rate: u32,
    /// Whether per-rule counters can be read back.
    pub counters: bool,
    /// Whether software still sees packets of flows whose rules are
    /// installed (tc software path, AF_PACKET taps before tc ingress). When
    /// true the engine must not count those packets a second time.
    pub software_sees_offloaded: bool,
    /// Whether a rule on a port's egress hook (an egress twin, see
    /// `flowtable_sw::PortMap::join_egress`) runs before software's taps, as
    /// tc's egress hook runs before AF_PACKET sees a frame leave: software
    /// then sees a packet the rule counted only if the rule let it go on
    /// (`pass`; mark and mirror always), and never one it dropped or
    /// redirected. False: egress is as ingress (`software_sees_offloaded`).
    #[serde(default)]
    pub egress_rules_before_taps: bool,
    /// Whether the backend's rules of a TCP flow leave packets with FIN or
    /// RST set to software (a match on the TCP flags, FIN|RST clear, as the
    /// kernel's flowtable offload puts on its rules), so software sees a
    /// connection close while its flow is offloaded. When false the rule
    /// takes those packets too and only counters and idle time tell of
    /// the close.
    #[serde(default)]
    pub tcp_teardown_to_software: bool,
}

impl Capabilities {
    pub fn supports_action(&self, a: &Action) -> bool {
        self.actions.contains(&a.kind())
    }
}

/// One rule to install: a flow direction, an action, and its cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleSpec {
    pub cookie: Cookie,
    pub matches: MatchFields,
    pub action: Action,
    /// Hardware-only, software-only (kernel fallback path) or either.
    pub policy: PlacementPolicy,
}

/// Where a rule should go (tc: skip_sw / skip_hw / neither).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum PlacementPolicy {
    Hardware,
    Software,
    #[default]
    Auto,
}

/// Where an installed rule ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Placement {
    /// In NIC hardware.
    Hardware,
    /// In the kernel's software classifier (tc flower with skip_hw or
    /// not_in_hw): enforced, but costing CPU.
    KernelSoftware,
}

/// A backend's "no" to one rule, with its own words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// Machine-readable class: "capacity", "rate", "unsupported-match",
    /// "unsupported-action", "driver", "exists", "io".
    pub kind: RefusalKind,
    /// The backend's message (kernel extack, PMD error string).
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RefusalKind {
    Capacity,
    Rate,
    UnsupportedMatch,
    UnsupportedAction,
    Driver,
    Exists,
    Io,
}

impl RefusalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalKind::Capacity => "capacity",
            RefusalKind::Rate => "rate",
            RefusalKind::UnsupportedMatch => "unsupported-match",
            RefusalKind::UnsupportedAction => "unsupported-action",
            RefusalKind::Driver => "driver",
            RefusalKind::Exists => "exists",
            RefusalKind::Io => "io",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.message)
    }
}

/// The result of installing one rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstallOutcome {
    Installed {
        placement: Placement,
        /// Whether this rule's counters can be read (some PMDs refuse COUNT).
        counters: bool,
    },
    Refused(Refusal),
}

/// A rule of ours that an earlier run left in place (it was killed, or
/// stopped with `keep_rules`), found at start and taken over: read back
/// from the backend, so what it matches and does is what the NIC holds,
/// whatever the earlier run meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdoptedRule {
    pub cookie: Cookie,
    /// The packets it takes: one direction of a flow, on `port`.
    pub matches: RuleMatch,
    pub port: u8,
    pub action: Action,
    pub placement: Placement,
    /// Cumulative since the earlier run put it in.
    pub counters: RuleCounters,
}

/// What a rule read back from a backend matches: one direction's
/// endpoints (ports 0 where the protocol has none the backend matches).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleMatch {
    pub src: core::net::IpAddr,
    pub dst: core::net::IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub vlan_outer: u16,
    pub vlan_inner: u16,
}

impl RuleMatch {
    /// Whether this is the match a rule for `dir` of `key` would carry.
    pub fn is_for(&self, key: &flowtable_sw::FlowKey, dir: Direction) -> bool {
        let e = key.endpoints(dir);
        let ports_match = match key.proto {
            6 | 17 | 132 => (e.sport, e.dport) == (self.sport, self.dport),
            _ => true,
        };
        (e.src, e.dst, key.proto, key.vlan_outer, key.vlan_inner)
            == (self.src, self.dst, self.proto, self.vlan_outer, self.vlan_inner)
            && ports_match
    }
}

/// Cumulative counters of one rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RuleCounters {
    pub packets: u64,
    pub bytes: u64,
    /// Of the above, what hardware counted (tc splits hw and sw stats).
    pub hw_packets: u64,
    pub hw_bytes: u64,
    /// Time of the last hit in ns on the backend's clock, when it knows it.
    pub last_used_ns: Option<u64>,
}

/// A failure of a whole backend call (not one rule's refusal).
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{backend}: no rule with cookie {cookie:?}")]
    UnknownRule { backend: String, cookie: Cookie },
    #[error("{backend}: {message}")]
    Io { backend: String, message: String },
    #[error("{backend}: refused: {message}")]
    Refused { backend: String, message: String },
}

impl BackendError {
    /// The rule was not there: for a removal, as good as done.
    pub fn is_unknown_rule(&self) -> bool {
        matches!(self, BackendError::UnknownRule { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowtable_sw::key::encap;

    #[test]
    fn encapsulated_keys_are_refused_with_the_encapsulation_named() {
        let (mut key, _) =
            FlowKey::from_v4(core::net::Ipv4Addr::new(10, 0, 0, 1), core::net::Ipv4Addr::new(10, 0, 0, 2), 1, 2, 6);
        assert_eq!(MatchSupport::ALL.check(&key), Ok(()));
        for (bit, name) in encap::NAMES {
            key.encap = bit;
            assert_eq!(MatchSupport::ALL.check(&key), Err(format!("{name} encapsulation match not supported")));
        }
        key.encap = encap::MPLS | encap::PPPOE;
        assert_eq!(MatchSupport::ALL.check(&key), Err("pppoe encapsulation match not supported".into()));
        // A backend that declares an encapsulation takes it.
        let through_mpls = MatchSupport { encap: encap::MPLS, ..MatchSupport::ALL };
        key.encap = encap::MPLS;
        assert_eq!(through_mpls.check(&key), Ok(()));
        key.encap = encap::MPLS | encap::FABRICPATH;
        assert_eq!(through_mpls.check(&key), Err("fabricpath encapsulation match not supported".into()));
    }

    #[test]
    fn actions_read_as_the_command_line_writes_them() {
        let shown: Vec<String> = [
            Action::Drop,
            Action::Pass,
            Action::Forward { port: 1 },
            Action::Mirror { port: 2 },
            Action::Mark { mark: 255 },
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(shown, ["drop", "pass", "forward:1", "mirror:2", "mark:0xff"]);
        assert_eq!(ActionKind::Mirror.to_string(), "mirror");
    }

    #[test]
    fn actions_in_json_round_trip_and_take_only_their_own_fields() {
        for a in [
            Action::Drop,
            Action::Pass,
            Action::Forward { port: 1 },
            Action::Mirror { port: 255 },
            Action::Mark { mark: u32::MAX },
        ] {
            let text = serde_json::to_string(&a).unwrap();
            assert_eq!(serde_json::from_str::<Action>(&text).unwrap(), a, "{text}");
        }
        // The type may come last.
        assert_eq!(
            serde_json::from_str::<Action>(r#"{"port": 3, "type": "forward"}"#).unwrap(),
            Action::Forward { port: 3 }
        );
        let refused = |text: &str| serde_json::from_str::<Action>(text).unwrap_err().to_string();
        let e = refused(r#"{"type": "drop", "port": 1}"#);
        assert!(e.contains(r#""port" is not a field of a drop action: drop takes only "type""#), "{e}");
        let e = refused(r#"{"type": "forward", "port": 1, "mark": 2}"#);
        assert!(e.contains(r#""mark" is not a field of a forward action: forward takes "type" and "port""#), "{e}");
        assert!(refused(r#"{"type": "mirror"}"#).contains(r#"a mirror action needs "port""#));
        assert!(refused(r#"{"type": "forward", "port": 256}"#)
            .contains("256 is not a port index: give a whole number, 0 to 255"));
        assert!(refused(r#"{"type": "mark", "mark": -1}"#).contains("-1 is not a mark"));
        assert!(refused(r#"{"type": "teleport"}"#).contains(r#""teleport" is not an action type: give "drop""#));
        assert!(refused(r#"{"port": 1}"#).contains(r#"an action needs "type""#));
        assert!(refused(r#"{"type": "drop", "type": "pass"}"#).contains("given twice"));
        let e = refused(r#""drop""#);
        assert!(e.contains(r#"expected an action object such as {"type": "drop"}"#), "{e}");
    }

    #[test]
    fn capabilities_report_tcp_teardown_and_default_it_off() {
        let caps = Capabilities {
            matches: MatchSupport::ALL,
            actions: ActionKind::ALL.to_vec(),
            max_rules: 0,
            max_insert_rate: 0,
            counters: true,
            software_sees_offloaded: false,
            egress_rules_before_taps: false,
            tcp_teardown_to_software: true,
        };
        let v = serde_json::to_value(&caps).unwrap();
        assert_eq!(v["tcp_teardown_to_software"], serde_json::Value::Bool(true));
        let back: Capabilities = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(back, caps);
        // A report from before the field: no claim that FIN/RST reach software.
        let mut old = v;
        old.as_object_mut().unwrap().remove("tcp_teardown_to_software");
        let back: Capabilities = serde_json::from_value(old).unwrap();
        assert!(!back.tcp_teardown_to_software);
    }

    #[test]
    fn cookie_round_trips_and_rejects_foreign() {
        let c = Cookie::new(0xdead_beef, (7u64 << 32) | 42, Direction::HiToLo);
        let b = c.to_bytes();
        assert_eq!(Cookie::from_bytes(&b), Some(c));
        let mut foreign = b;
        foreign[0] = b'X';
        assert_eq!(Cookie::from_bytes(&foreign), None);
        assert_eq!(Cookie::from_bytes(&b[..8]), None);
    }
}
