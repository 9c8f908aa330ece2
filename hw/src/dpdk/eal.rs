//! DPDK start-up: the EAL (once per process), the mbuf pool and the
//! configured ethdev ports, shared by the rte_flow backend and the DPDK
//! packet source.

use std::ffi::{CStr, CString};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use dpdk_sys as sys;

use super::config::{DpdkConfig, FlowApi};
use super::error::{strerror, FlowError};

/// The EAL can be initialised once per process, even after a failure; the
/// first outcome (and its arguments) is kept here.
static EAL: Mutex<Option<Result<Vec<String>, String>>> = Mutex::new(None);
static POOL_SEQ: AtomicU32 = AtomicU32::new(0);
/// Ports started by a runtime of this process (stopped before reconfiguring).
static STARTED: Mutex<Vec<u16>> = Mutex::new(Vec::new());

fn mark_started(id: u16, started: bool) {
    let mut s = STARTED.lock().unwrap_or_else(|p| p.into_inner());
    s.retain(|&p| p != id);
    if started {
        s.push(id);
    }
}

fn was_started(id: u16) -> bool {
    STARTED.lock().unwrap_or_else(|p| p.into_inner()).contains(&id)
}

/// Starts the EAL with `args` (no program name), or checks that it already
/// runs with the same arguments.
pub fn eal_init(args: &[String]) -> Result<(), String> {
    let mut state = EAL.lock().unwrap_or_else(|p| p.into_inner());
    match &*state {
        Some(Ok(prev)) if prev == args => return Ok(()),
        Some(Ok(prev)) => {
            return Err(format!("DPDK EAL already started with other arguments {prev:?} (asked for {args:?})"))
        }
        Some(Err(e)) => return Err(e.clone()),
        None => {}
    }
    let mut owned: Vec<CString> = Vec::with_capacity(args.len() + 1);
    owned.push(CString::new("flowtable").expect("no NUL"));
    for a in args {
        match CString::new(a.as_str()) {
            Ok(c) => owned.push(c),
            Err(_) => return Err(format!("EAL argument {a:?} contains a NUL byte")),
        }
    }
    // The EAL may keep pointers into argv, so the strings live for the process.
    let owned: &'static mut [CString] = Box::leak(owned.into_boxed_slice());
    let argv: &'static mut [*mut core::ffi::c_char] =
        Box::leak(owned.iter().map(|c| c.as_ptr() as *mut core::ffi::c_char).collect::<Vec<_>>().into_boxed_slice());
    // SAFETY: `argv` holds `argv.len()` pointers to NUL-terminated strings, all leaked so they outlive the
    // EAL that may keep them; it only reorders the (mutable) pointer array. The `EAL` lock held here makes
    // this the process's one rte_eal_init call, as DPDK requires.
    let rc = unsafe { sys::rte_eal_init(argv.len() as i32, argv.as_mut_ptr()) };
    let outcome = if rc < 0 {
        // SAFETY: reads this thread's rte_errno, which the failed rte_eal_init just set; no pointers involved.
        let errno = unsafe { sys::ft_rte_errno() };
        Err(format!("rte_eal_init({args:?}) failed: {} (errno {errno})", strerror(errno)))
    } else {
        Ok(args.to_vec())
    };
    *state = Some(outcome.clone());
    outcome.map(|_| ())
}

/// Whether the template API is ready on a port, or why not.
#[derive(Debug, Clone)]
pub enum TemplateState {
    /// Not asked for (`api: sync`).
    Off,
    Ready {
        queue_size: u32,
    },
    /// The PMD refused rte_flow_info_get / rte_flow_configure.
    Refused(FlowError),
}

/// One started ethdev port.
#[derive(Debug, Clone)]
pub struct PortInfo {
    /// flowtable's port index.
    pub index: u8,
    /// DPDK port id.
    pub id: u16,
    pub device: String,
    pub driver: String,
    pub rx_queues: u16,
    pub tx_queues: u16,
    pub peer: Option<u8>,
    pub template: TemplateState,
    /// Flows are spread over the rx queues by a symmetric RSS hash.
    pub rss: bool,
}

