//! Ring-buffer record -> [`Event`]: length-checked, unaligned-safe, and strict
//! about numbers the kernel should never send (an unknown state or family is
//! an error, not a guess).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use tcptrace_common::{OwnerSource, STATE_EVENT_SIZE, StateEvent, TcpState};

use crate::model::{
    event::{Event, Family, StackRef},
    owner::Comm,
};

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
pub fn decode(buf: &[u8]) -> Result<Event, DecodeError> {
    if buf.len() < STATE_EVENT_SIZE {
        return Err(DecodeError::Short(buf.len()));
    }
    // SAFETY: at least size_of::<StateEvent>() bytes; StateEvent is plain
    // integers and arrays, valid for any bits; the record may be unaligned.
    let raw = unsafe { std::ptr::read_unaligned(buf.as_ptr().cast::<StateEvent>()) };
    from_raw(&raw)
}

pub fn from_raw(raw: &StateEvent) -> Result<Event, DecodeError> {
    let family = Family::from_af(raw.family).ok_or(DecodeError::Family(raw.family))?;
    let state = |n| TcpState::from_kernel(n).ok_or(DecodeError::State(n));
    let owner_source = OwnerSource::from_kernel(raw.owner_source);
    Ok(Event {
        ts_ns: raw.ts_ns,
        skaddr: raw.skaddr,
        inode: raw.inode,
        family,
        laddr: ip(family, &raw.saddr),
        lport: raw.sport,
        raddr: ip(family, &raw.daddr),
        rport: raw.dport,
        oldstate: state(raw.oldstate)?,
        newstate: state(raw.newstate)?,
        owner: (owner_source != OwnerSource::Unknown).then_some(raw.owner),
        owner_source,
        comm: Comm::from_kernel(raw.comm),
        stack: u32::try_from(raw.stack_id).ok().map(|id| StackRef {
            id,
            pid: raw.stack_pid,
            caller: raw.caller,
        }),
    })
}

fn ip(family: Family, bytes: &[u8; 16]) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(*bytes)),
    }
}

#[cfg(test)]
mod tests {
    use tcptrace_common::{AF_INET, AF_INET6, TASK_COMM_LEN};

    use super::*;
    use crate::model::event::endpoint;

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
            inode: 99,
            saddr,
            daddr,
            owner: 1000,
            sport: 40000,
            dport: 61616,
            family: AF_INET,
            oldstate: 1,
            newstate: 8,
            owner_source: OwnerSource::Holder as u8,
            _pad: [0; 3],
            stack_id: -1,
            stack_pid: 0,
            caller: 0,
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
            assert_eq!((ev.owner, ev.comm.text()), (Some(1000), "curl".into()));
            assert_eq!(
                (ev.ts_ns, ev.skaddr, ev.inode),
                (123_456_789, 0xffff_8881_0000_1000, 99)
            );
        }
    }

    #[test]
    fn decodes_ipv6_and_an_unknown_owner() {
        let mut raw = sample();
        raw.family = AF_INET6;
        raw.saddr = Ipv6Addr::LOCALHOST.octets();
        raw.owner_source = OwnerSource::Unknown as u8;
        raw.owner = 0;
        let ev = decode(&bytes_of(&raw)).unwrap();
        assert_eq!(ev.family, Family::V6);
        assert_eq!(endpoint(ev.laddr, ev.lport), "[::1]:40000");
        assert_eq!((ev.owner, ev.owner_source), (None, OwnerSource::Unknown));
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
        assert_eq!(ev.comm.text().chars().count(), TASK_COMM_LEN);
    }
}

#[cfg(test)]
mod properties {
    //! Property tests over untrusted input: it must give a value or an
    //! error, never panic.
    use std::mem::offset_of;

    use proptest::prelude::*;
    use tcptrace_common::{AF_INET, AF_INET6, STATE_EVENT_SIZE, StateEvent};

    use super::{DecodeError, decode};

    proptest::proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..Default::default() })]

    #[test]
    fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        match decode(&bytes) {
            Ok(ev) => {
                prop_assert!(bytes.len() >= STATE_EVENT_SIZE);
                prop_assert!((1..=12).contains(&(ev.oldstate as u8)));
                prop_assert!((1..=12).contains(&(ev.newstate as u8)));
            }
            Err(DecodeError::Short(n)) => prop_assert!(n < STATE_EVENT_SIZE),
            Err(_) => prop_assert!(bytes.len() >= STATE_EVENT_SIZE),
        }
    }

    #[test]
    fn valid_records_decode_to_their_fields(
        ts in any::<u64>(), sk in any::<u64>(), sport in any::<u16>(), dport in any::<u16>(),
        old in 1u8..=12, new in 1u8..=12, v6 in any::<bool>(), addr in any::<[u8; 16]>(),
    ) {
        // Written at the shared record's own offsets, never repeated here.
        let mut raw = vec![0u8; STATE_EVENT_SIZE];
        let mut put = |at: usize, bytes: &[u8]| raw[at..at + bytes.len()].copy_from_slice(bytes);
        put(offset_of!(StateEvent, ts_ns), &ts.to_ne_bytes());
        put(offset_of!(StateEvent, skaddr), &sk.to_ne_bytes());
        put(offset_of!(StateEvent, saddr), &addr);
        put(offset_of!(StateEvent, sport), &sport.to_ne_bytes());
        put(offset_of!(StateEvent, dport), &dport.to_ne_bytes());
        put(offset_of!(StateEvent, family), &(if v6 { AF_INET6 } else { AF_INET }).to_ne_bytes());
        put(offset_of!(StateEvent, oldstate), &[old]);
        put(offset_of!(StateEvent, newstate), &[new]);
        let ev = decode(&raw).unwrap();
        prop_assert_eq!((ev.ts_ns, ev.skaddr, ev.lport, ev.rport), (ts, sk, sport, dport));
        prop_assert_eq!((ev.oldstate as u8, ev.newstate as u8), (old, new));
        let want: std::net::IpAddr = if v6 {
            std::net::Ipv6Addr::from(addr).into()
        } else {
            std::net::Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]).into()
        };
        prop_assert_eq!(ev.laddr, want);
    }
    }
}
