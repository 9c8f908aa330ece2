//! Prometheus metrics over HTTP (`metrics.listen`).
//!
//! The daemon's main thread computes the same statistics `flowtable stats`
//! answers (once a second, on its tick) and puts them in a [`Slot`]; the
//! HTTP thread renders whatever the slot last held. A scrape therefore
//! never asks the workers anything and never waits on the main thread
//! beyond swapping a pointer: however often or slowly Prometheus scrapes,
//! the packet path does the same work. The price is that values are up to
//! a second old.
//!
//! Only counters Prometheus can take rates of are exported, never the
//! rates `flowtable stats` computes itself (`rate()` does that better,
//! over whatever window the query asks).

use crate::control::Stats;
use flowtable_sw::{SkipReason, Stage};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// The latest statistics, shared by the main thread (writer) and the HTTP
/// thread (reader). Holding an `Arc` lets either side keep the lock only
/// for the swap or the clone of the pointer.
#[derive(Clone, Default)]
pub struct Slot(Arc<Mutex<Option<Arc<Stats>>>>);

impl Slot {
    pub fn publish(&self, stats: Stats) {
        let stats = Arc::new(stats);
        // A poisoned lock only means a panic elsewhere mid-swap; the value
        // is a whole `Option<Arc>` either way.
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(stats);
    }

