//! The live sockets: which state each is in and since when, keyed by the
//! kernel's socket address. Bounded: when full, the sockets that changed state
//! longest ago are evicted and counted.

use std::{
    collections::{HashMap, hash_map::Entry},
    net::IpAddr,
};

use tcptrace_common::TcpState;

use crate::model::{
    event::{Event, Family},
    stack::Opened,
};

/// The 4-tuple that identifies a connected socket across tools.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub laddr: IpAddr,
    pub lport: u16,
    pub raddr: IpAddr,
    pub rport: u16,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Socket {
    pub state: TcpState,
    /// CLOCK_MONOTONIC ns when it entered `state`.
    pub since_ns: u64,
    pub family: Family,
    pub tuple: Tuple,
    pub inode: u64,
    /// The code that opened it, once it entered CLOSE_WAIT with stacks on.
    pub opened: Option<Opened>,
}

/// What one event did to the table.
#[derive(Debug, PartialEq)]
pub struct Applied<'a> {
    /// Time spent in the old state; `None` when the socket's earlier transition was not seen.
    pub dwell_ns: Option<u64>,
    /// The socket after the event (as it was removed, for CLOSE).
    pub socket: &'a Socket,
}

/// Kernel socket addresses are slab addresses, not chosen by anyone who
/// could aim collisions at the table: a fixed fast hash (foldhash's) serves,
/// where std's SipHash cost 5% of `watch --json`'s CPU.
pub(crate) type Hasher = foldhash::fast::FixedState;

pub struct SocketTable {
    sockets: HashMap<u64, Socket, Hasher>,
    cap: usize,
    evicted: u64,
    /// The states a socket is kept in ([`TcpState::bit`]s; 0: every state
    /// but CLOSE). A view that follows one state is sent only the
    /// transitions into and out of it: a socket that leaves it would wait
    /// for a CLOSE that never comes.
    keep: u16,
    /// The socket the last event removed, for [`Applied::socket`].
    gone: Option<Socket>,
}

pub const DEFAULT_MAX_SOCKETS: usize = 262_144;

impl SocketTable {
    pub fn new(cap: usize) -> Self {
        Self::keeping(cap, 0)
    }

    /// A table that keeps sockets only while they are in the states `keep`
    /// ([`TcpState::bit`]s; 0 for all).
    pub fn keeping(cap: usize, keep: u16) -> Self {
        Self {
            sockets: HashMap::with_hasher(Hasher::default()),
            cap: cap.max(1),
            evicted: 0,
            keep,
            gone: None,
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    pub fn iter(&self) -> impl Iterator<Item = (&u64, &Socket)> {
        self.sockets.iter()
    }

    #[cfg(test)]
    pub fn get(&self, key: u64) -> Option<&Socket> {
        self.sockets.get(&key)
    }

    /// Applies one transition and returns the time spent in the old state;
    /// `opened`: what opened the socket, when the transition says. The
    /// socket is updated in place: one hash lookup, no copy.
    pub fn apply(&mut self, ev: &Event, opened: Option<Opened>) -> Applied<'_> {
        let tuple = Tuple {
            laddr: ev.laddr,
            lport: ev.lport,
            raddr: ev.raddr,
            rport: ev.rport,
        };
        // CLOSE -> X and a listener's child are new lifecycles, even if the
        // address was used by a socket whose CLOSE we missed: nothing of the
        // previous socket at this address carries over.
        let fresh = tcptrace_common::starts_lifecycle(ev.oldstate as u8, ev.newstate as u8);
        let kept = ev.newstate != TcpState::Close
            && (self.keep == 0 || self.keep & ev.newstate.bit() != 0);
        let new = |opened: Option<Opened>| Socket {
            state: ev.newstate,
            since_ns: ev.ts_ns,
            family: ev.family,
            tuple,
            inode: ev.inode,
            opened,
        };
        // Full, and this socket is new to it: make room first (the O(n)
        // batch is amortised over cap/16 inserts).
        if kept && self.sockets.len() >= self.cap && !self.sockets.contains_key(&ev.skaddr) {
            self.make_room();
        }
        match self.sockets.entry(ev.skaddr) {
            Entry::Occupied(mut slot) => {
                let p = slot.get_mut();
                let dwell_ns = (!fresh && p.state == ev.oldstate)
                    .then(|| ev.ts_ns.checked_sub(p.since_ns))
                    .flatten();
                if fresh {
                    *p = new(opened);
                } else {
                    p.state = ev.newstate;
                    p.since_ns = ev.ts_ns;
                    p.family = ev.family;
                    // Ports can be 0 early in a lifecycle (connect() sets
                    // SYN_SENT before picking the local port): keep what we knew.
                    p.tuple = merge_tuple(Some(p.tuple), tuple);
                    if ev.inode != 0 {
                        p.inode = ev.inode;
                    }
                    if opened.is_some() {
                        p.opened = opened;
                    }
                }
                if kept {
                    Applied {
                        dwell_ns,
                        socket: slot.into_mut(),
                    }
                } else {
                    Applied {
                        dwell_ns,
                        socket: self.gone.insert(slot.remove()),
                    }
                }
            }
            Entry::Vacant(slot) => {
                let socket = new(opened);
                if kept {
                    Applied {
                        dwell_ns: None,
                        socket: slot.insert(socket),
                    }
                } else {
                    Applied {
                        dwell_ns: None,
                        socket: self.gone.insert(socket),
                    }
                }
            }
        }
    }

    fn make_room(&mut self) {
        let ages = self.sockets.iter().map(|(k, s)| (s.since_ns, *k));
        for key in eviction_batch(ages, self.cap) {
            if self.sockets.remove(&key).is_some() {
                self.evicted += 1;
            }
        }
    }
}

/// The keys to evict from a full map of `cap` entries, given (timestamp, key)
/// pairs: the oldest 1/16 of it, so the O(n) scan is amortised over many inserts.
pub fn eviction_batch(ages: impl Iterator<Item = (u64, u64)>, cap: usize) -> Vec<u64> {
    let batch = (cap / 16).max(1);
    let mut ages: Vec<(u64, u64)> = ages.collect();
    if batch < ages.len() {
        ages.select_nth_unstable(batch);
    }
    ages.into_iter().take(batch).map(|(_, k)| k).collect()
}

#[cfg(test)]
impl SocketTable {
    fn apply_test(&mut self, ev: &Event) -> Applied<'_> {
        self.apply(ev, None)
    }
}

