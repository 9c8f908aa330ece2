//! Helpers for the real-kernel tests of the root package: shell commands,
//! namespaces joined by veth pairs, UDP traffic sent from inside them.

#![allow(dead_code)]

use std::fs::File;
use std::io::Write;
use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::Duration;

/// True inside the VM suite; elsewhere says the test was skipped.
pub fn in_vm(test: &str) -> bool {
    if std::env::var("FLOWTABLE_VM").as_deref() == Ok("1") {
        println!("--- {test}");
        return true;
    }
    // Straight to stderr: the harness captures print! output of passing tests.
    let _ = writeln!(
        std::io::stderr(),
        "skipped: {test}: needs its own kernel (tests/vm/run.sh runs it with FLOWTABLE_VM=1)"
    );
    false
}

pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("spawn sh");
    if !out.status.success() {
        panic!(
            "`{cmd}` failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn sh_quiet(cmd: &str) {
    let _ = Command::new("sh").arg("-c").arg(cmd).stdout(Stdio::null()).stderr(Stdio::null()).status();
}

/// Moves the calling thread into a named network namespace.
pub fn enter_netns(ns: &str) {
    let f = File::open(format!("/run/netns/{ns}")).expect("open netns");
    // SAFETY: setns on a valid namespace fd affects only this thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}

/// Namespaces A and B, each behind a veth pair whose host end (`host_a`,
/// `host_b`) sits unconnected in the root namespace: packets cross only
/// where a tc rule carries them. Neighbours are static (no ARP).
pub struct Pair {
    pub ns_a: String,
    pub ns_b: String,
    pub host_a: String,
    pub host_b: String,
    pub ip_a: Ipv4Addr,
    pub ip_b: Ipv4Addr,
}

impl Pair {
    pub fn new(tag: &str, subnet: u8) -> Pair {
        let p = Pair {
            ns_a: format!("ftA{tag}"),
            ns_b: format!("ftB{tag}"),
            host_a: format!("hA{tag}"),
            host_b: format!("hB{tag}"),
            ip_a: Ipv4Addr::new(10, subnet, 0, 1),
            ip_b: Ipv4Addr::new(10, subnet, 0, 2),
        };
        p.cleanup();
        for (ns, host, peer, ip) in [(&p.ns_a, &p.host_a, "a0", p.ip_a), (&p.ns_b, &p.host_b, "b0", p.ip_b)] {
            sh(&format!("ip netns add {ns}"));
            sh(&format!("ip link add {host} type veth peer name {peer} netns {ns}"));
            sh(&format!("ip link set {host} up"));
            sh(&format!("ip -n {ns} link set lo up"));
            sh(&format!("ip -n {ns} addr add {ip}/24 dev {peer}"));
            sh(&format!("ip -n {ns} link set {peer} up"));
            sh_quiet(&format!("ip netns exec {ns} sysctl -qw net.ipv6.conf.all.disable_ipv6=1"));
        }
        sh_quiet(&format!("sysctl -qw net.ipv6.conf.{}.disable_ipv6=1", p.host_a));
        sh_quiet(&format!("sysctl -qw net.ipv6.conf.{}.disable_ipv6=1", p.host_b));
        let mac_a = sh(&format!("ip netns exec {} cat /sys/class/net/a0/address", p.ns_a)).trim().to_string();
        let mac_b = sh(&format!("ip netns exec {} cat /sys/class/net/b0/address", p.ns_b)).trim().to_string();
        sh(&format!("ip -n {} neigh replace {} lladdr {mac_b} dev a0 nud permanent", p.ns_a, p.ip_b));
        sh(&format!("ip -n {} neigh replace {} lladdr {mac_a} dev b0 nud permanent", p.ns_b, p.ip_a));
        p
    }

    pub fn cleanup(&self) {
        sh_quiet(&format!("ip netns del {}", self.ns_a));
        sh_quiet(&format!("ip netns del {}", self.ns_b));
        sh_quiet(&format!("ip link del {}", self.host_a));
        sh_quiet(&format!("ip link del {}", self.host_b));
    }

    /// Sends `count` datagrams of `payload` bytes from A (`src` address and
    /// port) to `dst`, `gap` apart.
    pub fn send_udp(&self, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), count: usize, payload: usize, gap: Duration) {
        send_udp_from(&self.ns_a, src, dst, count, payload, gap);
    }
}

/// Sends `count` datagrams of `payload` bytes from inside namespace `ns`
/// (`src` address and port) to `dst`, `gap` apart.
pub fn send_udp_from(
    ns: &str,
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    count: usize,
    payload: usize,
    gap: Duration,
) {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter_netns(&ns);
        let s = UdpSocket::bind(src).expect("bind sender");
        let data = vec![0x5au8; payload];
        for _ in 0..count {
            s.send_to(&data, dst).expect("send");
            std::thread::sleep(gap);
        }
    })
    .join()
    .unwrap();
}

