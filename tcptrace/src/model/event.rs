//! One TCP state transition as every layer above the kernel sees it.

use std::net::IpAddr;

use tcptrace_common::{AF_INET, AF_INET6, OwnerSource, TcpState};

use crate::model::owner::Comm;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const fn name(self) -> &'static str {
        match self {
            Self::V4 => "ipv4",
            Self::V6 => "ipv6",
        }
    }

    pub const fn af(self) -> u16 {
        match self {
            Self::V4 => AF_INET,
            Self::V6 => AF_INET6,
        }
    }

    /// `AF_INET`/`AF_INET6`; anything else is not a family we trace.
    pub const fn from_af(af: u16) -> Option<Self> {
        match af {
            AF_INET => Some(Self::V4),
            AF_INET6 => Some(Self::V6),
            _ => None,
        }
    }
}

/// One decoded transition. Allocates nothing: it is made for every record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub ts_ns: u64,
    pub skaddr: u64,
    pub inode: u64,
    pub family: Family,
    pub laddr: IpAddr,
    pub lport: u16,
    pub raddr: IpAddr,
    pub rport: u16,
    pub oldstate: TcpState,
    pub newstate: TcpState,
    /// The owning process, `None` when the kernel does not know it.
    pub owner: Option<u32>,
    pub owner_source: OwnerSource,
    /// The owner's process name, when it made this transition itself; else empty.
    pub comm: Comm,
    /// Into CLOSE_WAIT, with stacks on: the stack that opened the socket.
    pub stack: Option<StackRef>,
}

/// A user stack the kernel program took, not yet symbolized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackRef {
    /// Its id in the kernel's `STACKS`.
    pub id: u32,
    /// The process it was taken in.
    pub pid: u32,
    /// The return address found on top of it, 0 if none.
    pub caller: u64,
}

/// Formats an endpoint the way users paste it: `1.2.3.4:80`, `[::1]:80`.
pub fn endpoint(addr: IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(addr, port).to_string()
}

/// A loopback IPv4 event for unit tests elsewhere in the crate, owned by pid 1.
#[cfg(test)]
pub(crate) fn test_event(skaddr: u64, ts_ms: u64, old: TcpState, new: TcpState) -> Event {
    use std::net::Ipv4Addr;
    Event {
        ts_ns: ts_ms * 1_000_000,
        skaddr,
        inode: 0,
        family: Family::V4,
        laddr: Ipv4Addr::LOCALHOST.into(),
        lport: 5000,
        raddr: Ipv4Addr::LOCALHOST.into(),
        rport: 61616,
        oldstate: old,
        newstate: new,
        owner: Some(1),
        owner_source: OwnerSource::Holder,
        comm: Comm::new(b"t"),
        stack: None,
    }
}