/// The RSS hash types to spread by: IPv4 and IPv6, TCP and UDP
/// (`RTE_ETH_RSS_IP | RTE_ETH_RSS_TCP | RTE_ETH_RSS_UDP`; bindgen does not
/// carry these 64-bit macros, so their values are written out here).
const RSS_IP_TCP_UDP: u64 = 41868 | 66576 | 133152;

/// A Toeplitz key of `0x6d5a` repeated: with it the hash of (src, dst,
/// sport, dport) equals that of (dst, src, dport, sport), as Woo and Park
/// showed ("Scalable TCP Session Monitoring with Symmetric Receive-side
/// Scaling"), so both directions of a flow land on one queue. `len` is the
/// device's key size (40 bytes when it says none).
pub fn symmetric_rss_key(len: u8) -> Vec<u8> {
    let len = if len == 0 { 40 } else { len as usize };
    (0..len).map(|i| if i % 2 == 0 { 0x6d } else { 0x5a }).collect()
}

/// The EAL, the mbuf pool and the started ports.
pub struct DpdkRuntime {
    pub ports: Vec<PortInfo>,
    pool: *mut sys::rte_mempool,
    started: Mutex<bool>,
}

// The pool pointer is only handed to DPDK calls, which are thread-safe for
// pools; ports are driven by one thread per queue.
// SAFETY: the only field that isn't Send is the pool pointer; the mbuf pool (ring_mp_mc ops) may be
// used from any thread, and ethdev ports are identified by id, so nothing is tied to this thread.
unsafe impl Send for DpdkRuntime {}
// SAFETY: &self only reads `ports`, copies the pool pointer out (never dereferenced here), reads port
// stats and stops the ports under the `started` lock: no Rust-side state changes without a lock.
unsafe impl Sync for DpdkRuntime {}

fn check(rc: i32, what: impl Fn() -> String) -> Result<(), String> {
    if rc < 0 {
        Err(format!("{}: {} (errno {})", what(), strerror(-rc), -rc))
    } else {
        Ok(())
    }
}

impl DpdkRuntime {
    /// Starts the EAL and every configured port.
    pub fn start(cfg: &DpdkConfig) -> Result<Arc<DpdkRuntime>, String> {
        cfg.check()?;
        eal_init(&cfg.eal_args)?;
        let seq = POOL_SEQ.fetch_add(1, Ordering::Relaxed);
        let pool_name = CString::new(format!("ft_mbufs{seq}")).expect("no NUL");
        // SAFETY: no arguments; the EAL was initialised above, and this returns the calling thread's socket.
        let socket = unsafe { sys::rte_socket_id() } as i32;
        // SAFETY: `pool_name` is a NUL-terminated CString that lives across the call (DPDK copies the name);
        // the rest are plain values, and the EAL is initialised, which pool creation requires.
        let pool = unsafe {
            sys::rte_pktmbuf_pool_create(
                pool_name.as_ptr(),
                cfg.mbufs,
                cfg.mbuf_cache,
                0,
                sys::RTE_MBUF_DEFAULT_BUF_SIZE as u16,
                socket,
            )
        };
        if pool.is_null() {
            // SAFETY: reads this thread's rte_errno, set by the failed rte_pktmbuf_pool_create just above.
            let errno = unsafe { sys::ft_rte_errno() };
            return Err(format!("rte_pktmbuf_pool_create({} mbufs): {} (errno {errno})", cfg.mbufs, strerror(errno)));
        }
        let mut ports = Vec::with_capacity(cfg.ports.len());
        for (index, pc) in cfg.ports.iter().enumerate() {
            let name =
                CString::new(pc.device.as_str()).map_err(|_| format!("backend.ports[{index}].device: NUL byte"))?;
            let mut id = 0u16;
            // SAFETY: `name` is a NUL-terminated CString alive across the call; `id` is a live u16 it writes.
            let rc = unsafe { sys::rte_eth_dev_get_port_by_name(name.as_ptr(), &mut id) };
            if rc < 0 {
                return Err(format!(
                    "backend.ports[{index}].device: no ethdev named {:?} (EAL arguments {:?}; {} ports available)",
                    pc.device,
                    cfg.eal_args,
                    // SAFETY: no arguments; it only counts the ethdevs the initialised EAL probed.
                    unsafe { sys::rte_eth_dev_count_avail() }
                ));
            }
            let port = Self::setup_port(cfg, index as u8, id, pool)?;
            ports.push(port);
        }
        Ok(Arc::new(DpdkRuntime { ports, pool, started: Mutex::new(true) }))
    }

