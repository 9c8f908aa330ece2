//! Generates the DPDK bindings with bindgen and compiles the C shim, only
//! with the `bind` feature (which the `dpdk` feature of flowtable /
//! flowtable-hw turns on); it then needs the libdpdk headers (found with
//! pkg-config) and libclang. Without it nothing is built, so workspace-wide
//! builds never need DPDK.

#[cfg(feature = "bind")]
#[path = "build_bind.rs"]
mod bind;

fn main() {
    #[cfg(feature = "bind")]
    bind::run();
}
