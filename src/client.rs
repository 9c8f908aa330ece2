//! The control clients: `flowtable flows`, `flow`, `stats`, `watch`,
//! `label`, `offload`, `unoffload`, `flush` and `events` talk to a running
//! `flowtable run` over its control socket and print human tables (with
//! units) or, with `--json`, the daemon's answers for scripts.

pub mod watch;

use crate::control::{
    BulkAnswer, Command, ControlError, ErrorCode, FlowSummary, FlowsPage, Request, Response, SortKey, Stats, VERSION,
};
use crate::report;
use flowtable_hw::Action;
use flowtable_sw::context::Verdict;
use flowtable_sw::FlowId;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where clients look for the daemon when told nothing.
pub const DEFAULT_SOCKET: &str = flowtable_config::DEFAULT_SOCKET;

/// Which daemon to talk to.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Target {
    /// The daemon's control socket [default: the configuration's, else /run/flowtable/flowtable.sock].
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Read the socket path from this configuration file.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

impl Target {
    pub fn socket_path(&self) -> Result<PathBuf, String> {
        if let Some(s) = &self.socket {
            return Ok(s.clone());
        }
        if let Some(c) = &self.config {
            let config = flowtable_config::load(c).map_err(|e| e.to_string())?;
            return Ok(PathBuf::from(config.control.socket));
        }
        Ok(PathBuf::from(DEFAULT_SOCKET))
    }

    pub fn connect(&self) -> Result<Client, String> {
        Client::connect(&self.socket_path()?)
    }
}

/// A failed call: the daemon's own error, or the connection's.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("the daemon refused: {0}")]
    Daemon(ControlError),
    #[error("{0}")]
    Connection(String),
}

impl From<CallError> for String {
    fn from(e: CallError) -> String {
        e.to_string()
    }
}

/// One connection to the daemon; requests go one at a time.
pub struct Client {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
    line: String,
}

