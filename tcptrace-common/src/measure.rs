//! What one transition measures: the time spent in the old state and the
//! handshakes it completes. Shared by the kernel (aggregate mode) and
//! userspace (`hist --exact`), so both measure the same thing.

use crate::{SockEntry, TcpState};

/// Histogram kinds other than a TCP state number: the handshakes, each
/// measured from its first state to its last.
/// SYN_SENT -> ESTABLISHED (the client's connect).
pub const HS_CONNECT: u8 = 32;
/// SYN_RECV -> ESTABLISHED (the server's side of the connect).
pub const HS_ACCEPT: u8 = 33;
/// FIN_WAIT1 -> CLOSE, through FIN_WAIT2 or CLOSING (TIME_WAIT shows as CLOSE).
pub const HS_ACTIVE_CLOSE: u8 = 34;
/// CLOSE_WAIT -> CLOSE, through LAST_ACK.
pub const HS_PASSIVE_CLOSE: u8 = 35;
/// The CLOSE_WAIT part of a passive close: waiting for the application to close.
pub const HS_PASSIVE_APP: u8 = 36;
/// The LAST_ACK part of a passive close: waiting for the peer's last ACK.
pub const HS_PASSIVE_LAST_ACK: u8 = 37;
/// No handshake in progress ([`SockEntry::handshake`]).
pub const HS_NONE: u8 = 0;

/// Number of log2 buckets: bucket `i` holds values in `[2^i, 2^(i+1) - 1]`,
/// except bucket 0, which holds 0 and 1.
pub const LOG2_BUCKETS: u8 = 64;

/// The log2 bucket of `v`: `floor(log2(v))`, with 0 and 1 sharing bucket 0
/// (bcc's first row, "0 -> 1"). Shifts and compares only, so the BPF target
/// needs no count-leading-zeros instruction.
#[inline(always)]
pub const fn log2_bucket(v: u64) -> u8 {
    let mut v = v;
    let mut bucket = 0;
    let mut shift = 32;
    while shift > 0 {
        if v >> shift != 0 {
            v >>= shift;
            bucket += shift;
        }
        shift /= 2;
    }
    bucket
}

/// What one transition measured: the time spent in the old state and any
/// handshake it completes (up to three values), and the handshake in
/// progress afterwards with when it began.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Measured {
    /// Which slots hold a value: bit 0 the time in the old state, bit 1 the
    /// handshake it completes, bit 2 the part of a passive close it ends.
    filled: u8,
    kinds: [u8; 3],
    ns: [u64; 3],
    pub handshake: u8,
    pub handshake_ns: u64,
}

impl Measured {
    /// `(kind, ns)`: a state's dwell time or a handshake's duration. A
    /// constant-bound walk, which the BPF verifier follows (a slice's
    /// end-pointer loop it does not).
    pub fn values(&self) -> impl Iterator<Item = (u8, u64)> + '_ {
        (0..3)
            .filter(|i| self.filled & (1 << i) != 0)
            .map(|i| (self.kinds[i], self.ns[i]))
    }
}

const ESTABLISHED: u8 = TcpState::Established as u8;
const SYN_SENT: u8 = TcpState::SynSent as u8;
const SYN_RECV: u8 = TcpState::SynRecv as u8;
const FIN_WAIT1: u8 = TcpState::FinWait1 as u8;
const FIN_WAIT2: u8 = TcpState::FinWait2 as u8;
const CLOSE: u8 = TcpState::Close as u8;
const CLOSE_WAIT: u8 = TcpState::CloseWait as u8;
const LAST_ACK: u8 = TcpState::LastAck as u8;
const LISTEN: u8 = TcpState::Listen as u8;
const CLOSING: u8 = TcpState::Closing as u8;

/// Whether `old -> new` starts a new socket's life: anything leaving CLOSE,
/// and a listener's child. Nothing of an entry found for it belongs to it
/// (an address reused after a CLOSE that was not seen).
#[inline(always)]
pub const fn starts_lifecycle(old: u8, new: u8) -> bool {
    old == CLOSE || (old == LISTEN && new == SYN_RECV)
}