    pub fn latest(&self) -> Option<Arc<Stats>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The HTTP server thread. Dropping it stops the thread.
pub struct MetricsServer {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    addr: SocketAddr,
}

impl MetricsServer {
    /// Binds `addr` and serves `slot` from a thread of its own. tiny_http
    /// (a small, synchronous, well-kept server) rather than hand-written
    /// HTTP: request parsing, keep-alive and chunking are its business.
    pub fn start(addr: SocketAddr, slot: Slot) -> Result<MetricsServer, String> {
        let server = tiny_http::Server::http(addr).map_err(|e| {
            let hint = match e.downcast_ref::<std::io::Error>().map(|io| io.kind()) {
                Some(std::io::ErrorKind::AddrInUse) => {
                    " (something else listens there: give metrics.listen another port, or stop it)"
                }
                Some(std::io::ErrorKind::AddrNotAvailable) => " (no interface of this host has that address)",
                Some(std::io::ErrorKind::PermissionDenied) => " (ports below 1024 need privileges)",
                _ => "",
            };
            format!("metrics.listen {addr}: cannot serve metrics there: {e}{hint}")
        })?;
        let server = Arc::new(server);
        let addr = server.server_addr().to_ip().unwrap_or(addr);
        let thread = {
            let server = server.clone();
            std::thread::Builder::new()
                .name("metrics".into())
                .spawn(move || serve(&server, &slot))
                .map_err(|e| format!("starting the metrics thread: {e}"))?
        };
        Ok(MetricsServer { server, thread: Some(thread), addr })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One request at a time: a render takes well under a millisecond, and a
/// client that reads its answer slowly holds up only other scrapes.
fn serve(server: &tiny_http::Server, slot: &Slot) {
    let text_plain = header("Content-Type", "text/plain; charset=utf-8");
    for request in server.incoming_requests() {
        let path = request.url().split('?').next().unwrap_or("");
        let get = matches!(request.method(), tiny_http::Method::Get | tiny_http::Method::Head);
        let response = match (get, path) {
            (false, _) => tiny_http::Response::from_string("only GET is served here\n")
                .with_status_code(405)
                .with_header(text_plain.clone())
                .with_header(header("Allow", "GET, HEAD")),
            (true, "/metrics") => match slot.latest() {
                Some(stats) => tiny_http::Response::from_string(render(stats))
                    .with_header(header("Content-Type", prometheus_client::encoding::prometheus_text::CONTENT_TYPE)),
                // Only in the first second after the start.
                None => tiny_http::Response::from_string("no statistics yet: the daemon is starting\n")
                    .with_status_code(503)
                    .with_header(text_plain.clone()),
            },
            (true, "/") => {
                tiny_http::Response::from_string("flowtable: metrics at /metrics\n").with_header(text_plain.clone())
            }
            (true, _) => tiny_http::Response::from_string("not found: metrics are at /metrics\n")
                .with_status_code(404)
                .with_header(text_plain.clone()),
        };
        // A scraper that hung up is its own problem.
        let _ = request.respond(response);
    }
}

fn header(name: &str, value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("a valid static header")
}

/// The Prometheus text format (0.0.4) of `stats`, every name prefixed
/// `flowtable_`.
pub fn render(stats: Arc<Stats>) -> String {
    let mut registry = Registry::with_prefix("flowtable");
    registry.register_collector(Box::new(StatsCollector(stats)));
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
    out
}

#[derive(Debug)]
struct StatsCollector(Arc<Stats>);

/// One series: its labels and value.
type Series<V> = Vec<(Vec<(&'static str, String)>, V)>;

fn one<V>(v: V) -> Series<V> {
    vec![(Vec::new(), v)]
}

fn by<V: Copy>(label: &'static str, values: impl IntoIterator<Item = (String, V)>) -> Series<V> {
    values.into_iter().map(|(k, v)| (vec![(label, k)], v)).collect()
}

/// `known` names each with its count in `counts` (0 if absent), then any
/// name `counts` holds beyond them: a series present from the start
/// rather than appearing with its first event, which `rate()` needs.
fn every(
    known: impl IntoIterator<Item = String>,
    counts: &std::collections::BTreeMap<String, u64>,
) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> =
        known.into_iter().map(|k| (k.clone(), counts.get(&k).copied().unwrap_or(0))).collect();
    for (k, v) in counts {
        if !out.iter().any(|(o, _)| o == k) {
            out.push((k.clone(), *v));
        }
    }
    out
}

/// A record sink's figures. Every sink `flowtable stats` shows adds one
/// line to [`sinks`]; the series are labelled by the sink's name.
struct Sink {
    name: String,
    exported: u64,
    dropped: u64,
    errors: u64,
}

fn sinks(st: &Stats) -> Vec<Sink> {
    let mut out = Vec::new();
    if st.records.path.is_some() {
        let r = &st.records;
        out.push(Sink { name: "file".into(), exported: r.written, dropped: r.lost, errors: r.errors });
    }
    for c in &st.export {
        out.push(Sink { name: c.name.clone(), exported: c.exported, dropped: c.dropped, errors: c.errors });
    }
    out
}

struct Out<'a, 'b>(&'b mut DescriptorEncoder<'a>);

impl Out<'_, '_> {
    /// A counter family; the encoder adds `_<unit>` and `_total`.
    fn counter(&mut self, name: &str, help: &str, unit: Option<Unit>, series: Series<u64>) -> std::fmt::Result {
        self.family(name, help, unit, MetricType::Counter, series, |v, m| ConstCounter::new(v).encode(m))
    }

    fn counter_f(&mut self, name: &str, help: &str, unit: Option<Unit>, series: Series<f64>) -> std::fmt::Result {
        self.family(name, help, unit, MetricType::Counter, series, |v, m| ConstCounter::new(v).encode(m))
    }

    fn gauge(&mut self, name: &str, help: &str, unit: Option<Unit>, series: Series<u64>) -> std::fmt::Result {
        self.family(name, help, unit, MetricType::Gauge, series, |v, m| ConstGauge::new(v as i64).encode(m))
    }

    fn gauge_f(&mut self, name: &str, help: &str, unit: Option<Unit>, series: Series<f64>) -> std::fmt::Result {
        self.family(name, help, unit, MetricType::Gauge, series, |v, m| ConstGauge::new(v).encode(m))
    }

    fn family<V: Copy>(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<Unit>,
        kind: MetricType,
        series: Series<V>,
        encode: impl Fn(V, prometheus_client::encoding::MetricEncoder) -> std::fmt::Result,
    ) -> std::fmt::Result {
        // A family with no series would be HELP and TYPE alone: left out.
        if series.is_empty() {
            return Ok(());
        }
        let mut m = self.0.encode_descriptor(name, help, unit.as_ref(), kind)?;
        for (labels, v) in &series {
            if labels.is_empty() {
                encode(*v, m.encode_family(&Vec::<(&str, String)>::new())?)?;
            } else {
                encode(*v, m.encode_family(labels)?)?;
            }
        }
        Ok(())
    }
}

fn flows_unit() -> Option<Unit> {
    Some(Unit::Other("flows".into()))
}

fn packets_unit() -> Option<Unit> {
    Some(Unit::Other("packets".into()))
}

impl Collector for StatsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let st = &*self.0;
        let mut o = Out(&mut encoder);
        let backend = || vec![("backend", st.rules.backend.clone())];

        o.gauge_f("uptime", "Time since the daemon started.", Some(Unit::Seconds), one(st.uptime_s))?;
        o.gauge(
            "config_generation",
            "1 at start, one more for each reload that applied.",
            None,
            one(st.config.generation),
        )?;
        o.counter(
            "config_reloads_refused",
            "Reloads refused (the file was wrong; the running configuration stayed).",
            None,
            one(st.config.reloads_refused),
        )?;

        // Flows.
        let stages = every(Stage::LIVE.iter().map(|s| s.as_str().to_string()), &st.flows.by_stage);
        o.gauge("flows", "Flows in the table now, by stage.", None, by("stage", stages))?;
        let placements = every(
            super::filter::PLACEMENTS.iter().map(|p| if *p == "none" { "software" } else { p }.to_string()),
            &st.flows.by_placement,
        );
        o.gauge(
            "flows_by_placement",
            "Flows in the table now, by where their packets are handled.",
            None,
            by("placement", placements),
        )?;
        o.gauge("table_capacity", "Flows the table can hold.", flows_unit(), one(st.flows.capacity as u64))?;
        o.gauge_f(
            "table_fill",
            "Flows in the table over its capacity.",
            Some(Unit::Other("ratio".into())),
            one(st.flows.fill),
        )?;
        o.counter("flows_created", "Flows created.", None, one(st.flows.created))?;
        o.counter("flows_ended", "Flows ended, by reason.", None, by("reason", every([], &st.ended)))?;
        o.counter("flows_offloaded", "Flows whose rules went in.", None, one(st.flows.offloaded_total))?;
        o.counter("flows_refused", "Flows the backend refused to offload.", None, one(st.flows.refused_total))?;
        o.counter(
            "flows_adopted",
            "Flows of an earlier run taken over at start with their rules.",
            None,
            one(st.flows.adopted_total),
        )?;
        o.counter("offload_refusals", "Offload refusals, by reason.", None, by("reason", every([], &st.refusals)))?;

        // Rules.
        let mut devices: Series<u64> = st
            .rules
            .by_device
            .iter()
            .map(|(d, n)| (vec![("backend", st.rules.backend.clone()), ("device", d.clone())], *n as u64))
            .collect();
        if devices.is_empty() {
            // No rule anywhere: one series still says so.
            devices.push((vec![("backend", st.rules.backend.clone()), ("device", String::new())], 0));
        }
        o.gauge("rules", "Rules in place now, by backend and device.", None, devices)?;
        if st.rules.capacity > 0 {
            o.gauge(
                "rules_capacity",
                "Rules the backend can hold.",
                None,
                vec![(backend(), st.rules.capacity as u64)],
            )?;
        }
        o.gauge("offload_queued", "Flows waiting for their rules.", flows_unit(), one(st.rules.queued as u64))?;
        o.counter("rules_installed", "Rules installed.", None, vec![(backend(), st.rules.installed)])?;
        o.counter("rules_removed", "Rules removed.", None, vec![(backend(), st.rules.removed)])?;
        o.counter("rule_remove_errors", "Rule removals that failed.", None, vec![(backend(), st.rules.remove_errors)])?;
        o.counter(
            "rule_dumps",
            "Reads of every rule's counters, one dump each.",
            None,
            vec![(backend(), st.rules.counter_reads)],
        )?;
        o.counter(
            "rule_dump_errors",
            "Reads of the rules' counters that failed.",
            None,
            vec![(backend(), st.rules.counter_errors)],
        )?;
        let c = &st.rules.counted;
        let split = |hw: u64, all: u64| {
            vec![
                (vec![("backend", st.rules.backend.clone()), ("counted_by", "hardware".to_string())], hw),
                (
                    vec![("backend", st.rules.backend.clone()), ("counted_by", "kernel-software".to_string())],
                    all.saturating_sub(hw),
                ),
            ]
        };
        o.counter(
            "rule",
            "Packets our rules counted: by the NIC, or by the kernel's software path.",
            packets_unit(),
            split(c.hw_packets, c.packets),
        )?;
        o.counter(
            "rule",
            "Bytes our rules counted: by the NIC, or by the kernel's software path.",
            Some(Unit::Bytes),
            split(c.hw_bytes, c.bytes),
        )?;

        // Packets.
        let p = &st.packets;
        o.counter("received", "Frames read from the sources.", packets_unit(), one(p.received))?;
        o.counter("received", "Bytes of the frames read from the sources.", Some(Unit::Bytes), one(p.bytes))?;
        o.counter("software", "Frames that reached the flow table.", packets_unit(), one(p.software))?;
        o.counter(
            "software",
            "Bytes of the frames that reached the flow table.",
            Some(Unit::Bytes),
            one(p.software_bytes),
        )?;
        o.counter("nic", "Frames an in-process NIC's rule took before software saw them.", packets_unit(), one(p.nic))?;
        o.counter("nic", "Bytes of the frames an in-process NIC's rule took.", Some(Unit::Bytes), one(p.nic_bytes))?;
        o.counter(
            "tap_skipped",
            "Frames software saw of offloaded flows and left to the rules' counters.",
            packets_unit(),
            one(p.tap_skipped),
        )?;
        o.counter(
            "slipped",
            "Frames that went past a rule still going in, counted by software.",
            packets_unit(),
            one(p.slipped),
        )?;
        let skipped = every(SkipReason::ALL.iter().map(|r| r.as_str().to_string()), &p.skipped);
        o.counter("skipped", "Frames the parser skipped, by reason.", packets_unit(), by("reason", skipped))?;
        o.counter(
            "untracked",
            "Frames parsed but not tracked, by reason.",
            packets_unit(),
            by("reason", every([], &p.untracked)),
        )?;

        // Sources.
        let source = |s: &crate::control::SourceStatus| vec![("source", s.name.clone())];
        o.gauge(
            "source_running",
            "1 while the source is read, 0 once it has ended or failed.",
            None,
            st.sources.iter().map(|s| (source(s), u64::from(s.state == "running"))).collect(),
        )?;
        o.counter(
            "source",
            "Frames read, by source.",
            packets_unit(),
            st.sources.iter().map(|s| (source(s), s.packets)).collect(),
        )?;
        o.counter(
            "source",
            "Bytes read, by source.",
            Some(Unit::Bytes),
            st.sources.iter().map(|s| (source(s), s.bytes)).collect(),
        )?;
        o.counter(
            "source_ring_dropped",
            "Frames a live capture's kernel ring dropped (it was full), by source.",
            packets_unit(),
            st.sources.iter().filter_map(|s| Some((source(s), s.dropped?))).collect(),
        )?;
        o.counter(
            "source_unordered",
            "Frames a live capture handed out possibly out of order with another port's, by source.",
            packets_unit(),
            st.sources.iter().filter_map(|s| Some((source(s), s.unordered?))).collect(),
        )?;

        // Records, per sink.
        let sinks = sinks(st);
        let per_sink = |f: fn(&Sink) -> u64| -> Series<u64> {
            sinks.iter().map(|s| (vec![("sink", s.name.clone())], f(s))).collect()
        };
        o.counter("records_exported", "Flow records a sink took.", None, per_sink(|s| s.exported))?;
        o.counter("records_dropped", "Flow records a sink could not take, lost.", None, per_sink(|s| s.dropped))?;
        o.counter("records_errors", "Failed attempts to hand records to a sink.", None, per_sink(|s| s.errors))?;
        if st.records.path.is_some() {
            o.counter("records_file_rotations", "Rotations of the records file.", None, one(st.records.rotations))?;
        }

        // Control.
        o.gauge("event_subscribers", "Clients subscribed to events now.", None, one(st.subscribers as u64))?;
        o.counter("control_requests", "Control socket requests answered.", None, one(st.control.requests))?;
        o.counter_f(
            "control_cpu",
            "CPU time the workers spent on control requests.",
            Some(Unit::Seconds),
            one(st.control.cpu_s),
        )?;
        Ok(())
    }
}