impl Client {
    /// Connects; when no daemon is there the error says so and names the path.
    pub fn connect(path: &Path) -> Result<Client, String> {
        let shown = path.display();
        crate::control::socket_path_fits(path)?;
        let stream = UnixStream::connect(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => format!("the daemon is not running: no socket at {shown} (start it with `flowtable run --config FILE`, or give --socket)"),
            io::ErrorKind::ConnectionRefused => match std::fs::metadata(path) {
                Ok(m) if !std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => format!(
                    "{shown} is not a socket but a {}: give the daemon's control socket (its configuration's control.socket) with --socket",
                    if m.is_dir() { "directory" } else { "regular file" }
                ),
                _ => format!("the daemon is not running: nothing listens on {shown} (a socket left by a daemon that stopped)"),
            },
            io::ErrorKind::PermissionDenied => format!("{shown}: permission denied (the socket is mode 0660: join its group)"),
            _ => format!("cannot reach the daemon at {shown}: {e}"),
        })?;
        stream.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
        let reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
        Ok(Client { path: path.to_path_buf(), reader, writer: stream, next_id: 1, line: String::new() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn send(&mut self, cmd: &Command) -> Result<u64, CallError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut line = serde_json::to_vec(&Request { v: VERSION, id: Value::from(id), cmd })
            .map_err(|e| CallError::Connection(e.to_string()))?;
        line.push(b'\n');
        self.writer.write_all(&line).map_err(|e| self.lost(e))?;
        Ok(id)
    }

    fn lost(&self, e: io::Error) -> CallError {
        CallError::Connection(format!("connection to the daemon at {} lost: {e}", self.path.display()))
    }

    /// Reads one line from the daemon.
    pub fn read_line(&mut self) -> Result<Option<&str>, CallError> {
        self.line.clear();
        match self.reader.read_line(&mut self.line) {
            Ok(0) => Ok(None),
            Ok(_) => Ok(Some(self.line.trim_end())),
            Err(e) => Err(self.lost(e)),
        }
    }

    /// Sends a command and waits for its answer.
    pub fn call(&mut self, cmd: &Command) -> Result<Value, CallError> {
        let id = self.send(cmd)?;
        let path = self.path.display().to_string();
        let line = self.read_line()?.ok_or_else(|| {
            CallError::Connection(format!("the daemon at {path} closed the connection without answering"))
        })?;
        let resp: Response = serde_json::from_str(line)
            .map_err(|e| CallError::Connection(format!("the daemon's answer is not a response: {e}")))?;
        if resp.id != id && !resp.id.is_null() {
            return Err(CallError::Connection(format!("answer for request {} while waiting for {id}", resp.id)));
        }
        match (resp.ok, resp.result, resp.error) {
            (true, Some(v), _) => Ok(v),
            (false, _, Some(e)) => Err(CallError::Daemon(e)),
            _ => Err(CallError::Connection("the daemon's answer has neither result nor error".into())),
        }
    }

    /// A typed call.
    pub fn call_as<T: serde::de::DeserializeOwned>(&mut self, cmd: &Command) -> Result<T, CallError> {
        let v = self.call(cmd)?;
        serde_json::from_value(v).map_err(|e| CallError::Connection(format!("unexpected answer: {e}")))
    }

    /// Waits as long as the daemon gives a bulk command (`flush`,
    /// `unoffload --filter`) for its answer, a little longer.
    pub fn wait_for_bulk(&mut self) -> Result<(), CallError> {
        let wait = crate::control::server::BULK_ANSWER_TIMEOUT + Duration::from_secs(5);
        self.writer.set_read_timeout(Some(wait)).map_err(|e| self.lost(e))
    }

    /// Subscribes (to the events of the flows `filter` selects, all
    /// without one); the connection then carries event lines (see `next_event`).
    pub fn subscribe(&mut self, filter: Option<String>) -> Result<(), CallError> {
        self.call(&Command::Subscribe { filter })?;
        self.writer.set_read_timeout(None).map_err(|e| self.lost(e))
    }

    /// The next event of a subscription; `None` when the daemon ended it.
    pub fn next_event(&mut self) -> Result<Option<Value>, CallError> {
        loop {
            let Some(line) = self.read_line()? else { return Ok(None) };
            let v: Value = serde_json::from_str(line)
                .map_err(|e| CallError::Connection(format!("the daemon sent a line that is not JSON: {e}")))?;
            if let Some(ev) = v.get("event") {
                return Ok(Some(ev.clone()));
            }
            if v.get("ok") == Some(&Value::Bool(false)) {
                let e: ControlError = serde_json::from_value(v["error"].clone())
                    .map_err(|e| CallError::Connection(format!("malformed error line: {e}")))?;
                return Err(CallError::Daemon(e));
            }
        }
    }
}

// ---- argument types ----

fn parse_sort(s: &str) -> Result<SortKey, String> {
    SortKey::parse(s)
}

fn parse_flow_id(s: &str) -> Result<FlowId, String> {
    s.parse::<u64>().map(FlowId).map_err(|_| format!("{s:?} is not a flow id (a number, as `flowtable flows` shows)"))
}

/// `drop`, `pass`, `forward:N`, `mirror:N` or `mark:N`.
pub fn parse_action(s: &str) -> Result<Action, String> {
    let (kind, arg) = match s.split_once(':') {
        Some((k, a)) => (k, Some(a)),
        None => (s, None),
    };
    // Decimal, or hex as tc and iptables users write marks (0xff).
    let num = |what: &str| -> Result<u32, String> {
        let a = arg.ok_or_else(|| format!("action {s:?}: write {kind}:{what}"))?;
        match a.strip_prefix("0x").or_else(|| a.strip_prefix("0X")) {
            Some(hex) => u32::from_str_radix(hex, 16),
            None => a.parse::<u32>(),
        }
        .map_err(|_| format!("action {s:?}: {what} must be a number (decimal, or hex as 0xff) of at most 32 bits"))
    };
    let port = || -> Result<u8, String> {
        u8::try_from(num("PORT")?).map_err(|_| format!("action {s:?}: port index must be 0-255"))
    };
    let action = match kind {
        "drop" => Action::Drop,
        "pass" => Action::Pass,
        "forward" => Action::Forward { port: port()? },
        "mirror" => Action::Mirror { port: port()? },
        "mark" => Action::Mark { mark: num("MARK")? },
        _ => return Err(format!("action {s:?}: give drop, pass, forward:PORT, mirror:PORT or mark:MARK")),
    };
    if arg.is_some() && matches!(action, Action::Drop | Action::Pass) {
        return Err(format!("action {s:?}: {kind} takes no argument"));
    }
    Ok(action)
}

fn parse_verdict(s: &str) -> Result<Verdict, String> {
    serde_json::from_value(Value::String(s.to_string()))
        .map_err(|_| format!("verdict {s:?}: give offload, drop or software"))
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?}: write key=value")),
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct FlowsArgs {
    #[command(flatten)]
    pub target: Target,
    /// Rows to show.
    #[arg(long, default_value_t = 20, value_parser = crate::args::whole::<usize>)]
    pub top: usize,
    /// bytes, packets, rate (mean since start) or age.
    #[arg(long, default_value = "bytes", value_parser = parse_sort)]
    pub sort: SortKey,
    /// Only the flows this selects, e.g. "proto=tcp,udp and bytes > 1M" (the
    /// grammar, fields and units: `flows --help`).
    #[arg(long, value_name = "EXPR")]
    pub filter: Option<String>,
    /// Skip this many rows first (paging).
    #[arg(long, default_value_t = 0, value_parser = crate::args::whole::<usize>)]
    pub offset: usize,
    /// Only count the flows (the filter's, or all), as conntrack -C does.
    #[arg(long)]
    pub count: bool,
    /// The daemon's answer as JSON (a page of flows; with --count, {"count": N}).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct FlowArgs {
    #[command(flatten)]
    pub target: Target,
    /// The flow's id, as `flowtable flows` shows it.
    #[arg(value_parser = parse_flow_id)]
    pub id: FlowId,
    /// The daemon's answer as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pub target: Target,
    /// The daemon's answer as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct LabelArgs {
    #[command(flatten)]
    pub target: Target,
    /// The flow's id, as `flowtable flows` shows it.
    #[arg(value_parser = parse_flow_id)]
    pub id: FlowId,
    /// Metadata entries, key=value.
    #[arg(value_parser = parse_kv)]
    pub metadata: Vec<(String, String)>,
    /// A label for the flow (shown by `flows`, matched by `--filter label=...`,
    /// kept in its record).
    #[arg(long)]
    pub label: Option<String>,
    /// offload, drop or software: overrides the classifier, whatever the
    /// flow's stage. `software` takes an offloaded flow back to software
    /// (as `unoffload` does); `drop` and `offload` offload a flow in
    /// software, `drop` replacing the rules of one offloaded with another
    /// action (`offload` leaves an offloaded flow as it is). The answer
    /// waits for the rules; a verdict that can't be applied (the backend
    /// can't do it or refuses, the flow's rules are on their way out)
    /// exits non-zero with the reason.
    #[arg(long, value_parser = parse_verdict)]
    pub verdict: Option<Verdict>,
    /// The daemon's answer as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct OffloadArgs {
    #[command(flatten)]
    pub target: Target,
    /// The flow's id, as `flowtable flows` shows it.
    #[arg(value_parser = parse_flow_id)]
    pub id: FlowId,
    /// drop, pass, forward:PORT, mirror:PORT or mark:MARK.
    #[arg(long, value_parser = parse_action)]
    pub action: Action,
    /// The daemon's answer as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["id", "filter"])))]
pub struct UnoffloadArgs {
    #[command(flatten)]
    pub target: Target,
    /// The flow's id, as `flowtable flows` shows it.
    #[arg(value_parser = parse_flow_id)]
    pub id: Option<FlowId>,
    /// Every offloaded flow this selects instead of one (the grammar: `flows --help`).
    #[arg(long, value_name = "EXPR")]
    pub filter: Option<String>,
    /// The daemon's answer as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct FlushArgs {
    #[command(flatten)]
    pub target: Target,
    /// Only the flows this selects (the grammar: `flows --help`); without it, every flow.
    #[arg(long, value_name = "EXPR")]
    pub filter: Option<String>,
    /// The daemon's answer as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct EventsArgs {
    #[command(flatten)]
    pub target: Target,
    /// Exit after this many events.
    #[arg(long, value_parser = crate::args::whole::<u64>)]
    pub count: Option<u64>,
    /// The daemon's event objects, one per line.
    #[arg(long)]
    pub json: bool,
    /// Only these kinds, comma-separated: new, classified, offloaded,
    /// refused, unoffloaded, expired (as conntrack -E -e NEW,DESTROY).
    #[arg(long = "type", value_name = "KINDS", value_parser = parse_event_kinds)]
    pub kinds: Option<EventKinds>,
    /// Only the events of the flows this selects, judged when each event
    /// happened (an expiry by its record); the grammar: `flows --help`.
    #[arg(long, value_name = "EXPR")]
    pub filter: Option<String>,
}

/// The event kinds `--type` asks for (a newtype: clap would take a bare
/// `Vec` for a list of arguments).
#[derive(Debug, Clone)]
pub struct EventKinds(pub Vec<String>);

const EVENT_KINDS: [&str; 6] = ["new", "classified", "offloaded", "refused", "unoffloaded", "expired"];

fn parse_event_kinds(s: &str) -> Result<EventKinds, String> {
    s.split(',')
        .map(|k| {
            let k = k.trim().to_ascii_lowercase();
            if EVENT_KINDS.contains(&k.as_str()) {
                Ok(k)
            } else {
                Err(format!("unknown event kind {k:?}: give {}", EVENT_KINDS.join(", ")))
            }
        })
        .collect::<Result<_, _>>()
        .map(EventKinds)
}

// ---- commands ----

fn print_json(v: &impl serde::Serialize) -> Result<(), String> {
    let s = serde_json::to_string(v).map_err(|e| e.to_string())?;
    let mut out = io::stdout().lock();
    writeln!(out, "{s}").map_err(|e| e.to_string())
}

/// A refused filter as the daemon said it, the expression below with a
/// caret at the column named; other errors as they are.
pub fn explain(e: CallError, filter: Option<&str>) -> String {
    match (&e, filter) {
        (CallError::Daemon(ce), Some(text)) if ce.code == ErrorCode::BadFilter => {
            let column = ce
                .message
                .strip_prefix("filter: column ")
                .and_then(|rest| rest.split(':').next())
                .and_then(|n| n.parse::<usize>().ok());
            match column {
                Some(c) => format!("{}\n  {text}\n  {}^", ce.message, " ".repeat(c.saturating_sub(1))),
                None => ce.message.clone(),
            }
        }
        _ => e.to_string(),
    }
}

/// `n flow` or `n flows`.
fn flows_n(n: usize) -> String {
    format!("{n} flow{}", if n == 1 { "" } else { "s" })
}

pub fn flows(a: FlowsArgs) -> Result<(), String> {
    let mut c = a.target.connect()?;
    let filter = a.filter.as_deref();
    if a.count {
        let cmd = Command::Flows { filter: a.filter.clone(), sort: a.sort, offset: 0, limit: Some(0) };
        let page: FlowsPage = c.call_as(&cmd).map_err(|e| explain(e, filter))?;
        if a.json {
            return print_json(&serde_json::json!({"count": page.total}));
        }
        println!("{}", flows_n(page.total));
        return Ok(());
    }
    let cmd = Command::Flows { filter: a.filter.clone(), sort: a.sort, offset: a.offset, limit: Some(a.top) };
    if a.json {
        return print_json(&c.call(&cmd).map_err(|e| explain(e, filter))?);
    }
    let page: FlowsPage = c.call_as(&cmd).map_err(|e| explain(e, filter))?;
    print!("{}", flows_table(&page.flows));
    println!(
        "{} of {}{}, by {}",
        page.flows.len(),
        report::counted(page.total as u64, "flow"),
        if page.offset > 0 { format!(" from row {}", page.offset + 1) } else { String::new() },
        page.sort.as_str()
    );
    Ok(())
}

pub fn flow(a: FlowArgs) -> Result<(), String> {
    let mut c = a.target.connect()?;
    let v = c.call(&Command::Flow { flow: a.id })?;
    if a.json {
        return print_json(&v);
    }
    print!("{}", flow_detail(&v));
    Ok(())
}

pub fn stats(a: StatsArgs) -> Result<(), String> {
    let mut c = a.target.connect()?;
    if a.json {
        return print_json(&c.call(&Command::Stats {})?);
    }
    let s: Stats = c.call_as(&Command::Stats {})?;
    print!("{}", stats_report(&s));
    Ok(())
}

pub fn label(a: LabelArgs) -> Result<(), String> {
    if a.label.is_none() && a.verdict.is_none() && a.metadata.is_empty() {
        return Err("nothing to set: give key=value pairs, --label or --verdict".into());
    }
    let mut c = a.target.connect()?;
    let metadata: BTreeMap<String, String> = a.metadata.into_iter().collect();
    let v = c.call(&Command::SetContext { flow: a.id, label: a.label, verdict: a.verdict, metadata })?;
    if a.json {
        return print_json(&v);
    }
    println!("flow {}: context {} (stage {})", a.id, context_text(&v["context"]), v["stage"].as_str().unwrap_or("?"));
    Ok(())
}

pub fn offload(a: OffloadArgs) -> Result<(), String> {
    let mut c = a.target.connect()?;
    let v = c.call(&Command::Offload { flow: a.id, action: a.action })?;
    if a.json {
        return print_json(&v);
    }
    let stage = v["stage"].as_str().unwrap_or("?");
    match stage {
        "queued" => {
            println!("flow {}: queued for offload with {}; installed at the next poll", a.id, action_text(&a.action))
        }
        other => println!("flow {}: {other} (asked for {})", a.id, action_text(&a.action)),
    }
    Ok(())
}

pub fn unoffload(a: UnoffloadArgs) -> Result<(), String> {
    let mut c = a.target.connect()?;
    let Some(id) = a.id else {
        let filter = a.filter.as_deref();
        c.wait_for_bulk().map_err(|e| e.to_string())?;
        let v = c.call(&Command::Unoffload { flow: None, filter: a.filter.clone() }).map_err(|e| explain(e, filter))?;
        return bulk_report(v, a.json, "unoffloaded", "not offloaded");
    };
    let v = c.call(&Command::Unoffload { flow: Some(id), filter: None })?;
    if a.json {
        return print_json(&v);
    }
    println!("flow {id}: back in software; its rules are removed and the classifier won't offload it again");
    Ok(())
}

/// `flowtable flush`: ends the selected flows now, each with its record.
pub fn flush(a: FlushArgs) -> Result<(), String> {
    let mut c = a.target.connect()?;
    let filter = a.filter.as_deref();
    c.wait_for_bulk().map_err(|e| e.to_string())?;
    let v = c.call(&Command::Flush { filter: a.filter.clone() }).map_err(|e| explain(e, filter))?;
    bulk_report(v, a.json, "flushed", "already ended")
}

/// A bulk answer as a confirmation count (`3 flows unoffloaded`), as
/// conntrack -D and -F give one; non-zero exit if some could not be done.
fn bulk_report(v: Value, json: bool, done: &str, skipped: &str) -> Result<(), String> {
    let b: BulkAnswer =
        serde_json::from_value(v.clone()).map_err(|e| format!("unexpected answer from the daemon: {e}"))?;
    if json {
        print_json(&v)?;
    } else {
        let mut notes = Vec::new();
        if b.skipped > 0 {
            notes.push(format!("{} of the {} selected {skipped}", b.skipped, b.matched));
        }
        if b.pending > 0 {
            notes.push(format!("{} still removing their rules: done once they are out", flows_n(b.pending)));
        }
        let notes = if notes.is_empty() { String::new() } else { format!(" ({})", notes.join("; ")) };
        println!("{} {done}{notes}", flows_n(b.done));
    }
    if b.failed > 0 {
        return Err(format!(
            "{}: removing their rules failed; they stay offloaded (the daemon retries)",
            flows_n(b.failed)
        ));
    }
    Ok(())
}

pub fn events(a: EventsArgs) -> Result<(), String> {
    let mut c = a.target.connect()?;
    c.subscribe(a.filter.clone()).map_err(|e| explain(e, a.filter.as_deref()))?;
    let mut seen = 0u64;
    let mut out = io::stdout().lock();
    while a.count.is_none_or(|n| seen < n) {
        // The stream ends when the daemon closes it, or tells it that it
        // is stopping: either way, the daemon stopped.
        let stopped = || format!("the daemon stopped: no more events (after {seen})");
        let ev = match c.next_event() {
            Ok(Some(ev)) => ev,
            Ok(None) => return Err(stopped()),
            Err(CallError::Daemon(e)) if e.code == ErrorCode::ShuttingDown => return Err(stopped()),
            Err(e) => return Err(e.into()),
        };
        if let Some(kinds) = &a.kinds {
            if !kinds.0.iter().any(|k| ev["event"] == k.as_str()) {
                continue;
            }
        }
        seen += 1;
        let line = if a.json { ev.to_string() } else { event_text(&ev) };
        if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
            // The reader went away (a pipe to `head`): that's the end.
            return Ok(());
        }
    }
    Ok(())
}

// ---- human output ----

/// An action as `--action` takes it (`mirror:1`, `mark:0xff`): one
/// spelling in tables, events and the daemon's log.
pub fn action_text(a: &Action) -> String {
    a.to_string()
}

/// Bits per second from bytes per second.
pub fn bitrate(bytes_per_s: f64) -> String {
    report::rate(bytes_per_s * 8.0, "bit")
}

/// Where an offload's rules went, from its two directions' placements
/// (`["hardware", "hardware"]`), in the words of the flows listing:
/// `hardware` or `kernel` when the directions agree, else `mixed` with
/// each direction's (`mixed (hardware/kernel)`).
pub fn placement_text(placement: &Value) -> String {
    fn word(p: &Value) -> &str {
        match p.as_str() {
            Some("kernel-software") => "kernel",
            Some(p) => p,
            None => "none",
        }
    }
    match placement.as_array().map(Vec::as_slice) {
        Some([a, b]) if a == b => word(a).to_string(),
        Some([a, b]) => format!("mixed ({}/{})", word(a), word(b)),
        _ => "none".to_string(),
    }
}

/// Where a flow is handled, in one word or two.
fn where_text(f: &FlowSummary) -> String {
    match (&f.action, f.placement.as_str()) {
        (Some(a), "none") => format!("{} (queued)", action_text(a)),
        (Some(a), p) => format!("{} {}", action_text(a), if p == "kernel-software" { "kernel" } else { p }),
        (None, _) => "-".into(),
    }
}

/// The text of a JSON record's or view's two ends, the initiator first:
/// ports only where the protocol has them, ICMP's type, code and id after
/// the server.
fn ends_text(v: &Value) -> (String, String) {
    let proto = u(&v["proto"]) as u8;
    let client = report::endpoint(proto, v["src"].as_str().unwrap_or("?"), u(&v["sport"]) as u16);
    let icmp = |k: &str| v[k].as_u64().or_else(|| v["orig"][k].as_u64()).map(|t| t as u8);
    let server = report::server_text(
        proto,
        v["dst"].as_str().unwrap_or("?"),
        u(&v["dport"]) as u16,
        icmp("icmp_type"),
        icmp("icmp_code"),
    );
    (client, server)
}

/// The share the NIC (or the kernel's rule) counted, of a flow's packets.
pub fn nic_share(hw_packets: u64, packets: u64) -> String {
    if packets == 0 {
        "-".into()
    } else {
        format!("{:.1}%", 100.0 * hw_packets as f64 / packets as f64)
    }
}

/// A flow's current rate for its column's scale (0 where the daemon gave none).
fn current_of(f: &FlowSummary) -> f64 {
    f.current_bytes_per_s.unwrap_or(0.0)
}

/// The flows table: counters with the part the NIC counted, the mean
/// rate since the flow began beside the current one, time since the last
/// packet (`used`) and before idle expiry (`expires`). Each numeric
/// column in one scale, its largest value's.
pub fn flows_table(flows: &[FlowSummary]) -> String {
    let packets = report::count_column(&flows.iter().map(|f| f.packets).collect::<Vec<_>>());
    let bytes = report::bytes_column(&flows.iter().map(|f| f.bytes).collect::<Vec<_>>());
    let mean = report::bitrate_column(&flows.iter().map(|f| f.mean_bytes_per_s).collect::<Vec<_>>());
    let current = report::bitrate_column(&flows.iter().map(current_of).collect::<Vec<_>>());
    let rows: Vec<Vec<String>> = flows
        .iter()
        .enumerate()
        .map(|(i, f)| {
            vec![
                f.id.to_string(),
                flowtable_sw::key::proto_name(f.proto).to_string(),
                report::endpoint(f.proto, &f.src, f.sport),
                report::server_text(f.proto, &f.dst, f.dport, f.icmp_type, f.icmp_code),
                f.stage.as_str().to_string(),
                where_text(f),
                f.class.clone().unwrap_or_else(|| "-".into()),
                f.label.clone().unwrap_or_else(|| "-".into()),
                packets[i].clone(),
                bytes[i].clone(),
                nic_share(f.hw_packets, f.packets),
                mean[i].clone(),
                if f.current_bytes_per_s.is_some() { current[i].clone() } else { "-".into() },
                report::duration_ns(f.used_ns),
                report::duration_ns(f.expires_in_ns),
                report::duration_ns(f.age_ns),
            ]
        })
        .collect();
    report::table(
        &[
            "id",
            "proto",
            "client",
            "server",
            "stage",
            "offload",
            "rule",
            "label",
            "packets",
            "bytes",
            "by NIC",
            "mean rate",
            "current rate",
            "used",
            "expires",
            "age",
        ],
        &rows,
        &[0, 8, 9, 10, 11, 12, 13, 14, 15],
    )
}

fn context_text(ctx: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(l) = ctx.get("label").and_then(Value::as_str) {
        parts.push(format!("label {l}"));
    }
    if let Some(v) = ctx.get("verdict").and_then(Value::as_str) {
        parts.push(format!("verdict {v}"));
    }
    if let Some(Value::Object(m)) = ctx.get("metadata") {
        let kv: Vec<String> = m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect();
        parts.push(kv.join(" "));
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn ago(now: u64, t: u64) -> String {
    format!("{} ago", report::duration_ns(now.saturating_sub(t)))
}

/// `flowtable flow ID` as text.
pub fn flow_detail(v: &Value) -> String {
    let now = u(&v["now_ns"]);
    let mut o = String::new();
    let proto = flowtable_sw::key::proto_name(v["proto"].as_u64().unwrap_or(0) as u8);
    let (client, server) = ends_text(v);
    o.push_str(&format!("flow {}: {proto} {client} -> {server}", v["id"]));
    if u(&v["vlan"]) != 0 {
        o.push_str(&format!(" vlan {}", v["vlan"]));
    }
    let (orig_port, reply_port) = (&v["orig"]["ingress"], &v["reply"]["ingress"]);
    if reply_port.is_u64() && reply_port != orig_port {
        // An inline pair: the reply comes in on the other port.
        o.push_str(&format!(" (ingress port {}, replies on port {reply_port})\n", v["ingress"]));
    } else {
        o.push_str(&format!(" (ingress port {})\n", v["ingress"]));
    }
    let row = |o: &mut String, k: &str, val: String| o.push_str(&format!("  {k:<10} {val}\n"));
    row(
        &mut o,
        "stage",
        format!(
            "{}, tcp {}, rule {}",
            v["stage"].as_str().unwrap_or("?"),
            v["tcp_state"].as_str().unwrap_or("-"),
            v["class"].as_str().unwrap_or("-")
        ),
    );
    row(
        &mut o,
        "time",
        format!(
            "started {}, last packet {} (used), idles out in {}",
            ago(now, u(&v["start_ns"])),
            ago(now, u(&v["last_ns"])),
            report::duration_ns(u(&v["idle_deadline_ns"]).saturating_sub(now)),
        ),
    );
    row(
        &mut o,
        "rate",
        format!(
            "{} mean since start, {} current{}",
            bitrate(v["mean_bytes_per_s"].as_f64().unwrap_or(0.0)),
            v["current_bytes_per_s"].as_f64().map_or_else(|| "-".into(), bitrate),
            v["current_packets_per_s"].as_f64().map(|p| format!(" ({})", report::rate(p, "pkt"))).unwrap_or_default()
        ),
    );
    for (name, d) in [("orig", &v["orig"]), ("reply", &v["reply"])] {
        row(
            &mut o,
            name,
            format!(
                "{}, {} (software {} / {}, hardware {} / {}){}",
                report::counted(u(&d["packets"]), "packet"),
                report::bytes(u(&d["bytes"])),
                report::count(u(&d["sw_packets"])),
                report::bytes(u(&d["sw_bytes"])),
                report::count(u(&d["hw_packets"])),
                report::bytes(u(&d["hw_bytes"])),
                match (d["icmp_type"].as_u64(), d["icmp_code"].as_u64()) {
                    (Some(t), Some(c)) => format!(", first icmp type {t} code {c}"),
                    _ => String::new(),
                }
            ),
        );
    }
    row(
        &mut o,
        "total",
        format!(
            "{}, {}; {} by NIC",
            report::counted(u(&v["packets"]), "packet"),
            report::bytes(u(&v["bytes"])),
            nic_share(u(&v["orig"]["hw_packets"]) + u(&v["reply"]["hw_packets"]), u(&v["packets"]))
        ),
    );
    match v.get("offload").filter(|x| !x.is_null()) {
        None => row(&mut o, "offload", "never asked".into()),
        Some(off) => {
            let action =
                serde_json::from_value::<Action>(off["action"].clone()).map(|a| action_text(&a)).unwrap_or_default();
            let places: Vec<String> = off["placement"]
                .as_array()
                .map(|a| a.iter().map(|p| p.as_str().unwrap_or("none").to_string()).collect())
                .unwrap_or_default();
            let installed = u(&off["installed_ns"]);
            row(
                &mut o,
                "offload",
                format!(
                    "{action} on {}: placement {} ({}), counters {}, {}{}",
                    v["backend"].as_str().unwrap_or("?"),
                    v["placement"].as_str().unwrap_or("?"),
                    places.join(" / "),
                    if off["hw_counters"].as_bool() == Some(true) { "read" } else { "not readable" },
                    if installed > 0 { format!("installed {}", ago(now, installed)) } else { "not installed".into() },
                    if off["pinned_software"].as_bool() == Some(true) { ", pinned to software" } else { "" }
                ),
            );
            if let Some(r) = off.get("refusal").filter(|r| !r.is_null()) {
                row(
                    &mut o,
                    "refused",
                    format!("{}: {}", r["kind"].as_str().unwrap_or("?"), r["message"].as_str().unwrap_or("")),
                );
            }
        }
    }
    let rules: Vec<&str> =
        v["rules"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    row(&mut o, "rules", if rules.is_empty() { "none".into() } else { rules.join(", ") });
    row(&mut o, "context", context_text(&v["context"]));
    o
}

fn map_text(m: &BTreeMap<String, u64>) -> String {
    if m.values().all(|n| *n == 0) {
        return "none".into();
    }
    m.iter().filter(|(_, n)| **n > 0).map(|(k, n)| format!("{k} {}", report::count(*n))).collect::<Vec<_>>().join(", ")
}

/// `flowtable stats` as text.
pub fn stats_report(s: &Stats) -> String {
    let mut o = String::new();
    o.push_str(&format!(
        "flowtable daemon pid {}, up {}; configuration generation {}{} ({}{})\n",
        s.pid,
        report::duration_ns((s.uptime_s * 1e9) as u64),
        s.config.generation,
        s.config.path.as_ref().map(|p| format!(" from {p}")).unwrap_or_default(),
        report::counted(s.config.rules.len() as u64, "rule"),
        if s.config.reloads_refused > 0 {
            format!(", {} reloads refused", s.config.reloads_refused)
        } else {
            String::new()
        }
    ));
    let f = &s.flows;
    o.push_str(&format!(
        "flows     {} live of {} ({:.1}% full); {} created, {} ended, {} offloaded, {} refused{}\n",
        f.live,
        f.capacity,
        f.fill * 100.0,
        report::count(f.created),
        report::count(f.ended),
        report::count(f.offloaded_total),
        report::count(f.refused_total),
        if f.adopted_total > 0 {
            format!(", {} taken over from the last run", report::count(f.adopted_total))
        } else {
            String::new()
        }
    ));
    o.push_str(&format!("  by stage      {}\n", map_text(&f.by_stage)));
    o.push_str(&format!("  by placement  {}\n", map_text(&f.by_placement)));
    let r = &s.rules;
    o.push_str(&format!(
        "rules     {}: {} live{}, {} queued; installed {} ({}), removed {} ({}){}\n",
        r.backend,
        r.live,
        if r.capacity > 0 { format!(" of {}", r.capacity) } else { String::new() },
        r.queued,
        report::count(r.installed),
        report::rate(r.installs_per_s, "rules"),
        report::count(r.removed),
        report::rate(r.removals_per_s, "rules"),
        if r.remove_errors + r.counter_errors > 0 {
            format!("; {} remove errors, {} counter read errors", r.remove_errors, r.counter_errors)
        } else {
            String::new()
        }
    ));
    let by_device: std::collections::BTreeMap<String, u64> =
        r.by_device.iter().map(|(d, n)| (d.clone(), *n as u64)).collect();
    o.push_str(&format!("  by device     {}\n", map_text(&by_device)));
    if !r.tcp_teardown.is_empty() {
        let how = if r.tcp_teardown == "fin-rst" {
            "fin-rst (FIN and RST reach software, which removes the rules at the close)"
        } else {
            "idle-only (the rules take FIN and RST: closed connections end by their idle timeout)"
        };
        o.push_str(&format!("  tcp teardown  {how}\n"));
    }
    let c = &r.counted;
    o.push_str(&format!(
        "  counted       {} ({}) by hardware, {} ({}) by the kernel's software path\n",
        report::counted(c.hw_packets, "packet"),
        report::bytes(c.hw_bytes),
        report::count(c.packets.saturating_sub(c.hw_packets)),
        report::bytes(c.bytes.saturating_sub(c.hw_bytes))
    ));
    o.push_str(&format!("refusals  {}\n", map_text(&s.refusals)));
    let p = &s.packets;
    o.push_str(&format!(
        "packets   {} ({}) at {}; by NIC rules {}, by software {}, tap copies left to rule counters {} \
         ({} slipped past rules going in)\n",
        report::count(p.received),
        report::bytes(p.bytes),
        report::rate(p.packets_per_s, "pkt"),
        report::count(p.nic),
        report::count(p.software),
        report::count(p.tap_skipped),
        report::count(p.slipped)
    ));
    o.push_str(&format!("  skipped     {}\n", map_text(&p.skipped)));
    o.push_str(&format!("  untracked   {}\n", map_text(&p.untracked)));
    o.push_str(&format!("ended     {}\n", map_text(&s.ended)));
    for src in &s.sources {
        let losses = match (src.dropped, src.unordered) {
            (Some(d), Some(u)) => {
                format!(", {} dropped by the kernel, {} out of order", report::count(d), report::count(u))
            }
            (Some(d), None) => format!(", {} dropped by the kernel", report::count(d)),
            _ => String::new(),
        };
        let times = match src.capture_times {
            Some(true) => ", records in the capture's own times",
            Some(false) => ", records in the daemon's times (other sources' times would mix with its own)",
            None => "",
        };
        o.push_str(&format!(
            "source    {}: {}, {} ({}){losses}{times}{}\n",
            src.name,
            src.state,
            report::counted(src.packets, "packet"),
            report::bytes(src.bytes),
            src.error.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
        ));
    }
    match &s.records.path {
        Some(path) => o.push_str(&format!(
            "records   {path}: {} written, {} rotations, {} errors, {} lost ({} queue full), {} pending\n",
            report::count(s.records.written),
            s.records.rotations,
            s.records.errors,
            report::count(s.records.lost),
            report::count(s.records.queue_full),
            report::count(s.records.pending)
        )),
        None => o.push_str("records   not written to a file (records.path unset)\n"),
    }
    for e in &s.export {
        let connected = match e.connected {
            Some(false) => ", not connected",
            _ => "",
        };
        o.push_str(&format!(
            "export    {}: {} exported in {} messages, {} dropped ({} queue full, {} unsent, {} unencodable), {} \
             pending, {} errors{connected}{}\n",
            e.name,
            report::count(e.exported),
            report::count(e.messages),
            report::count(e.dropped),
            report::count(e.dropped_queue_full),
            report::count(e.dropped_unsent),
            report::count(e.dropped_unencodable),
            report::count(e.pending),
            e.errors,
            e.last_error.as_ref().map(|m| format!("; last: {m}")).unwrap_or_default()
        ));
    }
    o.push_str(&format!("clients   {} event subscribers\n", s.subscribers));
    o
}

/// One event as a line of text.
/// An event as a line, after its time in seconds since the epoch as
/// `conntrack -E -o timestamp` prints it: when it happened (an expiry from
/// a daemon older than its `ts_ns`: its last packet's).
pub fn event_text(ev: &Value) -> String {
    let ts = ev["ts_ns"].as_u64().or_else(|| ev["record"]["end_ns"].as_u64()).unwrap_or(0);
    format!("[{}.{:06}] {}", ts / 1_000_000_000, ts % 1_000_000_000 / 1000, event_body(ev))
}

fn event_body(ev: &Value) -> String {
    let kind = ev["event"].as_str().unwrap_or("?");
    match kind {
        "expired" => {
            let r = &ev["record"];
            let (client, server) = ends_text(r);
            format!(
                "expired     flow {} {} {client} -> {server}: {}, {}, {} (hardware {})",
                r["id"],
                flowtable_sw::key::proto_name(u(&r["proto"]) as u8),
                report::counted(u(&r["orig"]["packets"]) + u(&r["reply"]["packets"]), "packet"),
                report::bytes(u(&r["orig"]["bytes"]) + u(&r["reply"]["bytes"])),
                r["end_reason"].as_str().unwrap_or("?"),
                report::counted(u(&r["orig"]["hw_packets"]) + u(&r["reply"]["hw_packets"]), "packet")
            )
        }
        // The initiator first, as `expired` shows it.
        "new" => {
            let (client, server) = ends_text(ev);
            format!(
                "new         flow {} {} {client} -> {server}",
                ev["id"],
                ev["key"].as_str().and_then(|k| k.split_whitespace().next()).unwrap_or("?"),
            )
        }
        "classified" => format!(
            "classified  flow {} rule {}: {}",
            ev["id"],
            ev["class"].as_str().unwrap_or("-"),
            ev["decision"].as_str().unwrap_or("?")
        ),
        "offloaded" => {
            let action =
                serde_json::from_value::<Action>(ev["action"].clone()).map(|a| action_text(&a)).unwrap_or_default();
            format!("offloaded   flow {} {action} {}", ev["id"], placement_text(&ev["placement"]))
        }
        "refused" => format!("refused     flow {}: {}", ev["id"], ev["reason"].as_str().unwrap_or("")),
        "unoffloaded" => format!("unoffloaded flow {}", ev["id"]),
        other => format!("{other} {ev}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_parse_and_bad_ones_say_why() {
        assert_eq!(parse_action("drop"), Ok(Action::Drop));
        assert_eq!(parse_action("pass"), Ok(Action::Pass));
        assert_eq!(parse_action("forward:1"), Ok(Action::Forward { port: 1 }));
        assert_eq!(parse_action("mirror:0"), Ok(Action::Mirror { port: 0 }));
        assert_eq!(parse_action("mark:77"), Ok(Action::Mark { mark: 77 }));
        assert_eq!(parse_action("mark:0xff"), Ok(Action::Mark { mark: 255 }));
        assert_eq!(parse_action("mark:0XFF"), Ok(Action::Mark { mark: 255 }));
        assert_eq!(parse_action("forward:0x1"), Ok(Action::Forward { port: 1 }));
        assert!(parse_action("mark:0xfffffffff").unwrap_err().contains("at most 32 bits"));
        assert!(parse_action("mark:0xzz").is_err());
        assert!(parse_action("forward").unwrap_err().contains("forward:PORT"));
        assert!(parse_action("forward:300").unwrap_err().contains("0-255"));
        assert!(parse_action("drop:1").unwrap_err().contains("no argument"));
        assert!(parse_action("teleport").unwrap_err().contains("give drop"));
        for a in [
            Action::Drop,
            Action::Pass,
            Action::Forward { port: 3 },
            Action::Mirror { port: 2 },
            Action::Mark { mark: 9 },
        ] {
            assert_eq!(parse_action(&action_text(&a)), Ok(a));
        }
    }

    #[test]
    fn not_running_names_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("none.sock");
        let err = Client::connect(&path).err().unwrap();
        assert!(err.contains("not running") && err.contains(&*path.to_string_lossy()), "{err}");
    }
}
