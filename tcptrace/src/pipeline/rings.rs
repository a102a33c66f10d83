//! The kernel's rings (one per CPU, see `tcptrace_common::RINGS`) read as
//! one stream, with each socket's transitions in the order they happened.
//!
//! TCP serialises a socket's transitions (its lock, or the softirq holding
//! it), and the program submits the record of one before the next one reads
//! the clock. So every earlier record of a socket, in whatever ring, was
//! committed before a later one's `ts_ns` was taken. A record read from ring
//! i is released once, for every other ring j, the reader has either found
//! j empty after reading it, or read from j a record stamped later: every
//! record j holds that was reserved before that clock read, its earlier
//! records included, comes first in j. Released records go out in `ts_ns`
//! order; the rest wait for the next drain.

use std::{collections::HashMap, io, task::Poll};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use tokio::io::{Interest, unix::AsyncFd};

use crate::{
    kernel::decode,
    model::{event::Event, socket_table::Hasher},
};

pub struct RingReader {
    rings: Vec<AsyncFd<RingBuf<MapData>>>,
    state: Order,
}

impl RingReader {
    pub fn new(rings: Vec<RingBuf<MapData>>) -> anyhow::Result<Self> {
        let n = rings.len();
        let rings = rings
            .into_iter()
            .map(|ring| {
                // SAFETY: the ring owns its map fd, which stays open until the AsyncFd drops it.
                unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
                    .map_err(|e| e.into_parts().1)
                    .context("polling the ring buffer")
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            rings,
            state: Order::new(n),
        })
    }

