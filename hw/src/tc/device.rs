//! What a network device offers for TC offload: its index, driver (ethtool
//! `GDRVINFO`), the `hw-tc-offload` feature (ethtool `GFEATURES`, found by
//! name in the feature string set since its bit number isn't ABI), and the
//! devlink handle with its eswitch mode where the device has one.

use std::ffi::CString;
use std::fmt;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GDRVINFO: u32 = 0x03;
const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GSSET_INFO: u32 = 0x37;
const ETHTOOL_GFEATURES: u32 = 0x3a;
const ETH_SS_FEATURES: u32 = 4;
const ETH_GSTRING_LEN: usize = 32;
const IFNAMSIZ: usize = 16;

/// The state of the `hw-tc-offload` feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct TcOffloadFeature {
    /// Whether the feature is on: only then may the kernel offer filters to
    /// the driver.
    pub active: bool,
    /// Whether the driver lets it be switched (false: "[fixed]").
    pub changeable: bool,
}

/// A device's offload-relevant facts, for the engine and `flowtable devices`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeviceInfo {
    pub name: String,
    pub ifindex: u32,
    pub driver: Option<String>,
    pub bus_info: Option<String>,
    /// `None` when the device doesn't report its features.
    pub hw_tc_offload: Option<TcOffloadFeature>,
    /// "bus/device", e.g. "pci/0000:03:00.0" or "netdevsim/netdevsim10".
    pub devlink: Option<String>,
    /// "legacy" or "switchdev", when devlink answers.
    pub eswitch_mode: Option<String>,
}

impl DeviceInfo {
    /// Whether the kernel may try this device's hardware at all.
    pub fn tc_offload_on(&self) -> bool {
        self.hw_tc_offload.is_some_and(|f| f.active)
    }
}

impl fmt::Display for DeviceInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (ifindex {})", self.name, self.ifindex)?;
        write!(f, " driver {}", self.driver.as_deref().unwrap_or("?"))?;
        if let Some(b) = self.bus_info.as_deref().filter(|b| !b.is_empty()) {
            write!(f, " bus {b}")?;
        }
        match self.hw_tc_offload {
            Some(t) => write!(
                f,
                " hw-tc-offload {}{}",
                if t.active { "on" } else { "off" },
                if t.changeable { "" } else { " [fixed]" }
            )?,
            None => write!(f, " hw-tc-offload unknown")?,
        }
        if let Some(d) = &self.devlink {
            write!(f, " devlink {d}")?;
            if let Some(m) = &self.eswitch_mode {
                write!(f, " eswitch {m}")?;
            }
        }
        Ok(())
    }
}

/// Why a device could not be probed.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("interface '{name}': no such device")]
    NotFound { name: String },
    #[error("interface '{name}': {message}")]
    Invalid { name: String, message: String },
}

/// Resolves an interface name to its index.
pub fn ifindex(name: &str) -> Result<u32, DeviceError> {
    if name.is_empty() || name.len() >= IFNAMSIZ || name.contains(['/', '\0']) {
        return Err(DeviceError::Invalid { name: name.into(), message: "not a valid interface name".into() });
    }
    let c = CString::new(name).map_err(|_| DeviceError::NotFound { name: name.into() })?;
    // SAFETY: a NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        Err(DeviceError::NotFound { name: name.into() })
    } else {
        Ok(idx)
    }
}

/// Probes one device.
pub fn probe(name: &str) -> Result<DeviceInfo, DeviceError> {
    let ifindex = ifindex(name)?;
    let ethtool = Ethtool::open(name).ok();
    let (driver, bus_info) = match ethtool.as_ref().and_then(|e| e.drvinfo().ok()) {
        Some((d, b)) => (Some(d), Some(b)),
        None => (sysfs_driver(name), None),
    };
    let hw_tc_offload = ethtool.as_ref().and_then(|e| e.feature("hw-tc-offload").ok().flatten());
    let devlink = sysfs_devlink_handle(name);
    let eswitch_mode = devlink.as_deref().and_then(|h| super::devlink::eswitch_mode(h).ok());
    Ok(DeviceInfo { name: name.into(), ifindex, driver, bus_info, hw_tc_offload, devlink, eswitch_mode })
}

/// Every network device on the host, by name.
pub fn list() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|rd| rd.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// One line per device, as `flowtable devices` prints them: the named
/// interfaces, or every interface of the host when none is named. A name
/// that doesn't resolve gets a line saying so; the others still print.
pub fn report(names: &[String]) -> (String, bool) {
    let names = if names.is_empty() { list() } else { names.to_vec() };
    let mut out = String::new();
    let mut all_ok = true;
    for n in &names {
        match probe(n) {
            Ok(info) => out.push_str(&format!("{info}\n")),
            Err(e) => {
                all_ok = false;
                out.push_str(&format!("{e}\n"));
            }
        }
    }
    (out, all_ok)
}

fn sysfs_driver(name: &str) -> Option<String> {
    let link = std::fs::read_link(format!("/sys/class/net/{name}/device/driver")).ok()?;
    Some(link.file_name()?.to_string_lossy().into_owned())
}

/// The devlink handle of the device behind a netdev: its bus and name.
fn sysfs_devlink_handle(name: &str) -> Option<String> {
    let dev = std::fs::canonicalize(format!("/sys/class/net/{name}/device")).ok()?;
    let bus = std::fs::read_link(dev.join("subsystem")).ok()?;
    Some(format!("{}/{}", bus.file_name()?.to_string_lossy(), dev.file_name()?.to_string_lossy()))
}

