//! The flowtable command: wires sources, the engine and a backend together.

use clap::{Parser, Subcommand};
use flowtable::report;
use flowtable_config::Config;
use flowtable_offload::{EngineStats, FlowRecord};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "flowtable", version, about = "SmartNIC flow offload orchestrator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replay a pcap or pcapng file through the flow table and the NIC.
    Replay {
        /// The capture: pcap or pcapng (Ethernet, raw IP, Linux SLL/SLL2, BSD loopback).
        /// Mapped into memory, not copied; FLOWTABLE_PCAP_MMAP=0 in the
        /// environment reads it instead.
        file: PathBuf,
        /// A configuration file for the classifier, backend, timeouts and
        /// export settings [default: the built-in defaults].
        #[arg(long)]
        config: Option<PathBuf>,
        /// Flow records as JSON lines on stdout, then a summary line.
        #[arg(long)]
        json: bool,
        /// Rows in the top-flows table.
        #[arg(long, default_value_t = 10, value_parser = flowtable::args::whole::<usize>)]
        top: usize,
        /// Worker threads (default: the configuration's `workers`).
        #[arg(long, value_parser = flowtable::args::whole::<usize>)]
        workers: Option<usize>,
        /// Export the records as IPFIX to this collector (IP:PORT; may be
        /// given more than once), as `softflowd -r` does; the rest of the
        /// settings (observation domain, MTU, ...) from the configuration's
        /// `export` section.
        #[arg(long, value_name = "ADDR", value_parser = flowtable::args::socket_addr)]
        ipfix: Vec<std::net::SocketAddr>,
        /// Transport to the `--ipfix` collectors.
        #[arg(long, value_enum, default_value = "udp")]
        ipfix_transport: IpfixTransportArg,
    },
    /// Synthetic traffic through the simulated NIC: what offload does to a
    /// realistic mix, checked against the generator's ground truth.
    Demo {
        /// Flows to generate.
        #[arg(long, default_value_t = 20_000, value_parser = flowtable::args::whole::<u64>)]
        flows: u64,
        /// Seed of the traffic generator: the same seed, the same traffic.
        #[arg(long, default_value_t = 1, value_parser = flowtable::args::whole::<u64>)]
        seed: u64,
        /// Sim NIC profile: full, small or refuse-all.
        #[arg(long, default_value = "full")]
        profile: String,
        /// Use this configuration instead of the demo's own.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Also write the generated traffic to this pcap file.
        #[arg(long)]
        write_pcap: Option<PathBuf>,
        /// Rows in the top-flows table.
        #[arg(long, default_value_t = 10, value_parser = flowtable::args::whole::<usize>)]
        top: usize,
        /// Worker threads (default: the configuration's `workers`).
        #[arg(long, value_parser = flowtable::args::whole::<usize>)]
        workers: Option<usize>,
    },
    /// Speed and memory figures, each beside a peer measured in the same run.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Check or print configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Run the daemon: packet sources, the engine, the control socket.
    Run(flowtable::daemon::RunArgs),
    /// Network devices and what they offer for tc offload: driver,
    /// hw-tc-offload, devlink eswitch mode.
    Devices {
        /// Interfaces to show (default: all).
        names: Vec<String>,
    },
    /// List a running daemon's flows (or count them: --count).
    #[command(after_long_help = flowtable::daemon::filter::FIELD_HELP)]
    Flows(flowtable::client::FlowsArgs),
    /// Show everything about one flow.
    Flow(flowtable::client::FlowArgs),
    /// The daemon's figures: flows, rules, packets, refusals.
    Stats(flowtable::client::StatsArgs),
    /// A live view of the top flows (q quits).
    Watch(flowtable::client::watch::WatchArgs),
    /// Attach a label, a verdict or metadata (key=value) to a flow.
    Label(flowtable::client::LabelArgs),
    /// Offload a flow with an action.
    Offload(flowtable::client::OffloadArgs),
    /// Take a flow back to software, or every offloaded flow a filter selects.
    Unoffload(flowtable::client::UnoffloadArgs),
    /// End flows now, each with its record (end reason `evicted`), their
    /// rules removed first: every flow, or those a filter selects (as
    /// conntrack -F and -D).
    Flush(flowtable::client::FlushArgs),
    /// Stream events: new, classified, offloaded, refused, expired.
    Events(flowtable::client::EventsArgs),
    /// Print the completion script for a shell (packaged for bash, zsh and
    /// fish; e.g. `source <(flowtable completions bash)`).
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page flowtable(1), or a command's page, as roff
    /// (`flowtable man flows | man -l -`).
    Man {
        /// The command whose page to print (e.g. `bench replay` for
        /// flowtable-bench-replay(1)); none: flowtable(1).
        #[arg(value_name = "COMMAND")]
        command: Vec<String>,
        /// Write every page (flowtable.1 and one per command) into this
        /// directory instead, printing their paths.
        #[arg(long, value_name = "DIR", conflicts_with = "command")]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// New flows/s, lookups/s of existing flows and bytes per flow at N
    /// flows, against std's HashMap doing the same work.
    Table {
        /// Flows in the table.
        #[arg(long, default_value_t = 1_000_000, value_parser = flowtable::args::whole::<usize>)]
        flows: usize,
        /// Lookups of existing flows in each round.
        #[arg(long, default_value_t = 10_000_000, value_parser = flowtable::args::whole::<usize>)]
        lookups: usize,
        /// Rounds of lookups; the medians are reported.
        #[arg(long, default_value_t = 5, value_parser = flowtable::args::whole::<usize>)]
        rounds: usize,
        /// The figures as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Where a packet's time goes on one core: a capture in memory through
    /// more and more of the packet path on one thread (read, parse, batch,
    /// engine), each stage's own cost, beside the threaded replay.
    Stages {
        /// A capture; without it, the synthetic mix of `bench replay`.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Packets of synthetic traffic when no file is given.
        #[arg(long, default_value_t = 1_000_000, value_parser = flowtable::args::whole::<u64>)]
        packets: u64,
        /// Rounds, the stages alternating; the medians are reported.
        #[arg(long, default_value_t = 5, value_parser = flowtable::args::whole::<usize>)]
        rounds: usize,
        /// The figures as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// The memory-latency limit: a pointer chase over as much memory as a
    /// flow table of N flows allocates, one chain and several at once.
    Chase {
        /// Chase over as much memory as a flow table of this many flows.
        #[arg(long, default_value_t = 1_000_000, value_parser = flowtable::args::whole::<usize>)]
        flows: usize,
        /// Loads per measurement.
        #[arg(long, default_value_t = 20_000_000, value_parser = flowtable::args::whole::<usize>)]
        loads: usize,
        /// Rounds, the chain counts alternating; the medians are reported.
        #[arg(long, default_value_t = 5, value_parser = flowtable::args::whole::<usize>)]
        rounds: usize,
        /// The figures as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Replay packets/s from a capture in memory, against softflowd reading
    /// the same file, in the same run.
    Replay {
        /// A capture to replay; without it, synthetic traffic is written to a
        /// temporary pcap first.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Packets of synthetic traffic when no file is given.
        #[arg(long, default_value_t = 1_000_000, value_parser = flowtable::args::whole::<u64>)]
        packets: u64,
        /// Runs of each side; the median is reported.
        #[arg(long, default_value_t = 3, value_parser = flowtable::args::whole::<usize>)]
        runs: usize,
        /// Also replay in memory with each of these worker counts (e.g.
        /// `1,2`), rounds alternating, records compared with the first's.
        #[arg(long, value_delimiter = ',', value_parser = flowtable::args::whole::<usize>)]
        workers: Vec<usize>,
        /// Only the whole-process comparison: `flowtable replay` reading and
        /// mapping the file, and the floor under both (`bench walk`: its
        /// frames walked, nothing else), against softflowd, nfpcapd and
        /// argus (each skipped, with the reason, if not installed). Needs
        /// --file.
        #[arg(long, requires = "file")]
        process_only: bool,
        /// Only the replays in memory with each of `--workers`' counts (the
        /// scaling figure), without the peers.
        #[arg(long, requires = "workers", conflicts_with = "process_only")]
        workers_only: bool,
        /// The figures as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// The floor under a replay of a capture: its frames walked in place
    /// as `flowtable replay` walks them (mapped, or read with
    /// FLOWTABLE_PCAP_MMAP=0), nothing parsed or counted beyond their
    /// number and bytes. `bench replay --process-only` times it beside the
    /// replays.
    Walk {
        /// The capture to walk.
        file: PathBuf,
    },
    /// Control socket requests/s with a million live flows, and the packet
    /// loop's rate with and without a client polling every 100 ms.
    Control(flowtable::daemon::bench::ControlBenchArgs),
    /// How long packets wait on a slow NIC: one thread doing everything
    /// against workers and an offload thread, same traffic, same run.
    Stall(flowtable::stall::StallArgs),
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum IpfixTransportArg {
    Udp,
    Tcp,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Check a configuration file; errors name the field and the line.
    Check {
        /// The configuration file (JSON).
        file: PathBuf,
    },
    /// Print an example configuration.
    Example,
}

fn load_config(path: Option<&Path>) -> Result<Config, String> {
    match path {
        Some(p) => flowtable_config::load(p).map_err(|e| e.to_string()),
        None => flowtable_config::parse("(defaults)", "{}").map_err(|e| e.to_string()),
    }
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Replay { file, config, json, top, workers, ipfix, ipfix_transport } => {
            let config = load_config(config.as_deref())?;
            let workers = workers.unwrap_or(config.workers);
            let backend = flowtable::backend::build(&config)?;
            let mut source = flowtable::source::pcap::PcapFileSource::open(&file, 0).map_err(|e| e.to_string())?;
            let transport = match ipfix_transport {
                IpfixTransportArg::Udp => flowtable_config::ExportTransport::Udp,
                IpfixTransportArg::Tcp => flowtable_config::ExportTransport::Tcp,
            };
            let collectors: Vec<_> =
                ipfix.iter().map(|a| flowtable::export::ipfix_config(&config.export, *a, transport)).collect();
            let sinks = flowtable::export::start(&collectors, flowtable_export::QueueMode::Wait)?;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let mut records: Vec<FlowRecord> = Vec::new();
            let mut write_error = None;
            let replayed = flowtable::replay::replay_batches(&mut source, &config, workers, backend, |batch| {
                for r in &batch {
                    if json {
                        if let Err(e) = serde_json::to_writer(&mut out, r)
                            .map_err(|e| e.to_string())
                            .and_then(|_| writeln!(out).map_err(|e| e.to_string()))
                        {
                            write_error.get_or_insert(e);
                        }
                    } else {
                        records.push(r.clone());
                    }
                }
                if !sinks.is_empty() {
                    sinks.send(&std::sync::Arc::new(batch));
                }
            })?;
            if let Some(e) = write_error {
                return Err(format!("writing records: {e}"));
            }
            let exported = sinks.close();
            for s in &exported {
                let said = format!(
                    "flowtable: {}: {} records exported in {} messages, {} dropped{}",
                    s.name,
                    s.exported,
                    s.messages,
                    s.dropped,
                    s.last_error.as_deref().map(|e| format!(" (last error: {e})")).unwrap_or_default()
                );
                eprintln!("{said}");
            }
            let summary = &replayed.summary;
            // A capture broken before its first packet has nothing to report
            // but its fault.
            if let (Some(e), 0) = (&replayed.source_error, summary.packets) {
                return Err(e.to_string());
            }
            if json {
                let mut line = serde_json::json!({"summary": summary, "engine": replayed.stats});
                if let Some(e) = &replayed.source_error {
                    line["capture_error"] = e.to_string().into();
                }
                if !exported.is_empty() {
                    line["export"] = serde_json::to_value(&exported).map_err(|e| e.to_string())?;
                }
                writeln!(out, "{line}").map_err(|e| e.to_string())?;
            } else {
                if replayed.source_error.is_some() {
                    writeln!(
                        out,
                        "(the capture is broken: this covers what was read before the fault, told at the end)"
                    )
                    .map_err(|e| e.to_string())?;
                }
                write!(out, "{}", replay_report(&file.display().to_string(), summary, &replayed.stats, &records, top))
                    .map_err(|e| e.to_string())?;
            }
            out.flush().map_err(|e| e.to_string())?;
            // Records of what was read are out; then the file's fault is told.
            replayed.source_error.map_or(Ok(()), |e| Err(e.to_string()))
        }
        Command::Demo { flows, seed, profile, config, write_pcap, top, workers } => {
            let mut config = match &config {
                Some(p) => flowtable_config::load(p).map_err(|e| e.to_string())?,
                None => flowtable_config::parse("(demo configuration)", flowtable::demo::DEMO_CONFIG)
                    .map_err(|e| e.to_string())?,
            };
            let profile: flowtable_config::SimProfile =
                serde_json::from_value(serde_json::Value::String(profile.clone()))
                    .map_err(|_| format!("--profile {profile:?}: give full, small or refuse-all"))?;
            if let flowtable_config::BackendConfig::Sim(sim) = &mut config.backend {
                sim.profile = profile;
            }
            let synth = flowtable::source::synth::SynthConfig {
                flows,
                seed,
                rate_pps: flowtable::demo::DEMO_RATE_PPS,
                ..Default::default()
            };
            if let Some(path) = &write_pcap {
                let mut gen =
                    flowtable::source::synth::SyntheticSource::new(synth.clone()).map_err(|e| e.to_string())?;
                let t = gen.write_pcap(path).map_err(|e| e.to_string())?;
                eprintln!("wrote {} packets of {} flows to {}", t.packets, t.flows_started, path.display());
            }
            let workers = workers.unwrap_or(config.workers);
            let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let outcome = flowtable::demo::run(&config, workers, synth, progress)?;
            print!(
                "{}",
                replay_report(
                    &format!("synthetic traffic ({flows} flows, seed {seed})"),
                    &outcome.summary,
                    &outcome.stats,
                    &outcome.records,
                    top
                )
            );
            if outcome.mismatches.is_empty() {
                println!(
                    "\ncheck: all {} generated flows recorded with exactly their packets and bytes",
                    outcome.flows_checked
                );
                Ok(())
            } else {
                for m in outcome.mismatches.iter().take(10) {
                    eprintln!("mismatch: {m}");
                }
                Err(format!(
                    "{} of {} flows differ from the generator's counts",
                    outcome.mismatches.len(),
                    outcome.flows_checked
                ))
            }
        }
        Command::Bench { command: BenchCommand::Table { flows, lookups, rounds, json } } => {
            let b = flowtable::bench::table(flows, lookups, rounds);
            if json {
                println!("{}", serde_json::to_string(&b).map_err(|e| e.to_string())?);
            } else {
                print!("{}", flowtable::bench::table_report(&b));
            }
            Ok(())
        }
        Command::Bench { command: BenchCommand::Stages { file, packets, rounds, json } } => {
            let b = flowtable::bench_stages::stages(file.as_deref(), packets, rounds)?;
            if json {
                println!("{}", serde_json::to_string(&b).map_err(|e| e.to_string())?);
            } else {
                print!("{}", flowtable::bench_stages::stages_report(&b));
            }
            Ok(())
        }
        Command::Bench { command: BenchCommand::Chase { flows, loads, rounds, json } } => {
            let b = flowtable::bench::chase(flows, loads, rounds);
            if json {
                println!("{}", serde_json::to_string(&b).map_err(|e| e.to_string())?);
            } else {
                print!("{}", flowtable::bench::chase_report(&b));
            }
            Ok(())
        }
        Command::Bench { command: BenchCommand::Walk { file } } => {
            let (frames, bytes) = flowtable::bench::walk(&file)?;
            println!("{}: {frames} frames, {bytes} bytes captured", file.display());
            Ok(())
        }
        Command::Bench { command: BenchCommand::Replay { file: Some(file), runs, process_only: true, json, .. } } => {
            let p = flowtable::bench::replay_processes(&file, runs.max(1))?;
            if json {
                println!("{}", serde_json::to_string(&p).map_err(|e| e.to_string())?);
            } else {
                print!("{}", flowtable::bench::processes_report(&file.display().to_string(), runs.max(1), &p));
            }
            Ok(())
        }
        Command::Bench {
            command: BenchCommand::Replay { file, packets, runs, workers, workers_only: true, json, .. },
        } => {
            let s = flowtable::bench::workers_only(file.as_deref(), packets, runs.max(1), &workers)?;
            if json {
                println!("{}", serde_json::to_string(&s).map_err(|e| e.to_string())?);
            } else {
                print!("{}", flowtable::bench::scaling_report(&s));
            }
            Ok(())
        }
        Command::Bench { command: BenchCommand::Replay { file, packets, runs, workers, json, .. } } => {
            let b = flowtable::bench::replay(file.as_deref(), packets, runs.max(1), &workers)?;
            if json {
                println!("{}", serde_json::to_string(&b).map_err(|e| e.to_string())?);
            } else {
                print!("{}", flowtable::bench::replay_report(&b));
            }
            Ok(())
        }
        Command::Config { command: ConfigCommand::Check { file } } => {
            let c = flowtable_config::load(&file).map_err(|e| e.to_string())?;
            if let Some((name, caps)) = flowtable::backend::static_capabilities(&c) {
                flowtable::backend::check_actions(&c, &name, &caps)
                    .map_err(|(field, message)| format!("{}: at `{field}`: {message}", file.display()))?;
            }
            let warnings = c.warnings();
            for (field, message) in &warnings {
                eprintln!("flowtable: warning: {}: at `{field}`: {message}", file.display());
            }
            println!(
                "{}: ok ({} classifier rules, {} ports, backend {}{})",
                file.display(),
                c.classifier.rules.len(),
                c.ports.len(),
                serde_json::to_value(&c.backend)
                    .ok()
                    .and_then(|v| v["kind"].as_str().map(str::to_string))
                    .unwrap_or_default(),
                match warnings.len() {
                    0 => String::new(),
                    1 => ", 1 warning".to_string(),
                    n => format!(", {n} warnings"),
                }
            );
            Ok(())
        }
        Command::Devices { names } => {
            let (text, all_found) = flowtable_hw::tc::device::report(&names);
            print!("{text}");
            if all_found {
                Ok(())
            } else {
                Err("some interfaces were not found".into())
            }
        }
        Command::Config { command: ConfigCommand::Example } => {
            print!("{}", flowtable_config::example());
            Ok(())
        }
        Command::Bench { command: BenchCommand::Control(a) } => {
            let b = flowtable::daemon::bench::run(&a)?;
            if a.json {
                println!("{}", serde_json::to_string(&b).map_err(|e| e.to_string())?);
            } else {
                print!("{}", flowtable::daemon::bench::report(&b, &a));
            }
            Ok(())
        }
        Command::Bench { command: BenchCommand::Stall(a) } => {
            let b = flowtable::stall::run(&a)?;
            if a.json {
                println!("{}", serde_json::to_string(&b).map_err(|e| e.to_string())?);
            } else {
                print!("{}", flowtable::stall::report(&b));
            }
            Ok(())
        }
        Command::Run(a) => flowtable::daemon::main(a),
        Command::Flows(a) => flowtable::client::flows(a),
        Command::Flow(a) => flowtable::client::flow(a),
        Command::Stats(a) => flowtable::client::stats(a),
        Command::Watch(a) => flowtable::client::watch::watch(a),
        Command::Label(a) => flowtable::client::label(a),
        Command::Offload(a) => flowtable::client::offload(a),
        Command::Unoffload(a) => flowtable::client::unoffload(a),
        Command::Flush(a) => flowtable::client::flush(a),
        Command::Events(a) => flowtable::client::events(a),
        Command::Completions { shell } => {
            let script = flowtable::manual::completions(<Cli as clap::CommandFactory>::command(), shell);
            std::io::stdout().write_all(&script).map_err(|e| format!("writing to stdout: {e}"))
        }
        Command::Man { command, dir } => {
            flowtable::manual::man(<Cli as clap::CommandFactory>::command(), &command, dir.as_deref())
        }
    }
}

fn replay_report(
    what: &str,
    s: &flowtable::replay::ReplaySummary,
    st: &EngineStats,
    records: &[FlowRecord],
    top: usize,
) -> String {
    let mut o = String::new();
    o.push_str(&format!(
        "{what}: {}, {} in {} ({})\n",
        report::counted(s.packets, "packet"),
        report::bytes(s.bytes),
        report::duration_ns(s.wall_ns),
        report::rate(s.packets_per_second(), "pkt")
    ));
    o.push_str(&format!(
        "  handled by NIC rules: {} ({:.1}%), by software: {}\n",
        report::counted(s.nic_packets, "packet"),
        100.0 * s.nic_packets as f64 / s.packets.max(1) as f64,
        report::count(s.sw_packets)
    ));
    o.push_str(&format!(
        "  flows: {} created, {} offloaded, {} refused; rules installed {}, removed {}\n",
        st.flows_created, st.flows_offloaded, st.flows_refused, st.rules_installed, st.rules_removed
    ));
    if !st.ended_by.is_empty() {
        let ended: Vec<String> = st.ended_by.iter().map(|(k, v)| format!("{k} {v}")).collect();
        o.push_str(&format!("  ended: {}\n", ended.join(", ")));
    }
    if !st.refusals.is_empty() {
        let r: Vec<String> = st.refusals.iter().map(|(k, v)| format!("{k} {v}")).collect();
        o.push_str(&format!("  refusals: {}\n", r.join(", ")));
    }
    if s.skipped.total() > 0 {
        let r: Vec<String> =
            s.skipped.iter().filter(|(_, n)| *n > 0).map(|(k, v)| format!("{} {v}", k.as_str())).collect();
        o.push_str(&format!("  skipped packets: {}\n", r.join(", ")));
    }
    if st.orphan_fragments + st.untracked_table_full > 0 {
        o.push_str(&format!(
            "  untracked: {} fragments without their first, {} packets while the table was full\n",
            st.orphan_fragments, st.untracked_table_full
        ));
    }
    if top > 0 && !records.is_empty() {
        let n = top.min(records.len()) as u64;
        o.push_str(&format!("\ntop {} by bytes:\n", report::counted(n, "flow")));
        o.push_str(&report::top_records(records, top));
    }
    o
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flowtable: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every argument and option of every subcommand, at every depth, says
    /// what it is in `--help`; walked from the definitions, so a new one
    /// without a description fails here.
    #[test]
    fn every_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            if cmd.get_name() != "help" && cmd.get_about().is_none() && !path.is_empty() {
                missing.push(format!("{path} (the command itself)"));
            }
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {}", arg.get_long().map_or(id.to_uppercase(), |l| format!("--{l}"))));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, format!("{path} {}", sub.get_name()).trim(), missing);
            }
        }
        let mut cli = Cli::command();
        cli.build();
        let mut missing = Vec::new();
        walk(&cli, "", &mut missing);
        assert!(missing.is_empty(), "without a description in --help:\n{}", missing.join("\n"));
        // The filter's grammar is in `flows --help`.
        let mut flows = cli.find_subcommand("flows").expect("flows").clone();
        let long = flows.render_long_help().to_string();
        for want in ["not (stage=offloaded", "bytes > 1M", "ingress", "rate", "1024s"] {
            assert!(long.contains(want), "flows --help lacks {want:?}:\n{long}");
        }
    }

    /// Every option and argument that takes a value, given a word that is
    /// no number or address, says what to give, not what Rust's parser
    /// found ("invalid digit found in string"); walked from the
    /// definitions, so a new number without its value parser fails here.
    #[test]
    fn every_value_refused_says_what_to_give() {
        fn walk(cmd: &clap::Command, path: &mut Vec<String>, seen: &mut usize, bad: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                if !arg.get_action().takes_values() || !arg.get_possible_values().is_empty() {
                    continue;
                }
                let mut argv: Vec<String> = std::iter::once("flowtable".to_string()).chain(path.clone()).collect();
                if let Some(long) = arg.get_long() {
                    argv.push(format!("--{long}"));
                }
                argv.push("x1".to_string());
                let Err(e) = Cli::try_parse_from(&argv) else { continue };
                if e.kind() != clap::error::ErrorKind::ValueValidation {
                    continue;
                }
                *seen += 1;
                let said = e.to_string();
                let rust =
                    ["invalid digit", "invalid float literal", "address syntax", "cannot parse", "ParseIntError"];
                if rust.iter().any(|r| said.contains(r)) {
                    bad.push(format!("{}: {}", argv.join(" "), said.lines().next().unwrap_or("")));
                }
            }
            for sub in cmd.get_subcommands() {
                path.push(sub.get_name().to_string());
                walk(sub, path, seen, bad);
                path.pop();
            }
        }
        let mut cli = Cli::command();
        cli.build();
        let (mut seen, mut bad) = (0, Vec::new());
        walk(&cli, &mut Vec::new(), &mut seen, &mut bad);
        assert!(seen >= 30, "only {seen} values refused: the walk misses options");
        assert!(bad.is_empty(), "in Rust's words:\n{}", bad.join("\n"));
        let said = Cli::try_parse_from(["flowtable", "flows", "--top", "abc"]).err().unwrap().to_string();
        assert!(said.contains("expected a whole number, 0 or more"), "{said}");
    }
}
