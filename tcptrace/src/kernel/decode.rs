//! Ring-buffer record -> [`Event`]: length-checked, unaligned-safe, and strict
//! about numbers the kernel should never send (an unknown state or family is
//! an error, not a guess).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::Buf as _;
use tcptrace_common::{AF_INET, AF_INET6, STATE_EVENT_SIZE, StateEvent, TASK_COMM_LEN};

use crate::model::state::TcpState;

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
}

/// One decoded transition. `pid`/`comm` here are the task that was on the
/// CPU; the socket's owner is worked out later (see `owner`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub ts_ns: u64,
    pub skaddr: u64,
    pub cgroup_id: u64,
    pub inode: u64,
    pub family: Family,
    pub laddr: IpAddr,
    pub lport: u16,
    pub raddr: IpAddr,
    pub rport: u16,
    pub tgid: u32,
    pub tid: u32,
    pub comm: String,
    pub oldstate: TcpState,
    pub newstate: TcpState,
}

#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    Short(usize),
    Family(u16),
    State(u8),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Short(n) => write!(f, "record of {n} bytes, expected {STATE_EVENT_SIZE}"),
            Self::Family(n) => write!(f, "unknown address family {n}"),
            Self::State(n) => write!(f, "unknown TCP state {n}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Decodes one record. Longer records are accepted (a newer kernel program
/// may append fields); shorter ones are not.
pub fn decode(mut buf: &[u8]) -> Result<Event, DecodeError> {
    if buf.len() < STATE_EVENT_SIZE {
        return Err(DecodeError::Short(buf.len()));
    }
    // Field by field, in StateEvent's order; `bytes` reads unaligned little-endian.
    let raw = StateEvent {
        ts_ns: buf.get_u64_ne(),
        skaddr: buf.get_u64_ne(),
        cgroup_id: buf.get_u64_ne(),
        inode: buf.get_u64_ne(),
        saddr: take16(&mut buf),
        daddr: take16(&mut buf),
        tgid: buf.get_u32_ne(),
        tid: buf.get_u32_ne(),
        sport: buf.get_u16_ne(),
        dport: buf.get_u16_ne(),
        family: buf.get_u16_ne(),
        oldstate: buf.get_u8(),
        newstate: buf.get_u8(),
        comm: {
            let mut c = [0u8; TASK_COMM_LEN];
            buf.copy_to_slice(&mut c);
            c
        },
    };
    from_raw(&raw)
}

fn take16(buf: &mut &[u8]) -> [u8; 16] {
    let mut a = [0u8; 16];
    buf.copy_to_slice(&mut a);
    a
}

pub fn from_raw(raw: &StateEvent) -> Result<Event, DecodeError> {
    let family = match raw.family {
        AF_INET => Family::V4,
        AF_INET6 => Family::V6,
        other => return Err(DecodeError::Family(other)),
    };
    let state = |n| TcpState::from_kernel(n).ok_or(DecodeError::State(n));
    Ok(Event {
        ts_ns: raw.ts_ns,
        skaddr: raw.skaddr,
        cgroup_id: raw.cgroup_id,
        inode: raw.inode,
        family,
        laddr: ip(family, &raw.saddr),
        lport: raw.sport,
        raddr: ip(family, &raw.daddr),
        rport: raw.dport,
        tgid: raw.tgid,
        tid: raw.tid,
        comm: comm_str(&raw.comm),
        oldstate: state(raw.oldstate)?,
        newstate: state(raw.newstate)?,
    })
}

fn ip(family: Family, bytes: &[u8; 16]) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(*bytes)),
    }
}

