//! The control protocol between `flowtable run` and its clients: versioned
//! JSON objects, one per line, over a Unix stream socket.
//!
//! A request is `{"v":1,"id":ID,"cmd":NAME,...arguments}`; its answer is
//! `{"v":1,"id":ID,"ok":true,"result":...}` or
//! `{"v":1,"id":ID,"ok":false,"error":{"code":CODE,"message":TEXT}}`. `id` is
//! any JSON value the client picks and is echoed back. A `subscribe`
//! answer is followed by one `{"v":1,"id":ID,"event":{...}}` line per event
//! until either side closes.
//!
//! This crate holds the protocol's types and the flow filter language the
//! requests carry, apart from the daemon that serves them, so that both can
//! be fuzzed and used by other clients without it.

pub mod filter;

use flowtable_hw::Action;
use flowtable_sw::context::Verdict;
use flowtable_sw::{FlowId, Stage};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// The protocol version this build speaks.
pub const VERSION: u32 = 1;
/// Longest request line; a longer one is refused and the connection closed.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// A request must arrive complete within this long of the previous answer
/// (or of connecting); a client that stalls is cut off.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Most flows one `flows` page returns.
pub const MAX_PAGE: usize = 10_000;
/// Rows of a `flows` page when the request names no limit.
pub const DEFAULT_PAGE: usize = 100;

/// Every command name, for "unknown command" answers.
pub const COMMANDS: &[&str] =
    &["ping", "flows", "flow", "stats", "set-context", "offload", "unoffload", "flush", "subscribe"];
/// Most flow ids a bulk answer (`unoffload` by filter, `flush`) lists; its
/// counts are whole however many there were.
pub const MAX_BULK_IDS: usize = 10_000;

/// A request's command and its arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Command {
    /// Answers `{"pong":true}`: checks the daemon is there and serving.
    Ping {},
    /// Lists flows: filtered, sorted, paged. `limit: 0` counts them
    /// (`total`) without listing any.
    Flows {
        /// A filter expression (see `filter`), e.g. `proto=tcp port=443 stage=offloaded`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        filter: Option<String>,
        #[serde(default)]
        sort: SortKey,
        #[serde(default)]
        offset: usize,
        /// Rows to return (default 100, at most 10000).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<usize>,
    },
    /// Everything known about one flow.
    Flow { flow: FlowId },
    /// Daemon-wide figures.
    Stats {},
    /// Merges a label, a verdict and metadata into a flow's context.
    SetContext {
        flow: FlowId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        label: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        verdict: Option<Verdict>,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        metadata: BTreeMap<String, String>,
    },
    /// Offloads a flow with an action (installed at the next poll).
    Offload { flow: FlowId, action: Action },
    /// Takes a flow back to software; or, given `filter` instead of
    /// `flow`, every offloaded (or queued, installing) flow it selects.
    /// Answers one flow's stage, or a `BulkAnswer`.
    Unoffload {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        flow: Option<FlowId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        filter: Option<String>,
    },
    /// Ends the flows the filter selects (all without one) now, each with
    /// its record (end reason `evicted`), its rules removed first and
    /// their final counters folded in. Answers a `BulkAnswer`.
    Flush {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        filter: Option<String>,
    },
    /// Streams events (new, classified, offloaded, refused, unoffloaded,
    /// expired with its record) until the connection closes; with a
    /// filter, only those of the flows it selects (judged when the event
    /// happened; an expired event by its record).
    Subscribe {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        filter: Option<String>,
    },
}

/// The answer to a bulk command (`unoffload` by filter, `flush`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkAnswer {
    /// Flows the filter selected.
    pub matched: usize,
    /// Flows the command did: taken back to software, or ended with their
    /// records.
    pub done: usize,
    /// Selected flows it did not apply to (`unoffload`: not offloaded).
    pub skipped: usize,
    /// Still waiting for the offload thread when the answer was given:
    /// they are done once their rules are out.
    pub pending: usize,
    /// Whose rules could not be removed (they stay as they were; retried).
    pub failed: usize,
    /// The ids of the flows done, the first `MAX_BULK_IDS`.
    pub flows: Vec<FlowId>,
}

/// What `flows` sorts by, largest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SortKey {
    #[default]
    Bytes,
    Packets,
    /// Mean bytes per second since the flow began.
    Rate,
    /// Oldest first.
    Age,
}

impl SortKey {
    pub const ALL: [SortKey; 4] = [SortKey::Bytes, SortKey::Packets, SortKey::Rate, SortKey::Age];

