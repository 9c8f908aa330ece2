//! The configuration's `export` section turned into the export crate's
//! sinks (`flowtable_export`), for the daemon and `flowtable replay
//! --ipfix`.

use flowtable_config::{ExportSection, ExportTransport};
use flowtable_export::{IpfixConfig, QueueMode, Sinks, Transport};
use std::net::SocketAddr;
use std::time::Duration;

fn transport(t: ExportTransport) -> Transport {
    match t {
        ExportTransport::Udp => Transport::Udp,
        ExportTransport::Tcp => Transport::Tcp,
    }
}

/// One collector's settings: its address and transport, the section's rest.
pub fn ipfix_config(section: &ExportSection, address: SocketAddr, t: ExportTransport) -> IpfixConfig {
    IpfixConfig {
        address,
        transport: transport(t),
        observation_domain: section.observation_domain,
        template_refresh: Duration::from_secs_f64(section.template_refresh_s),
        mtu: section.mtu as usize,
        queue_records: section.queue_records,
        enterprise_number: section.enterprise_number,
    }
}

/// Every collector the section lists. Its addresses were checked when it
/// was loaded; an error here names the field all the same.
pub fn ipfix_configs(section: &ExportSection) -> Result<Vec<IpfixConfig>, String> {
    let addresses = section.addresses().map_err(|(field, message)| format!("at `{field}`: {message}"))?;
    Ok(addresses.into_iter().zip(&section.ipfix).map(|(a, c)| ipfix_config(section, a, c.transport)).collect())
}

/// Starts the sinks, or says which could not start.
pub fn start(configs: &[IpfixConfig], mode: QueueMode) -> Result<Sinks, String> {
    Sinks::start(configs, mode).map_err(|e| {
        let names: Vec<String> = configs.iter().map(|c| c.name()).collect();
        format!("starting flow export ({}): {e}", names.join(", "))
    })
}
