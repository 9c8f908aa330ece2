//! Builds the configured backend.

use flowtable_config::{BackendConfig, Config, SimProfile as ProfileName};
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
        BackendConfig::Tc { .. } => Err("backend `tc` needs a live interface: use `flowtable run`".into()),
        BackendConfig::Dpdk(_) => Err("backend `dpdk` needs a build with `--features dpdk`".into()),
    }
}