    /// Until the kernel wakes us on some ring.
    pub async fn readable(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| {
            let mut ready = false;
            for fd in &mut self.rings {
                match fd.poll_read_ready_mut(cx) {
                    Poll::Ready(Ok(mut guard)) => {
                        guard.clear_ready();
                        ready = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
            }
            if ready {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        })
        .await
    }

    /// Reads every ring twice (the second pass is what releases most of
    /// the first's records), at most `budget` records in all, and hands the
    /// released ones to `handle`, in order. Returns whether some ring was
    /// left unread for the budget.
    pub fn drain(
        &mut self,
        budget: usize,
        undecodable: &mut u64,
        handle: impl FnMut(&Event) -> io::Result<()>,
    ) -> io::Result<bool> {
        let per_ring = (budget / (2 * self.rings.len())).max(1);
        let mut backlog = false;
        for _pass in 0..2 {
            for (i, fd) in self.rings.iter_mut().enumerate() {
                let ring = fd.get_mut();
                let mut n = 0;
                loop {
                    if n == per_ring {
                        backlog = true;
                        break;
                    }
                    let Some(item) = ring.next() else {
                        self.state.emptied(i);
                        break;
                    };
                    n += 1;
                    match decode::decode(&item) {
                        Ok(ev) => self.state.read(i, ev),
                        Err(e) => {
                            *undecodable += 1;
                            log::warn!("undecodable ring buffer record: {e}");
                        }
                    }
                }
            }
        }
        self.state.release(false, handle)?;
        Ok(backlog)
    }

    /// Hands everything still held to `handle`, in `ts_ns` order: the trace
    /// is ending, the programs detached and the rings read to the end, so
    /// nothing held can still be waiting for a record in flight.
    pub fn finish(&mut self, handle: impl FnMut(&Event) -> io::Result<()>) -> io::Result<()> {
        self.state.release(true, handle)
    }
}

/// What the reader knows of the rings: the ordering half of [`RingReader`],
/// apart from the maps so that it can be tested.
struct Order {
    rings: Vec<Ring>,
    /// Read and not released, in the order read.
    held: Vec<Read>,
    /// Counts the reads, records and empty rings alike: orders them.
    seq: u64,
    /// Kept between releases for their allocations: the released records'
    /// sort keys (stamp, read, index in `held`), the waiting ones' indices,
    /// the latest released stamp of each waiting socket.
    keys: Vec<(u64, u64, usize)>,
    waiting: Vec<usize>,
    latest: HashMap<u64, u64, Hasher>,
}

#[derive(Clone, Copy, Default)]
struct Ring {
    /// The read that last found it empty.
    emptied_seq: u64,
    /// The latest stamp read from it.
    latest_ts: u64,
}

#[derive(Clone, Copy)]
struct Read {
    seq: u64,
    ring: usize,
    ev: Event,
}

impl Order {
    fn new(rings: usize) -> Self {
        Self {
            rings: vec![Ring::default(); rings],
            held: Vec::new(),
            seq: 0,
            keys: Vec::new(),
            waiting: Vec::new(),
            latest: HashMap::with_hasher(Hasher::default()),
        }
    }

    fn read(&mut self, ring: usize, ev: Event) {
        self.seq += 1;
        let r = &mut self.rings[ring];
        r.latest_ts = r.latest_ts.max(ev.ts_ns);
        self.held.push(Read {
            seq: self.seq,
            ring,
            ev,
        });
    }

    fn emptied(&mut self, ring: usize) {
        self.seq += 1;
        self.rings[ring].emptied_seq = self.seq;
    }

    /// Whether every record stamped before `r` was, in every other ring, read.
    fn settled(&self, r: &Read) -> bool {
        self.rings
            .iter()
            .enumerate()
            .all(|(j, ring)| j == r.ring || ring.emptied_seq > r.seq || ring.latest_ts > r.ev.ts_ns)
    }

    /// Hands the settled records (all, with `all`) to `handle` in `ts_ns`
    /// order, and keeps the others.
    fn release(
        &mut self,
        all: bool,
        mut handle: impl FnMut(&Event) -> io::Result<()>,
    ) -> io::Result<()> {
        self.keys.clear();
        self.waiting.clear();
        for (i, r) in self.held.iter().enumerate() {
            if all || self.settled(r) {
                self.keys.push((r.ev.ts_ns, r.seq, i));
            } else {
                self.waiting.push(i);
            }
        }
        if !self.waiting.is_empty() && !self.keys.is_empty() {
            // A record waiting because of another ring may be an earlier
            // record of a socket that a released one is a later record of;
            // it goes with it. Its own earlier records are that one's too,
            // so all read.
            self.latest.clear();
            for &i in &self.waiting {
                self.latest.insert(self.held[i].ev.skaddr, 0);
            }
            for &(ts, _, i) in &self.keys {
                if let Some(t) = self.latest.get_mut(&self.held[i].ev.skaddr) {
                    *t = (*t).max(ts);
                }
            }
            let (held, latest, keys) = (&self.held, &self.latest, &mut self.keys);
            self.waiting.retain(|&i| {
                let r = &held[i];
                let goes = latest.get(&r.ev.skaddr).is_some_and(|&t| r.ev.ts_ns < t);
                if goes {
                    keys.push((r.ev.ts_ns, r.seq, i));
                }
                !goes
            });
        }
        // Runs already in order (each ring's own), merged: a stable sort
        // finds the runs.
        self.keys.sort_by_key(|&(ts, seq, _)| (ts, seq));
        let mut result = Ok(());
        for &(_, _, i) in &self.keys {
            result = handle(&self.held[i].ev);
            if result.is_err() {
                break;
            }
        }
        // Keep the waiting records, in the order read.
        for (kept, &i) in self.waiting.iter().enumerate() {
            self.held.swap(kept, i);
        }
        self.held.truncate(self.waiting.len());
        result
    }
}

#[cfg(test)]
mod tests {
    use tcptrace_common::TcpState::*;

    use super::*;
    use crate::model::event::test_event as ev;

    fn released_as(o: &mut Order, all: bool) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        o.release(all, |e| {
            out.push((e.skaddr, e.ts_ns / 1_000_000));
            Ok(())
        })
        .unwrap();
        out
    }

    fn released(o: &mut Order) -> Vec<(u64, u64)> {
        released_as(o, false)
    }

    #[test]
    fn one_ring_releases_everything_at_once() {
        let mut o = Order::new(1);
        o.read(0, ev(1, 2, SynSent, Established));
        o.read(0, ev(2, 1, SynSent, Established));
        assert_eq!(released(&mut o), [(2, 1), (1, 2)]);
        assert!(o.held.is_empty());
    }

    #[test]
    fn a_record_waits_until_every_other_ring_was_found_empty_after_it() {
        let mut o = Order::new(2);
        // Pass 1: ring 0 empty, then ring 1 holds a socket's later record.
        o.emptied(0);
        o.read(1, ev(7, 20, CloseWait, LastAck));
        o.emptied(1);
        // Pass 2: its earlier record, committed meanwhile, is in ring 0.
        o.read(0, ev(7, 10, Established, CloseWait));
        o.emptied(0);
        o.emptied(1);
        assert_eq!(released(&mut o), [(7, 10), (7, 20)]);
    }

    #[test]
    fn a_record_read_after_another_ring_was_last_found_empty_waits() {
        let mut o = Order::new(2);
        o.emptied(0);
        o.emptied(1);
        o.emptied(0);
        // Ring 0 was not looked at after this: an earlier record of
        // socket 7 may be committing there.
        o.read(1, ev(7, 20, CloseWait, LastAck));
        o.emptied(1);
        assert_eq!(released(&mut o), []);
        // The next drain finds it.
        o.read(0, ev(7, 10, Established, CloseWait));
        o.emptied(0);
        o.emptied(1);
        assert_eq!(released(&mut o), [(7, 10), (7, 20)]);
    }

    #[test]
    fn a_later_stamp_in_a_busy_ring_settles_records_without_it_emptying() {
        let mut o = Order::new(2);
        o.read(0, ev(1, 5, SynSent, Established));
        o.read(1, ev(2, 10, SynSent, Established));
        o.emptied(1);
        o.read(0, ev(3, 11, SynSent, Established));
        // Ring 0 never emptied: its record at 11 settles ring 1's at 10.
        // The one at 11 waits: ring 1 was last found empty before it was
        // read, and holds nothing stamped later.
        assert_eq!(released(&mut o), [(1, 5), (2, 10)]);
        assert_eq!(o.held.len(), 1);
        o.emptied(1);
        assert_eq!(released(&mut o), [(3, 11)]);
    }

    #[test]
    fn a_waiting_earlier_record_of_a_released_socket_goes_with_it() {
        let mut o = Order::new(3);
        // Socket 7's later record, from ring 0: rings 1 and 2 are found
        // empty after it, so it is released.
        o.read(0, ev(7, 20, CloseWait, LastAck));
        o.emptied(2);
        // Its earlier record, from ring 1, was read after ring 2 was last
        // found empty: on its own it would wait, as socket 8's does.
        o.read(1, ev(7, 10, Established, CloseWait));
        o.read(1, ev(8, 15, SynSent, Established));
        o.emptied(1);
        o.emptied(0);
        assert_eq!(released(&mut o), [(7, 10), (7, 20)]);
        assert_eq!(o.held.len(), 1);
        assert_eq!(released_as(&mut o, true), [(8, 15)]);
        assert!(o.held.is_empty());
    }

    /// Producers and the reader interleaved at random: CPUs reserve records
    /// in their rings (stamped before the reserve, committed some steps
    /// later, as a program runs), a socket's next transition only once its
    /// last record was committed, and the reader reads each ring up to its
    /// first uncommitted record, with producer steps between ring reads.
    /// Every socket's records must come out in order, none twice, none lost.
    /// Socket `sk`'s record number `n` (carried in `inode`), stamped `ts`.
    fn record(ts: u64, sk: u64, n: u64) -> Event {
        Event {
            ts_ns: ts,
            inode: n,
            ..ev(sk, 0, Established, CloseWait)
        }
    }

    #[test]
    fn interleaved_producers_never_reorder_a_socket() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rand = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for rings in 1..=4usize {
            let sockets = 6u64;
            let mut o = Order::new(rings);
            // Per ring: (stamp, socket, its record number, committed).
            let mut queue: Vec<std::collections::VecDeque<(u64, u64, u64, bool)>> =
                vec![Default::default(); rings];
            let mut next = vec![0u64; sockets as usize];
            let mut busy = vec![false; sockets as usize];
            let mut out: Vec<(u64, u64)> = Vec::new();
            let mut clock = 0;
            for step in 0..20_000 {
                clock += 1;
                // A producer step: commit a pending record, or start one.
                if rand(2) == 0 {
                    let r = rand(rings as u64) as usize;
                    if let Some(rec) = queue[r].iter_mut().find(|rec| !rec.3) {
                        rec.3 = true;
                        busy[rec.1 as usize] = false;
                    }
                } else {
                    let sk = rand(sockets);
                    if !busy[sk as usize] {
                        busy[sk as usize] = true;
                        let r = rand(rings as u64) as usize;
                        queue[r].push_back((clock, sk, next[sk as usize], false));
                        next[sk as usize] += 1;
                    }
                }
                // Now and then the reader reads one ring.
                if step % 3 == 0 {
                    let r = rand(rings as u64) as usize;
                    while queue[r].front().is_some_and(|rec| rec.3) {
                        let (ts, sk, n, _) = queue[r].pop_front().unwrap();
                        o.read(r, record(ts, sk, n));
                    }
                    if queue[r].is_empty() {
                        o.emptied(r);
                    }
                    if rand(rings as u64) == 0 {
                        o.release(false, |e| {
                            out.push((e.skaddr, e.inode));
                            Ok(())
                        })
                        .unwrap();
                    }
                }
            }
            // Drain the rest: commit everything, read, release.
            for (r, q) in queue.iter_mut().enumerate() {
                for (ts, sk, n, _) in q.drain(..) {
                    o.read(r, record(ts, sk, n));
                }
            }
            o.release(true, |e| {
                out.push((e.skaddr, e.inode));
                Ok(())
            })
            .unwrap();
            let mut seen = vec![0u64; sockets as usize];
            for (sk, n) in out {
                assert_eq!(
                    n, seen[sk as usize],
                    "{rings} rings: socket {sk} out of order"
                );
                seen[sk as usize] += 1;
            }
            assert_eq!(seen, next, "{rings} rings: every record, once");
        }
    }
}
