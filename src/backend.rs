//! Builds the configured backend.

use flowtable_config::{BackendConfig, Config, SimProfile as ProfileName};
use flowtable_hw::tc::{TcBackend, TcConfig};
use flowtable_hw::{Backend, SimNic, SimProfile};

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

/// Creates the backend a configuration asks for.
pub fn build(config: &Config) -> Result<Box<dyn Backend>, String> {
    match &config.backend {
        BackendConfig::Sim { profile, max_rules, insert_rate } => {
            Ok(Box::new(SimNic::new(sim_profile(*profile, *max_rules, *insert_rate))))
        }
        BackendConfig::Tc { keep_rules } => {
            let mut tc = TcConfig::new(config.ports.iter().map(|p| p.name.clone()).collect(), config.instance_id);
            tc.keep_rules = *keep_rules;
            let backend = TcBackend::open(tc).map_err(|e| format!("backend: {e}"))?;
            let r = backend.recovery();
            if r.flushed + r.adopted > 0 {
                tracing::info!(flushed = r.flushed, adopted = r.adopted, "rules left by an earlier run of this instance");
            }
            for d in backend.devices() {
                tracing::info!(device = %d, "tc port");
            }
            Ok(Box::new(backend))
        }
        BackendConfig::Dpdk(_) => Err("backend `dpdk` needs a build with `--features dpdk`".into()),
    }
}