impl Pair {
    /// The software path of an inline pair: a catch-all tc filter on each
    /// host end's ingress (prio 61000, below ours) redirects what comes in
    /// to the other end.
    pub fn redirect_between_hosts(&self) {
        for (from, to) in [(&self.host_a, &self.host_b), (&self.host_b, &self.host_a)] {
            sh(&format!("tc qdisc add dev {from} clsact"));
            sh(&format!(
                "tc filter add dev {from} ingress prio 61000 protocol ip flower action mirred egress redirect dev {to}"
            ));
        }
    }

    /// One packet per segment on all four ends, so the tap, the rules and
    /// a capture count the same packets (tc counts a GSO packet as its
    /// segments).
    pub fn one_packet_per_segment(&self) {
        for (ns, dev) in
            [(Some(&self.ns_a), "a0"), (Some(&self.ns_b), "b0"), (None, &*self.host_a), (None, &*self.host_b)]
        {
            let exec = ns.map(|n| format!("ip netns exec {n} ")).unwrap_or_default();
            sh(&format!("{exec}ethtool -K {dev} tso off gso off gro off"));
        }
    }

    /// Whether `count` pings from A to B are all answered.
    pub fn ping(&self, count: u32) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.ns_a, "ping", "-q", "-c", &count.to_string(), "-i", "0.2", "-W", "2"])
            .arg(self.ip_b.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// The flow key (and direction) of UDP from A's `sport` to B's `dport`
    /// arriving on port `ingress`.
    pub fn udp_key(&self, sport: u16, dport: u16, ingress: u8) -> (flowtable_sw::FlowKey, flowtable_sw::Direction) {
        let (mut key, dir) = flowtable_sw::FlowKey::from_v4(self.ip_a, self.ip_b, sport, dport, 17);
        key.zone = ingress;
        (key, dir)
    }

    /// Sends `count` datagrams from A's address to B's (`ports`: source,
    /// destination) while B listens; returns how many B received.
    pub fn udp_counted(&self, (sport, dport): (u16, u16), count: usize, payload: usize, gap: Duration) -> usize {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (ns_b, ip_b) = (self.ns_b.clone(), self.ip_b);
        let receiver = std::thread::spawn(move || {
            enter_netns(&ns_b);
            let s = UdpSocket::bind((ip_b, dport)).expect("bind receiver");
            s.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
            ready_tx.send(()).unwrap();
            let mut buf = [0u8; 4096];
            let mut n = 0;
            while s.recv(&mut buf).is_ok() {
                n += 1;
            }
            n
        });
        ready_rx.recv().unwrap();
        self.send_udp((self.ip_a, sport), (self.ip_b, dport), count, payload, gap);
        receiver.join().unwrap()
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// A host that is itself the server, on its own interface: a client
/// namespace behind a veth pair whose host end (`dev`, in the root
/// namespace) carries the server's address, so what the client sends
/// arrives on `dev` and what the server answers leaves by it. Neighbours
/// are static (no ARP).
pub struct OwnPort {
    pub ns: String,
    pub dev: String,
    pub ip_client: Ipv4Addr,
    pub ip_server: Ipv4Addr,
}

impl OwnPort {
    pub fn new(tag: &str, subnet: u8) -> OwnPort {
        let p = OwnPort {
            ns: format!("ftC{tag}"),
            dev: format!("hS{tag}"),
            ip_client: Ipv4Addr::new(10, subnet, 0, 1),
            ip_server: Ipv4Addr::new(10, subnet, 0, 2),
        };
        p.cleanup();
        let (ns, dev) = (&p.ns, &p.dev);
        sh(&format!("ip netns add {ns}"));
        sh(&format!("ip link add {dev} type veth peer name c0 netns {ns}"));
        sh_quiet(&format!("ip netns exec {ns} sysctl -qw net.ipv6.conf.all.disable_ipv6=1"));
        sh_quiet(&format!("sysctl -qw net.ipv6.conf.{dev}.disable_ipv6=1"));
        sh(&format!("ip -n {ns} link set lo up"));
        sh(&format!("ip -n {ns} addr add {}/24 dev c0", p.ip_client));
        sh(&format!("ip -n {ns} link set c0 up"));
        sh(&format!("ip addr add {}/24 dev {dev}", p.ip_server));
        sh(&format!("ip link set {dev} up"));
        let mac_c = sh(&format!("ip netns exec {ns} cat /sys/class/net/c0/address")).trim().to_string();
        let mac_s = sh(&format!("cat /sys/class/net/{dev}/address")).trim().to_string();
        sh(&format!("ip -n {ns} neigh replace {} lladdr {mac_s} dev c0 nud permanent", p.ip_server));
        sh(&format!("ip neigh replace {} lladdr {mac_c} dev {dev} nud permanent", p.ip_client));
        p
    }

    pub fn cleanup(&self) {
        sh_quiet(&format!("ip netns del {}", self.ns));
        sh_quiet(&format!("ip link del {}", self.dev));
    }
}

impl Drop for OwnPort {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// The TCP packets to or from a port in a capture, by sender.
#[derive(Debug, Default)]
pub struct Tally {
    pub from_a: u64,
    pub from_b: u64,
    /// Frame bytes (Ethernet header on), as the flow records count them.
    pub bytes_a: u64,
    pub bytes_b: u64,
    /// Each packet as (sender, flags, sequence number, payload bytes), to
    /// tell on a mismatch which packet one side has and the other lacks.
    pub seen: Vec<String>,
}

/// The TCP packets to or from `port` in a capture's frames (Ethernet,
/// IPv4), counted by sender (`a`, `b`).
pub fn tcp_tally(frames: &[Vec<u8>], port: u16, a: Ipv4Addr, b: Ipv4Addr) -> Tally {
    let mut t = Tally::default();
    for d in frames {
        // Ethernet, then IPv4 (the source address at 14 + 12), then TCP.
        let is_ipv4_tcp = d.len() >= 54 && d[12..14] == [0x08, 0x00] && d[23] == 6;
        if !is_ipv4_tcp {
            continue;
        }
        let ihl = usize::from(d[14] & 0x0f) * 4;
        let tcp = 14 + ihl;
        let at_port = |at: usize| d.get(at..at + 2) == Some(&port.to_be_bytes()[..]);
        if !(at_port(tcp) || at_port(tcp + 2)) {
            continue;
        }
        let from = match d.get(26..30) {
            Some(src) if src == a.octets() => {
                t.from_a += 1;
                t.bytes_a += d.len() as u64;
                'A'
            }
            Some(src) if src == b.octets() => {
                t.from_b += 1;
                t.bytes_b += d.len() as u64;
                'B'
            }
            _ => continue,
        };
        let total = usize::from(u16::from_be_bytes([d[16], d[17]]));
        if let Some(h) = d.get(tcp..tcp + 20) {
            let seq = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
            let payload = total.saturating_sub(ihl + usize::from(h[12] >> 4) * 4);
            t.seen.push(format!("{from} flags {:#04x} seq {seq} len {payload}", h[13]));
        }
    }
    t
}

/// A plain AF_PACKET socket on one device of a namespace, independent of
/// the code under test. It is open and bound when [`RawCapture::start`]
/// returns, so no packet sent afterwards is missed (dumpcap announces
/// "Capturing on" before it opens the device, which lost a connection's
/// first packets under load).
pub struct RawCapture {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(Vec<Vec<u8>>, u32)>,
}

impl RawCapture {
    pub fn start(ns: &str, dev: &str) -> RawCapture {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (ns, dev, stopping) = (ns.to_string(), dev.to_string(), stop.clone());
        let thread = std::thread::spawn(move || {
            enter_netns(&ns);
            let proto = (libc::ETH_P_ALL as u16).to_be();
            // SAFETY: plain socket calls on a descriptor this thread owns;
            // every pointer passed points at a live local of the size given.
            unsafe {
                let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto));
                assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
                let name = std::ffi::CString::new(dev.as_str()).unwrap();
                let ifindex = libc::if_nametoindex(name.as_ptr());
                assert!(ifindex > 0, "no device {dev} in {ns}");
                let mut addr: libc::sockaddr_ll = std::mem::zeroed();
                addr.sll_family = libc::AF_PACKET as u16;
                addr.sll_protocol = proto;
                addr.sll_ifindex = ifindex as i32;
                let rc = libc::bind(
                    fd,
                    &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                );
                assert_eq!(rc, 0, "bind to {dev}: {}", std::io::Error::last_os_error());
                let set = |opt: i32, value: *const libc::c_void, len: usize| {
                    let rc = libc::setsockopt(fd, libc::SOL_SOCKET, opt, value, len as libc::socklen_t);
                    assert_eq!(rc, 0, "setsockopt {opt}: {}", std::io::Error::last_os_error());
                };
                let buffer: libc::c_int = 32 << 20;
                set(
                    libc::SO_RCVBUFFORCE,
                    &buffer as *const libc::c_int as *const _,
                    std::mem::size_of::<libc::c_int>(),
                );
                let timeout = libc::timeval { tv_sec: 0, tv_usec: 50_000 };
                set(
                    libc::SO_RCVTIMEO,
                    &timeout as *const libc::timeval as *const _,
                    std::mem::size_of::<libc::timeval>(),
                );
                ready_tx.send(()).unwrap();
                let mut frames = Vec::new();
                let mut buf = vec![0u8; 65536];
                loop {
                    let n = libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0);
                    if n > 0 {
                        frames.push(buf[..n as usize].to_vec());
                    } else if stopping.load(Ordering::Acquire) {
                        break;
                    }
                }
                let mut stats: libc::tpacket_stats = std::mem::zeroed();
                let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
                let rc = libc::getsockopt(
                    fd,
                    libc::SOL_PACKET,
                    libc::PACKET_STATISTICS,
                    &mut stats as *mut libc::tpacket_stats as *mut libc::c_void,
                    &mut len,
                );
                assert_eq!(rc, 0, "PACKET_STATISTICS: {}", std::io::Error::last_os_error());
                libc::close(fd);
                (frames, stats.tp_drops)
            }
        });
        ready_rx.recv().expect("the capture thread failed to open its socket");
        RawCapture { stop, thread }
    }

    /// Stops once the socket is drained; the frames seen (both directions,
    /// Ethernet first) and the count the kernel dropped for want of room.
    pub fn finish(self) -> (Vec<Vec<u8>>, u32) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        self.thread.join().expect("capture thread")
    }
}
