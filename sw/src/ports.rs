//! Which port a packet came in on, and which flow-key zone that port is in.
//!
//! A flow key names the port its flow entered on, so the same 5-tuple on
//! two unrelated links is two flows. A bump-in-the-wire (an inline
//! firewall or IPS between two ports) sees one conversation's directions
//! on its two ports; joined as an inline pair, both ports key flows by the
//! pair's lower port, the zone, and a conversation is one flow whichever
//! port each packet took. The arrival port itself stays on the packet, so
//! each direction's rule can be placed on the port its packets arrive on.
//!
//! A host that is itself an endpoint on a port (its own interface) sees
//! both directions of its conversations on that one device: what comes in
//! (tc's ingress hook) and what it sends out (the egress hook). The frames
//! it sends get a port index of their own, the port's egress twin, joined
//! to the port as a pair is, so a conversation is one flow and each
//! direction's rule goes where its packets pass; unlike an inline pair's,
//! a twin's `pass` stays a pass (the host's stack is the path, not the
//! other port).

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
    /// Ports that are another port's egress twin (frames the host sends).
    egress: [bool; 256],
}

impl Default for PortMap {
    fn default() -> Self {
        PortMap { partner: [None; 256], egress: [false; 256] }
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

    /// Joins `egress`, the index the frames a host sends out of `port` are
    /// given, to `port` as its egress twin.
    pub fn join_egress(&mut self, port: u8, egress: u8) -> Result<(), PairError> {
        if port == egress {
            return Err(PairError::SelfPair(port));
        }
        for (p, other) in [(port, egress), (egress, port)] {
            if let Some(first) = self.partner[p as usize].filter(|&f| f != other) {
                return Err(PairError::TwoPairs { port: p, first, second: other });
            }
        }
        self.partner[port as usize] = Some(egress);
        self.partner[egress as usize] = Some(port);
        self.egress[egress as usize] = true;
        Ok(())
    }

    /// The other port of `port`'s inline pair, or its egress twin (or the
    /// port a twin is the egress of): where the other direction of its
    /// conversations passes.
    #[inline]
    pub fn partner(&self, port: u8) -> Option<u8> {
        self.partner[port as usize]
    }

    /// The other port of `port`'s inline pair only: where a conversation
    /// crossing the pair goes on to (`pass` in hardware forwards there).
    #[inline]
    pub fn inline_partner(&self, port: u8) -> Option<u8> {
        self.partner(port).filter(|&p| !self.egress[p as usize] && !self.egress[port as usize])
    }

    /// Whether `port` is a port's egress twin: its frames are ones the host
    /// sent, and its rules sit on the device's egress hook.
    #[inline]
    pub fn is_egress(&self, port: u8) -> bool {
        self.egress[port as usize]
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
    fn an_egress_twin_shares_its_port_zone_but_is_no_inline_pair() {
        let mut m = PortMap::with_pairs(&[(0, 1)]).unwrap();
        m.join_egress(2, 3).unwrap();
        assert_eq!((m.ingress(2), m.ingress(3)), (Ingress { port: 2, zone: 2 }, Ingress { port: 3, zone: 2 }));
        assert_eq!((m.partner(2), m.partner(3)), (Some(3), Some(2)));
        assert_eq!((m.inline_partner(2), m.inline_partner(3)), (None, None), "pass stays pass on a twin");
        assert_eq!((m.inline_partner(0), m.inline_partner(1)), (Some(1), Some(0)));
        assert!(m.is_egress(3) && !m.is_egress(2) && !m.is_egress(1));
        assert!(m.has_pairs());
        assert_eq!(m.join_egress(1, 4), Err(PairError::TwoPairs { port: 1, first: 0, second: 4 }));
        assert_eq!(m.join_egress(5, 5), Err(PairError::SelfPair(5)));
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
