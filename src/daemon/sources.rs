//! The daemon's packet sources, built from the configuration's `sources`,
//! each with its progress and its pacing.

use crate::source::afpacket::{AfPacketConfig, AfPacketSource, Interface};
use crate::source::pcap::PcapFileSource;
use crate::source::synth::{SynthConfig, SyntheticSource};
use crate::source::{CaptureLosses, PacketSource, SourceError};
use flowtable_config::{Pace, SourceConfig};
use flowtable_sw::{PacketInfo, SkipReason};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

/// A packet read but not yet due (paced sources).
pub struct Pending {
    pub due_ns: u64,
    pub wire_len: u32,
    pub parsed: Result<PacketInfo, SkipReason>,
    /// The NIC's mark on the frame (DPDK MARK), if any.
    pub mark: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotState {
    Running,
    Done,
    Failed(String),
}

pub struct Slot {
    pub name: String,
    pub source: Box<dyn PacketSource>,
    /// A live capture: read without blocking, never "done".
    pub live: bool,
    pub pace: Pace,
    pub state: SlotState,
    pub packets: u64,
    pub bytes: u64,
    /// (first packet's timestamp, daemon clock when it was read): maps the
    /// source's time onto the daemon's.
    pub base: Option<(u64, u64)>,
    pub pending: Option<Pending>,
    pub started: Option<Instant>,
    pub finished: Option<Instant>,
    /// A live capture's losses, read once a second.
    pub losses: Option<CaptureLosses>,
    /// A capture file's port (its `ingress`): records of flows on it carry
    /// the capture's own times (see `capture_offset_ns`).
    pub file_port: Option<u8>,
}

impl Slot {
    fn new(name: String, source: Box<dyn PacketSource>, pace: Pace) -> Slot {
        Slot {
            name,
            live: source.is_live(),
            source,
            pace,
            state: SlotState::Running,
            packets: 0,
            bytes: 0,
            base: None,
            pending: None,
            started: None,
            finished: None,
            losses: None,
            file_port: None,
        }
    }

    /// For a capture file whose first packet was read: how far the daemon's
    /// clock is ahead of the capture's (the daemon runs its timers on its own
    /// clock and moves the file's packets onto it).
    pub fn capture_offset_ns(&self) -> Option<i64> {
        let (first_ts, at) = self.base?;
        self.file_port.map(|_| at as i64 - first_ts as i64)
    }

    pub fn running(&self) -> bool {
        self.state == SlotState::Running
    }

