//! PPPoE session stage (RFC 2516, EtherType 0x8864): a 6-byte header, then
//! the PPP protocol field of the carried frame.
//!
//! The view covers the PPPoE header and the 2-byte PPP protocol that
//! follows it (PPPoE forbids protocol-field compression), so
//! [`PppoeSession::payload`] starts at the network header.

use super::{read_u16, Error, Result};

/// Version/type, code, session id and length.
pub const HEADER_LEN: usize = 6;
/// The PPPoE header and the PPP protocol field.
pub const SESSION_LEN: usize = HEADER_LEN + 2;

/// Version 1, type 1, as every PPPoE frame carries.
pub const VERSION_TYPE: u8 = 0x11;

#[derive(Debug, Clone, Copy)]
pub struct PppoeSession<'a> {
    buffer: &'a [u8],
}

impl<'a> PppoeSession<'a> {
    pub const fn new_unchecked(buffer: &'a [u8]) -> Self {
        PppoeSession { buffer }
    }

    /// Checks the header and PPP protocol are present, the version/type is
    /// 1/1 and the code is 0 (session data; discovery uses EtherType 0x8863).
    pub fn new_checked(buffer: &'a [u8]) -> Result<Self> {
        if buffer.len() < SESSION_LEN {
            return Err(Error::Truncated);
        }
        if buffer[0] != VERSION_TYPE || buffer[1] != 0 {
            return Err(Error::Malformed);
        }
        Ok(PppoeSession { buffer })
    }

    pub fn session_id(&self) -> u16 {
        read_u16(self.buffer, 2)
    }

    /// Length of the PPP frame (protocol field and payload).
    pub fn length(&self) -> u16 {
        read_u16(self.buffer, 4)
    }

    /// The PPP protocol of the payload (see [`super::ppp`]).
    pub fn protocol(&self) -> u16 {
        read_u16(self.buffer, HEADER_LEN)
    }

    pub fn payload(&self) -> &'a [u8] {
        &self.buffer[SESSION_LEN..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::assert_truncations;

    #[test]
    fn reads_session_header() {
        let bytes = [0x11, 0x00, 0x12, 0x34, 0x00, 0x40, 0x00, 0x21, 0x45];
        let s = PppoeSession::new_checked(&bytes).unwrap();
        assert_eq!(s.session_id(), 0x1234);
        assert_eq!(s.length(), 0x40);
        assert_eq!(s.protocol(), 0x0021);
        assert_eq!(s.payload(), &[0x45]);
    }

    #[test]
    fn rejects_other_versions_and_discovery_codes() {
        assert_eq!(PppoeSession::new_checked(&[0x21, 0, 0, 1, 0, 2, 0, 0x21]).err(), Some(Error::Malformed));
        // PADI (code 0x09) has no place in the session stage.
        assert_eq!(PppoeSession::new_checked(&[0x11, 0x09, 0, 0, 0, 0, 0, 0]).err(), Some(Error::Malformed));
    }

    #[test]
    fn every_shorter_prefix_is_truncated() {
        assert_truncations(&[0x11, 0, 0, 1, 0, 2, 0x00, 0x57], PppoeSession::new_checked);
    }
}