    fn setup_port(cfg: &DpdkConfig, index: u8, id: u16, pool: *mut sys::rte_mempool) -> Result<PortInfo, String> {
        let device = &cfg.ports[index as usize].device;
        let mut info: sys::rte_eth_dev_info = Default::default();
        // SAFETY: `info` is a live, default-initialised struct the call fills; `id` came from
        // rte_eth_dev_get_port_by_name (an invalid id would only get -ENODEV).
        check(unsafe { sys::rte_eth_dev_info_get(id, &mut info) }, || format!("{device}: rte_eth_dev_info_get"))?;
        let driver = if info.driver_name.is_null() {
            String::new()
        } else {
            // SAFETY: non-null (checked above), it points to the driver's static NUL-terminated name, copied here.
            unsafe { CStr::from_ptr(info.driver_name) }.to_string_lossy().into_owned()
        };
        if cfg.rx_queues > info.max_rx_queues || cfg.tx_queues > info.max_tx_queues {
            return Err(format!(
                "{device} ({driver}): {} rx / {} tx queues asked, the port has at most {} / {}",
                cfg.rx_queues, cfg.tx_queues, info.max_rx_queues, info.max_tx_queues
            ));
        }
        // Only a stopped port can be reconfigured: one an earlier runtime of
        // this process started is stopped first.
        if was_started(id) {
            // SAFETY: `id` is a valid port id, which is all the call needs; it runs on the control thread before
            // any queue of this runtime exists, to let the port be reconfigured.
            unsafe { sys::rte_eth_dev_stop(id) };
            mark_started(id, false);
        }
        let mut conf: sys::rte_eth_conf = Default::default();
        // Several rx queues (one per worker): spread flows by a symmetric
        // RSS hash, so both directions of a flow reach the same queue.
        let rss_hf = RSS_IP_TCP_UDP & info.flow_type_rss_offloads;
        let mut key = symmetric_rss_key(info.hash_key_size);
        let rss = cfg.rx_queues > 1 && rss_hf != 0;
        if rss {
            conf.rxmode.mq_mode = sys::rte_eth_rx_mq_mode::RTE_ETH_MQ_RX_RSS;
            conf.rx_adv_conf.rss_conf =
                sys::rte_eth_rss_conf { rss_key: key.as_mut_ptr(), rss_key_len: key.len() as u8, rss_hf };
        } else if cfg.rx_queues > 1 {
            tracing::info!(port = %device, driver = %driver, "no RSS offload: the device spreads flows over its queues itself");
        }
        // SAFETY: `conf` and the key it points to live across the call,
        // which copies what it keeps; `id` is a valid port id.
        check(unsafe { sys::rte_eth_dev_configure(id, cfg.rx_queues, cfg.tx_queues, &conf) }, || {
            format!("{device} ({driver}): rte_eth_dev_configure")
        })?;
        let template = if cfg.api == FlowApi::Sync {
            TemplateState::Off
        } else {
            match super::template::configure_port(id, &cfg.template) {
                Ok(queue_size) => TemplateState::Ready { queue_size },
                Err(e) if cfg.api == FlowApi::Template => {
                    return Err(format!("{device} ({driver}): the template flow API was asked for but refused: {e}"))
                }
                Err(e) => {
                    tracing::info!(port = %device, driver = %driver, error = %e, "template flow API refused; using the sync API");
                    TemplateState::Refused(e)
                }
            }
        };
        // SAFETY: takes only the port id; an invalid id gives a negative socket, handled below.
        let socket = unsafe { sys::rte_eth_dev_socket_id(id) };
        let socket = if socket < 0 { 0 } else { socket as u32 };
        for q in 0..cfg.rx_queues {
            // SAFETY: port `id` is configured with `cfg.rx_queues` queues and stopped, `q` is below that; a null
            // rx_conf asks for the PMD's defaults; `pool` is a live pool that is never freed, so the PMD may keep it.
            check(
                unsafe { sys::rte_eth_rx_queue_setup(id, q, cfg.rx_descriptors, socket, core::ptr::null(), pool) },
                || format!("{device} ({driver}): rx queue {q} setup"),
            )?;
        }
        for q in 0..cfg.tx_queues {
            // SAFETY: port `id` is configured with `cfg.tx_queues` queues and stopped, `q` is below that; a null
            // tx_conf asks for the PMD's defaults, as rte_eth_tx_queue_setup allows.
            check(
                unsafe { sys::rte_eth_tx_queue_setup(id, q, cfg.tx_descriptors, socket, core::ptr::null()) },
                || format!("{device} ({driver}): tx queue {q} setup"),
            )?;
        }
        // SAFETY: `id` is a valid port, configured and with every rx and tx queue set up just above.
        check(unsafe { sys::rte_eth_dev_start(id) }, || format!("{device} ({driver}): rte_eth_dev_start"))?;
        mark_started(id, true);
        if cfg.promiscuous {
            // SAFETY: takes only the id of the port just started.
            let rc = unsafe { sys::rte_eth_promiscuous_enable(id) };
            if rc < 0 {
                tracing::warn!(port = %device, error = %strerror(-rc), "promiscuous mode refused");
            }
        }
        Ok(PortInfo {
            index,
            id,
            device: device.clone(),
            driver,
            rx_queues: cfg.rx_queues,
            tx_queues: cfg.tx_queues,
            peer: cfg.ports[index as usize].peer,
            template,
            rss,
        })
    }