    /// Wall time from the first packet to the end (or to now).
    pub fn wall_s(&self) -> f64 {
        match self.started {
            None => 0.0,
            Some(s) => self.finished.unwrap_or_else(Instant::now).duration_since(s).as_secs_f64(),
        }
    }
}

/// Opens every configured source; the first that can't be opened fails
/// the start, naming its index and why. The `interface` sources together
/// make one source, in the place of the first. A `dpdk` source reads the ports of
/// the DPDK backend, which must be built first. `stop` ends blocking reads.
/// No port has an egress twin (see `open_sources`).
pub fn open_all(sources: &[SourceConfig], stop: &Arc<AtomicBool>) -> Result<Vec<Slot>, String> {
    open_sources(sources, &[], stop, true, true)
}

/// `open_all`, leaving out the `interface` sources when `interfaces` is
/// false and the `dpdk` one when `dpdk` is (the workers then open those
/// themselves, see `open_interfaces` and `open_dpdk_share`). `twins` are
/// the configuration's egress twins (`Config::egress_twins`).
pub fn open_sources(
    sources: &[SourceConfig],
    twins: &[(u8, u8)],
    stop: &Arc<AtomicBool>,
    interfaces: bool,
    dpdk: bool,
) -> Result<Vec<Slot>, String> {
    let mut slots = Vec::new();
    let mut interfaces_opened = !interfaces;
    for (i, s) in sources.iter().enumerate() {
        let at = format!("sources[{i}]");
        match s {
            SourceConfig::Pcap { path, ingress, pace } => {
                let src = PcapFileSource::open(path, *ingress).map_err(|e| format!("{at}.pcap: {e}"))?;
                let mut slot = Slot::new(format!("pcap {path}"), Box::new(src), *pace);
                slot.file_port = Some(*ingress);
                slots.push(slot);
            }
            SourceConfig::Synthetic(map) => {
                let mut map = map.clone();
                let pace = match map.remove("pace") {
                    None => Pace::default(),
                    Some(v) => serde_json::from_value(v)
                        .map_err(|_| format!("{at}.synthetic.pace: give \"timestamps\" or \"fast\""))?,
                };
                // A daemon runs long: the generator's ground truth would only grow.
                map.entry("keep_truth").or_insert(serde_json::Value::Bool(false));
                let cfg: SynthConfig = serde_json::from_value(serde_json::Value::Object(map))
                    .map_err(|e| format!("{at}.synthetic: {e}"))?;
                let name = format!("synthetic ({} flows, seed {})", cfg.flows, cfg.seed);
                let src =
                    SyntheticSource::new(cfg).map_err(|e| format!("{at}.synthetic.{}: {}", e.field, e.message))?;
                slots.push(Slot::new(name, Box::new(src), pace));
            }
            SourceConfig::Interface { .. } if interfaces_opened => {}
            SourceConfig::Interface { .. } => {
                interfaces_opened = true;
                slots.push(open_interfaces(sources, twins, AfPacketConfig::default())?);
            }
            SourceConfig::Dpdk {} if !dpdk => {}
            SourceConfig::Dpdk {} => slots.push(open_dpdk(&at, stop)?),
        }
    }
    Ok(slots)
}

/// Whether the configuration reads any interface.
pub fn has_interfaces(sources: &[SourceConfig]) -> bool {
    sources.iter().any(|s| matches!(s, SourceConfig::Interface { .. }))
}

/// The `interface` sources as one source: all interfaces together, so that
/// their frames are merged in capture order (an inline pair's reply must
/// not overtake its request because another ring was read first). With
/// `cfg.fanout_base`, a worker's share of them. An interface whose port
/// has an egress twin (`twins`: port, twin) reads what the host sends out
/// of it too, as the twin's frames.
pub fn open_interfaces(sources: &[SourceConfig], twins: &[(u8, u8)], cfg: AfPacketConfig) -> Result<Slot, String> {
    let ports: Vec<Interface> = sources
        .iter()
        .filter_map(|s| match s {
            SourceConfig::Interface { name, ingress } => Some(Interface {
                name: name.clone(),
                ingress: *ingress,
                outgoing: twins.iter().find(|(p, _)| p == ingress).map(|&(_, t)| t),
            }),
            _ => None,
        })
        .collect();
    let first = sources.iter().position(|s| matches!(s, SourceConfig::Interface { .. })).unwrap_or(0);
    let src = AfPacketSource::open_ports(&ports, cfg).map_err(|e| {
        let failed = match &e {
            SourceError::Open { path, .. } => {
                sources.iter().position(|s| matches!(s, SourceConfig::Interface { name, .. } if name == path))
            }
            _ => None,
        };
        format!("sources[{}].interface: {e}", failed.unwrap_or(first))
    })?;
    let names: Vec<&str> = ports.iter().map(|p| p.name.as_str()).collect();
    let name = format!("interface{} {}", if names.len() > 1 { "s" } else { "" }, names.join(", "));
    // Live frames are due when they arrive.
    Ok(Slot::new(name, Box::new(src), Pace::Timestamps))
}

#[cfg(feature = "dpdk")]
fn open_dpdk(at: &str, stop: &Arc<AtomicBool>) -> Result<Slot, String> {
    use crate::source::dpdk::DpdkSource;
    let rt = crate::backend::dpdk_runtime().ok_or_else(|| {
        format!("{at}.dpdk: no DPDK backend is running (backend kind \"dpdk\" starts the ports this source reads)")
    })?;
    let src = DpdkSource::all_queues(&rt, stop.clone()).map_err(|e| format!("{at}.dpdk: {e}"))?;
    let devices: Vec<&str> = rt.ports.iter().map(|p| p.device.as_str()).collect();
    // Live frames are due when they arrive.
    Ok(Slot::new(format!("dpdk {}", devices.join(",")), Box::new(src), Pace::Timestamps))
}

#[cfg(not(feature = "dpdk"))]
fn open_dpdk(at: &str, _stop: &Arc<AtomicBool>) -> Result<Slot, String> {
    Err(format!("{at}.dpdk: this build of flowtable has no DPDK support; build it with `--features dpdk`"))
}

/// Whether the configuration reads DPDK ports.
pub fn has_dpdk(sources: &[SourceConfig]) -> bool {
    sources.iter().any(|s| matches!(s, SourceConfig::Dpdk {}))
}

/// Worker `worker`'s share of the DPDK ports' rx queues: queue `q` of
/// every port where `q % workers == worker`. The ports spread flows over
/// their queues by a symmetric RSS hash (or, on the tap PMD, the kernel's
/// symmetric flow hash), so a flow is read by one worker only.
#[cfg(feature = "dpdk")]
pub fn open_dpdk_share(worker: usize, workers: usize, stop: &Arc<AtomicBool>) -> Result<Slot, String> {
    use crate::source::dpdk::DpdkSource;
    let rt = crate::backend::dpdk_runtime().ok_or_else(|| {
        "sources.dpdk: no DPDK backend is running (backend kind \"dpdk\" starts the ports this source reads)"
            .to_string()
    })?;
    if let Some(p) = rt.ports.iter().find(|p| (p.rx_queues as usize) < workers) {
        return Err(format!(
            "backend.rx_queues: {} has {} rx queue(s) for {workers} workers; give at least one per worker",
            p.device, p.rx_queues
        ));
    }
    let queues: Vec<(u8, u16)> = rt
        .ports
        .iter()
        .flat_map(|p| (0..p.rx_queues).filter(|q| *q as usize % workers == worker).map(move |q| (p.index, q)))
        .collect();
    let src = DpdkSource::new(&rt, &queues, stop.clone()).map_err(|e| format!("sources.dpdk: {e}"))?;
    let devices: Vec<&str> = rt.ports.iter().map(|p| p.device.as_str()).collect();
    Ok(Slot::new(format!("dpdk {}", devices.join(",")), Box::new(src), Pace::Timestamps))
}

#[cfg(not(feature = "dpdk"))]
pub fn open_dpdk_share(_worker: usize, _workers: usize, _stop: &Arc<AtomicBool>) -> Result<Slot, String> {
    Err("sources.dpdk: this build of flowtable has no DPDK support; build it with `--features dpdk`".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interfaces_make_one_source_and_a_missing_one_is_named_by_its_index() {
        let stop = Arc::new(AtomicBool::new(false));
        let iface = |name: &str, ingress: u8| SourceConfig::Interface { name: name.into(), ingress };
        let err = open_all(&[iface("lo", 0), iface("ft-missing0", 1)], &stop).err().expect("no such interface");
        assert_eq!(err, "sources[1].interface: ft-missing0: no such interface");
        let slots = open_all(&[iface("lo", 0), iface("lo", 1)], &stop).expect("lo twice, as two ports");
        assert_eq!(slots.len(), 1);
        assert_eq!(slots[0].name, "interfaces lo, lo");
        assert!(slots[0].live);
    }

    #[cfg(not(feature = "dpdk"))]
    #[test]
    fn dpdk_source_without_the_feature_says_how_to_get_it() {
        let stop = Arc::new(AtomicBool::new(false));
        let err = open_all(&[SourceConfig::Dpdk {}], &stop).err().expect("no dpdk in this build");
        assert!(err.starts_with("sources[0].dpdk: "), "{err}");
        assert!(err.contains("--features dpdk"), "{err}");
        let config = flowtable_config::parse(
            "d.json",
            r#"{"ports": [{"name": "tap0"}], "backend": {"kind": "dpdk", "eal_args": ["--no-huge"], "ports": [{"device": "net_tap0"}]},
                "sources": [{"dpdk": {}}]}"#,
        )
        .unwrap();
        let err = crate::backend::build(&config).err().expect("no dpdk backend in this build");
        assert!(err.starts_with("backend: ") && err.contains("--features dpdk"), "{err}");
    }

    #[cfg(feature = "dpdk")]
    #[test]
    fn dpdk_source_needs_a_running_dpdk_backend() {
        let stop = Arc::new(AtomicBool::new(false));
        let err = open_all(&[SourceConfig::Dpdk {}], &stop).err().expect("no backend started");
        assert!(err.starts_with("sources[0].dpdk: no DPDK backend is running"), "{err}");
    }

    #[test]
    fn dpdk_backend_errors_name_the_field() {
        // Refused as the file is read (`config check` finds them too), in
        // every build; the fields named.
        let bad = [
            (r#"{"kind": "dpdk", "eal_args": "-l 0", "ports": [{"device": "net_tap0"}]}"#, "backend.eal_args"),
            (r#"{"kind": "dpdk", "ports": [{"device": "net_tap0"}], "rx_queue": 2}"#, "backend.rx_queue"),
            (r#"{"kind": "dpdk", "ports": []}"#, "backend.ports"),
            // Two top-level ports (the default), one DPDK device.
            (r#"{"kind": "dpdk", "ports": [{"device": "net_tap0"}]}"#, "backend.ports"),
        ];
        for (backend, want) in bad {
            let err = flowtable_config::parse("d.json", &format!(r#"{{"backend": {backend}}}"#)).unwrap_err();
            assert_eq!(err.field(), Some(want), "{backend}: {err}");
        }
    }
}
