//! Fair connection limits: at most [`PER_SOURCE`] connections from one
//! address and [`TOTAL`] in all. When a limit is reached, a connection that
//! is idle (waiting for a request) is closed to make room, never one being
//! answered: first one of the address with the most connections, then one
//! that never sent a whole request, then the one idle longest. A client
//! holding many half-sent requests so only ever pushes out its own, and a
//! scraper's single connection is the last to go.

use std::{
    cmp::Reverse,
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Instant,
};

use tokio::sync::oneshot;

/// Connections in all; scrapers hold one each.
pub const TOTAL: usize = 64;
/// Connections from one address (one IPv6 /64).
pub const PER_SOURCE: usize = 8;

/// Where a connection comes from: an IPv4 address, or an IPv6 /64 (one
/// host can hold a whole /64).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Source(IpAddr);

impl Source {
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(IpAddr::V4(v4)),
                None => {
                    let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                    Self(IpAddr::V6(prefix.into()))
                }
            },
            v4 => Self(v4),
        }
    }
}

pub struct Limits {
    table: Mutex<Table>,
    total: usize,
    per_source: usize,
}

#[derive(Default)]
struct Table {
    conns: HashMap<u64, Entry>,
    per_source: HashMap<Source, usize>,
    next: u64,
}

struct Entry {
    peer: SocketAddr,
    source: Source,
    /// Answering a request: never closed to make room.
    busy: bool,
    /// Has sent a whole request before.
    served: bool,
    idle_since: Instant,
    /// Dropped to tell the connection to close.
    shed: Option<oneshot::Sender<()>>,
}

/// A connection's place in the table; gives it back when dropped.
pub struct Slot {
    limits: Arc<Limits>,
    id: u64,
}

/// Which limit a new connection met.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Limit {
    Source,
    Total,
}

/// A connection let in, with the one closed to make room for it.
pub struct Admitted {
    pub slot: Slot,
    /// Completes when the connection is closed to make room for another.
    pub shed: oneshot::Receiver<()>,
    pub displaced: Option<(SocketAddr, Limit)>,
}

impl Limits {
    pub fn new(total: usize, per_source: usize) -> Arc<Self> {
        Arc::new(Self {
            table: Mutex::new(Table::default()),
            total,
            per_source,
        })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lets a connection from `peer` in, closing an idle one if a limit is
    /// reached; refused (with the limit) only when every candidate is busy.
    pub fn admit(self: &Arc<Self>, peer: SocketAddr, now: Instant) -> Result<Admitted, Limit> {
        let source = Source::of(peer.ip());
        let mut t = self.table();
        let mine = t.per_source.get(&source).copied().unwrap_or(0);
        let limit = if mine >= self.per_source {
            Some(Limit::Source)
        } else if t.conns.len() >= self.total {
            Some(Limit::Total)
        } else {
            None
        };
        let displaced = match limit {
            None => None,
            Some(limit) => {
                let id = t.victim(source, limit == Limit::Source).ok_or(limit)?;
                let gone = t.remove(id).expect("the victim is in the table");
                Some((gone.peer, limit))
            }
        };
        let (tx, rx) = oneshot::channel();
        let id = t.next;
        t.next += 1;
        t.conns.insert(
            id,
            Entry {
                peer,
                source,
                busy: false,
                served: false,
                idle_since: now,
                shed: Some(tx),
            },
        );
        *t.per_source.entry(source).or_default() += 1;
        Ok(Admitted {
            slot: Slot {
                limits: self.clone(),
                id,
            },
            shed: rx,
            displaced,
        })
    }

    #[cfg(test)]
    fn open(&self) -> usize {
        self.table().conns.len()
    }
}

impl Table {
    /// The idle connection to close for a newcomer from `source`: its own
    /// when its address is at its limit, else one of an address holding
    /// more than it does.
    fn victim(&self, source: Source, own_only: bool) -> Option<u64> {
        let count = |s: &Source| self.per_source.get(s).copied().unwrap_or(0);
        let mine = count(&source);
        self.conns
            .iter()
            .filter(|(_, e)| !e.busy)
            .filter(|(_, e)| e.source == source || (!own_only && count(&e.source) > mine))
            .min_by_key(|(_, e)| (Reverse(count(&e.source)), e.served, e.idle_since))
            .map(|(id, _)| *id)
    }