    pub fn as_str(self) -> &'static str {
        match self {
            SortKey::Bytes => "bytes",
            SortKey::Packets => "packets",
            SortKey::Rate => "rate",
            SortKey::Age => "age",
        }
    }

    pub fn parse(s: &str) -> Result<SortKey, String> {
        SortKey::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("sort key {s:?}: give bytes, packets, rate or age"))
    }
}

/// Machine-readable error classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    /// The line is not a JSON object.
    BadJson,
    /// Fields missing, of the wrong type, or unknown.
    BadRequest,
    UnsupportedVersion,
    UnknownCommand,
    /// The request line passed `MAX_REQUEST_BYTES`.
    TooLarge,
    /// No complete request within `REQUEST_TIMEOUT`.
    Timeout,
    BadFilter,
    NoSuchFlow,
    /// The flow is not in a stage the command applies to.
    WrongStage,
    /// The backend can't do what was asked (action, match).
    Unsupported,
    /// A context update passed the limits (label length, metadata entries).
    InvalidContext,
    Backend,
    /// The daemon didn't answer in time, or has too many clients.
    Busy,
    ShuttingDown,
    /// An event subscriber fell too far behind and was cut off.
    Lagged,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad-json",
            ErrorCode::BadRequest => "bad-request",
            ErrorCode::UnsupportedVersion => "unsupported-version",
            ErrorCode::UnknownCommand => "unknown-command",
            ErrorCode::TooLarge => "too-large",
            ErrorCode::Timeout => "timeout",
            ErrorCode::BadFilter => "bad-filter",
            ErrorCode::NoSuchFlow => "no-such-flow",
            ErrorCode::WrongStage => "wrong-stage",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::InvalidContext => "invalid-context",
            ErrorCode::Backend => "backend",
            ErrorCode::Busy => "busy",
            ErrorCode::ShuttingDown => "shutting-down",
            ErrorCode::Lagged => "lagged",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct ControlError {
    pub code: ErrorCode,
    pub message: String,
}

impl ControlError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ControlError {
        ControlError { code, message: message.into() }
    }
}

/// One request as it travels on the wire.
#[derive(Debug, Clone, Serialize)]
pub struct Request<'a> {
    pub v: u32,
    #[serde(skip_serializing_if = "Value::is_null")]
    pub id: Value,
    #[serde(flatten)]
    pub cmd: &'a Command,
}

/// One answer as it travels on the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub v: u32,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub id: Value,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ControlError>,
}

impl Response {
    pub fn ok(id: Value, result: Value) -> Response {
        Response { v: VERSION, id, ok: true, result: Some(result), error: None }
    }
    pub fn err(id: Value, error: ControlError) -> Response {
        Response { v: VERSION, id, ok: false, result: None, error: Some(error) }
    }
}

/// Whether a control socket path fits a Unix socket address: `sun_path`
/// is 108 bytes on Linux, the terminating NUL included, so a path holds at
/// most 107. Said with the limit and the length given (the system says
/// only "path must be shorter than SUN_LEN").
pub fn socket_path_fits(path: &std::path::Path) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    let len = path.as_os_str().as_bytes().len();
    if len > flowtable_config::MAX_SOCKET_PATH {
        return Err(format!(
            "{}: the path is {len} bytes long; a Unix socket path can be at most {} bytes (108 on Linux, the \
             terminating NUL included): give a shorter one",
            path.display(),
            flowtable_config::MAX_SOCKET_PATH
        ));
    }
    Ok(())
}

/// Parses one request line into its id and command. The id is returned
/// even when the rest is wrong, so the error answer can carry it.
pub fn parse_request(line: &[u8]) -> (Value, Result<Command, ControlError>) {
    let value: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => return (Value::Null, Err(ControlError::new(ErrorCode::BadJson, format!("not JSON: {e}")))),
    };
    let Value::Object(mut obj) = value else {
        return (Value::Null, Err(ControlError::new(ErrorCode::BadJson, "a request is a JSON object")));
    };
    let id = obj.remove("id").unwrap_or(Value::Null);
    let result = (|| {
        match obj.remove("v") {
            Some(Value::Number(n)) if n.as_u64() == Some(VERSION as u64) => {}
            Some(other) => {
                return Err(ControlError::new(
                    ErrorCode::UnsupportedVersion,
                    format!("protocol version {other} is not spoken here; this daemon speaks {VERSION}"),
                ))
            }
            None => {
                return Err(ControlError::new(
                    ErrorCode::BadRequest,
                    format!("missing field `v` (the protocol version, {VERSION})"),
                ))
            }
        }
        match obj.get("cmd") {
            Some(Value::String(c)) if COMMANDS.contains(&c.as_str()) => {}
            Some(Value::String(c)) => {
                return Err(ControlError::new(
                    ErrorCode::UnknownCommand,
                    format!("unknown command {c:?}; known: {}", COMMANDS.join(", ")),
                ))
            }
            Some(_) => return Err(ControlError::new(ErrorCode::BadRequest, "field `cmd` must be a string")),
            None => return Err(ControlError::new(ErrorCode::BadRequest, "missing field `cmd`")),
        }
        serde_json::from_value::<Command>(Value::Object(obj))
            .map_err(|e| ControlError::new(ErrorCode::BadRequest, e.to_string()))
    })();
    (id, result)
}

