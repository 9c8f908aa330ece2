//! The work of build.rs when the `bind` feature is on: bindgen over the
//! libdpdk headers found with pkg-config, the C shim, the link flags.

use std::env;
use std::path::PathBuf;
use std::process::Command;

const INSTALL_HINT: &str = "install libdpdk-dev pkg-config libclang-dev \
     (Debian/Ubuntu: `apt-get install libdpdk-dev pkg-config libclang-dev clang`), \
     or point PKG_CONFIG_PATH at the directory holding libdpdk.pc";

/// The DPDK libraries the bindings call into (not everything libdpdk.pc lists).
const LIBS: &[&str] =
    &["rte_eal", "rte_ethdev", "rte_mbuf", "rte_mempool", "rte_ring", "rte_kvargs", "rte_net", "rte_hash"];

pub fn run() {
    println!("cargo:rerun-if-changed=csrc/wrapper.h");
    println!("cargo:rerun-if-changed=csrc/shim.h");
    println!("cargo:rerun-if-changed=csrc/shim.c");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");

    let lib = match pkg_config::Config::new().cargo_metadata(false).probe("libdpdk") {
        Ok(lib) => lib,
        Err(e) => {
            let detail = e.to_string().lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ");
            fail(&format!("libdpdk not found by pkg-config ({detail})"))
        }
    };
    println!("cargo:rustc-env=DPDK_VERSION={}", lib.version);

    // pkg_config::Library drops `-include rte_config.h` and `-march`, both of
    // which the DPDK headers rely on, so the raw flags are read here.
    let cflags = match Command::new("pkg-config").args(["--cflags", "libdpdk"]).output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
        Ok(out) => fail(&format!("pkg-config --cflags libdpdk: {}", String::from_utf8_lossy(&out.stderr).trim())),
        Err(e) => fail(&format!("running pkg-config: {e}")),
    };
    let mut clang_args: Vec<String> = Vec::new();
    let mut it = cflags.split_whitespace();
    while let Some(flag) = it.next() {
        if flag == "-include" {
            if let Some(h) = it.next() {
                clang_args.push("-include".into());
                clang_args.push(h.into());
            }
        } else {
            clang_args.push(flag.into());
        }
    }
    clang_args.push("-DALLOW_EXPERIMENTAL_API".into());

    for path in &lib.link_paths {
        println!("cargo:rustc-link-search=native={}", path.display());
    }
    for l in LIBS {
        println!("cargo:rustc-link-lib=dylib={l}");
    }

    let mut shim = cc::Build::new();
    shim.file("csrc/shim.c").include("csrc").warnings(true);
    for a in &clang_args {
        shim.flag(a);
    }
    shim.compile("flowtable_dpdk_shim");

    let builder = bindgen::Builder::default()
        .header("csrc/wrapper.h")
        .clang_args(clang_args.iter().map(|s| s.as_str()))
        .clang_arg("-Icsrc")
        .allowlist_function("rte_eal_(init|cleanup)")
        .allowlist_function("rte_socket_id|rte_strerror")
        .allowlist_function(
            "rte_eth_(dev_count_avail|dev_configure|rx_queue_setup|tx_queue_setup|dev_start|dev_stop|dev_close\
             |dev_info_get|dev_get_port_by_name|dev_get_name_by_port|dev_socket_id|dev_is_valid_port\
             |macaddr_get|promiscuous_enable|stats_get|find_next)",
        )
        .allowlist_function("rte_flow_.*")
        .allowlist_function("rte_pktmbuf_pool_create|rte_mempool_free")
        .allowlist_function("ft_.*")
        // rte_hash, the peer `flowtable bench table` measures the flow table against.
        .allowlist_function("rte_hash_(create|free|add_key|lookup|lookup_bulk|count)")
        .allowlist_type("rte_hash_parameters")
        .allowlist_function("rte_malloc_get_socket_stats")
        .allowlist_var("RTE_HASH_EXTRA_FLAGS_.*|RTE_HASH_LOOKUP_BULK_MAX")
        .allowlist_type("rte_flow_.*")
        .allowlist_type("rte_(ether|vlan|ipv4|ipv6|tcp|udp|sctp|icmp)_hdr")
        .allowlist_var("RTE_MBUF_F_RX_FDIR(_ID|_FLX)?")
        .allowlist_var("RTE_MBUF_DEFAULT_BUF_SIZE|RTE_PKTMBUF_HEADROOM|RTE_MAX_ETHPORTS")
        .allowlist_var("RTE_ETHER_TYPE_(IPV4|IPV6|VLAN|QINQ)")
        .allowlist_var("RTE_FLOW_PORT_FLAG_.*")
        .allowlist_var("RTE_ETH_RX_OFFLOAD_.*")
        .opaque_type("rte_mbuf")
        // Packed structs holding aligned ones, which Rust can't express; unused here.
        .opaque_type("rte_l2tpv2_.*")
        // Constants in a module per enum: a PMD may write any value into an
        // enum field (rte_flow_error.type), which a Rust enum can't hold.
        .default_enum_style(bindgen::EnumVariation::ModuleConsts)
        .derive_default(true)
        .derive_debug(false)
        .layout_tests(true)
        .generate_comments(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));

    // bindgen panics when libclang can't be loaded; turn that into the same
    // install hint as a missing libdpdk.
    let bindings = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || builder.generate())) {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => fail(&format!("bindgen over the DPDK headers failed: {e}")),
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            fail(&format!("bindgen could not run (is libclang installed?): {msg}"))
        }
    };
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR")).join("bindings.rs");
    bindings.write_to_file(&out).unwrap_or_else(|e| fail(&format!("writing {}: {e}", out.display())));
}

fn fail(what: &str) -> ! {
    eprintln!("error: dpdk-sys (the `dpdk` feature): {what}\n  -> {INSTALL_HINT}");
    println!("cargo:warning=dpdk-sys: {what}; {INSTALL_HINT}");
    std::process::exit(1);
}