/// `struct ifreq` as SIOCETHTOOL reads it: a name and a pointer.
#[repr(C)]
struct IfreqData {
    name: [u8; IFNAMSIZ],
    data: *mut libc::c_void,
    _pad: [u8; 16],
}

struct Ethtool {
    fd: OwnedFd,
    name: [u8; IFNAMSIZ],
}

impl Ethtool {
    fn open(name: &str) -> std::io::Result<Ethtool> {
        // SAFETY: plain socket creation; ownership goes to OwnedFd.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd was just created and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut n = [0u8; IFNAMSIZ];
        n[..name.len().min(IFNAMSIZ - 1)].copy_from_slice(&name.as_bytes()[..name.len().min(IFNAMSIZ - 1)]);
        Ok(Ethtool { fd, name: n })
    }

    /// Runs one ethtool command on a u32-aligned buffer that starts with
    /// the command word.
    fn ioctl(&self, buf: &mut [u32]) -> std::io::Result<()> {
        let mut ifr = IfreqData { name: self.name, data: buf.as_mut_ptr() as *mut libc::c_void, _pad: [0; 16] };
        // SAFETY: ifr points at a buffer sized for the command in buf[0].
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), SIOCETHTOOL as _, &mut ifr as *mut IfreqData) };
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    fn drvinfo(&self) -> std::io::Result<(String, String)> {
        // struct ethtool_drvinfo: cmd, driver[32], version[32],
        // fw_version[32], bus_info[32], erom_version[32], reserved2[12],
        // and five u32 counts: 196 bytes.
        let mut buf = [0u32; 49];
        buf[0] = ETHTOOL_GDRVINFO;
        self.ioctl(&mut buf)?;
        let bytes: Vec<u8> = buf.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let s = |r: core::ops::Range<usize>| {
            let b = &bytes[r];
            String::from_utf8_lossy(&b[..b.iter().position(|&c| c == 0).unwrap_or(b.len())]).into_owned()
        };
        Ok((s(4..36), s(100..132)))
    }

    /// Looks a feature up by name; `None` when the device has no such feature.
    fn feature(&self, wanted: &str) -> std::io::Result<Option<TcOffloadFeature>> {
        // struct ethtool_sset_info: cmd, reserved, sset_mask (u64), data[1].
        let mut info = [0u32; 5];
        info[0] = ETHTOOL_GSSET_INFO;
        let mask = (1u64 << ETH_SS_FEATURES).to_ne_bytes();
        info[2] = u32::from_ne_bytes([mask[0], mask[1], mask[2], mask[3]]);
        info[3] = u32::from_ne_bytes([mask[4], mask[5], mask[6], mask[7]]);
        self.ioctl(&mut info)?;
        let count = info[4] as usize;
        if count == 0 || count > 4096 {
            return Ok(None);
        }
        // struct ethtool_gstrings: cmd, string_set, len, data[len * 32].
        let mut strings = vec![0u32; 3 + count * ETH_GSTRING_LEN / 4];
        strings[0] = ETHTOOL_GSTRINGS;
        strings[1] = ETH_SS_FEATURES;
        strings[2] = count as u32;
        self.ioctl(&mut strings)?;
        let bytes: Vec<u8> = strings[3..].iter().flat_map(|w| w.to_ne_bytes()).collect();
        let Some(bit) = bytes.chunks(ETH_GSTRING_LEN).position(|s| {
            let end = s.iter().position(|&c| c == 0).unwrap_or(s.len());
            &s[..end] == wanted.as_bytes()
        }) else {
            return Ok(None);
        };
        // struct ethtool_gfeatures: cmd, size, then per 32 features
        // {available, requested, active, never_changed}.
        let blocks = count.div_ceil(32);
        let mut feats = vec![0u32; 2 + blocks * 4];
        feats[0] = ETHTOOL_GFEATURES;
        feats[1] = blocks as u32;
        self.ioctl(&mut feats)?;
        let (block, shift) = (bit / 32, bit % 32);
        let word = |k: usize| feats[2 + block * 4 + k] >> shift & 1 == 1;
        Ok(Some(TcOffloadFeature { active: word(2), changeable: word(0) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_probes_without_driver_device() {
        let info = probe("lo").expect("lo exists on every host");
        assert_eq!(info.ifindex, ifindex("lo").unwrap());
        assert!(info.devlink.is_none());
        assert!(info.to_string().starts_with("lo (ifindex"));
    }

    #[test]
    fn missing_device_is_named() {
        let e = probe("nosuchdev0").unwrap_err();
        assert_eq!(e.to_string(), "interface 'nosuchdev0': no such device");
        assert!(matches!(ifindex(""), Err(DeviceError::Invalid { .. })));
        assert!(matches!(ifindex("a/b"), Err(DeviceError::Invalid { .. })));
    }

    #[test]
    fn report_prints_every_name_and_flags_missing_ones() {
        let (text, ok) = report(&["lo".to_string(), "nosuchdev1".to_string()]);
        assert!(!ok);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("lo (ifindex"));
        assert_eq!(lines[1], "interface 'nosuchdev1': no such device");
        let (all, ok) = report(&[]);
        assert!(ok);
        assert!(all.lines().any(|l| l.starts_with("lo ")));
    }
}
