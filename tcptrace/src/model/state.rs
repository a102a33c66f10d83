//! TCP states by the kernel's numbers (include/net/tcp_states.h) and names.

use std::{fmt, str::FromStr};

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
    /// Bit n for state n: the kernel filter's state masks, and (widened)
    /// sock_diag's `states`.
    pub fn mask(states: &[Self]) -> u16 {
        states.iter().fold(0, |m, s| m | 1 << (*s as u8))
    }

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

    /// The kernel's number for an unknown value is `None`, never a transmute.
    pub fn from_kernel(n: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|s| *s as u8 == n)
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

    /// Lowercase label, as node_exporter's `node_tcp_connection_states` uses.
    pub fn label(self) -> String {
        self.name().to_ascii_lowercase()
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

impl FromStr for TcpState {
    type Err = String;

    /// Accepts `CLOSE_WAIT`, `close-wait`, `tcp_close_wait`, `closewait`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm: String = s
            .trim()
            .to_ascii_uppercase()
            .trim_start_matches("TCP_")
            .chars()
            .filter(|c| *c != '_' && *c != '-')
            .collect();
        Self::ALL
            .into_iter()
            .find(|st| st.name().replace('_', "") == norm)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|s| s.name()).collect();
                format!("unknown TCP state '{s}' (one of {})", names.join(", "))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip_and_unknown_is_none() {
        for s in TcpState::ALL {
            assert_eq!(TcpState::from_kernel(s as u8), Some(s));
        }
        assert_eq!(TcpState::from_kernel(0), None);
        assert_eq!(TcpState::from_kernel(13), None);
        assert_eq!(TcpState::from_kernel(255), None);
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
            assert_eq!(text.parse::<TcpState>(), Ok(TcpState::CloseWait), "{text}");
        }
        assert_eq!("FIN_WAIT1".parse::<TcpState>(), Ok(TcpState::FinWait1));
        assert_eq!("close".parse::<TcpState>(), Ok(TcpState::Close));
        let err = "CLOSE_WAT".parse::<TcpState>().unwrap_err();
        assert!(err.contains("unknown TCP state 'CLOSE_WAT'"), "{err}");
        assert!("".parse::<TcpState>().is_err());
    }
}