    pub fn port(&self, index: u8) -> Option<&PortInfo> {
        self.ports.get(index as usize)
    }

    pub fn pool(&self) -> *mut sys::rte_mempool {
        self.pool
    }

    /// Frames the ports received but could not deliver, summed over the
    /// ports: no rx descriptor free (`imissed`) or no mbuf (`rx_nombuf`).
    pub fn rx_dropped(&self) -> Result<u64, String> {
        let mut total = 0;
        for p in &self.ports {
            let mut st = sys::rte_eth_stats::default();
            // SAFETY: a valid port id and a stats struct to fill.
            let rc = unsafe { sys::rte_eth_stats_get(p.id, &mut st) };
            check(rc, || format!("rte_eth_stats_get({})", p.device))?;
            total += st.imissed + st.rx_nombuf;
        }
        Ok(total)
    }

    /// Stops the ports (rules stay unless the backend removed them).
    pub fn stop(&self) {
        let mut started = self.started.lock().unwrap_or_else(|p| p.into_inner());
        if *started {
            for p in &self.ports {
                // SAFETY: `p.id` is a port this runtime configured and started; the `started` lock held here makes
                // this its one stop per start.
                let rc = unsafe { sys::rte_eth_dev_stop(p.id) };
                mark_started(p.id, false);
                if rc < 0 {
                    tracing::warn!(port = %p.device, error = %strerror(-rc), "rte_eth_dev_stop failed");
                }
            }
            *started = false;
        }
    }
}

impl Drop for DpdkRuntime {
    fn drop(&mut self) {
        // The pool is left allocated: a stopped port's queues may still hold
        // its mbufs until the port is reconfigured.
        self.stop();
    }
}

