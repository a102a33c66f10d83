//! One interval's histograms, by kind and group, from the kernel's counters
//! or from values measured in userspace (`--exact`).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use hdrhistogram::Histogram;
use tcptrace_common::{
    AF_INET, HS_ACCEPT, HS_ACTIVE_CLOSE, HS_CONNECT, HS_PASSIVE_APP, HS_PASSIVE_CLOSE,
    HS_PASSIVE_LAST_ACK, HistKey, SLOT_MAX, TcpState, TotalHist,
};

use crate::model::log2::Log2Hist;

/// What `--by` splits histograms by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum GroupBy {
    /// The socket's owning process.
    #[value(alias = "pid", alias = "comm")]
    Process,
    /// The local port.
    Lport,
    /// The remote port.
    Rport,
    /// The remote address.
    Raddr,
}

impl GroupBy {
    pub fn kernel(self) -> u32 {
        match self {
            Self::Process => tcptrace_common::GROUP_PROCESS,
            Self::Lport => tcptrace_common::GROUP_LPORT,
            Self::Rport => tcptrace_common::GROUP_RPORT,
            Self::Raddr => tcptrace_common::GROUP_RADDR,
        }
    }
}

/// What `--handshake` selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Handshake {
    /// SYN_SENT -> ESTABLISHED and SYN_RECV -> ESTABLISHED.
    Connect,
    /// FIN_WAIT1 -> CLOSE.
    ActiveClose,
    /// CLOSE_WAIT -> CLOSE and its two parts.
    PassiveClose,
}

impl Handshake {
    /// The histograms it shows.
    fn kinds(self) -> &'static [u8] {
        match self {
            Self::Connect => &[HS_CONNECT, HS_ACCEPT],
            Self::ActiveClose => &[HS_ACTIVE_CLOSE],
            Self::PassiveClose => &[HS_PASSIVE_CLOSE, HS_PASSIVE_APP, HS_PASSIVE_LAST_ACK],
        }
    }
}

/// A histogram kind: `("state" | "handshake", name, what it spans)`.
pub fn describe(kind: u8) -> Option<(&'static str, &'static str, Option<&'static str>)> {
    if let Some(state) = TcpState::from_kernel(kind) {
        return Some(("state", state.name(), None));
    }
    let (name, span) = match kind {
        HS_CONNECT => ("connect.client", "SYN_SENT -> ESTABLISHED"),
        HS_ACCEPT => ("connect.server", "SYN_RECV -> ESTABLISHED"),
        HS_ACTIVE_CLOSE => ("active_close", "FIN_WAIT1 -> CLOSE"),
        HS_PASSIVE_CLOSE => ("passive_close", "CLOSE_WAIT -> CLOSE"),
        HS_PASSIVE_APP => (
            "passive_close.close_wait",
            "CLOSE_WAIT: waiting for the application to close",
        ),
        HS_PASSIVE_LAST_ACK => (
            "passive_close.last_ack",
            "LAST_ACK: waiting for the last ACK",
        ),
        _ => return None,
    };
    Some(("handshake", name, Some(span)))
}

/// Which histograms are shown: everything unless `--state`/`--handshake` pick.
#[derive(Clone, Debug, Default)]
pub struct Shown {
    pub states: Vec<TcpState>,
    pub handshakes: Vec<Handshake>,
}

