//! Which port a packet came in on, and which flow-key zone that port is in.
//!
//! A flow key names the port its flow entered on, so the same 5-tuple on
//! two unrelated links is two flows. A bump-in-the-wire (an inline
//! firewall or IPS between two ports) sees one conversation's directions
//! on its two ports; joined as an inline pair, both ports key flows by the
//! pair's lower port, the zone, and a conversation is one flow whichever
//! port each packet took. The arrival port itself stays on the packet, so
//! each direction's rule can be placed on the port its packets arrive on.

/// The arrival port of a packet and the zone its flow is keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ingress {
    /// Index of the port the packet arrived on (the configured port list).
    pub port: u8,
    /// The port's zone: the port itself, or its inline pair's lower port.
    pub zone: u8,
}

impl Ingress {
    /// A port that is its own zone (no inline pair).
    pub const fn port(port: u8) -> Ingress {
        Ingress { port, zone: port }
    }
}

/// Zone and partner of every port index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortMap {
    partner: [Option<u8>; 256],
}

impl Default for PortMap {
    fn default() -> Self {
        PortMap { partner: [None; 256] }
    }
}

/// Why a list of pairs can't be a port map.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PairError {
    #[error("port {0} is paired with itself")]
    SelfPair(u8),
    #[error("port {port} is in two pairs (with {first} and with {second})")]
    TwoPairs { port: u8, first: u8, second: u8 },
}

impl PortMap {
    /// Every port its own zone.
    pub fn unpaired() -> PortMap {
        PortMap::default()
    }

    /// Ports joined in inline pairs; a pair may be listed once or from both
    /// sides, but a port can be in one pair only.
    pub fn with_pairs(pairs: &[(u8, u8)]) -> Result<PortMap, PairError> {
        let mut map = PortMap::default();
        for &(a, b) in pairs {
            if a == b {
                return Err(PairError::SelfPair(a));
            }
            for (port, other) in [(a, b), (b, a)] {
                match map.partner[port as usize] {
                    Some(first) if first != other => {
                        return Err(PairError::TwoPairs { port, first, second: other });
                    }
                    _ => map.partner[port as usize] = Some(other),
                }
            }
        }
        Ok(map)
    }

    /// The other port of `port`'s inline pair.
    #[inline]
    pub fn partner(&self, port: u8) -> Option<u8> {
        self.partner[port as usize]
    }

    #[inline]
    pub fn ingress(&self, port: u8) -> Ingress {
        let zone = self.partner(port).map_or(port, |p| p.min(port));
        Ingress { port, zone }
    }

    /// Whether any port is paired.
    pub fn has_pairs(&self) -> bool {
        self.partner.iter().any(Option::is_some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paired_ports_share_the_lower_as_zone() {
        let m = PortMap::with_pairs(&[(3, 1), (4, 5)]).unwrap();
        assert_eq!(m.ingress(1), Ingress { port: 1, zone: 1 });
        assert_eq!(m.ingress(3), Ingress { port: 3, zone: 1 });
        assert_eq!(m.ingress(5), Ingress { port: 5, zone: 4 });
        assert_eq!(m.ingress(0), Ingress::port(0));
        assert_eq!(m.ingress(255), Ingress::port(255));
        assert_eq!((m.partner(1), m.partner(3), m.partner(2)), (Some(3), Some(1), None));
        assert!(m.has_pairs());
        assert!(!PortMap::unpaired().has_pairs());
    }

    #[test]
    fn a_pair_listed_from_both_sides_is_one_pair() {
        assert_eq!(PortMap::with_pairs(&[(0, 1), (1, 0)]).unwrap(), PortMap::with_pairs(&[(0, 1)]).unwrap());
    }

    #[test]
    fn bad_pairs_are_refused() {
        assert_eq!(PortMap::with_pairs(&[(2, 2)]), Err(PairError::SelfPair(2)));
        assert_eq!(PortMap::with_pairs(&[(0, 1), (1, 2)]), Err(PairError::TwoPairs { port: 1, first: 0, second: 2 }));
    }
}