/// One transition's measurements. `prev` is what was known of the socket
/// before it (`None` if nothing). Values, not a callback: in the kernel a
/// callback is a BPF-to-BPF call per value. Every field is computed, then
/// written once: a result zeroed first and filled in was a 43-byte fill,
/// which LLVM made a call to a byte-loop `memset` on BPF (some 200
/// instructions per transition of `hist` and `serve`).
#[inline(always)]
pub fn measure(prev: Option<&SockEntry>, old: u8, new: u8, now: u64) -> Measured {
    // An entry in another state means we missed a transition: its times are stale.
    let prev = match prev {
        Some(p) if !starts_lifecycle(old, new) && p.state == old => Some(p),
        _ => None,
    };
    let (begun, begun_ns) = prev.map_or((HS_NONE, 0), |p| (p.handshake, p.handshake_ns));
    let dwell = prev.map_or(0, |p| now.saturating_sub(p.entered_ns));
    let completes = prev.is_some()
        && matches!(
            (begun, new),
            (HS_CONNECT | HS_ACCEPT, ESTABLISHED) | (HS_ACTIVE_CLOSE | HS_PASSIVE_CLOSE, CLOSE)
        );
    let part = match (begun, old) {
        (HS_PASSIVE_CLOSE, CLOSE_WAIT) => HS_PASSIVE_APP,
        (HS_PASSIVE_CLOSE, LAST_ACK) => HS_PASSIVE_LAST_ACK,
        _ => HS_NONE,
    };
    let (handshake, handshake_ns) = match new {
        SYN_SENT => (HS_CONNECT, now),
        SYN_RECV => (HS_ACCEPT, now),
        FIN_WAIT1 => (HS_ACTIVE_CLOSE, now),
        CLOSE_WAIT => (HS_PASSIVE_CLOSE, now),
        // The middle of a handshake: it goes on if we saw it begin.
        FIN_WAIT2 | CLOSING | LAST_ACK => (begun, begun_ns),
        _ => (HS_NONE, 0),
    };
    Measured {
        filled: u8::from(prev.is_some())
            | u8::from(completes) << 1
            | u8::from(part != HS_NONE) << 2,
        kinds: [old, begun, part],
        ns: [dwell, now.saturating_sub(begun_ns), dwell],
        handshake,
        handshake_ns,
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{vec, vec::Vec};

    use super::*;
    use crate::{TOTAL_KINDS, total_kind};

    const TCP_ESTABLISHED: u8 = ESTABLISHED;
    const TCP_SYN_SENT: u8 = SYN_SENT;
    const TCP_SYN_RECV: u8 = SYN_RECV;
    const TCP_FIN_WAIT1: u8 = FIN_WAIT1;
    const TCP_FIN_WAIT2: u8 = FIN_WAIT2;
    const TCP_CLOSE: u8 = CLOSE;
    const TCP_CLOSE_WAIT: u8 = CLOSE_WAIT;
    const TCP_LAST_ACK: u8 = LAST_ACK;
    const TCP_LISTEN: u8 = LISTEN;
    const TCP_CLOSING: u8 = CLOSING;

    const MS: u64 = 1_000_000;

    /// Runs `measure` over a socket's life as the kernel does (entry deleted
    /// at CLOSE) and returns what it recorded, as (kind, ns).
    fn life(steps: &[(u8, u8, u64)]) -> Vec<(u8, u64)> {
        let mut entry: Option<SockEntry> = None;
        let mut out = Vec::new();
        for &(old, new, now) in steps {
            let m = measure(entry.as_ref(), old, new, now);
            out.extend(m.values());
            let (handshake, handshake_ns) = (m.handshake, m.handshake_ns);
            entry = (new != TCP_CLOSE).then_some(SockEntry {
                skaddr: 1,
                entered_ns: now,
                handshake_ns,
                owner: 0,
                state: new,
                handshake,
                owner_source: 0,
                owner_passes: 1,
            });
        }
        out
    }

    #[test]
    fn client_connect_and_active_close_through_fin_wait2() {
        let rec = life(&[
            (TCP_CLOSE, TCP_SYN_SENT, 0),
            (TCP_SYN_SENT, TCP_ESTABLISHED, 2 * MS),
            (TCP_ESTABLISHED, TCP_FIN_WAIT1, 100 * MS),
            (TCP_FIN_WAIT1, TCP_FIN_WAIT2, 103 * MS),
            (TCP_FIN_WAIT2, TCP_CLOSE, 400 * MS), // TIME_WAIT
        ]);
        assert_eq!(
            rec,
            vec![
                (TCP_SYN_SENT, 2 * MS),
                (HS_CONNECT, 2 * MS),
                (TCP_ESTABLISHED, 98 * MS),
                (TCP_FIN_WAIT1, 3 * MS),
                (TCP_FIN_WAIT2, 297 * MS),
                (HS_ACTIVE_CLOSE, 300 * MS),
            ]
        );
    }

    #[test]
    fn simultaneous_close_goes_through_closing() {
        let rec = life(&[
            (TCP_CLOSE, TCP_SYN_SENT, 0),
            (TCP_SYN_SENT, TCP_ESTABLISHED, MS),
            (TCP_ESTABLISHED, TCP_FIN_WAIT1, 10 * MS),
            (TCP_FIN_WAIT1, TCP_CLOSING, 11 * MS),
            (TCP_CLOSING, TCP_CLOSE, 15 * MS),
        ]);
        assert_eq!(rec.last(), Some(&(HS_ACTIVE_CLOSE, 5 * MS)));
        assert!(rec.contains(&(TCP_CLOSING, 4 * MS)));
    }

    #[test]
    fn server_side_and_passive_close_split() {
        let rec = life(&[
            (TCP_LISTEN, TCP_SYN_RECV, 0),
            (TCP_SYN_RECV, TCP_ESTABLISHED, 10_000),
            (TCP_ESTABLISHED, TCP_CLOSE_WAIT, 50 * MS),
            (TCP_CLOSE_WAIT, TCP_LAST_ACK, 350 * MS),
            (TCP_LAST_ACK, TCP_CLOSE, 351 * MS),
        ]);
        assert_eq!(
            rec,
            vec![
                (TCP_SYN_RECV, 10_000),
                (HS_ACCEPT, 10_000),
                (TCP_ESTABLISHED, 50 * MS - 10_000),
                (TCP_CLOSE_WAIT, 300 * MS),
                (HS_PASSIVE_APP, 300 * MS),
                (TCP_LAST_ACK, MS),
                (HS_PASSIVE_CLOSE, 301 * MS),
                (HS_PASSIVE_LAST_ACK, MS),
            ]
        );
    }

    #[test]
    fn failures_and_unseen_beginnings_complete_nothing() {
        // Refused: SYN_SENT is measured, the connect never completes.
        assert_eq!(
            life(&[(TCP_CLOSE, TCP_SYN_SENT, 0), (TCP_SYN_SENT, TCP_CLOSE, MS)]),
            vec![(TCP_SYN_SENT, MS)]
        );
        // A reset in CLOSE_WAIT still ends the passive close.
        let rec = life(&[
            (TCP_ESTABLISHED, TCP_CLOSE_WAIT, 0),
            (TCP_CLOSE_WAIT, TCP_CLOSE, 5 * MS),
        ]);
        assert_eq!(
            rec,
            vec![
                (TCP_CLOSE_WAIT, 5 * MS),
                (HS_PASSIVE_CLOSE, 5 * MS),
                (HS_PASSIVE_APP, 5 * MS)
            ]
        );
        // Started before we looked (first event mid-handshake): nothing until
        // a state we saw begin, and no handshake.
        let rec = life(&[
            (TCP_FIN_WAIT1, TCP_FIN_WAIT2, 0),
            (TCP_FIN_WAIT2, TCP_CLOSE, 7 * MS),
        ]);
        assert_eq!(rec, vec![(TCP_FIN_WAIT2, 7 * MS)]);
        // A missed transition (entry in another state) measures nothing.
        let stale = SockEntry {
            skaddr: 1,
            entered_ns: 0,
            handshake_ns: 0,
            owner: 0,
            state: TCP_ESTABLISHED,
            handshake: HS_NONE,
            owner_source: 0,
            owner_passes: 1,
        };
        let n = |m: Measured| m.values().count();
        assert_eq!(n(measure(Some(&stale), TCP_FIN_WAIT2, TCP_CLOSE, MS)), 0);
        // A reused address: leaving CLOSE or a listener's child is a new socket.
        let old_socket = SockEntry {
            state: TCP_CLOSE,
            ..stale
        };
        assert_eq!(
            n(measure(Some(&old_socket), TCP_CLOSE, TCP_SYN_SENT, MS)),
            0
        );
        let listener = SockEntry {
            state: TCP_LISTEN,
            ..stale
        };
        assert_eq!(n(measure(Some(&listener), TCP_LISTEN, TCP_SYN_RECV, MS)), 0);
        // A clock that went backwards never underflows.
        let rec = life(&[(TCP_CLOSE, TCP_LISTEN, 10), (TCP_LISTEN, TCP_CLOSE, 5)]);
        assert_eq!(rec, vec![(TCP_LISTEN, 0)]);
    }

    #[test]
    fn socket_sets_spread_slab_addresses() {
        // struct tcp_sock objects sit about 2.5 KiB apart in 32 KiB slabs:
        // their low bits agree, the set must come from the others.
        let sets = 1 << 16;
        let mut used = std::collections::HashSet::new();
        for i in 0..4096u64 {
            let skaddr = 0xffff_8880_1000_0000 + (i / 12) * 32768 + (i % 12) * 2560;
            let set = crate::socket_set(skaddr, sets);
            assert!(set < sets);
            used.insert(set);
        }
        // 4096 sockets over 65536 sets: almost all alone.
        assert!(used.len() > 3900, "{}", used.len());
        assert_eq!(crate::socket_set(u64::MAX, 1), 0);
    }

    #[test]
    fn totals_index_every_kind_once() {
        let kinds: Vec<u8> = (1..=12).chain(HS_CONNECT..=HS_PASSIVE_LAST_ACK).collect();
        assert_eq!(kinds.len() as u32, TOTAL_KINDS);
        let mut seen = std::collections::BTreeSet::new();
        for k in kinds {
            for epoch in [0, 1, 2, 7, u32::MAX] {
                let i = crate::total_index(k, epoch).unwrap();
                assert!(i < TOTAL_KINDS * 2, "{k}");
                assert_eq!(i % 2, epoch % 2);
                assert_eq!(total_kind(i), k);
                seen.insert(i);
            }
        }
        assert_eq!(seen.len() as u32, TOTAL_KINDS * 2);
        for bad in [0, 13, 31, 38, 255] {
            assert_eq!(crate::total_index(bad, 0), None);
        }
    }
}
