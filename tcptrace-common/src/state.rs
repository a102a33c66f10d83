//! TCP states by the kernel's numbers (include/net/tcp_states.h) and names:
//! the one vocabulary of the kernel program, sock_diag and every view.

use core::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum TcpState {
    Established = 1,
    SynSent = 2,
    SynRecv = 3,
    FinWait1 = 4,
    FinWait2 = 5,
    TimeWait = 6,
    Close = 7,
    CloseWait = 8,
    LastAck = 9,
    Listen = 10,
    Closing = 11,
    NewSynRecv = 12,
}

impl TcpState {
    pub const ALL: [Self; 12] = [
        Self::Established,
        Self::SynSent,
        Self::SynRecv,
        Self::FinWait1,
        Self::FinWait2,
        Self::TimeWait,
        Self::Close,
        Self::CloseWait,
        Self::LastAck,
        Self::Listen,
        Self::Closing,
        Self::NewSynRecv,
    ];

    /// The kernel's number.
    pub const fn number(self) -> u8 {
        self as u8
    }

    /// Bit n for state n: the kernel filter's state masks and sock_diag's
    /// `states` (widened).
    pub const fn bit(self) -> u16 {
        1 << self as u8
    }

    /// The mask of `states` ([`TcpState::bit`] of each).
    pub const fn mask(states: &[Self]) -> u16 {
        let mut m = 0;
        let mut i = 0;
        while i < states.len() {
            m |= states[i].bit();
            i += 1;
        }
        m
    }

    /// The kernel's number for an unknown value is `None`, never a transmute.
    pub const fn from_kernel(n: u8) -> Option<Self> {
        match n {
            1 => Some(Self::Established),
            2 => Some(Self::SynSent),
            3 => Some(Self::SynRecv),
            4 => Some(Self::FinWait1),
            5 => Some(Self::FinWait2),
            6 => Some(Self::TimeWait),
            7 => Some(Self::Close),
            8 => Some(Self::CloseWait),
            9 => Some(Self::LastAck),
            10 => Some(Self::Listen),
            11 => Some(Self::Closing),
            12 => Some(Self::NewSynRecv),
            _ => None,
        }
    }

    /// Transitions into this state are made only by a system call on the
    /// socket (connect, listen, close, shutdown), so the task on the CPU is
    /// the socket's user. The others run in softirq, where it is whoever was
    /// interrupted (`swapper`, `ksoftirqd`, on loopback the peer).
    pub const fn entered_in_process_context(self) -> bool {
        matches!(
            self,
            Self::SynSent | Self::FinWait1 | Self::LastAck | Self::Listen
        )
    }

    /// Kernel name without the `TCP_` prefix, e.g. `CLOSE_WAIT`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Established => "ESTABLISHED",
            Self::SynSent => "SYN_SENT",
            Self::SynRecv => "SYN_RECV",
            Self::FinWait1 => "FIN_WAIT1",
            Self::FinWait2 => "FIN_WAIT2",
            Self::TimeWait => "TIME_WAIT",
            Self::Close => "CLOSE",
            Self::CloseWait => "CLOSE_WAIT",
            Self::LastAck => "LAST_ACK",
            Self::Listen => "LISTEN",
            Self::Closing => "CLOSING",
            Self::NewSynRecv => "NEW_SYN_RECV",
        }
    }

    /// Lowercase name, as node_exporter's `node_tcp_connection_states` labels it.
    pub const fn label(self) -> &'static str {
        match self {
            Self::Established => "established",
            Self::SynSent => "syn_sent",
            Self::SynRecv => "syn_recv",
            Self::FinWait1 => "fin_wait1",
            Self::FinWait2 => "fin_wait2",
            Self::TimeWait => "time_wait",
            Self::Close => "close",
            Self::CloseWait => "close_wait",
            Self::LastAck => "last_ack",
            Self::Listen => "listen",
            Self::Closing => "closing",
            Self::NewSynRecv => "new_syn_recv",
        }
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// A name that is no TCP state; says which ones are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParseStateError<'a>(pub &'a str);

impl fmt::Display for ParseStateError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown TCP state '{}' (one of", self.0)?;
        for (i, s) in TcpState::ALL.iter().enumerate() {
            write!(f, "{}{}", if i == 0 { " " } else { ", " }, s.name())?;
        }
        write!(f, ")")
    }
}

impl TcpState {
    /// Accepts `CLOSE_WAIT`, `close-wait`, `tcp_close_wait`, `closewait`.
    pub fn parse(s: &str) -> Result<Self, ParseStateError<'_>> {
        let t = s.trim();
        let t = match t.get(..4) {
            Some(p) if p.eq_ignore_ascii_case("tcp_") => &t[4..],
            _ => t,
        };
        let wanted = t.bytes().filter(|b| *b != b'_' && *b != b'-');
        Self::ALL
            .into_iter()
            .find(|st| {
                let name = st.name().bytes().filter(|b| *b != b'_');
                !t.is_empty() && name.eq(wanted.clone().map(|b| b.to_ascii_uppercase()))
            })
            .ok_or(ParseStateError(s))
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::string::ToString;

    use super::*;

    #[test]
    fn numbers_round_trip_and_unknown_is_none() {
        for s in TcpState::ALL {
            assert_eq!(TcpState::from_kernel(s.number()), Some(s));
            assert_eq!(s.label(), s.name().to_ascii_lowercase());
        }
        assert_eq!(TcpState::from_kernel(0), None);
        assert_eq!(TcpState::from_kernel(13), None);
        assert_eq!(TcpState::from_kernel(255), None);
        assert_eq!(
            TcpState::mask(&[TcpState::CloseWait, TcpState::Listen]),
            (1 << 8) | (1 << 10)
        );
    }

    #[test]
    fn parses_the_spellings_users_type() {
        for text in [
            "CLOSE_WAIT",
            "close-wait",
            "tcp_close_wait",
            "closewait",
            " Close_Wait ",
        ] {
            assert_eq!(TcpState::parse(text), Ok(TcpState::CloseWait), "{text}");
        }
        assert_eq!(TcpState::parse("FIN_WAIT1"), Ok(TcpState::FinWait1));
        assert_eq!(TcpState::parse("close"), Ok(TcpState::Close));
        let err = TcpState::parse("CLOSE_WAT").unwrap_err().to_string();
        assert!(
            err.starts_with("unknown TCP state 'CLOSE_WAT' (one of ESTABLISHED, "),
            "{err}"
        );
        assert!(TcpState::parse("").is_err());
        assert!(TcpState::parse("tcp_").is_err());
    }
}
