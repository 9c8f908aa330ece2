//! TCP connection tracking, just enough to drive timeouts and records:
//! handshake, established, half and full close, reset.

use crate::packet::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};
use serde::Serialize;

pub const FIN_INITIATOR: u8 = 1;
pub const FIN_RESPONDER: u8 = 2;
const FIN_BOTH: u8 = FIN_INITIATOR | FIN_RESPONDER;
const SECOND_FIN_RESPONDER: u8 = 4;
/// Bits `TcpState::next` keeps in its `fins` byte.
pub const FIN_BITS: u8 = 7;

/// The state of a flow's TCP conversation (or `NotTcp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
#[repr(u8)]
pub enum TcpState {
    #[default]
    NotTcp = 0,
    /// First packet was a SYN.
    SynSent,
    /// SYN answered by SYN-ACK.
    SynReceived,
    Established,
    /// Picked up mid-conversation (first packet wasn't a SYN); treated as
    /// established for timeouts.
    Midstream,
    /// One side sent FIN.
    FinWait,
    /// Both sides sent FIN.
    Closing,
    /// Closed by RST or by the last ACK after both FINs.
    Closed,
}

impl TcpState {
    /// State for a flow whose first packet had these flags.
    pub fn first(flags: u8) -> TcpState {
        if flags & TCP_RST != 0 {
            TcpState::Closed
        } else if flags & TCP_SYN != 0 && flags & TCP_ACK == 0 {
            TcpState::SynSent
        } else {
            TcpState::Midstream
        }
    }

    /// Next state after a packet with `flags`; `from_initiator` says whether
    /// it travels the way the flow's first packet did. `fins` keeps which
    /// sides sent a FIN (bit 0: initiator, bit 1: responder) and, once both
    /// did, which sent the second (bit 2: the responder): only an ACK from
    /// the other side closes the conversation.
    #[inline]
    pub fn next(self, flags: u8, from_initiator: bool, fins: &mut u8) -> TcpState {
        use TcpState::*;
        if flags & TCP_RST != 0 {
            return Closed;
        }
        if flags & TCP_FIN != 0 {
            let side = if from_initiator { FIN_INITIATOR } else { FIN_RESPONDER };
            if *fins & side == 0 && *fins & FIN_BOTH != 0 && !from_initiator {
                *fins |= SECOND_FIN_RESPONDER;
            }
            *fins |= side;
            return if *fins & FIN_BOTH == FIN_BOTH { Closing } else { FinWait };
        }
        let second_fin_from_initiator = *fins & SECOND_FIN_RESPONDER == 0;
        match self {
            SynSent if !from_initiator && flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK => SynReceived,
            SynReceived if from_initiator && flags & TCP_ACK != 0 && flags & TCP_SYN == 0 => Established,
            Closing if flags & TCP_ACK != 0 && from_initiator != second_fin_from_initiator => Closed,
            s => s,
        }
    }

    /// Whether the conversation ended by FIN or RST.
    pub fn is_closed(self) -> bool {
        matches!(self, TcpState::Closing | TcpState::Closed)
    }

    pub fn is_open(self) -> bool {
        matches!(self, TcpState::Established | TcpState::Midstream)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TcpState::NotTcp => "-",
            TcpState::SynSent => "syn-sent",
            TcpState::SynReceived => "syn-received",
            TcpState::Established => "established",
            TcpState::Midstream => "midstream",
            TcpState::FinWait => "fin-wait",
            TcpState::Closing => "closing",
            TcpState::Closed => "closed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(packets: &[(u8, bool)]) -> TcpState {
        let mut fins = 0;
        let mut s = TcpState::first(packets[0].0);
        for &(f, init) in &packets[1..] {
            s = s.next(f, init, &mut fins);
        }
        s
    }

    #[test]
    fn handshake_then_close() {
        let open = [(TCP_SYN, true), (TCP_SYN | TCP_ACK, false), (TCP_ACK, true)];
        assert_eq!(run(&open), TcpState::Established);
        let mut all = open.to_vec();
        all.push((TCP_FIN | TCP_ACK, true));
        assert_eq!(run(&all), TcpState::FinWait);
        all.push((TCP_FIN | TCP_ACK, false));
        assert_eq!(run(&all), TcpState::Closing);
        all.push((TCP_ACK, true));
        assert_eq!(run(&all), TcpState::Closed);
    }

    #[test]
    fn only_the_ack_of_the_second_fin_closes() {
        let open = [(TCP_SYN, true), (TCP_SYN | TCP_ACK, false), (TCP_ACK, true)];
        let mut all = open.to_vec();
        all.push((TCP_FIN | TCP_ACK, true));
        all.push((TCP_FIN | TCP_ACK, false));
        // The responder acks again: its own FIN is still unacknowledged.
        all.push((TCP_ACK, false));
        assert_eq!(run(&all), TcpState::Closing);
        all.push((TCP_ACK, true));
        assert_eq!(run(&all), TcpState::Closed);
        // Responder closes first: the initiator's FIN is second, so the
        // responder's ACK closes.
        let mut rev = open.to_vec();
        rev.push((TCP_FIN | TCP_ACK, false));
        rev.push((TCP_FIN | TCP_ACK, true));
        rev.push((TCP_ACK, true));
        assert_eq!(run(&rev), TcpState::Closing);
        rev.push((TCP_ACK, false));
        assert_eq!(run(&rev), TcpState::Closed);
    }

    #[test]
    fn two_fins_from_one_side_is_not_a_close() {
        let s = run(&[(TCP_ACK, true), (TCP_FIN, true), (TCP_FIN, true)]);
        assert_eq!(s, TcpState::FinWait);
    }

    #[test]
    fn reset_closes_at_once_and_midstream_is_open() {
        assert_eq!(run(&[(TCP_SYN, true), (TCP_RST | TCP_ACK, false)]), TcpState::Closed);
        assert_eq!(run(&[(TCP_ACK, false)]), TcpState::Midstream);
        assert!(TcpState::Midstream.is_open());
    }

    #[test]
    fn syn_ack_from_initiator_does_not_advance() {
        assert_eq!(run(&[(TCP_SYN, true), (TCP_SYN | TCP_ACK, true)]), TcpState::SynSent);
    }
}
