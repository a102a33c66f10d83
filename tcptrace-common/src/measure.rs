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
/// (bcc's first row, "0 -> 1"): the number of bits below `v`'s highest.
///
/// Without a branch: the verifier follows each branch of a compare-and-shift
/// search as its own path, with the bucket a known constant it then must
/// keep precise (it indexes memory), so every value counted in the kernel
/// split verification into 64 paths: hist's program took 80,000 verified
/// instructions (6.18) and 5.10's verifier, under TCG, more than 300 s for
/// serve's. Shifts, masks and additions (BPF has no count-leading-zeros or
/// population count instruction).
#[inline(always)]
pub const fn log2_bucket(v: u64) -> u8 {
    // Every bit below the highest of v >> 1 set: as many as the bucket.
    let mut s = v >> 1;
    s |= s >> 1;
    s |= s >> 2;
    s |= s >> 4;
    s |= s >> 8;
    s |= s >> 16;
    s |= s >> 32;
    // Count them: per 2, 4 and 8 bits, then the bytes summed into the low
    // one. Not the usual multiplication by 0x0101...: LLVM recognises that
    // as a population count, proves it below 64 and drops the caller's
    // `& 63`, which the verifier needs to bound an index with it.
    s -= (s >> 1) & 0x5555_5555_5555_5555;
    s = (s & 0x3333_3333_3333_3333) + ((s >> 2) & 0x3333_3333_3333_3333);
    s = (s + (s >> 4)) & 0x0f0f_0f0f_0f0f_0f0f;
    s += s >> 8;
    s += s >> 16;
    s += s >> 32;
    (s & 0x7f) as u8
}

/// What one transition measured: the time spent in the old state and any
/// handshake it completes (up to three values), and the handshake in
/// progress afterwards with when it began.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Measured {
    /// The values' kinds, a byte each: one word, because LLVM merges three
    /// byte stores of one value into a `memset` call on BPF (seen in
    /// `hist`'s program as a BPF-to-BPF call per transition).
    kinds: u32,
    ns: [u64; 3],
    len: usize,
    pub handshake: u8,
    pub handshake_ns: u64,
}

impl Measured {
    /// `(kind, ns)`: a state's dwell time or a handshake's duration. A
    /// constant-bound walk, which the BPF verifier follows (a slice's
    /// end-pointer loop it does not).
    pub fn values(&self) -> impl Iterator<Item = (u8, u64)> + '_ {
        (0..3)
            .filter(|i| *i < self.len)
            .map(|i| ((self.kinds >> (8 * i)) as u8, self.ns[i]))
    }

    /// Constant indices: with a variable one, LLVM may turn the stack
    /// address arithmetic into an `or`, which the verifier refuses on a pointer.
    fn push(&mut self, kind: u8, ns: u64) {
        let shift = match self.len {
            0 => {
                self.ns[0] = ns;
                0
            }
            1 => {
                self.ns[1] = ns;
                8
            }
            2 => {
                self.ns[2] = ns;
                16
            }
            _ => return,
        };
        self.kinds = self.kinds & !(0xff << shift) | u32::from(kind) << shift;
        self.len += 1;
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
/// callback is a BPF-to-BPF call per value.
///
/// No field starts as a constant: a result zeroed first was a 43-byte fill,
/// which LLVM made a call to a byte-loop `memset` on BPF (some 200
/// instructions per transition of `hist` and `serve`). The slots past `len`
/// hold copies of real values and are never read. The values are pushed in
/// branches, so the verifier knows `len` on each path.
#[inline(always)]
pub fn measure(prev: Option<&SockEntry>, old: u8, new: u8, now: u64) -> Measured {
    // An entry in another state means we missed a transition: its times are stale.
    let prev = match prev {
        Some(p) if !starts_lifecycle(old, new) && p.state == old => Some(p),
        _ => None,
    };
    let (handshake, handshake_ns) = match new {
        SYN_SENT => (HS_CONNECT, now),
        SYN_RECV => (HS_ACCEPT, now),
        FIN_WAIT1 => (HS_ACTIVE_CLOSE, now),
        CLOSE_WAIT => (HS_PASSIVE_CLOSE, now),
        // The middle of a handshake: it goes on if we saw it begin.
        FIN_WAIT2 | CLOSING | LAST_ACK => match prev {
            Some(p) => (p.handshake, p.handshake_ns),
            None => (HS_NONE, 0),
        },
        _ => (HS_NONE, 0),
    };
    let mut m = Measured {
        kinds: u32::from(old) * 0x0001_0101,
        ns: [now; 3],
        len: 0,
        handshake,
        handshake_ns,
    };
    if let Some(p) = prev {
        let dwell = now.saturating_sub(p.entered_ns);
        m.push(old, dwell);
        let completes = matches!(
            (p.handshake, new),
            (HS_CONNECT | HS_ACCEPT, ESTABLISHED) | (HS_ACTIVE_CLOSE | HS_PASSIVE_CLOSE, CLOSE)
        );
        if completes {
            m.push(p.handshake, now.saturating_sub(p.handshake_ns));
        }
        if p.handshake == HS_PASSIVE_CLOSE {
            if old == CLOSE_WAIT {
                m.push(HS_PASSIVE_APP, dwell);
            } else if old == LAST_ACK {
                m.push(HS_PASSIVE_LAST_ACK, dwell);
            }
        }
    }
    m
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
