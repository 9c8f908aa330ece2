//! Real-kernel tests of the tc-flower backend: netdevsim for the hardware
//! path, veth pairs between network namespaces for real traffic. They need
//! root and a kernel of their own, so they run inside the VM suite
//! (tests/vm/run.sh sets FLOWTABLE_VM=1); anywhere else each one reports
//! that it was skipped.

use std::fs::File;
use std::io::Write;
use std::net::{Ipv4Addr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use flowtable_hw::rule::{PlacementPolicy, RefusalKind};
use flowtable_hw::tc::device;
use flowtable_hw::tc::flower::{FLAG_IN_HW, FLAG_NOT_IN_HW, FLAG_SKIP_HW, FLAG_SKIP_SW};
use flowtable_hw::tc::{Leftovers, TcBackend, TcConfig};
use flowtable_hw::{Action, Backend, BackendError, Cookie, InstallOutcome, MatchFields, Placement, RuleSpec};
use flowtable_sw::{Direction, FlowKey};

// Namespaces, veth pairs and traffic, shared with the root package's
// real-kernel tests.
#[path = "../../tests/vmnet/mod.rs"]
mod vmnet;
use vmnet::{enter_netns, in_vm, sh, sh_quiet, Pair};

const NETDEVSIM_EXTACK: &str = "netdevsim: only offload of BPF classifiers supported";

/// Gap between datagrams sent by the tests.
const GAP: Duration = Duration::from_millis(2);

/// A netdevsim device with one port; removed on drop.
struct Nsim {
    id: u32,
    dev: String,
}

impl Nsim {
    /// Makes netdevsim device `id` with one port, `hw-tc-offload` as asked
    /// (netdevsim starts with it off).
    fn new(id: u32, tc_offload: bool) -> Nsim {
        sh_quiet(&format!("echo {id} > /sys/bus/netdevsim/del_device"));
        sh(&format!("echo '{id} 1' > /sys/bus/netdevsim/new_device"));
        let dir = format!("/sys/bus/netdevsim/devices/netdevsim{id}/net");
        let start = Instant::now();
        // The port appears as ethN and udev renames it (eni<id>np1): wait
        // for the final name.
        let dev = loop {
            let name = std::fs::read_dir(&dir)
                .ok()
                .and_then(|mut d| d.next())
                .and_then(|e| e.ok()?.file_name().into_string().ok());
            match name {
                Some(n) if !n.starts_with("eth") || start.elapsed() > Duration::from_secs(5) => break n,
                _ => {}
            }
            assert!(start.elapsed() < Duration::from_secs(10), "netdevsim{id} made no netdev");
            std::thread::sleep(Duration::from_millis(50));
        };
        sh(&format!("ip link set {dev} up"));
        sh(&format!("ethtool -K {dev} hw-tc-offload {}", if tc_offload { "on" } else { "off" }));
        Nsim { id, dev }
    }
}

impl Drop for Nsim {
    fn drop(&mut self) {
        sh_quiet(&format!("echo {} > /sys/bus/netdevsim/del_device", self.id));
    }
}

fn spec(owner: u32, flow: u64, (key, dir): (FlowKey, Direction), action: Action, policy: PlacementPolicy) -> RuleSpec {
    RuleSpec {
        cookie: Cookie::new(owner, flow, dir),
        matches: MatchFields { key, dir, port: key.zone },
        action,
        policy,
    }
}

fn tcp_key(a: Ipv4Addr, b: Ipv4Addr, sport: u16, dport: u16) -> (FlowKey, Direction) {
    FlowKey::from_v4(a, b, sport, dport, 6)
}

fn installed(o: &InstallOutcome) -> Placement {
    match o {
        InstallOutcome::Installed { placement, .. } => *placement,
        InstallOutcome::Refused(r) => panic!("refused: {r}"),
    }
}

fn refused(o: &InstallOutcome) -> &flowtable_hw::Refusal {
    match o {
        InstallOutcome::Refused(r) => r,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn counters_of(be: &mut TcBackend, cookie: Cookie) -> flowtable_hw::RuleCounters {
    let mut out = Vec::new();
    be.read_counters(&mut out).expect("read counters");
    out.into_iter().find(|(c, _)| *c == cookie).map(|(_, s)| s).unwrap_or_else(|| panic!("no counters for {cookie:?}"))
}

/// Packets counted by the (foreign) filters at priority `prio` on `dev`'s ingress.
fn foreign_packets(dev: &str, prio: u32) -> u64 {
    let out = sh(&format!("tc -s filter show dev {dev} ingress prio {prio}"));
    // "Sent 1234 bytes 5 pkt (dropped 0, overlimits 0 requeues 0)", once per action.
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Sent "))
        .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok())
        .sum()
}

fn tc_show(dev: &str) -> String {
    sh(&format!("tc filter show dev {dev} ingress"))
}

/// Writes a file into the results directory when running in the suite.
fn record(name: &str, bytes: &[u8]) {
    if let Ok(dir) = std::env::var("FT_RESULTS") {
        let _ = File::create(format!("{dir}/{name}")).and_then(|mut f| f.write_all(bytes));
    }
}

#[test]
fn devices_report_driver_offload_and_devlink() {
    if !in_vm("devices_report_driver_offload_and_devlink") {
        return;
    }
    let nsim = Nsim::new(11, true);
    let info = device::probe(&nsim.dev).unwrap();
    println!("{info}");
    assert_eq!(info.driver.as_deref(), Some("netdevsim"));
    assert_eq!(info.hw_tc_offload.map(|f| f.active), Some(true));
    assert_eq!(info.devlink.as_deref(), Some("netdevsim/netdevsim11"));
    assert_eq!(info.eswitch_mode.as_deref(), Some("legacy"));

    let pair = Pair::new("dv", 31);
    let v = device::probe(&pair.host_a).unwrap();
    println!("{v}");
    assert_eq!(v.driver.as_deref(), Some("veth"));
    let f = v.hw_tc_offload.expect("veth reports its features");
    assert!(!f.active && !f.changeable, "veth: hw-tc-offload off [fixed], got {f:?}");
    assert!(device::list().contains(&nsim.dev));
}

#[test]
fn netdevsim_refuses_hardware_and_auto_falls_back_to_software() {
    if !in_vm("netdevsim_refuses_hardware_and_auto_falls_back_to_software") {
        return;
    }
    let nsim = Nsim::new(12, true);
    let owner = 0x1200;
    let mut be = TcBackend::open(TcConfig::new(vec![nsim.dev.clone()], owner)).unwrap();
    let a = Ipv4Addr::new(192, 0, 2, 1);
    let b = Ipv4Addr::new(192, 0, 2, 2);
    let rules = [
        spec(owner, 1, tcp_key(a, b, 1000, 80), Action::Drop, PlacementPolicy::Hardware),
        spec(owner, 2, tcp_key(a, b, 1001, 80), Action::Drop, PlacementPolicy::Auto),
        spec(owner, 3, tcp_key(a, b, 1002, 80), Action::Pass, PlacementPolicy::Software),
    ];
    let out = be.install(&rules);
    println!("{out:?}");
    let r = refused(&out[0]);
    assert_eq!(r.kind, RefusalKind::Driver);
    assert!(r.message.contains(NETDEVSIM_EXTACK), "the driver's own words: {r}");
    assert!(r.message.contains(&nsim.dev), "names the device: {r}");
    assert_eq!(installed(&out[1]), Placement::KernelSoftware);
    assert_eq!(installed(&out[2]), Placement::KernelSoftware);
    let st = be.stats();
    assert_eq!((st.hw_attempts, st.hw_refusals, st.fallbacks), (2, 2, 1), "{st:?}");

    // Read back from the kernel: both in software, neither in hardware.
    let filters = be.list_filters().unwrap();
    assert_eq!(filters.len(), 2);
    for f in &filters {
        assert!(f.flags & FLAG_NOT_IN_HW != 0 && f.flags & FLAG_IN_HW == 0, "{f:?}");
        assert!(f.flags & FLAG_SKIP_SW == 0, "{f:?}");
        assert_eq!(f.placement(), Placement::KernelSoftware);
    }
    let show = tc_show(&nsim.dev);
    println!("{show}");
    assert_eq!(show.matches("not_in_hw").count(), 2);
    assert_eq!(be.shutdown().unwrap(), 2);
    assert!(!tc_show(&nsim.dev).contains("flower"));
}

#[test]
fn offload_off_means_no_hardware_attempt() {
    if !in_vm("offload_off_means_no_hardware_attempt") {
        return;
    }
    let nsim = Nsim::new(13, false);
    let owner = 0x1300;
    let mut be = TcBackend::open(TcConfig::new(vec![nsim.dev.clone()], owner)).unwrap();
    assert_eq!(be.devices().next().unwrap().hw_tc_offload.map(|f| f.active), Some(false));
    let a = Ipv4Addr::new(192, 0, 2, 1);
    let b = Ipv4Addr::new(192, 0, 2, 2);
    let out = be.install(&[
        spec(owner, 1, tcp_key(a, b, 1000, 80), Action::Drop, PlacementPolicy::Hardware),
        spec(owner, 2, tcp_key(a, b, 1001, 80), Action::Drop, PlacementPolicy::Auto),
    ]);
    let r = refused(&out[0]);
    assert_eq!(r.kind, RefusalKind::Driver);
    assert!(r.message.contains("hw-tc-offload is off"), "{r}");
    assert_eq!(installed(&out[1]), Placement::KernelSoftware);
    assert_eq!(be.stats().hw_attempts, 0, "no skip_sw request may reach the kernel");
    assert_eq!(be.stats().fallbacks, 0);
    let f = be.list_filters().unwrap();
    assert_eq!(f.len(), 1);
    assert!(f[0].flags & FLAG_SKIP_HW != 0, "installed straight to software: {:?}", f[0]);
}

#[test]
fn auto_fallback_is_enforced_on_real_traffic() {
    if !in_vm("auto_fallback_is_enforced_on_real_traffic") {
        return;
    }
    // netdevsim carries no traffic of its own, so a foreign filter on hA
    // injects A's packets into the netdevsim port's receive path (mirred
    // ingress redirect). There the Auto rule, refused by the driver and
    // fallen back to software, forwards one flow to B: B hears that flow
    // only if the fallback rule is at work.
    let nsim = Nsim::new(14, true);
    let pair = Pair::new("fb", 32);
    sh(&format!("tc qdisc add dev {} clsact", pair.host_a));
    sh(&format!(
        "tc filter add dev {} ingress prio 61000 protocol ip flower action mirred ingress redirect dev {}",
        pair.host_a, nsim.dev
    ));
    assert_eq!(pair.udp_counted((5000, 6000), 10, 64, GAP), 0, "no path to B without our rule");

    let owner = 0x1400;
    let mut be = TcBackend::open(TcConfig::new(vec![nsim.dev.clone(), pair.host_b.clone()], owner)).unwrap();
    let rule = spec(owner, 1, pair.udp_key(5000, 6000, 0), Action::Forward { port: 1 }, PlacementPolicy::Auto);
    let out = be.install(&[rule]);
    assert_eq!(installed(&out[0]), Placement::KernelSoftware);
    let st = be.stats();
    assert_eq!((st.hw_attempts, st.hw_refusals, st.fallbacks), (1, 1, 1), "{st:?}");
    assert_eq!(pair.udp_counted((5000, 6000), 10, 64, GAP), 10, "forwarded by the software fallback");
    assert_eq!(pair.udp_counted((5001, 6000), 10, 64, GAP), 0, "another flow is not");
    let c = counters_of(&mut be, rule.cookie);
    assert_eq!(c.packets, 10);
    assert_eq!(c.bytes, 10 * (64 + 28 + 14));
    assert_eq!(c.hw_packets, 0);
    assert!(c.last_used_ns.is_some());
    be.shutdown().unwrap();
    assert_eq!(pair.udp_counted((5000, 6000), 10, 64, GAP), 0, "gone with our rules");
    assert!(tc_show(&pair.host_a).contains("mirred"), "foreign filter untouched");
}

#[test]
fn redirect_carries_icmp_and_tcp_and_counts_them() {
    if !in_vm("redirect_carries_icmp_and_tcp_and_counts_them") {
        return;
    }
    let pair = Pair::new("rd", 33);
    let owner = 0x1500;
    let ports = vec![pair.host_a.clone(), pair.host_b.clone()];
    assert!(!pair.ping(1), "no path between the namespaces before the rules");

    // ICMP: flower can't match the echo id, so a rule covers the host pair,
    // other echo flows included: refused unless the configuration allows it.
    let (mut k_ab, d_ab) = FlowKey::from_v4(pair.ip_a, pair.ip_b, 7, 7, 1);
    k_ab.zone = 0;
    let mut k_ba = k_ab;
    k_ba.zone = 1;
    let icmp_ab = spec(owner, 1, (k_ab, d_ab), Action::Forward { port: 1 }, PlacementPolicy::Auto);
    let icmp_ba = spec(owner, 1, (k_ba, d_ab.reverse()), Action::Forward { port: 0 }, PlacementPolicy::Auto);
    {
        let mut strict = TcBackend::open(TcConfig::new(ports.clone(), owner)).unwrap();
        let out = strict.install(&[icmp_ab]);
        let r = refused(&out[0]);
        assert_eq!(r.kind, RefusalKind::UnsupportedMatch);
        assert!(r.message.contains("icmp_by_hosts"), "{r}");
        assert_eq!(tc_show(&pair.host_a).matches(" handle ").count(), 0, "nothing installed");
    }
    let mut be = TcBackend::open(TcConfig { icmp_by_hosts: true, ..TcConfig::new(ports, owner) }).unwrap();
    let out = be.install(&[icmp_ab, icmp_ba]);
    assert!(out.iter().all(|o| installed(o) == Placement::KernelSoftware), "{out:?}");
    assert_eq!(be.stats().hw_attempts, 0, "veth has no tc offload");
    assert!(pair.ping(5), "ping crosses through the redirect rules");
    let req = counters_of(&mut be, icmp_ab.cookie);
    let rep = counters_of(&mut be, icmp_ba.cookie);
    println!("icmp a->b {req:?} b->a {rep:?}");
    assert_eq!((req.packets, rep.packets), (5, 5));
    // Frames on the wire: 56 bytes of ping data + ICMP 8 + IPv4 20 + Ethernet 14.
    assert_eq!((req.bytes, rep.bytes), (5 * 98, 5 * 98));

    // TCP with nc over fixed ports, both directions redirected. A rule of
    // a TCP flow leaves FIN and RST to the path the packets take without
    // it (the kernel flowtable's match): here a catch-all redirect of
    // someone else's at a later priority, the software path the rules
    // short-cut.
    for (from, to) in [(&pair.host_a, &pair.host_b), (&pair.host_b, &pair.host_a)] {
        sh(&format!(
            "tc filter add dev {from} ingress prio 61000 protocol ip flower action mirred egress redirect dev {to}"
        ));
    }
    // One packet per segment: a GSO packet carries the flags of its whole
    // burst, so one whose last segment has the FIN would miss our rules
    // with all its data, and how much that is depends on timing.
    for (ns, dev) in [(&pair.ns_a, "a0"), (&pair.ns_b, "b0")] {
        sh(&format!("ip netns exec {ns} ethtool -K {dev} tso off gso off"));
    }
    let (tk, td) = tcp_key(pair.ip_a, pair.ip_b, 40000, 7000);
    let mut tk_b = tk;
    tk_b.zone = 1;
    let tcp_ab = spec(owner, 2, (tk, td), Action::Forward { port: 1 }, PlacementPolicy::Software);
    let tcp_ba = spec(owner, 2, (tk_b, td.reverse()), Action::Forward { port: 0 }, PlacementPolicy::Software);
    let out = be.install(&[tcp_ab, tcp_ba]);
    assert!(out.iter().all(|o| installed(o) == Placement::KernelSoftware), "{out:?}");
    let shown = tc_show(&pair.host_a);
    println!("{shown}");
    // iproute2 prints the key and mask in hex ("tcp_flags 0x0/0x5" or alike).
    let flags = shown.split("tcp_flags ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or("");
    let mask = flags.rsplit('/').next().map(|m| m.trim_start_matches("0x"));
    assert!(flags.contains('/') && mask == Some("5"), "FIN|RST clear: {shown}");
    sh("head -c 300000 /dev/urandom > /tmp/ft-tcp-send");
    let mut listener = Command::new("ip")
        .args(["netns", "exec", &pair.ns_b, "sh", "-c"])
        .arg(format!("timeout 60 nc -l {} 7000 > /tmp/ft-tcp-recv", pair.ip_b))
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    sh(&format!(
        "ip netns exec {} timeout 60 nc -N -s {} -p 40000 {} 7000 < /tmp/ft-tcp-send",
        pair.ns_a, pair.ip_a, pair.ip_b
    ));
    assert!(listener.wait().unwrap().success());
    assert_eq!(sh("cmp /tmp/ft-tcp-send /tmp/ft-tcp-recv && echo same").trim(), "same");
    let up = counters_of(&mut be, tcp_ab.cookie);
    let down = counters_of(&mut be, tcp_ba.cookie);
    println!("tcp a->b {up:?} b->a {down:?}");
    assert!(up.bytes >= 300_000 && up.packets >= 300_000 / 65_536, "{up:?}");
    assert!(down.packets > 0);
    // The two FINs went by the software path, all else by our rules.
    let software_path: u64 = [&pair.host_a, &pair.host_b].iter().map(|d| foreign_packets(d, 61000)).sum();
    println!("software path: {software_path} packets");
    assert!((2..=4).contains(&software_path), "the FINs, and at most their retransmissions: {software_path}");
    // The ICMP rules saw nothing of the TCP flow.
    assert_eq!(counters_of(&mut be, icmp_ab.cookie).packets, 5);
    for dev in [&pair.host_a, &pair.host_b] {
        sh(&format!("tc filter del dev {dev} ingress prio 61000"));
    }
    be.shutdown().unwrap();
    assert!(!pair.ping(1), "no path once our rules are flushed");
}

#[test]
fn drop_and_mirror_act_on_udp_and_counts_match() {
    if !in_vm("drop_and_mirror_act_on_udp_and_counts_match") {
        return;
    }
    let pair = Pair::new("dm", 34);
    // A foreign catch-all after our priorities: A -> B works without us.
    sh(&format!("tc qdisc add dev {} clsact", pair.host_a));
    sh(&format!(
        "tc filter add dev {} ingress prio 61000 protocol ip flower action mirred egress redirect dev {}",
        pair.host_a, pair.host_b
    ));
    assert_eq!(pair.udp_counted((5001, 6001), 10, 100, GAP), 10);

    let owner = 0x1600;
    let mut be = TcBackend::open(TcConfig::new(vec![pair.host_a.clone(), pair.host_b.clone()], owner)).unwrap();
    assert_eq!(be.recovery().foreign, 1);
    let drop = spec(owner, 1, pair.udp_key(5001, 6001, 0), Action::Drop, PlacementPolicy::Auto);
    let mirror = spec(owner, 2, pair.udp_key(5002, 6002, 0), Action::Mirror { port: 1 }, PlacementPolicy::Auto);
    let pass = spec(owner, 3, pair.udp_key(5003, 6003, 0), Action::Pass, PlacementPolicy::Auto);
    let out = be.install(&[drop, mirror, pass]);
    assert!(out.iter().all(|o| installed(o) == Placement::KernelSoftware), "{out:?}");

    assert_eq!(pair.udp_counted((5001, 6001), 20, 100, GAP), 0, "drop rule drops");
    assert_eq!(pair.udp_counted((5002, 6002), 15, 100, GAP), 30, "mirror copies and lets the original go on");
    assert_eq!(pair.udp_counted((5003, 6003), 7, 100, GAP), 0, "pass accepts on hA: nothing redirects it to B");

    let mut all = Vec::new();
    be.read_counters(&mut all).unwrap();
    assert_eq!(all.len(), 3, "only our three rules are reported: {all:?}");
    let find = |c: Cookie| all.iter().find(|(k, _)| *k == c).unwrap().1;
    // 100 bytes of data + UDP 8 + IPv4 20 + Ethernet 14.
    assert_eq!((find(drop.cookie).packets, find(drop.cookie).bytes), (20, 20 * 142));
    assert_eq!((find(mirror.cookie).packets, find(mirror.cookie).bytes), (15, 15 * 142));
    assert_eq!(find(pass.cookie).packets, 7);

    // Keep a dumped filter with live counters for the codec fixtures.
    let mut sock = flowtable_hw::tc::netlink::TcSocket::open().unwrap();
    let mut req = Vec::new();
    let ifindex = device::ifindex(&pair.host_a).unwrap();
    flowtable_hw::tc::tcmsg::TcmsgRepr { ifindex, handle: 0, parent: flowtable_hw::tc::tcmsg::PARENT_INGRESS, info: 0 }
        .emit(&mut req);
    let mut n = 0;
    sock.dump(neli::consts::rtnl::Rtm::Gettfilter, &req, &mut |_, payload| {
        n += 1;
        record(&format!("tc-dump-{n}.bin"), payload);
    })
    .unwrap();

    // Removal hands back the final counters and really removes.
    let fin = be.remove(&[drop.cookie]);
    let fin = fin[0].as_ref().expect("removed").expect("final counters from the delete echo");
    assert_eq!(fin.packets, 20);
    assert_eq!(pair.udp_counted((5001, 6001), 10, 100, GAP), 10, "dropping stopped");
    assert!(matches!(be.remove(&[drop.cookie])[0], Err(BackendError::UnknownRule { .. })));

    be.shutdown().unwrap();
    let show = tc_show(&pair.host_a);
    assert!(
        show.contains("mirred") && show.matches(" handle ").count() == 1,
        "only the foreign filter is left:\n{show}"
    );
    assert_eq!(pair.udp_counted((5003, 6003), 5, 100, GAP), 5);
}

#[test]
fn batch_with_a_refused_rule_in_the_middle() {
    if !in_vm("batch_with_a_refused_rule_in_the_middle") {
        return;
    }
    let pair = Pair::new("bt", 35);
    sh("ip link add ftGone type dummy");
    let owner = 0x1700;
    let ports = vec![pair.host_a.clone(), pair.host_b.clone(), "ftGone".to_string()];
    let mut be = TcBackend::open(TcConfig::new(ports, owner)).unwrap();
    // The forward target vanishes after start: only the kernel can notice.
    sh("ip link del ftGone");
    let mut rules = Vec::new();
    for i in 0..9u16 {
        let action = if i == 4 { Action::Forward { port: 2 } } else { Action::Forward { port: 1 } };
        rules.push(spec(owner, i as u64 + 1, pair.udp_key(7000 + i, 8000, 0), action, PlacementPolicy::Software));
    }
    let sends = be.sends();
    let out = be.install(&rules);
    assert_eq!(be.sends() - sends, 1, "nine rules, one sendmsg");
    for (i, o) in out.iter().enumerate() {
        if i == 4 {
            let r = refused(o);
            println!("refusal: {r}");
            assert_eq!(r.kind, RefusalKind::Driver);
            assert!(r.message.contains(&pair.host_a) && r.message.contains("refused"), "{r}");
        } else {
            assert_eq!(installed(o), Placement::KernelSoftware, "rule {i}");
        }
    }
    let listed = be.list_filters().unwrap();
    assert_eq!(listed.len(), 8);
    assert!(!listed.iter().any(|f| f.cookie == rules[4].cookie));
    assert_eq!(pair.udp_counted((7005, 8000), 3, 10, GAP), 3, "a neighbour of the refused rule works");

    // A larger batch, split across sendmsg calls by the cap, still maps
    // every ACK to its rule.
    be.set_max_batch(64);
    let many: Vec<RuleSpec> = (0..300u16)
        .map(|i| {
            spec(owner, 1000 + i as u64, pair.udp_key(10000 + i, 9000, 0), Action::Drop, PlacementPolicy::Software)
        })
        .collect();
    let sends = be.sends();
    let out = be.install(&many);
    assert_eq!(be.sends() - sends, 5);
    assert!(out.iter().all(|o| matches!(o, InstallOutcome::Installed { .. })));
    assert_eq!(be.list_filters().unwrap().len(), 308);
    let removed = be.remove(&many.iter().map(|r| r.cookie).collect::<Vec<_>>());
    assert!(removed.iter().all(|r| matches!(r, Ok(Some(c)) if c.packets == 0)));
    assert_eq!(be.shutdown().unwrap(), 8);
}

#[test]
fn bad_input_gets_a_clear_error() {
    if !in_vm("bad_input_gets_a_clear_error") {
        return;
    }
    let err =
        TcBackend::open(TcConfig::new(vec!["lo".into(), "ftNoSuch0".into()], 1)).err().expect("missing interface");
    println!("{err}");
    assert!(err.to_string().contains("port 1: interface 'ftNoSuch0': no such device"), "{err}");

    let pair = Pair::new("bi", 36);
    let owner = 0x1800;
    let mut be = TcBackend::open(TcConfig::new(vec![pair.host_a.clone()], owner)).unwrap();
    let (mut lite, d) = FlowKey::from_v4(pair.ip_a, pair.ip_b, 1, 2, 136);
    lite.zone = 0;
    let out = be.install(&[
        spec(owner, 1, (lite, d), Action::Drop, PlacementPolicy::Software),
        spec(owner, 2, pair.udp_key(1, 2, 0), Action::Forward { port: 9 }, PlacementPolicy::Software),
        spec(owner, 3, pair.udp_key(1, 3, 5), Action::Drop, PlacementPolicy::Software),
        spec(owner, 4, pair.udp_key(1, 4, 0), Action::Drop, PlacementPolicy::Hardware),
        spec(owner + 1, 5, pair.udp_key(1, 5, 0), Action::Drop, PlacementPolicy::Software),
        spec(owner, 6, pair.udp_key(1, 6, 0), Action::Drop, PlacementPolicy::Software),
        spec(owner, 6, pair.udp_key(1, 6, 0), Action::Drop, PlacementPolicy::Software),
    ]);
    for o in &out {
        println!("{o:?}");
    }
    assert_eq!(refused(&out[0]).kind, RefusalKind::UnsupportedMatch);
    assert!(refused(&out[0]).message.contains("udplite"));
    assert_eq!(refused(&out[1]).kind, RefusalKind::UnsupportedAction);
    assert!(refused(&out[1]).message.contains("forward port 9 is not configured"));
    assert!(refused(&out[2]).message.contains("ingress port 5 is not configured"));
    assert!(refused(&out[3]).message.contains(&format!("{}: hw-tc-offload is off", pair.host_a)));
    assert!(refused(&out[4]).message.contains("not this backend's owner"));
    assert_eq!(installed(&out[5]), Placement::KernelSoftware);
    assert_eq!(refused(&out[6]).kind, RefusalKind::Exists);
    let again = be.install(&[spec(owner, 6, pair.udp_key(1, 6, 0), Action::Drop, PlacementPolicy::Software)]);
    assert_eq!(refused(&again[0]).kind, RefusalKind::Exists);
    assert_eq!(be.stats().hw_attempts, 0);
    let unknown = Cookie::new(owner, 999, Direction::LoToHi);
    let e = be.remove(&[unknown]).pop().unwrap().unwrap_err();
    assert!(e.to_string().contains("no rule with cookie"), "{e}");

    // A filter removed behind our back: removal says so and forgets it.
    sh(&format!("tc filter del dev {} ingress", pair.host_a));
    let c = Cookie::new(owner, 6, Direction::LoToHi);
    let e = be.remove(&[c]).pop().unwrap().unwrap_err();
    assert!(e.to_string().contains("already gone"), "{e}");
    assert_eq!(be.installed(), 0);
}

/// Records a kernel error reply with its extack for the codec fixtures.
#[test]
fn records_an_extack_reply() {
    if !in_vm("records_an_extack_reply") {
        return;
    }
    let nsim = Nsim::new(15, true);
    let owner = 0x1900;
    let mut be = TcBackend::open(TcConfig::new(vec![nsim.dev.clone()], owner)).unwrap();
    let a = Ipv4Addr::new(198, 51, 100, 1);
    let rule = spec(owner, 1, tcp_key(a, a, 1, 2), Action::Drop, PlacementPolicy::Hardware);
    be.set_capture(true);
    let out = be.install(&[rule]);
    assert!(refused(&out[0]).message.contains(NETDEVSIM_EXTACK));
    let raw = be.take_captured();
    assert_eq!(raw.len(), 1, "one datagram: the error with its extack");
    record("tc-extack-reply.bin", &raw[0]);
}

const CHILD_ENV: &str = "FT_KILL9_DEV";

/// Not a test of its own: the process that `kill_9_leftovers_are_flushed`
/// starts and kills.
#[test]
#[ignore]
fn kill9_child_holds_rules() {
    let Ok(dev) = std::env::var(CHILD_ENV) else { return };
    let ready = std::env::var("FT_KILL9_READY").unwrap();
    let owner = 0xC0FFEE;
    let mut cfg = TcConfig::new(vec![dev], owner);
    cfg.keep_rules = false;
    let mut be = TcBackend::open(cfg).unwrap();
    let a = Ipv4Addr::new(203, 0, 113, 1);
    let b = Ipv4Addr::new(203, 0, 113, 2);
    let rules: Vec<RuleSpec> = (0..5)
        .map(|i| spec(owner, i, tcp_key(a, b, 2000 + i as u16, 443), Action::Drop, PlacementPolicy::Software))
        .collect();
    assert!(be.install(&rules).iter().all(|o| matches!(o, InstallOutcome::Installed { .. })));
    std::fs::write(ready, "ready").unwrap();
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn kill_9_leftovers_are_flushed_and_foreign_filters_kept() {
    if !in_vm("kill_9_leftovers_are_flushed_and_foreign_filters_kept") {
        return;
    }
    let pair = Pair::new("k9", 37);
    let dev = pair.host_a.clone();
    let ready = "/tmp/ft-kill9-ready";
    let _ = std::fs::remove_file(ready);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "kill9_child_holds_rules", "--ignored", "--nocapture"])
        .env(CHILD_ENV, &dev)
        .env("FT_KILL9_READY", ready)
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !std::path::Path::new(ready).exists() {
        assert!(start.elapsed() < Duration::from_secs(60), "child never got ready");
        assert!(child.try_wait().unwrap().is_none(), "child died early");
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();
    let before = tc_show(&dev);
    assert_eq!(before.matches("dst_port 443").count(), 5, "the killed run's rules stay behind:\n{before}");

    // Someone else's filters: one plain, one with our magic but another owner.
    sh(&format!("tc filter add dev {dev} ingress prio 7 protocol ip flower ip_proto udp dst_port 53 action drop"));
    let other_owner = 0xBEEF;
    let mut cfg = TcConfig::new(vec![dev.clone()], other_owner);
    cfg.keep_rules = true;
    let mut other = TcBackend::open(cfg).unwrap();
    let a = Ipv4Addr::new(203, 0, 113, 9);
    let out = other.install(&[spec(other_owner, 1, tcp_key(a, a, 9, 9), Action::Pass, PlacementPolicy::Software)]);
    installed(&out[0]);
    drop(other); // keep_rules: its rule stays

    let be = TcBackend::open(TcConfig::new(vec![dev.clone()], 0xC0FFEE)).unwrap();
    let rec = be.recovery();
    println!("{rec:?}");
    assert_eq!(rec.flushed, 5);
    assert_eq!(rec.other_owners, 1);
    assert_eq!(rec.foreign, 1);
    let after = tc_show(&dev);
    assert_eq!(after.matches("dst_port 443").count(), 0, "ours flushed:\n{after}");
    assert!(after.contains("dst_port 53"), "foreign filter untouched:\n{after}");
    assert!(after.contains("src_port 9"), "other owner's filter untouched:\n{after}");
    drop(be);

    // Adopting instead of flushing: the other owner's rule becomes tracked.
    let mut cfg = TcConfig::new(vec![dev.clone()], other_owner);
    cfg.leftovers = Leftovers::Adopt;
    let mut adopt = TcBackend::open(cfg).unwrap();
    assert_eq!(adopt.recovery().adopted, 1);
    assert_eq!(adopt.installed(), 1);
    // Read back as what it was given: the match of its flow direction, its action.
    let taken = adopt.take_adopted();
    assert_eq!(taken.len(), 1, "{taken:?}");
    let (key, dir) = tcp_key(a, a, 9, 9);
    assert!(taken[0].matches.is_for(&key, dir), "{taken:?}");
    assert_eq!((taken[0].action, taken[0].port), (Action::Pass, 0));
    assert!(adopt.take_adopted().is_empty(), "handed out once");
    let c = Cookie::new(other_owner, 1, tcp_key(a, a, 9, 9).1);
    assert!(adopt.remove(&[c])[0].is_ok());
    drop(adopt);
    let end = tc_show(&dev);
    assert!(end.contains("dst_port 53") && !end.contains("src_port 9"), "{end}");
}

#[test]
fn vlan_qinq_ipv6_and_mark_rules_match_their_traffic() {
    if !in_vm("vlan_qinq_ipv6_and_mark_rules_match_their_traffic") {
        return;
    }
    let pair = Pair::new("vq", 38);
    let ns = &pair.ns_a;
    // A's side: a VLAN 100 interface, a QinQ 300/400 interface (802.1ad
    // outside, 802.1Q inside), and IPv6 on the plain interface.
    for cmd in [
        "link add link a0 name a0.100 type vlan id 100",
        "addr add 10.138.100.1/24 dev a0.100",
        "link set a0.100 up",
        "neigh replace 10.138.100.2 lladdr 02:00:00:00:01:02 dev a0.100 nud permanent",
        "link add link a0 name a0.s300 type vlan proto 802.1ad id 300",
        "link set a0.s300 up",
        "link add link a0.s300 name a0.q400 type vlan proto 802.1Q id 400",
        "addr add 10.138.200.1/24 dev a0.q400",
        "link set a0.q400 up",
        "neigh replace 10.138.200.2 lladdr 02:00:00:00:02:02 dev a0.q400 nud permanent",
    ] {
        sh(&format!("ip -n {ns} {cmd}"));
    }
    sh(&format!("ip netns exec {ns} sysctl -qw net.ipv6.conf.all.disable_ipv6=0 net.ipv6.conf.a0.disable_ipv6=0"));
    sh(&format!("ip -n {ns} addr add fd00:38::1/64 dev a0 nodad"));
    sh(&format!("ip -n {ns} neigh replace fd00:38::2 lladdr 02:00:00:00:03:02 dev a0 nud permanent"));

    let owner = 0x2000;
    let mut be = TcBackend::open(TcConfig::new(vec![pair.host_a.clone()], owner)).unwrap();
    let v4 = |a: [u8; 4]| Ipv4Addr::from(a);
    let key = |src: [u8; 16], dst: [u8; 16], v6: bool, outer: u16, inner: u16| {
        FlowKey::canonical(src, dst, 3000, 4000, 17, v6, outer, inner, 0)
    };
    let b4 = |a: Ipv4Addr| flowtable_sw::key::v4_bytes(a);
    let (a100, b100) = (v4([10, 138, 100, 1]), v4([10, 138, 100, 2]));
    let (aqq, bqq) = (v4([10, 138, 200, 1]), v4([10, 138, 200, 2]));
    let a6: std::net::Ipv6Addr = "fd00:38::1".parse().unwrap();
    let b6: std::net::Ipv6Addr = "fd00:38::2".parse().unwrap();
    let vlan = spec(owner, 1, key(b4(a100), b4(b100), false, 100, 0), Action::Drop, PlacementPolicy::Software);
    let vlan_other = spec(owner, 2, key(b4(a100), b4(b100), false, 101, 0), Action::Drop, PlacementPolicy::Software);
    let untagged = spec(owner, 3, key(b4(a100), b4(b100), false, 0, 0), Action::Drop, PlacementPolicy::Software);
    let qinq = spec(owner, 4, key(b4(aqq), b4(bqq), false, 300, 400), Action::Drop, PlacementPolicy::Software);
    let qinq_other = spec(owner, 5, key(b4(aqq), b4(bqq), false, 300, 401), Action::Drop, PlacementPolicy::Software);
    let v6 = spec(
        owner,
        6,
        key(a6.octets(), b6.octets(), true, 0, 0),
        Action::Mark { mark: 0x77 },
        PlacementPolicy::Software,
    );
    let rules = [vlan, vlan_other, untagged, qinq, qinq_other, v6];
    let out = be.install(&rules);
    for (r, o) in rules.iter().zip(&out) {
        assert_eq!(installed(o), Placement::KernelSoftware, "{:?}", r.matches.key);
    }
    let send = |src: std::net::IpAddr, dst: std::net::IpAddr, n: usize| {
        let ns_a = pair.ns_a.clone();
        std::thread::spawn(move || {
            enter_netns(&ns_a);
            let s = UdpSocket::bind((src, 3000)).expect("bind");
            for _ in 0..n {
                s.send_to(&[7u8; 50], (dst, 4000)).expect("send");
                std::thread::sleep(Duration::from_millis(2));
            }
        })
        .join()
        .unwrap();
    };
    send(a100.into(), b100.into(), 6);
    send(aqq.into(), bqq.into(), 4);
    send(a6.into(), b6.into(), 3);
    std::thread::sleep(Duration::from_millis(200));
    let mut all = Vec::new();
    be.read_counters(&mut all).unwrap();
    let count = |r: &RuleSpec| all.iter().find(|(c, _)| *c == r.cookie).map(|(_, s)| s.packets).unwrap();
    let bytes = |r: &RuleSpec| all.iter().find(|(c, _)| *c == r.cookie).map(|(_, s)| s.bytes).unwrap();
    // Bytes as on the wire: 50 of data, UDP 8, IP 20 (40 for v6), Ethernet 14, a tag 4 each.
    assert_eq!(bytes(&vlan), 6 * (50 + 8 + 20 + 14 + 4));
    assert_eq!(bytes(&qinq), 4 * (50 + 8 + 20 + 14 + 8));
    assert_eq!(bytes(&v6), 3 * (50 + 8 + 40 + 14));
    assert_eq!(count(&vlan), 6, "802.1Q 100");
    assert_eq!(count(&vlan_other), 0, "802.1Q 101 saw nothing");
    assert_eq!(count(&untagged), 0, "the untagged rule ignores tagged frames");
    assert_eq!(count(&qinq), 4, "802.1ad 300 / 802.1Q 400");
    assert_eq!(count(&qinq_other), 0);
    assert_eq!(count(&v6), 3, "IPv6");
    let show = sh(&format!("tc filter show dev {} ingress", pair.host_a));
    assert!(show.contains("skbedit") && show.contains("mark 119"), "mark action in place:\n{show}");
    assert!(show.contains("vlan_id 100") && show.contains("cvlan_id 400"), "{show}");
}
