//! `struct tcmsg`, the fixed header of every rtnetlink TC message (qdiscs,
//! filters), as a zero-copy view and a plain representation to emit.

use super::attr::{AttrIter, WireError};

pub const LEN: usize = 20;

/// `TC_H_MAKE(TC_H_CLSACT, 0)`: the handle of a clsact / ingress qdisc.
pub const TC_H_CLSACT: u32 = 0xffff_fff1;
pub const TC_H_INGRESS: u32 = TC_H_CLSACT;
/// `TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS)`: the ingress hook, the parent
/// of ingress filters under either a clsact or an ingress qdisc.
pub const PARENT_INGRESS: u32 = 0xffff_fff2;
/// `TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_EGRESS)`: the egress hook of a clsact
/// qdisc (an ingress qdisc has none).
pub const PARENT_EGRESS: u32 = 0xffff_fff3;
/// The handle `ffff:` that clsact and ingress qdiscs take.
pub const QDISC_HANDLE_INGRESS: u32 = 0xffff_0000;

mod field {
    use core::ops::Range;
    pub const FAMILY: usize = 0;
    pub const IFINDEX: Range<usize> = 4..8;
    pub const HANDLE: Range<usize> = 8..12;
    pub const PARENT: Range<usize> = 12..16;
    pub const INFO: Range<usize> = 16..20;
}

/// A view over a tcmsg and the attributes after it.
#[derive(Debug, Clone, Copy)]
pub struct Tcmsg<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Tcmsg<T> {
    pub fn new_checked(buffer: T) -> Result<Tcmsg<T>, WireError> {
        let have = buffer.as_ref().len();
        if have < LEN {
            return Err(WireError::Truncated { what: "tcmsg", have, need: LEN });
        }
        Ok(Tcmsg { buffer })
    }

    fn u32_at(&self, r: core::ops::Range<usize>) -> u32 {
        u32::from_ne_bytes(self.buffer.as_ref()[r].try_into().unwrap_or_default())
    }

    pub fn family(&self) -> u8 {
        self.buffer.as_ref()[field::FAMILY]
    }

    pub fn ifindex(&self) -> u32 {
        self.u32_at(field::IFINDEX)
    }

    pub fn handle(&self) -> u32 {
        self.u32_at(field::HANDLE)
    }

    pub fn parent(&self) -> u32 {
        self.u32_at(field::PARENT)
    }

    /// For filters: priority in the upper half, protocol (network order)
    /// in the lower.
    pub fn info(&self) -> u32 {
        self.u32_at(field::INFO)
    }

    pub fn prio(&self) -> u16 {
        (self.info() >> 16) as u16
    }

    /// The filter's protocol (an ethertype) in host order.
    pub fn protocol(&self) -> u16 {
        u16::from_be((self.info() & 0xffff) as u16)
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Tcmsg<&'a T> {
    pub fn attrs(&self) -> AttrIter<'a> {
        AttrIter::new(&self.buffer.as_ref()[LEN..])
    }
}

/// The values of a tcmsg to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcmsgRepr {
    pub ifindex: u32,
    pub handle: u32,
    pub parent: u32,
    pub info: u32,
}

impl TcmsgRepr {
    /// A filter header: the filter lives at `prio` for `protocol`
    /// (ethertype, host order) under `parent`.
    pub fn filter(ifindex: u32, parent: u32, prio: u16, protocol: u16, handle: u32) -> TcmsgRepr {
        TcmsgRepr { ifindex, handle, parent, info: filter_info(prio, protocol) }
    }

    pub fn emit(&self, out: &mut Vec<u8>) {
        out.push(libc::AF_UNSPEC as u8);
        out.extend_from_slice(&[0, 0, 0]);
        out.extend_from_slice(&self.ifindex.to_ne_bytes());
        out.extend_from_slice(&self.handle.to_ne_bytes());
        out.extend_from_slice(&self.parent.to_ne_bytes());
        out.extend_from_slice(&self.info.to_ne_bytes());
    }
}

/// `TC_H_MAKE(prio << 16, htons(protocol))`.
pub fn filter_info(prio: u16, protocol: u16) -> u32 {
    ((prio as u32) << 16) | protocol.to_be() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_header_round_trips() {
        let mut buf = Vec::new();
        TcmsgRepr::filter(7, PARENT_INGRESS, 0x100, 0x0800, 42).emit(&mut buf);
        assert_eq!(buf.len(), LEN);
        let t = Tcmsg::new_checked(&buf[..]).unwrap();
        assert_eq!(t.ifindex(), 7);
        assert_eq!(t.parent(), PARENT_INGRESS);
        assert_eq!(t.prio(), 0x100);
        assert_eq!(t.protocol(), 0x0800);
        assert_eq!(t.handle(), 42);
        // The protocol sits in network order in the low half of tcm_info,
        // exactly as `tc` puts it: 0x0008 on a little-endian host.
        assert_eq!(&buf[16..20], &filter_info(0x100, 0x0800).to_ne_bytes());
        if cfg!(target_endian = "little") {
            assert_eq!(&buf[16..18], &[0x08, 0x00]);
        }
        assert_eq!(t.attrs().count(), 0);
    }

    /// An egress filter's header is an ingress one's but for the parent,
    /// which is clsact's egress minor, as `tc filter add dev X egress` sends.
    #[test]
    fn egress_filter_header_names_the_clsact_egress_hook() {
        let (mut ingress, mut egress) = (Vec::new(), Vec::new());
        TcmsgRepr::filter(7, PARENT_INGRESS, 0x100, 0x0800, 42).emit(&mut ingress);
        TcmsgRepr::filter(7, PARENT_EGRESS, 0x100, 0x0800, 42).emit(&mut egress);
        assert_eq!(&egress[12..16], &0xffff_fff3u32.to_ne_bytes(), "tcm_parent ffff:fff3");
        assert_eq!(&ingress[12..16], &0xffff_fff2u32.to_ne_bytes(), "tcm_parent ffff:fff2");
        assert_eq!((&egress[..12], &egress[16..]), (&ingress[..12], &ingress[16..]), "nothing else differs");
        assert_eq!(Tcmsg::new_checked(&egress[..]).unwrap().parent(), PARENT_EGRESS);
    }

    #[test]
    fn short_buffer_is_refused() {
        assert!(Tcmsg::new_checked(&[0u8; 19][..]).is_err());
    }
}