/// The event's tuple, with what it left blank (a socket not bound or not
/// connected yet) filled in from what was known of the socket.
fn merge_tuple(prev: Option<Tuple>, now: Tuple) -> Tuple {
    let Some(prev) = prev else { return now };
    let mut t = now;
    if t.laddr.is_unspecified() {
        t.laddr = prev.laddr;
    }
    if t.lport == 0 {
        t.lport = prev.lport;
    }
    if t.raddr.is_unspecified() {
        t.raddr = prev.raddr;
    }
    if t.rport == 0 {
        t.rport = prev.rport;
    }
    t
}

#[cfg(test)]
mod tests {

    use super::*;

    use crate::model::event::test_event as ev;

    use TcpState::*;

    #[test]
    fn dwell_times_follow_a_lifecycle_and_close_removes() {
        let mut t = SocketTable::new(16);
        let k = 0xffff_0000_0000_0001;
        assert_eq!(t.apply_test(&ev(k, 10, Close, SynSent)).dwell_ns, None);
        assert_eq!(
            t.apply_test(&ev(k, 11, SynSent, Established)).dwell_ns,
            Some(1_000_000)
        );
        assert_eq!(
            t.apply_test(&ev(k, 311, Established, CloseWait)).dwell_ns,
            Some(300_000_000)
        );
        assert_eq!(t.get(k).unwrap().state, CloseWait);
        assert_eq!(
            t.apply_test(&ev(k, 312, CloseWait, LastAck)).dwell_ns,
            Some(1_000_000)
        );
        assert_eq!(
            t.apply_test(&ev(k, 313, LastAck, Close)).dwell_ns,
            Some(1_000_000)
        );
        assert!(t.get(k).is_none());
        assert!(t.is_empty());
    }

    #[test]
    fn unseen_or_mismatched_history_gives_none() {
        let mut t = SocketTable::new(16);
        let k = 0xffff_0000_0000_0002;
        assert_eq!(
            t.apply_test(&ev(k, 5, Established, FinWait1)).dwell_ns,
            None
        );
        // A lost FIN_WAIT2 event: the old state does not match what we hold.
        assert_eq!(t.apply_test(&ev(k, 6, FinWait2, Close)).dwell_ns, None);
    }

    #[test]
    fn address_reuse_starts_a_fresh_lifecycle() {
        let mut t = SocketTable::new(16);
        let k = 0xffff_0000_0000_0003;
        t.apply_test(&ev(k, 1, Close, SynSent));
        // The CLOSE was lost; the same address comes back as a new socket.
        let a = t.apply_test(&ev(k, 1000, Close, Listen));
        assert_eq!(a.dwell_ns, None);
        // Never a negative dwell time: a timestamp going backwards gives None.
        let b = t.apply_test(&ev(k, 999, Listen, Close));
        assert_eq!(b.dwell_ns, None);
    }

    #[test]
    fn ports_learnt_later_are_kept() {
        let mut t = SocketTable::new(16);
        let k = 0xffff_0000_0000_0004;
        let mut first = ev(k, 1, Close, SynSent);
        first.lport = 0;
        t.apply_test(&first);
        let a = t.apply_test(&ev(k, 2, SynSent, Established));
        assert_eq!(a.socket.tuple.lport, 5000);
        let mut late = ev(k, 3, Established, FinWait1);
        late.lport = 0;
        assert_eq!(t.apply_test(&late).socket.tuple.lport, 5000);
    }

    #[test]
    fn bounded_with_evictions_counted_oldest_first() {
        let mut t = SocketTable::new(32);
        for i in 0..100u64 {
            t.apply_test(&ev(0xffff_0000_0001_0000 + i, i, Close, SynSent));
        }
        assert!(t.len() <= 32, "{}", t.len());
        assert_eq!(t.evicted() as usize + t.len(), 100);
        // The newest socket survived, the oldest did not.
        assert!(t.get(0xffff_0000_0001_0000 + 99).is_some());
        assert!(t.get(0xffff_0000_0001_0000).is_none());
    }
}
