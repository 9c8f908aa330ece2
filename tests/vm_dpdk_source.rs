//! The DPDK packet source against the tap PMD, inside the test VM: frames
//! the kernel sends out of `dtap0` come out of `DpdkSource` as Ethernet
//! `RawPacket`s that parse to their flows, with no mark (no MARK rule), and
//! setting the stop flag ends the stream. Skips unless FLOWTABLE_VM=1.

#![cfg(feature = "dpdk")]

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowtable::source::dpdk::DpdkSource;
use flowtable::source::PacketSource;
use flowtable_hw::dpdk::{DpdkConfig, DpdkPortConfig, DpdkRuntime, FlowApi};
use flowtable_sw::{FlowKey, LinkType, PortMap};

const HOST: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 2);

fn sh(cmd: &str) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
    assert!(out.status.success(), "`{cmd}`: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn tap_frames_come_out_as_raw_packets() {
    if std::env::var("FLOWTABLE_VM").as_deref() != Ok("1") {
        eprintln!("SKIPPED: DPDK source test runs only in the test VM (FLOWTABLE_VM=1)");
        return;
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        sh("mkdir -p /dev/net && mknod /dev/net/tun c 10 200");
    }
    let cfg = DpdkConfig {
        eal_args: ["--no-huge", "--no-pci", "-m", "128", "--vdev=net_tap1,iface=dtap1", "-l", "0"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        ports: vec![DpdkPortConfig { device: "net_tap1".into(), peer: None }],
        rx_descriptors: 256,
        tx_descriptors: 256,
        mbufs: 2047,
        mbuf_cache: 64,
        api: FlowApi::Sync,
        ..DpdkConfig::default()
    };
    let rt = DpdkRuntime::start(&cfg).expect("start tap port");
    sh("ip link set dtap1 up && ip addr replace 10.78.0.1/24 dev dtap1 && \
        ip neigh replace 10.78.0.2 lladdr 02:00:00:00:78:02 dev dtap1 nud permanent && \
        sysctl -qw net.ipv6.conf.dtap1.disable_ipv6=1");
    let stop = Arc::new(AtomicBool::new(false));
    let mut src = DpdkSource::all_queues(&rt, stop.clone()).unwrap();
    // Drain what the link coming up sent.
    let end = Instant::now() + Duration::from_millis(300);
    while Instant::now() < end {
        if src.try_next().is_none() {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    let sock = UdpSocket::bind(SocketAddrV4::new(HOST, 43000)).unwrap();
    for i in 0..10u8 {
        sock.send_to(&vec![i; 100 + i as usize], SocketAddrV4::new(PEER, 7000)).unwrap();
    }
    let (want, _) = FlowKey::from_v4(HOST, PEER, 43000, 7000, 17);
    let mut got = Vec::new();
    let end = Instant::now() + Duration::from_secs(2);
    while got.len() < 10 && Instant::now() < end {
        let Some((pkt, mark)) = src.try_next() else {
            std::thread::sleep(Duration::from_millis(2));
            continue;
        };
        assert_eq!(pkt.link, Some(LinkType::Ethernet));
        assert_eq!(pkt.linktype, 1);
        assert_eq!(pkt.ingress, 0);
        assert_eq!(mark, None, "no MARK rule, no mark");
        assert_eq!(pkt.mark, None);
        if let Ok(info) = pkt.parse(&PortMap::unpaired()) {
            if info.key == want {
                got.push(pkt.wire_len);
            }
        }
    }
    // Ethernet 14 + IPv4 20 + UDP 8 + payload.
    let expect: Vec<u32> = (0..10).map(|i| 14 + 20 + 8 + 100 + i).collect();
    println!("frames of the UDP flow: {got:?}");
    assert_eq!(got, expect);
    assert_eq!(
        src.capture_losses(),
        Some(flowtable::source::CaptureLosses { dropped: 0, unordered: 0 }),
        "the port's stats read back, nothing dropped"
    );

    // next_packet blocks while the queue is empty and ends once stopped.
    let stopper = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            stop.store(true, Ordering::Relaxed);
        })
    };
    let t0 = Instant::now();
    // Stray kernel frames may still come; the loop ends only with the stop flag.
    while src.next_packet().unwrap().is_some() {}
    stopper.join().unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(150), "next_packet returned before the stop flag");
    drop(src);
    rt.stop();
}