    fn remove(&mut self, id: u64) -> Option<Entry> {
        let mut e = self.conns.remove(&id)?;
        if let Some(n) = self.per_source.get_mut(&e.source) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&e.source);
            }
        }
        // Dropping the sender wakes the connection's task, which closes it.
        e.shed.take();
        Some(e)
    }
}

impl Slot {
    /// A request's head has arrived: not to be closed while it is answered.
    pub fn busy(&self) {
        if let Some(e) = self.limits.table().conns.get_mut(&self.id) {
            e.busy = true;
            e.served = true;
        }
    }

    /// Whether a whole request has come on this connection.
    pub fn served(&self) -> bool {
        self.limits
            .table()
            .conns
            .get(&self.id)
            .is_some_and(|e| e.served)
    }

    /// Answered: idle again, from now.
    pub fn idle(&self) {
        if let Some(e) = self.limits.table().conns.get_mut(&self.id) {
            e.busy = false;
            e.idle_since = Instant::now();
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limits.table().remove(self.id);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn addr(host: u8, port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, host], port))
    }

    #[test]
    fn one_address_only_ever_displaces_itself() {
        let limits = Limits::new(4, 2);
        let t0 = Instant::now();
        let scraper = limits.admit(addr(1, 1), t0).unwrap();
        let mut slow: Vec<Admitted> = Vec::new();
        for port in 0..100u16 {
            let at = t0 + Duration::from_millis(u64::from(port) + 1);
            let a = limits.admit(addr(2, port), at).unwrap();
            if port >= 2 {
                // Its own oldest goes.
                assert_eq!(a.displaced, Some((addr(2, port - 2), Limit::Source)));
            }
            slow.push(a);
        }
        assert_eq!(limits.open(), 3);
        drop(scraper);
        assert_eq!(limits.open(), 2);
    }

    #[test]
    fn a_full_server_displaces_the_biggest_address_never_the_scraper() {
        let limits = Limits::new(8, 4);
        let t0 = Instant::now();
        let scraper = limits.admit(addr(1, 1), t0).unwrap();
        scraper.slot.busy();
        scraper.slot.idle();
        let mut held = vec![scraper];
        let mut shed_peers = Vec::new();
        for i in 0..200u16 {
            let host = 2 + (i % 5) as u8;
            let at = t0 + Duration::from_millis(u64::from(i) + 1);
            let a = limits.admit(addr(host, i), at).unwrap();
            if let Some((peer, _)) = a.displaced {
                shed_peers.push(peer);
            }
            held.push(a);
        }
        assert_eq!(limits.open(), 8);
        assert!(!shed_peers.contains(&addr(1, 1)), "the scraper was shed");
        assert!(
            held[0]
                .shed
                .try_recv()
                .is_err_and(|e| e == oneshot::error::TryRecvError::Empty)
        );
    }

    #[test]
    fn busy_connections_are_never_closed() {
        let limits = Limits::new(2, 2);
        let now = Instant::now();
        let a = limits.admit(addr(1, 1), now).unwrap();
        let b = limits.admit(addr(1, 2), now).unwrap();
        a.slot.busy();
        b.slot.busy();
        assert_eq!(limits.admit(addr(1, 3), now).err(), Some(Limit::Source));
        assert_eq!(limits.admit(addr(2, 3), now).err(), Some(Limit::Total));
        b.slot.idle();
        let c = limits.admit(addr(2, 4), now).unwrap();
        assert_eq!(c.displaced, Some((addr(1, 2), Limit::Total)));
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        assert_eq!(Source::of(a), Source::of(b));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(Source::of(mapped), Source::of("10.0.0.1".parse().unwrap()));
    }
}