/// A flow as `flows` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowSummary {
    pub id: FlowId,
    pub proto: u8,
    /// The initiator's address and port, then the responder's.
    pub src: String,
    pub dst: String,
    pub sport: u16,
    pub dport: u16,
    #[serde(default)]
    pub vlan: u16,
    #[serde(default)]
    pub ingress: u8,
    pub stage: Stage,
    /// Where its rules are: `hardware`, `kernel-software`, `mixed` or `none`.
    pub placement: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// See `FlowRecord::class_removed_in_generation`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_removed_in_generation: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub packets: u64,
    pub bytes: u64,
    pub orig_packets: u64,
    pub orig_bytes: u64,
    pub reply_packets: u64,
    pub reply_bytes: u64,
    pub sw_packets: u64,
    pub hw_packets: u64,
    pub start_ns: u64,
    pub last_ns: u64,
    pub age_ns: u64,
    /// Mean bytes per second since the flow began (named by its unit: to
    /// this audience `bps` means bits).
    pub mean_bytes_per_s: f64,
    /// The same in bits per second.
    pub mean_bits_per_s: f64,
    /// Bytes the NIC or the kernel's rule counted (of `bytes`).
    #[serde(default)]
    pub hw_bytes: u64,
    /// Since the last packet (`used` in `ovs-appctl dpctl/dump-flows`).
    #[serde(default)]
    pub used_ns: u64,
    /// Left before the flow ends idle unless a packet comes (conntrack's
    /// timeout column); an offloaded flow's rules are then removed first.
    #[serde(default)]
    pub expires_in_ns: u64,
    /// The current rate (see `flowtable_offload::Rate`): software's part
    /// over its last one-second window, the rules' part over their last
    /// counter read. Absent where the daemon does not sample rates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_bytes_per_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_bits_per_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_packets_per_s: Option<f64>,
    /// ICMP and ICMPv6: the type and code of the initiator's first packet
    /// (its echo identifier is `sport`/`dport`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_code: Option<u8>,
}

/// The answer to `flows`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowsPage {
    /// Flows matching the filter, of which this page is a slice.
    pub total: usize,
    pub offset: usize,
    pub sort: SortKey,
    /// The daemon's clock when the page was made.
    pub now_ns: u64,
    pub flows: Vec<FlowSummary>,
}

/// The answer to `stats`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stats {
    pub pid: u32,
    pub uptime_s: f64,
    pub now_ns: u64,
    pub config: ConfigStatus,
    pub flows: FlowStats,
    pub rules: RuleStats,
    /// Offload refusals by reason.
    pub refusals: BTreeMap<String, u64>,
    pub packets: PacketStats,
    /// Ended flows by reason.
    pub ended: BTreeMap<String, u64>,
    pub sources: Vec<SourceStatus>,
    pub records: RecordsStatus,
    /// Each flow export sink (IPFIX collector): what it exported, dropped
    /// and why.
    #[serde(default)]
    pub export: Vec<SinkStats>,
    pub subscribers: usize,
    #[serde(default)]
    pub control: ControlStats,
}

/// One export sink's counts (see `flowtable_export::sink`): every record
/// taken is exported, dropped or pending; `dropped` adds up the causes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkStats {
    pub name: String,
    pub kind: String,
    pub address: String,
    pub transport: String,
    pub records: u64,
    pub exported: u64,
    pub dropped: u64,
    pub dropped_queue_full: u64,
    pub dropped_unsent: u64,
    pub dropped_unencodable: u64,
    pub pending: u64,
    pub messages: u64,
    pub template_sets: u64,
    pub errors: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connected: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl From<flowtable_export::SinkStatus> for SinkStats {
    fn from(s: flowtable_export::SinkStatus) -> SinkStats {
        SinkStats {
            name: s.name,
            kind: s.kind.to_string(),
            address: s.address,
            transport: s.transport.as_str().to_string(),
            records: s.records,
            exported: s.exported,
            dropped: s.dropped,
            dropped_queue_full: s.dropped_queue_full,
            dropped_unsent: s.dropped_unsent,
            dropped_unencodable: s.dropped_unencodable,
            pending: s.pending,
            messages: s.messages,
            template_sets: s.template_sets,
            errors: s.errors,
            connected: s.connected,
            last_error: s.last_error,
        }
    }
}

