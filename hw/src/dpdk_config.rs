//! The dpdk `backend` configuration section (`"kind": "dpdk"`): EAL arguments, the ethdev
//! ports in flowtable's port order, queues, and how rules are built. In
//! every build, not only those with the DPDK backend, so that `config
//! check` refuses there what the backend would.

use serde::Deserialize;

/// How a rule sends packets to another ethdev port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum PortAction {
    /// PORT_ID: the older action, taken by most PMDs with switch offload.
    #[default]
    PortId,
    /// REPRESENTED_PORT: the newer one (transfer rules, representors).
    RepresentedPort,
}

/// Which rte_flow API creates rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum FlowApi {
    /// The template (async) API when the PMD takes it, else the sync one.
    #[default]
    Auto,
    /// rte_flow_validate/create only.
    Sync,
    /// The template API; ports that refuse it fail to start.
    Template,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpdkPortConfig {
    /// The ethdev name as EAL knows it: a PCI address ("0000:3b:00.0"),
    /// a vdev name ("net_tap0"), a representor name.
    pub device: String,
    /// Where `pass` rules send this port's packets in inline setups (an
    /// index into `ports`). Without a peer the port is a monitoring port
    /// (SPAN / tap copy) and `pass` drops in hardware: not delivering the
    /// copy to software is the bypass.
    #[serde(default)]
    pub peer: Option<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TemplateConfig {
    /// Flow queue depth (operations in flight per queue).
    pub queue_size: u32,
    /// Rules per template table (one table per rule shape).
    pub table_size: u32,
    /// The group the template tables live in; group 0 gets one rule jumping there.
    pub group: u32,
    /// Counters and aging objects to reserve at rte_flow_configure.
    pub counters: u32,
    pub aging_objects: u32,
}

impl Default for TemplateConfig {
    fn default() -> Self {
        TemplateConfig { queue_size: 1024, table_size: 65536, group: 1, counters: 65536, aging_objects: 0 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DpdkConfig {
    /// EAL arguments, without the program name
    /// (`["-l", "0-1", "-a", "0000:3b:00.0"]`, `["--no-huge", "--vdev=net_tap0"]`).
    pub eal_args: Vec<String>,
    /// The ports, in the order of the top-level `ports` list.
    pub ports: Vec<DpdkPortConfig>,
    pub rx_queues: u16,
    pub tx_queues: u16,
    pub rx_descriptors: u16,
    pub tx_descriptors: u16,
    /// Mbufs in the packet pool, and the per-lcore cache.
    pub mbufs: u32,
    pub mbuf_cache: u32,
    /// The rx queue MARK and mirror rules deliver to.
    pub mark_queue: u16,
    /// Ask for COUNT on every rule (rules go in without it where refused).
    pub counters: bool,
    /// AGE timeout in seconds for rules, where the PMD takes AGE; 0 = off.
    pub age_timeout_s: u32,
    /// How `forward` and `mirror` name the target port.
    pub port_action: PortAction,
    pub api: FlowApi,
    pub template: TemplateConfig,
    /// Rule attributes: group and priority of sync rules.
    pub group: u32,
    pub priority: u32,
    /// Capacity to report when the PMD doesn't say (0 = unknown).
    pub max_rules: usize,
    /// Rules per async push (template API).
    pub batch: usize,
    /// Leave rules in place on shutdown.
    pub keep_rules: bool,
    pub promiscuous: bool,
}

impl Default for DpdkConfig {
    fn default() -> Self {
        DpdkConfig {
            eal_args: Vec::new(),
            ports: Vec::new(),
            rx_queues: 1,
            tx_queues: 1,
            rx_descriptors: 1024,
            tx_descriptors: 1024,
            mbufs: 8191,
            mbuf_cache: 256,
            mark_queue: 0,
            counters: true,
            age_timeout_s: 0,
            port_action: PortAction::PortId,
            api: FlowApi::Auto,
            template: TemplateConfig::default(),
            group: 0,
            priority: 0,
            max_rules: 0,
            batch: 64,
            keep_rules: false,
            promiscuous: true,
        }
    }
}

impl DpdkConfig {
    /// Reads the section from the JSON the top-level config keeps for it.
    pub fn from_json(v: serde_json::Value) -> Result<DpdkConfig, String> {
        let cfg: DpdkConfig = serde_path_to_error::deserialize(v).map_err(|e| {
            let at = match e.path().to_string() {
                p if p == "." => "backend".to_string(),
                p => format!("backend.{p}"),
            };
            format!("{at}: {}", e.into_inner())
        })?;
        cfg.check()?;
        Ok(cfg)
    }

    /// Semantic checks, each naming the offending field.
    pub fn check(&self) -> Result<(), String> {
        if self.ports.is_empty() {
            return Err("backend.ports: at least one port is needed".into());
        }
        if self.ports.len() > u8::MAX as usize {
            return Err(format!("backend.ports: {} ports, at most 255", self.ports.len()));
        }
        for (i, p) in self.ports.iter().enumerate() {
            if p.device.is_empty() {
                return Err(format!("backend.ports[{i}].device: empty"));
            }
            if let Some(peer) = p.peer {
                if peer as usize >= self.ports.len() || peer as usize == i {
                    return Err(format!("backend.ports[{i}].peer: {peer} is not another configured port"));
                }
            }
        }
        if self.rx_queues == 0 {
            return Err("backend.rx_queues: must be at least 1".into());
        }
        if self.tx_queues == 0 {
            return Err("backend.tx_queues: must be at least 1".into());
        }
        if self.mark_queue >= self.rx_queues {
            return Err(format!("backend.mark_queue: {} but only {} rx queues", self.mark_queue, self.rx_queues));
        }
        if self.mbufs < 2 * self.rx_descriptors as u32 * self.rx_queues as u32 * self.ports.len() as u32 {
            return Err(format!(
                "backend.mbufs: {} is too few to fill {} rx rings of {} descriptors twice",
                self.mbufs,
                self.rx_queues as usize * self.ports.len(),
                self.rx_descriptors
            ));
        }
        if self.batch == 0 {
            return Err("backend.batch: must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_with_defaults() {
        let c = DpdkConfig::from_json(json!({
            "eal_args": ["--no-huge", "--no-pci", "-m", "128", "--vdev=net_tap0,iface=dtap0"],
            "ports": [{"device": "net_tap0"}],
            "port_action": "represented-port",
            "api": "sync"
        }))
        .unwrap();
        assert_eq!(c.ports[0].device, "net_tap0");
        assert_eq!(c.rx_queues, 1);
        assert!(c.counters);
        assert_eq!(c.port_action, PortAction::RepresentedPort);
        assert_eq!(c.api, FlowApi::Sync);
        assert_eq!(c.template.group, 1);
    }

    #[test]
    fn errors_name_the_field() {
        let e = DpdkConfig::from_json(json!({"ports": []})).unwrap_err();
        assert!(e.contains("backend.ports"), "{e}");
        let e = DpdkConfig::from_json(json!({"ports": [{"device": "a", "peer": 0}]})).unwrap_err();
        assert!(e.contains("ports[0].peer"), "{e}");
        let e = DpdkConfig::from_json(json!({"ports": [{"device": "a"}], "mark_queue": 1})).unwrap_err();
        assert!(e.contains("mark_queue"), "{e}");
        let e = DpdkConfig::from_json(json!({"ports": [{"device": "a"}], "bogus": 1})).unwrap_err();
        assert!(e.starts_with("backend.bogus: unknown field"), "{e}");
        let e = DpdkConfig::from_json(json!({"ports": [{"device": "a"}], "eal_args": "-l 0"})).unwrap_err();
        assert!(e.starts_with("backend.eal_args: invalid type"), "{e}");
        let e = DpdkConfig::from_json(json!({"ports": [{"device": 3}]})).unwrap_err();
        assert!(e.starts_with("backend.ports[0].device: invalid type"), "{e}");
        let e = DpdkConfig::from_json(json!({"ports": [{"device": "a"}], "mbufs": 100})).unwrap_err();
        assert!(e.contains("backend.mbufs"), "{e}");
    }
}