impl Shown {
    pub fn shows(&self, kind: u8) -> bool {
        if self.states.is_empty() && self.handshakes.is_empty() {
            return true;
        }
        match TcpState::from_kernel(kind) {
            Some(s) => self.states.contains(&s),
            None => self.handshakes.iter().any(|h| h.kinds().contains(&kind)),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Group {
    All,
    /// The owning process; `None` when the kernel does not know it.
    Process(Option<u32>),
    Lport(u16),
    Rport(u16),
    Raddr(IpAddr),
}

impl Group {
    /// Decodes the group the kernel wrote into a key (pid 0: unknown owner).
    pub fn from_key(by: Option<GroupBy>, key: &HistKey) -> Self {
        let g = &key.group;
        match by {
            None => Self::All,
            Some(GroupBy::Process) => {
                let pid = u32::from_ne_bytes([g[0], g[1], g[2], g[3]]);
                Self::Process((pid != 0).then_some(pid))
            }
            Some(GroupBy::Lport) => Self::Lport(u16::from_ne_bytes([g[0], g[1]])),
            Some(GroupBy::Rport) => Self::Rport(u16::from_ne_bytes([g[0], g[1]])),
            Some(GroupBy::Raddr) if key.family == AF_INET => {
                Self::Raddr(IpAddr::V4(Ipv4Addr::new(g[0], g[1], g[2], g[3])))
            }
            Some(GroupBy::Raddr) => Self::Raddr(IpAddr::V6(Ipv6Addr::from(*g))),
        }
    }
}

/// One histogram: log2 buckets, and with `--exact` every value.
#[derive(Clone, Debug, Default)]
pub struct Entry {
    pub log2: Log2Hist,
    pub exact: Option<Histogram<u64>>,
}

impl Entry {
    pub fn percentile(&self, q: f64) -> Option<u64> {
        match &self.exact {
            Some(h) if !h.is_empty() => Some(h.value_at_quantile(q).min(self.log2.max_us())),
            _ => self.log2.percentile(q),
        }
    }
}

/// The histograms of one interval, by (kind, group); kinds sort states first
/// (by number), then handshakes.
#[derive(Debug, Default)]
pub struct Summary {
    pub hists: BTreeMap<(u8, Group), Entry>,
}

impl Summary {
    /// One grouped counter read from the kernel, summed (or maxed) over CPUs.
    pub fn add_kernel(&mut self, key: &HistKey, group: Group, value: u64) {
        let e = self.hists.entry((key.kind, group)).or_default();
        if key.slot == SLOT_MAX {
            e.log2.max_ns = e.log2.max_ns.max(value);
        } else if let Some(b) = e.log2.buckets.get_mut(usize::from(key.slot)) {
            *b += value;
        }
    }

    /// One kind's histogram from the kernel's totals (not grouping).
    pub fn add_total(&mut self, kind: u8, h: &TotalHist) {
        let e = self.hists.entry((kind, Group::All)).or_default();
        for (sum, n) in e.log2.buckets.iter_mut().zip(h.buckets) {
            *sum += n;
        }
        e.log2.max_ns = e.log2.max_ns.max(h.max_ns);
    }

    /// One value measured in userspace (`--exact`).
    pub fn observe(&mut self, kind: u8, group: Group, ns: u64) {
        let e = self.hists.entry((kind, group)).or_default();
        e.log2.observe_ns(ns);
        let h = e
            .exact
            .get_or_insert_with(|| Histogram::new(3).expect("3 significant digits is valid"));
        // `record` grows the histogram; `saturating_record` would clamp instead.
        if h.record(ns / 1000).is_err() {
            h.saturating_record(ns / 1000);
        }
    }

    /// Dwell times measured, over all states.
    pub fn measured(&self) -> u64 {
        self.hists
            .iter()
            .filter(|((kind, _), _)| TcpState::from_kernel(*kind).is_some())
            .map(|(_, e)| e.log2.count())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use tcptrace_common::{AF_INET6, HS_ACTIVE_CLOSE};

    use super::*;

    const MS: u64 = 1_000_000;
    const CLOSE_WAIT: u8 = TcpState::CloseWait as u8;

    pub(crate) fn key(kind: u8, slot: u8, group: [u8; 16], family: u16) -> HistKey {
        HistKey {
            group,
            epoch: 0,
            family,
            kind,
            slot,
        }
    }

    #[test]
    fn groups_decode_what_the_kernel_wrote() {
        let mut g = [0u8; 16];
        g[..4].copy_from_slice(&4321u32.to_ne_bytes());
        assert_eq!(
            Group::from_key(Some(GroupBy::Process), &key(1, 0, g, 0)),
            Group::Process(Some(4321))
        );
        assert_eq!(
            Group::from_key(Some(GroupBy::Process), &key(1, 0, [0; 16], 0)),
            Group::Process(None),
            "pid 0 is the kernel's unknown owner"
        );
        let mut g = [0u8; 16];
        g[..2].copy_from_slice(&8080u16.to_ne_bytes());
        assert_eq!(
            Group::from_key(Some(GroupBy::Lport), &key(1, 0, g, 0)),
            Group::Lport(8080)
        );
        assert_eq!(
            Group::from_key(Some(GroupBy::Rport), &key(1, 0, g, 0)),
            Group::Rport(8080)
        );
        let mut g = [0u8; 16];
        g[..4].copy_from_slice(&[10, 0, 0, 1]);
        assert_eq!(
            Group::from_key(Some(GroupBy::Raddr), &key(1, 0, g, AF_INET)),
            Group::Raddr("10.0.0.1".parse().unwrap())
        );
        let v6: Ipv6Addr = "2001:db8::1".parse().unwrap();
        assert_eq!(
            Group::from_key(Some(GroupBy::Raddr), &key(1, 0, v6.octets(), AF_INET6)),
            Group::Raddr(IpAddr::V6(v6))
        );
        assert_eq!(Group::from_key(None, &key(1, 0, [7; 16], 0)), Group::All);
    }

    #[test]
    fn kernel_counters_sum_and_the_max_slot_is_a_max() {
        let mut s = Summary::default();
        s.add_kernel(&key(CLOSE_WAIT, 18, [0; 16], 0), Group::All, 2);
        s.add_kernel(&key(CLOSE_WAIT, 18, [0; 16], 0), Group::All, 1);
        s.add_kernel(&key(CLOSE_WAIT, SLOT_MAX, [0; 16], 0), Group::All, 300 * MS);
        s.add_kernel(&key(CLOSE_WAIT, SLOT_MAX, [0; 16], 0), Group::All, 299 * MS);
        s.add_kernel(&key(HS_CONNECT, 3, [0; 16], 0), Group::All, 1);
        let e = &s.hists[&(CLOSE_WAIT, Group::All)];
        assert_eq!(
            (e.log2.count(), e.log2.buckets[18], e.log2.max_ns),
            (3, 3, 300 * MS)
        );
        // Only states count as dwell times.
        assert_eq!(s.measured(), 3);
    }

    #[test]
    fn shown_kinds() {
        let all = Shown::default();
        assert!(all.shows(CLOSE_WAIT) && all.shows(HS_ACTIVE_CLOSE));
        let some = Shown {
            states: vec![TcpState::CloseWait],
            handshakes: vec![Handshake::PassiveClose],
        };
        assert!(some.shows(CLOSE_WAIT) && !some.shows(TcpState::LastAck as u8));
        for k in [HS_PASSIVE_CLOSE, HS_PASSIVE_APP, HS_PASSIVE_LAST_ACK] {
            assert!(some.shows(k));
        }
        assert!(!some.shows(HS_CONNECT) && !some.shows(HS_ACTIVE_CLOSE));
    }
}