/// Starts the EAL with no devices and `memory_mb` of heap for DPDK
/// libraries that need only memory (rte_hash in `flowtable bench table`):
/// on hugepages if enough are free, else on ordinary pages (`--no-huge`,
/// which DPDK 22.11 allows for everything but device DMA). Its main
/// thread may run on any CPU of the machine, not just lcore 0's (the EAL
/// otherwise pins the calling thread, which would skew a comparison run
/// on that thread afterwards). Returns the arguments used.
pub fn eal_init_memory_only(memory_mb: usize) -> Result<Vec<String>, String> {
    let free_huge_mb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let field =
                |name: &str| m.lines().find(|l| l.starts_with(name))?.split_whitespace().nth(1)?.parse::<usize>().ok();
            Some(field("HugePages_Free:")? * field("Hugepagesize:")? / 1024)
        })
        .unwrap_or(0);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut args: Vec<String> =
        ["--no-pci", "--no-telemetry", "--log-level=error"].iter().map(|s| s.to_string()).collect();
    args.push(format!("--lcores=0@(0-{})", cpus - 1));
    // Nothing on disk either way: --in-memory on hugepages; --no-huge
    // implies the legacy memory mode, which refuses --in-memory, so there
    // --no-shconf alone.
    if free_huge_mb < memory_mb {
        args.extend(["--no-huge".to_string(), "--no-shconf".to_string()]);
    } else {
        args.push("--in-memory".into());
    }
    args.push("-m".into());
    args.push(memory_mb.to_string());
    eal_init(&args)?;
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::symmetric_rss_key;

    /// The Toeplitz hash NICs compute for RSS, over `input` with `key`.
    fn toeplitz(key: &[u8], input: &[u8]) -> u32 {
        let mut hash = 0u32;
        let bit = |i: usize| key.get(i / 8).is_some_and(|b| b & (0x80 >> (i % 8)) != 0) as u32;
        // The 32-bit window of the key starting at bit `i`.
        let window = |i: usize| (0..32).fold(0u32, |w, j| w << 1 | bit(i + j));
        for (byte_at, b) in input.iter().enumerate() {
            for k in 0..8 {
                if b & (0x80 >> k) != 0 {
                    hash ^= window(byte_at * 8 + k);
                }
            }
        }
        hash
    }

    #[test]
    fn the_rss_key_hashes_both_directions_of_a_flow_alike() {
        for len in [0u8, 40, 52] {
            let key = symmetric_rss_key(len);
            assert_eq!(key.len(), if len == 0 { 40 } else { len as usize });
            let mut x = 0x1234_5678_9abc_def1u64;
            let mut next = || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            };
            let mut bad = key.clone();
            bad[3] ^= 0x10;
            let mut bad_split = 0;
            for _ in 0..1000 {
                let (a, b, r) = (next().to_be_bytes(), next().to_be_bytes(), next());
                let (sp, dp) = ((r as u16).to_be_bytes(), ((r >> 16) as u16).to_be_bytes());
                // IPv4 + ports, as the NIC lays them out: src, dst, sport, dport.
                let fwd = [&a[..4], &b[..4], &sp, &dp].concat();
                let rev = [&b[..4], &a[..4], &dp, &sp].concat();
                assert_eq!(toeplitz(&key, &fwd), toeplitz(&key, &rev));
                // IPv6 addresses too.
                let (a6, b6) = ([a, b].concat(), [b, a, a].concat()[..16].to_vec());
                let fwd6 = [&a6[..], &b6[..], &sp, &dp].concat();
                let rev6 = [&b6[..], &a6[..], &dp, &sp].concat();
                assert_eq!(toeplitz(&key, &fwd6), toeplitz(&key, &rev6));
                // A key that isn't symmetric is caught by the same check.
                bad_split += (toeplitz(&bad, &fwd) != toeplitz(&bad, &rev)) as u32;
            }
            assert!(bad_split > 100, "the check tells a broken key: {bad_split} of 1000 split");
        }
    }
}
