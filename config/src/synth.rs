//! Settings of the synthetic traffic generator (`flowtable demo`, and
//! `{"synthetic": {...}}` sources of `flowtable run`). They live here so that
//! `config check` refuses what the generator would: unknown fields and
//! values out of range, each named.

use serde::{Deserialize, Serialize};

/// Distinct flows the address plan can give: 2^24 client hosts with 16 flows each.
pub const MAX_FLOWS: u64 = 1 << 28;

/// Settings of the generator. Every field has a default, so `{}` is a valid
/// configuration; unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SynthConfig {
    /// Seed of the random stream: the same seed and settings give the same frames.
    pub seed: u64,
    /// How many flows to start in all (at most 2^28).
    pub flows: u64,
    /// Stop after this many packets; 0 runs until every flow has ended.
    pub max_packets: u64,
    /// How many flows are live at once.
    pub concurrency: u32,
    /// Mean packet rate in simulated time, packets per second.
    pub rate_pps: f64,
    /// Timestamp of the first packet, ns since the Unix epoch.
    pub start_ns: u64,
    /// Relative weights of the flow kinds.
    pub mix: FlowMix,
    /// Share of flows over IPv6.
    pub ipv6_share: f64,
    /// Share of flows with an 802.1Q tag.
    pub vlan_share: f64,
    /// Tagged flows take VLAN ids from `vlan_first .. vlan_first + vlan_count`.
    pub vlan_first: u16,
    pub vlan_count: u16,
    /// Port index every frame is reported on.
    pub ingress: u8,
    /// Share of TCP flows torn down by RST instead of FIN.
    pub tcp_rst_share: f64,
    /// Share of TCP flows left idle after their data, never closed.
    pub tcp_idle_share: f64,
    /// Share of TCP flows negotiating timestamps (12 option bytes per segment).
    pub tcp_timestamps_share: f64,
    /// Elephant sizes in packets: Pareto with this minimum and shape, capped at the maximum.
    pub elephant_min_packets: u32,
    pub elephant_max_packets: u32,
    pub elephant_shape: f64,
    /// Keep the ground truth of ended flows (about 100 bytes a flow).
    pub keep_truth: bool,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            seed: 1,
            flows: 10_000,
            max_packets: 0,
            concurrency: 1_000,
            rate_pps: 1_000_000.0,
            start_ns: 1_700_000_000_000_000_000,
            mix: FlowMix::default(),
            ipv6_share: 0.2,
            vlan_share: 0.1,
            vlan_first: 100,
            vlan_count: 8,
            ingress: 0,
            tcp_rst_share: 0.1,
            tcp_idle_share: 0.1,
            tcp_timestamps_share: 0.7,
            elephant_min_packets: 2_000,
            elephant_max_packets: 200_000,
            elephant_shape: 1.2,
            keep_truth: true,
        }
    }
}

/// Relative weights of the flow kinds (they need not sum to 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlowMix {
    pub tcp_short: f64,
    pub tcp_elephant: f64,
    pub udp_dns: f64,
    pub udp_stream: f64,
    pub icmp_echo: f64,
}

impl Default for FlowMix {
    fn default() -> Self {
        FlowMix { tcp_short: 0.55, tcp_elephant: 0.005, udp_dns: 0.25, udp_stream: 0.045, icmp_echo: 0.15 }
    }
}

/// A setting the generator can't work with: which field, and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("synthetic source: {field}: {message}")]
pub struct InvalidSynthConfig {
    pub field: &'static str,
    pub message: String,
}

/// An [`InvalidSynthConfig`] for `field`.
pub fn invalid(field: &'static str, message: impl Into<String>) -> InvalidSynthConfig {
    InvalidSynthConfig { field, message: message.into() }
}

fn check_share(field: &'static str, v: f64) -> Result<(), InvalidSynthConfig> {
    if (0.0..=1.0).contains(&v) {
        Ok(())
    } else {
        Err(invalid(field, format!("{v} is not a share: give 0 to 1")))
    }
}

impl SynthConfig {
    /// Checks ranges serde can't; names the offending field.
    pub fn validate(&self) -> Result<(), InvalidSynthConfig> {
        if self.flows > MAX_FLOWS {
            return Err(invalid(
                "flows",
                format!("{} is more than the {MAX_FLOWS} distinct flows the address plan gives", self.flows),
            ));
        }
        if self.concurrency == 0 || self.concurrency > 1 << 22 {
            return Err(invalid(
                "concurrency",
                format!("{} is out of range: give 1 to {}", self.concurrency, 1u32 << 22),
            ));
        }
        if !(self.rate_pps > 0.0 && self.rate_pps <= 1e9) {
            return Err(invalid(
                "rate_pps",
                format!("{} is out of range: give more than 0, at most 1e9", self.rate_pps),
            ));
        }
        let m = &self.mix;
        let weights = [
            ("mix.tcp_short", m.tcp_short),
            ("mix.tcp_elephant", m.tcp_elephant),
            ("mix.udp_dns", m.udp_dns),
            ("mix.udp_stream", m.udp_stream),
            ("mix.icmp_echo", m.icmp_echo),
        ];
        for (field, w) in weights {
            if !(w >= 0.0 && w.is_finite()) {
                return Err(invalid(field, format!("{w} is not a weight: give a finite number, 0 or more")));
            }
        }
        if weights.iter().map(|(_, w)| w).sum::<f64>() <= 0.0 {
            return Err(invalid("mix", "every weight is 0: give at least one kind of flow"));
        }
        check_share("ipv6_share", self.ipv6_share)?;
        check_share("vlan_share", self.vlan_share)?;
        check_share("tcp_rst_share", self.tcp_rst_share)?;
        check_share("tcp_idle_share", self.tcp_idle_share)?;
        check_share("tcp_timestamps_share", self.tcp_timestamps_share)?;
        if self.tcp_rst_share + self.tcp_idle_share > 1.0 {
            return Err(invalid("tcp_idle_share", "tcp_rst_share + tcp_idle_share is more than 1"));
        }
        if self.vlan_share > 0.0
            && (self.vlan_first == 0 || self.vlan_count == 0 || self.vlan_first as u32 + self.vlan_count as u32 > 4095)
        {
            return Err(invalid(
                "vlan_first",
                format!(
                    "VLAN ids {}..{} are out of range: ids run from 1 to 4094",
                    self.vlan_first,
                    self.vlan_first as u32 + self.vlan_count as u32
                ),
            ));
        }
        if self.elephant_min_packets == 0 || self.elephant_min_packets > self.elephant_max_packets {
            return Err(invalid("elephant_min_packets", "must be at least 1 and at most elephant_max_packets"));
        }
        if self.elephant_max_packets > 2_000_000 {
            return Err(invalid("elephant_max_packets", format!("{} is more than 2000000", self.elephant_max_packets)));
        }
        if !(self.elephant_shape > 0.0 && self.elephant_shape.is_finite()) {
            return Err(invalid(
                "elephant_shape",
                format!("{} is not a Pareto shape: give more than 0", self.elephant_shape),
            ));
        }
        Ok(())
    }
}