/// What answering control requests has cost the packet path.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ControlStats {
    /// Requests answered.
    pub requests: u64,
    /// CPU time the workers spent on them (between their packet batches),
    /// all together, in seconds.
    pub cpu_s: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConfigStatus {
    pub path: Option<String>,
    /// 1 at start, one more for each reload that applied.
    pub generation: u64,
    pub reloads_refused: u64,
    /// Classifier rule names, in order.
    pub rules: Vec<String>,
    pub timeouts: flowtable_config::TimeoutSection,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowStats {
    pub live: usize,
    pub capacity: usize,
    /// `live / capacity`.
    pub fill: f64,
    pub created: u64,
    pub ended: u64,
    pub by_stage: BTreeMap<String, u64>,
    pub by_placement: BTreeMap<String, u64>,
    pub offloaded_total: u64,
    pub refused_total: u64,
    /// Flows of an earlier run taken over at start, rules and all.
    #[serde(default)]
    pub adopted_total: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleStats {
    pub backend: String,
    /// Rules in place now.
    pub live: usize,
    /// The backend's capacity (0: unknown).
    pub capacity: usize,
    /// Flows waiting for their rules.
    pub queued: usize,
    pub installed: u64,
    pub removed: u64,
    /// Rules installed per second, over the last few seconds (called
    /// `install_rate` before; the old name is still read).
    #[serde(alias = "install_rate")]
    pub installs_per_s: f64,
    /// Rules removed per second, likewise (was `remove_rate`).
    #[serde(alias = "remove_rate")]
    pub removals_per_s: f64,
    pub remove_errors: u64,
    pub counter_reads: u64,
    pub counter_errors: u64,
    /// Rules in place by device (the port each is on).
    #[serde(default)]
    pub by_device: BTreeMap<String, usize>,
    /// How an offloaded TCP connection's close is seen: `fin-rst` (the
    /// rules leave FIN and RST to software) or `idle-only`.
    #[serde(default)]
    pub tcp_teardown: String,
    /// What our rules have counted, all rules ever installed together:
    /// `packets` and `bytes` in all, `hw_` the part the hardware counted
    /// (the rest went through the kernel's software path).
    #[serde(default)]
    pub counted: RuleCounted,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RuleCounted {
    pub packets: u64,
    pub bytes: u64,
    pub hw_packets: u64,
    pub hw_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PacketStats {
    /// Frames read from the sources.
    pub received: u64,
    pub bytes: u64,
    /// Taken by a NIC rule before software saw them.
    pub nic: u64,
    /// Taken by a NIC rule before software saw them: their bytes.
    #[serde(default)]
    pub nic_bytes: u64,
    /// Reached the flow table and were counted there.
    pub software: u64,
    #[serde(default)]
    pub software_bytes: u64,
    /// Seen by software as a tap of offloaded traffic, left to the rule counters.
    pub tap_skipped: u64,
    /// Seen as a tap of a rule still going in, which they went past
    /// uncounted: counted by software once the rule was gone.
    #[serde(default)]
    pub slipped: u64,
    /// Frames received per second, over the last few seconds (was
    /// `rate_pps`; the old name is still read).
    #[serde(alias = "rate_pps")]
    pub packets_per_s: f64,
    /// Frames the parser skipped, by reason.
    pub skipped: BTreeMap<String, u64>,
    /// Parsed but not tracked, by reason.
    pub untracked: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceStatus {
    pub name: String,
    /// `running`, `done` or `failed`.
    pub state: String,
    pub packets: u64,
    pub bytes: u64,
    /// Wall time from its first packet to its end (or to now).
    pub wall_s: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A live capture's frames dropped by the kernel (its ring was full).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped: Option<u64>,
    /// A live capture's frames handed out possibly out of order with
    /// another port's (an older frame could still have been hidden).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unordered: Option<u64>,
    /// A capture file's: how far the daemon's clock runs ahead of the
    /// capture's. Records of its flows are moved back by it, so that they
    /// carry the capture's own times (`capture_times`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture_offset_ns: Option<i64>,
    /// Whether records of this source's flows carry the capture's times
    /// (false when another source shares its port and the times would mix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture_times: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordsStatus {
    pub path: Option<String>,
    /// Records that reached the file.
    pub written: u64,
    pub rotations: u64,
    /// Write attempts that failed.
    pub errors: u64,
    /// Records dropped because the file could not take them (failed
    /// writes, and a queue the file fell behind on: `queue_full`).
    #[serde(default)]
    pub lost: u64,
    #[serde(default)]
    pub queue_full: u64,
    /// Queued for the file's thread or buffered, not yet written.
    #[serde(default)]
    pub pending: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_errors_are_classified() {
        let cmd = Command::Flows { filter: Some("proto=tcp".into()), sort: SortKey::Rate, offset: 5, limit: Some(7) };
        let line = serde_json::to_vec(&Request { v: VERSION, id: Value::from(3), cmd: &cmd }).unwrap();
        let (id, parsed) = parse_request(&line);
        assert_eq!(id, Value::from(3));
        assert_eq!(parsed.unwrap(), cmd);

        let code = |line: &str| parse_request(line.as_bytes()).1.unwrap_err().code;
        assert_eq!(code("{nope"), ErrorCode::BadJson);
        assert_eq!(code("[1]"), ErrorCode::BadJson);
        assert_eq!(code(r#"{"cmd":"stats"}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"v":2,"cmd":"stats"}"#), ErrorCode::UnsupportedVersion);
        assert_eq!(code(r#"{"v":1,"cmd":"reboot"}"#), ErrorCode::UnknownCommand);
        assert_eq!(code(r#"{"v":1,"cmd":"flow"}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"v":1,"cmd":"stats","extra":1}"#), ErrorCode::BadRequest);
        let (id, r) = parse_request(br#"{"v":1,"id":"x","cmd":"flow","flow":"seven"}"#);
        assert_eq!(id, Value::from("x"));
        assert!(r.unwrap_err().message.contains("invalid type"));
    }

    /// A float id comes back as it was sent, found by the `control` fuzz
    /// target (`fuzz/`, input `{"v":1,"id":[111111.11111111111,2],...}`):
    /// serde_json's default float parsing can be one ulp off, so the id
    /// the daemon echoed was not the one the client sent.
    #[test]
    fn float_ids_survive_the_echo() {
        for text in ["111111.11111111111", "1.1111111111222223e+43", "1.1111111111111191e+21", "0.1", "-2.5e-300"] {
            let (id, cmd) = parse_request(format!(r#"{{"v":1,"id":{text},"cmd":"ping"}}"#).as_bytes());
            assert_eq!(cmd, Ok(Command::Ping {}));
            let line = serde_json::to_vec(&Response::ok(id.clone(), Value::Null)).unwrap();
            let back: Response = serde_json::from_slice(&line).unwrap();
            assert_eq!(back.id, id, "{text}");
            assert_eq!(back.id.as_f64(), text.parse::<f64>().ok(), "{text}");
        }
    }

    #[test]
    fn bulk_commands_and_filtered_subscriptions_round_trip() {
        for cmd in [
            Command::Unoffload { flow: None, filter: Some("proto=tcp and bytes > 1M".into()) },
            Command::Unoffload { flow: Some(FlowId(9)), filter: None },
            Command::Flush { filter: None },
            Command::Flush { filter: Some("age > 1h".into()) },
            Command::Subscribe { filter: Some("proto=udp".into()) },
            Command::Subscribe { filter: None },
        ] {
            let line = serde_json::to_vec(&Request { v: VERSION, id: Value::Null, cmd: &cmd }).unwrap();
            assert_eq!(parse_request(&line).1.unwrap(), cmd, "{}", String::from_utf8_lossy(&line));
        }
        // What clients sent before the filters still reads the same.
        assert_eq!(parse_request(br#"{"v":1,"cmd":"subscribe"}"#).1.unwrap(), Command::Subscribe { filter: None });
        assert_eq!(
            parse_request(br#"{"v":1,"cmd":"unoffload","flow":3}"#).1.unwrap(),
            Command::Unoffload { flow: Some(FlowId(3)), filter: None }
        );
        assert_eq!(parse_request(br#"{"v":1,"cmd":"flush"}"#).1.unwrap(), Command::Flush { filter: None });
    }

    #[test]
    fn offload_takes_an_action_object() {
        let (_, r) = parse_request(br#"{"v":1,"cmd":"offload","flow":12,"action":{"type":"forward","port":1}}"#);
        assert_eq!(r.unwrap(), Command::Offload { flow: FlowId(12), action: Action::Forward { port: 1 } });
    }
}
