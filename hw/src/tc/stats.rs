//! Action statistics as the kernel dumps them: the `TCA_ACT_STATS` nest of
//! gnet_stats (`struct gnet_stats_basic` for all and for hardware-counted
//! packets, a 64-bit packet count when it overflows 32 bits) and the
//! action's `struct tcf_t` timestamps.

use super::attr::{AttrIter, WireError};

pub const TCA_STATS_BASIC: u16 = 1;
pub const TCA_STATS_BASIC_HW: u16 = 7;
pub const TCA_STATS_PKT64: u16 = 8;

/// `struct gnet_stats_basic { __u64 bytes; __u32 packets; }` — 16 bytes on
/// 64-bit hosts, 12 where u64 aligns to 4; both carry the same fields.
pub const BASIC_MIN_LEN: usize = 12;

/// A view over a `struct gnet_stats_basic`.
#[derive(Debug, Clone, Copy)]
pub struct BasicStats<'a> {
    buffer: &'a [u8],
}

impl<'a> BasicStats<'a> {
    pub fn new_checked(buffer: &'a [u8]) -> Result<BasicStats<'a>, WireError> {
        if buffer.len() < BASIC_MIN_LEN {
            return Err(WireError::Truncated { what: "gnet_stats_basic", have: buffer.len(), need: BASIC_MIN_LEN });
        }
        Ok(BasicStats { buffer })
    }

    pub fn bytes(&self) -> u64 {
        u64::from_ne_bytes(self.buffer[0..8].try_into().unwrap_or_default())
    }

    pub fn packets(&self) -> u32 {
        u32::from_ne_bytes(self.buffer[8..12].try_into().unwrap_or_default())
    }
}

/// Packets and bytes of one action: all, and the hardware share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ActionStats {
    pub packets: u64,
    pub bytes: u64,
    pub hw_packets: u64,
    pub hw_bytes: u64,
}

impl ActionStats {
    /// Reads the payload of a `TCA_ACT_STATS` nest. A `TCA_STATS_PKT64`
    /// after a basic block replaces that block's 32-bit packet count (the
    /// kernel emits it right after the counter it widens).
    pub fn parse(nest: &[u8]) -> Result<ActionStats, WireError> {
        let mut s = ActionStats::default();
        let mut last_basic_hw = false;
        for a in AttrIter::new(nest) {
            let a = a?;
            match a.kind() {
                TCA_STATS_BASIC => {
                    let b = BasicStats::new_checked(a.payload())?;
                    s.packets = b.packets() as u64;
                    s.bytes = b.bytes();
                    last_basic_hw = false;
                }
                TCA_STATS_BASIC_HW => {
                    let b = BasicStats::new_checked(a.payload())?;
                    s.hw_packets = b.packets() as u64;
                    s.hw_bytes = b.bytes();
                    last_basic_hw = true;
                }
                TCA_STATS_PKT64 => {
                    let p = a.u64_ne()?;
                    if last_basic_hw {
                        s.hw_packets = p;
                    } else {
                        s.packets = p;
                    }
                }
                _ => {}
            }
        }
        Ok(s)
    }
}

pub const TCF_T_LEN: usize = 32;

/// A view over `struct tcf_t { install, lastuse, expires, firstuse }`: ages
/// in clock ticks (USER_HZ) before the dump, `firstuse` 0 if never hit.
#[derive(Debug, Clone, Copy)]
pub struct Tcft<'a> {
    buffer: &'a [u8],
}

impl<'a> Tcft<'a> {
    pub fn new_checked(buffer: &'a [u8]) -> Result<Tcft<'a>, WireError> {
        if buffer.len() < TCF_T_LEN {
            return Err(WireError::Truncated { what: "tcf_t", have: buffer.len(), need: TCF_T_LEN });
        }
        Ok(Tcft { buffer })
    }

    fn at(&self, i: usize) -> u64 {
        u64::from_ne_bytes(self.buffer[i * 8..i * 8 + 8].try_into().unwrap_or_default())
    }

    pub fn install_age(&self) -> u64 {
        self.at(0)
    }

    pub fn lastuse_age(&self) -> u64 {
        self.at(1)
    }

    pub fn firstuse_age(&self) -> u64 {
        self.at(3)
    }

    /// Ticks since the last hit, `None` if the action never matched.
    pub fn last_hit_age_ticks(&self) -> Option<u64> {
        (self.firstuse_age() != 0).then(|| self.lastuse_age())
    }
}

/// Nanoseconds per USER_HZ clock tick (USER_HZ is 100 on every Linux ABI).
pub const NS_PER_TICK: u64 = 10_000_000;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tc::attr::AttrWriter;

    fn basic(bytes: u64, packets: u32) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&bytes.to_ne_bytes());
        b[8..12].copy_from_slice(&packets.to_ne_bytes());
        b
    }

    #[test]
    fn parses_basic_hw_and_pkt64() {
        let mut nest = Vec::new();
        let mut w = AttrWriter::new(&mut nest);
        w.put(TCA_STATS_BASIC, &basic(1500, 10));
        w.put(TCA_STATS_PKT64, &(5_000_000_000u64).to_ne_bytes());
        w.put(TCA_STATS_BASIC_HW, &basic(300, 2));
        w.put(2 /* rate estimator, ignored */, &[0; 8]);
        let s = ActionStats::parse(&nest).unwrap();
        assert_eq!(s, ActionStats { packets: 5_000_000_000, bytes: 1500, hw_packets: 2, hw_bytes: 300 });
    }

    #[test]
    fn short_basic_is_an_error() {
        let mut nest = Vec::new();
        AttrWriter::new(&mut nest).put(TCA_STATS_BASIC, &[0; 8]);
        assert!(matches!(ActionStats::parse(&nest), Err(WireError::Truncated { what: "gnet_stats_basic", .. })));
    }

    #[test]
    fn tcf_t_reports_never_used() {
        let mut b = [0u8; 32];
        b[0..8].copy_from_slice(&500u64.to_ne_bytes());
        b[8..16].copy_from_slice(&500u64.to_ne_bytes());
        let t = Tcft::new_checked(&b).unwrap();
        assert_eq!(t.install_age(), 500);
        assert_eq!(t.last_hit_age_ticks(), None);
        b[24..32].copy_from_slice(&400u64.to_ne_bytes());
        b[8..16].copy_from_slice(&3u64.to_ne_bytes());
        assert_eq!(Tcft::new_checked(&b).unwrap().last_hit_age_ticks(), Some(3));
        assert!(Tcft::new_checked(&b[..31]).is_err());
    }
}
