//! TCP connection tracking, just enough to drive timeouts and records:
//! handshake, established, half and full close, reset.

use crate::packet::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};
use serde::Serialize;

/// The state of a flow's TCP conversation (or `NotTcp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Default)]
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
    /// it travels the way the flow's first packet did.
    pub fn next(self, flags: u8, from_initiator: bool, fin_seen_from: &mut u8) -> TcpState {
        use TcpState::*;
        if flags & TCP_RST != 0 {
            return Closed;
        }
        if flags & TCP_FIN != 0 {
            *fin_seen_from |= if from_initiator { 1 } else { 2 };
            return if *fin_seen_from == 3 { Closing } else { FinWait };
        }
        match self {
            SynSent if !from_initiator && flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK => {
                SynReceived
            }
            SynReceived if from_initiator && flags & TCP_ACK != 0 && flags & TCP_SYN == 0 => {
                Established
            }
            Closing if flags & TCP_ACK != 0 => Closed,
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