/// A NUL-padded kernel comm as text; invalid UTF-8 is replaced, not rejected.
pub fn comm_str(comm: &[u8]) -> String {
    let end = comm.iter().position(|b| *b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

/// Formats an endpoint the way users paste it: `1.2.3.4:80`, `[::1]:80`.
pub fn endpoint(addr: IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(addr, port).to_string()
}

/// A loopback IPv4 event for unit tests elsewhere in the crate.
#[cfg(test)]
pub(crate) fn test_event(skaddr: u64, ts_ms: u64, old: TcpState, new: TcpState) -> Event {
    Event {
        ts_ns: ts_ms * 1_000_000,
        skaddr,
        cgroup_id: 0,
        inode: 0,
        family: Family::V4,
        laddr: Ipv4Addr::LOCALHOST.into(),
        lport: 5000,
        raddr: Ipv4Addr::LOCALHOST.into(),
        rport: 61616,
        tgid: 1,
        tid: 1,
        comm: "t".into(),
        oldstate: old,
        newstate: new,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StateEvent {
        let mut comm = [0u8; TASK_COMM_LEN];
        comm[..4].copy_from_slice(b"curl");
        let mut saddr = [0u8; 16];
        saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        let mut daddr = [0u8; 16];
        daddr[..4].copy_from_slice(&[10, 0, 0, 5]);
        StateEvent {
            ts_ns: 123_456_789,
            skaddr: 0xffff_8881_0000_1000,
            cgroup_id: 42,
            inode: 99,
            saddr,
            daddr,
            tgid: 1000,
            tid: 1001,
            sport: 40000,
            dport: 61616,
            family: AF_INET,
            oldstate: 1,
            newstate: 8,
            comm,
        }
    }

    fn bytes_of(ev: &StateEvent) -> Vec<u8> {
        // SAFETY: StateEvent is repr(C) without padding (asserted in tcptrace-common).
        unsafe {
            std::slice::from_raw_parts((ev as *const StateEvent).cast::<u8>(), STATE_EVENT_SIZE)
        }
        .to_vec()
    }

    #[test]
    fn decodes_an_ipv4_record_at_any_alignment() {
        let bytes = bytes_of(&sample());
        for shift in 0..8 {
            let mut buf = vec![0u8; shift];
            buf.extend_from_slice(&bytes);
            let ev = decode(&buf[shift..]).unwrap();
            assert_eq!(ev.laddr.to_string(), "127.0.0.1");
            assert_eq!(ev.raddr.to_string(), "10.0.0.5");
            assert_eq!((ev.lport, ev.rport), (40000, 61616));
            assert_eq!(
                (ev.oldstate, ev.newstate),
                (TcpState::Established, TcpState::CloseWait)
            );
            assert_eq!((ev.tgid, ev.tid, ev.comm.as_str()), (1000, 1001, "curl"));
            assert_eq!(
                (ev.ts_ns, ev.skaddr, ev.cgroup_id, ev.inode),
                (123_456_789, 0xffff_8881_0000_1000, 42, 99)
            );
        }
    }

    #[test]
    fn decodes_ipv6() {
        let mut raw = sample();
        raw.family = AF_INET6;
        raw.saddr = std::net::Ipv6Addr::LOCALHOST.octets();
        let ev = decode(&bytes_of(&raw)).unwrap();
        assert_eq!(ev.family, Family::V6);
        assert_eq!(endpoint(ev.laddr, ev.lport), "[::1]:40000");
    }

    #[test]
    fn rejects_short_records_and_unknown_numbers() {
        let bytes = bytes_of(&sample());
        for len in [0, 1, 8, STATE_EVENT_SIZE - 1] {
            assert_eq!(decode(&bytes[..len]), Err(DecodeError::Short(len)));
        }
        let mut raw = sample();
        raw.newstate = 13;
        assert_eq!(decode(&bytes_of(&raw)), Err(DecodeError::State(13)));
        raw = sample();
        raw.oldstate = 0;
        assert_eq!(decode(&bytes_of(&raw)), Err(DecodeError::State(0)));
        raw = sample();
        raw.family = 1;
        assert_eq!(decode(&bytes_of(&raw)), Err(DecodeError::Family(1)));
    }

    #[test]
    fn longer_records_decode_and_comm_is_lossy() {
        let mut raw = sample();
        raw.comm = [0xff; TASK_COMM_LEN];
        let mut bytes = bytes_of(&raw);
        bytes.extend_from_slice(&[7; 8]);
        let ev = decode(&bytes).unwrap();
        assert_eq!(ev.comm.chars().count(), TASK_COMM_LEN);
    }
}
