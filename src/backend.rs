//! Builds the configured backend. A DPDK backend also leaves its runtime
//! (EAL and started ports) where the DPDK packet source finds it: the EAL
//! starts once per process, so the backend and the source share one.

use flowtable_config::{BackendConfig, ClassResult, Config, SimProfile as ProfileName};
use flowtable_hw::tc::{Leftovers, TcBackend, TcConfig};
use flowtable_hw::{Backend, Capabilities, SimLatency, SimNic, SimProfile};

/// The sim NIC profile a configuration names, with its overrides applied.
pub fn sim_profile(name: ProfileName, max_rules: Option<usize>, insert_rate: Option<u32>) -> SimProfile {
    let mut p = match name {
        ProfileName::Full => SimProfile::full(),
        ProfileName::RefuseAll => SimProfile::refuse_all(),
        ProfileName::Small => SimProfile::small(),
    };
    if let Some(n) = max_rules {
        p.capabilities.max_rules = n;
    }
    if let Some(r) = insert_rate {
        p.capabilities.max_insert_rate = r;
    }
    p
}

/// The first classifier result (a rule's or the default) whose action the
/// backend can't do, named by its field: every flow it decides would be
/// refused, so the daemon does not start with it (and `config check` says
/// so for the sim NIC, whose capabilities the configuration fixes).
pub fn check_actions(config: &Config, name: &str, caps: &Capabilities) -> Result<(), (String, String)> {
    let results = config
        .classifier
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| (format!("classifier.rules[{i}].result"), Some(r.name.as_str()), r.result))
        .chain(std::iter::once(("classifier.default".to_string(), None, config.classifier.default)));
    for (field, rule, result) in results {
        let ClassResult::Offload(action) = result else { continue };
        if !caps.supports_action(&action) {
            let whose = rule.map_or("the default result".to_string(), |n| format!("rule {n:?}"));
            let can: Vec<String> = caps.actions.iter().map(ToString::to_string).collect();
            return Err((
                field,
                format!(
                    "{whose} offloads with {action}, which backend {name} can't do (it does: {}); every flow it decides would be refused",
                    if can.is_empty() { "none".to_string() } else { can.join(", ") }
                ),
            ));
        }
    }
    Ok(())
}

/// The capabilities of the configured backend when the configuration alone
/// fixes them (the sim NIC); the devices decide for tc and DPDK.
pub fn static_capabilities(config: &Config) -> Option<(String, Capabilities)> {
    match &config.backend {
        BackendConfig::Sim(sim) => {
            let p = sim_profile(sim.profile, sim.max_rules, sim.insert_rate);
            Some((format!("sim ({})", p.name), p.capabilities))
        }
        _ => None,
    }
}

/// Creates the backend a configuration asks for.
pub fn build(config: &Config) -> Result<Box<dyn Backend>, String> {
    match &config.backend {
        BackendConfig::Sim(sim) => {
            let mut p = sim_profile(sim.profile, sim.max_rules, sim.insert_rate);
            let latency = &sim.latency;
            p.latency =
                SimLatency { per_rule_ns: latency.per_rule_us * 1_000, per_read_ns: latency.per_read_ms * 1_000_000 };
            Ok(Box::new(SimNic::new(p)))
        }
        BackendConfig::Tc(flowtable_config::TcBackendConfig { keep_rules, icmp_by_hosts, .. }) => {
            let mut devices: Vec<String> = config.ports.iter().map(|p| p.name.clone()).collect();
            // An egress twin is its port's device again, its rules on egress.
            let twins = config.egress_twins();
            devices.extend(twins.iter().map(|&(port, _)| config.ports[port as usize].name.clone()));
            let mut tc = TcConfig::new(devices, config.instance_id);
            tc.egress = twins.iter().map(|&(_, twin)| twin).collect();
            tc.keep_rules = *keep_rules;
            tc.icmp_by_hosts = *icmp_by_hosts;
            // Taken over here; the runtime keeps those the journal knows
            // and removes the others.
            if let Some(journal) = config.backend.journal() {
                // Before the backend opens: a start that fails afterwards
                // would remove the rules it was to take over.
                flowtable_offload::journal::Journal::probe(journal).map_err(|e| e.to_string())?;
                tc.leftovers = Leftovers::Adopt;
            }
            let backend = TcBackend::open(tc).map_err(|e| format!("backend: {e}"))?;
            let r = backend.recovery();
            if r.flushed + r.adopted > 0 {
                tracing::info!(
                    flushed = r.flushed,
                    adopted = r.adopted,
                    "rules left by an earlier run of this instance (read back: taken over where the journal knows them, removed otherwise)"
                );
            }
            for d in backend.devices() {
                tracing::info!(device = %d, "tc port");
            }
            Ok(Box::new(backend))
        }
        #[cfg(feature = "dpdk")]
        BackendConfig::Dpdk(map) => dpdk::build(config, map),
        #[cfg(not(feature = "dpdk"))]
        BackendConfig::Dpdk(_) => {
            Err("backend: kind \"dpdk\" is not in this build of flowtable; build it with `--features dpdk`".into())
        }
    }
}

#[cfg(feature = "dpdk")]
pub use dpdk::runtime as dpdk_runtime;

#[cfg(feature = "dpdk")]
mod dpdk {
    use std::sync::{Arc, Mutex, Weak};

    use flowtable_config::Config;
    use flowtable_hw::dpdk::{DpdkBackend, DpdkConfig, DpdkRuntime};
    use flowtable_hw::Backend;

    /// The runtime of the DPDK backend this process started. Weak: the
    /// backend (and any source reading its ports) keep it alive, and the
    /// last of them to go stops the ports.
    static RUNTIME: Mutex<Weak<DpdkRuntime>> = Mutex::new(Weak::new());

    /// The running DPDK backend's runtime, if one was built and still lives.
    pub fn runtime() -> Option<Arc<DpdkRuntime>> {
        RUNTIME.lock().ok()?.upgrade()
    }

    pub(super) fn build(
        config: &Config,
        map: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Box<dyn Backend>, String> {
        let cfg = DpdkConfig::from_json(serde_json::Value::Object(map.clone()))?;
        if cfg.ports.len() != config.ports.len() {
            return Err(format!(
                "backend.ports: {} DPDK port(s), but the top-level `ports` lists {}: give one device per port, in the same order",
                cfg.ports.len(),
                config.ports.len()
            ));
        }
        let mut slot = RUNTIME.lock().map_err(|_| "backend: the DPDK runtime lock is poisoned".to_string())?;
        if slot.upgrade().is_some() {
            return Err("backend: a DPDK backend is already running in this process (the EAL starts once)".into());
        }
        let rt = DpdkRuntime::start(&cfg)?;
        *slot = Arc::downgrade(&rt);
        drop(slot);
        for p in &rt.ports {
            tracing::info!(port = p.index, device = %p.device, driver = %p.driver, rx_queues = p.rx_queues, "dpdk port");
        }
        let backend = DpdkBackend::new(rt, cfg);
        for r in backend.probe_report() {
            match &r.result {
                Ok(()) => tracing::debug!(port = r.port, pattern = %r.pattern, actions = %r.actions, "PMD takes"),
                Err(e) => {
                    tracing::debug!(port = r.port, pattern = %r.pattern, actions = %r.actions, refusal = %e, "PMD refuses")
                }
            }
        }
        Ok(Box::new(backend))
    }
}
