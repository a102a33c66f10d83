//! The CLOSE_WAIT sockets that exist now, in every network namespace, with
//! their holders and ages, grouped by holding process, worst first.
//!
//! Which sockets exist and their inodes: a dump of each namespace (see
//! `host::netns`); who holds them: `/proc/*/fd`; how long they have been
//! there: the traced transition into CLOSE_WAIT when there was one, else a
//! lower bound (the time since the last ACK arrived, from `tcp_info`, or
//! since tcptrace first saw the socket), else unknown.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::IpAddr,
    time::{Duration, Instant},
};

use tcptrace_common::TcpState;

use crate::{
    host::{
        cgroup::container_id,
        holders::{Holder, HolderIndex, ProcessFacts},
        netns::{self, Namespace, Route},
        sockdiag::DiagSocket,
    },
    model::event::{Family, endpoint},
    model::{
        selection::Selection,
        socket_table::{SocketTable, Tuple},
        stack::Opened,
    },
};

/// tcp_info counts its ages in jiffies (10 ms at HZ=100): an entry into
/// CLOSE_WAIT estimated this close to the table's reading may be after it.
const ENTRY_SLACK_NS: u64 = 20_000_000;

/// How old a CLOSE_WAIT socket is, and how that is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Age {
    /// Nothing tells: seen for the first time, without `tcp_info`.
    Unknown,
    /// At least this old: it predates what tcptrace saw.
    AtLeast(Duration),
    /// Measured from its traced transition into CLOSE_WAIT.
    Exact(Duration),
}

impl Age {
    /// The duration known, exact or a lower bound.
    pub fn known(self) -> Option<Duration> {
        match self {
            Self::Unknown => None,
            Self::AtLeast(d) | Self::Exact(d) => Some(d),
        }
    }

    /// For ordering "oldest first": the duration known (unknown as zero).
    fn sort_key(self) -> Duration {
        self.known().unwrap_or_default()
    }
}

/// One CLOSE_WAIT socket with its age and holders.
#[derive(Clone, Debug, PartialEq)]
pub struct LeakSocket {
    pub tuple: Tuple,
    pub inode: u64,
    pub netns: u64,
    pub age: Age,
    /// Accepted from one of our listeners: the peer's port is ephemeral, so
    /// the text view groups such peers by address and our listening port.
    pub server_side: bool,
    pub holders: Vec<Holder>,
    /// The code that opened it, with stacks on.
    pub opened: Option<Opened>,
}

impl LeakSocket {
    pub fn peer_label(&self) -> String {
        if self.server_side {
            format!("{} \u{2192} :{}", self.tuple.raddr, self.tuple.lport)
        } else {
            endpoint(self.tuple.raddr, self.tuple.rport)
        }
    }
}

/// One row: a process (pid + start time, so pid reuse cannot merge two).
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessLeaks {
    pub pid: u32,
    pub start_time: u64,
    pub comm: String,
    pub sockets: Vec<LeakSocket>,
    pub fds: Option<u64>,
    pub fd_limit: Option<u64>,
    pub growth_1m: Option<i64>,
    /// Short container id when the process's cgroup shows one.
    pub container: Option<String>,
    /// Its network namespace's inode.
    pub netns: Option<u64>,
    /// Whether that namespace is not tcptrace's own (a pod, a container).
    pub other_netns: bool,
}

impl ProcessLeaks {
    /// Open fds, fd limit and container, if the process (same start time)
    /// still runs (`facts`, from [`HolderIndex::facts`]).
    pub fn fill_process_facts(&mut self, facts: Option<ProcessFacts>) {
        if let Some(f) = facts {
            self.fds = Some(f.open_fds);
            self.fd_limit = f.fd_limit;
            self.container = f.cgroup.as_deref().and_then(container_id);
        }
    }

    pub fn oldest(&self) -> Option<&LeakSocket> {
        self.sockets.iter().max_by_key(|s| s.age.sort_key())
    }

    /// Sockets known to be at least `min_age` old (an unknown age counts
    /// only when any age does).
    pub fn older_than(&self, min_age: Duration) -> usize {
        self.sockets
            .iter()
            .filter(|s| min_age.is_zero() || s.age.known().is_some_and(|a| a >= min_age))
            .count()
    }

    /// (peer label, count) for the text view, most frequent first.
    pub fn peer_labels(&self) -> Vec<(String, usize)> {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for s in &self.sockets {
            *counts.entry(s.peer_label()).or_default() += 1;
        }
        let mut v: Vec<_> = counts.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }

    /// The code that opened its sockets, with how many each: most first.
    pub fn opened_by(&self) -> Vec<(&Opened, usize)> {
        let mut counts: Vec<(&Opened, usize)> = Vec::new();
        for s in &self.sockets {
            let Some(o) = &s.opened else { continue };
            match counts.iter_mut().find(|(k, _)| *k == o) {
                Some((_, n)) => *n += 1,
                None => counts.push((o, 1)),
            }
        }
        counts.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        counts
    }

    /// (raddr, rport, count), most frequent first.
    pub fn peers(&self) -> Vec<(IpAddr, u16, usize)> {
        let mut counts: HashMap<(IpAddr, u16), usize> = HashMap::new();
        for s in &self.sockets {
            *counts.entry((s.tuple.raddr, s.tuple.rport)).or_default() += 1;
        }
        let mut v: Vec<_> = counts.into_iter().map(|((a, p), n)| (a, p, n)).collect();
        v.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)).then(a.1.cmp(&b.1)));
        v
    }
}

/// Worst first: most sockets, then oldest, then by pid.
pub fn sort_worst_first(rows: &mut [ProcessLeaks]) {
    rows.sort_by(|a, b| {
        b.sockets
            .len()
            .cmp(&a.sockets.len())
            .then_with(|| {
                let age = |r: &ProcessLeaks| r.oldest().map(|s| s.age.sort_key());
                age(b).cmp(&age(a))
            })
            .then(a.pid.cmp(&b.pid))
    });
}

/// Groups sockets by holding process, worst first.
pub fn group(sockets: Vec<LeakSocket>, own_netns: u64) -> Vec<ProcessLeaks> {
    let mut by_proc: HashMap<(u32, u64), ProcessLeaks> = HashMap::new();
    for s in sockets {
        let mut holders: Vec<(u32, u64, &str, Option<u64>)> = s
            .holders
            .iter()
            .map(|h| (h.pid, h.start_time, h.comm.as_str(), h.netns))
            .collect();
        holders.dedup_by_key(|h| (h.0, h.1));
        if holders.is_empty() {
            // Nobody holds a file for it (not accepted, or the holder is gone).
            holders.push((0, 0, "?", Some(s.netns)));
        }
        for (pid, start_time, comm, netns) in holders {
            by_proc
                .entry((pid, start_time))
                .or_insert_with(|| ProcessLeaks {
                    pid,
                    start_time,
                    comm: comm.to_owned(),
                    sockets: Vec::new(),
                    fds: None,
                    fd_limit: None,
                    growth_1m: None,
                    container: None,
                    netns,
                    other_netns: netns.is_some_and(|n| n != own_netns),
                })
                .sockets
                .push(s.clone());
        }
    }
    let mut rows: Vec<ProcessLeaks> = by_proc.into_values().collect();
    for r in &mut rows {
        r.sockets.sort_by(|a, b| {
            b.age
                .sort_key()
                .cmp(&a.age.sort_key())
                .then(a.tuple.lport.cmp(&b.tuple.lport))
        });
    }
    sort_worst_first(&mut rows);
    rows
}

/// Collects the CLOSE_WAIT sockets that exist now.
pub struct Collector {
    index: HolderIndex,
    /// When each socket we did not see enter CLOSE_WAIT was first seen, or
    /// its estimated entry, so its age grows from a fixed point instead of
    /// being re-guessed; with whether that point is only when we first saw it.
    estimates: HashMap<(u64, u64, Tuple), (u64, bool)>,
    selection: Selection,
    route: Route,
    own_netns: u64,
    warned_unreadable: bool,
    /// Stacks are taken: say what opened each socket.
    stacks: bool,
    /// Fed by a running trace: a socket that entered CLOSE_WAIT since the
    /// last refresh has its transition on the way, not yet in the table.
    live: bool,
    refreshes: u64,
}

impl Collector {
    /// `live`: fed by a running trace (else one snapshot, `--once`).
    pub fn new(selection: Selection, stacks: bool, live: bool) -> anyhow::Result<Self> {
        let mut index = HolderIndex::new();
        // A refresh rescans on purpose; misses after it need no second scan.
        index.set_min_full_rescan(Duration::from_secs(3600));
        Ok(Self {
            index,
            estimates: HashMap::new(),
            selection,
            route: Route::available(),
            warned_unreadable: false,
            stacks,
            live,
            refreshes: 0,
            own_netns: netns::own().map_err(anyhow::Error::from).map_err(|e| {
                e.context("reading tcptrace's own network namespace (/proc/thread-self/ns/net)")
            })?,
        })
    }

    /// The network namespaces of the last scan.
    pub fn namespaces(&self) -> Vec<Namespace> {
        self.index.namespaces()
    }

    /// How other namespaces are read.
    pub fn route(&self) -> Route {
        self.route
    }

    /// `table`: sockets whose entry into CLOSE_WAIT was traced give exact ages.
    pub fn collect(
        &mut self,
        table: &SocketTable,
        now_ns: u64,
    ) -> anyhow::Result<Vec<ProcessLeaks>> {
        // Traced into CLOSE_WAIT: the inode it had then names it (tuples
        // repeat across namespaces).
        let traced: HashMap<u64, (u64, Option<&Opened>)> = table
            .iter()
            .filter(|(_, s)| s.state == TcpState::CloseWait && s.inode != 0)
            .map(|(_, s)| (s.inode, (s.since_ns, s.opened.as_ref())))
            .collect();
        self.index.full_scan();
        let unreadable = self.index.unreadable();
        if unreadable > 0 && !self.warned_unreadable {
            eprintln!(
                "tcptrace: warning: {unreadable} {} could not be read in /proc ({}; {}): the CLOSE_WAIT sockets they hold, and those of network namespaces only they are in, are missing",
                if unreadable == 1 {
                    "process"
                } else {
                    "processes"
                },
                named_pids(self.index.unreadable_pids(), unreadable),
                unreadable_why()
            );
            self.warned_unreadable = true;
        }
        let states = u32::from(TcpState::mask(&[TcpState::CloseWait, TcpState::Listen]));
        let family = self.selection.family.map(Family::af);
        let host = netns::dump_all(&self.index.namespaces(), states, family, self.route)?;
        // tcp_info's ages count back from the dump, which the /proc scan
        // may have delayed well after `now_ns`.
        let dumped_ns = crate::host::sys::monotonic_ns();
        for (ns, why) in &host.unreadable {
            log::warn!("network namespace {ns}: {why}");
        }
        let listeners: HashSet<(u64, u16, IpAddr)> = host
            .sockets
            .iter()
            .filter(|d| d.state == TcpState::Listen as u8)
            .map(|d| (d.netns, d.sport, d.saddr))
            .collect();
        let listener_of = |d: &DiagSocket| {
            host.sockets.iter().find(|l| {
                l.state == TcpState::Listen as u8
                    && l.netns == d.netns
                    && l.sport == d.sport
                    && (l.saddr == d.saddr || l.saddr.is_unspecified())
            })
        };
        let mut seen = HashSet::new();
        let mut sockets = Vec::new();
        for d in host
            .sockets
            .iter()
            .filter(|d| d.state == TcpState::CloseWait as u8)
        {
            if !self
                .selection
                .socket_passes(d.sport, d.dport, Family::from_af(d.family))
            {
                continue;
            }
            let tuple = Tuple {
                laddr: d.saddr,
                lport: d.sport,
                raddr: d.daddr,
                rport: d.dport,
            };
            let key = (d.netns, d.inode, tuple);
            seen.insert(key);
            let traced = traced.get(&d.inode).filter(|_| d.inode != 0);
            // At the latest the last ACK that acknowledged something (the
            // peer's FIN updates it only when data was in flight): a lower
            // bound of its entry into CLOSE_WAIT.
            let entered_ns = d
                .info
                .map(|i| dumped_ns.saturating_sub(u64::from(i.last_ack_recv_ms) * 1_000_000));
            // Not traced, yet it entered CLOSE_WAIT while this refresh ran
            // (new since the last one, or, at the first, acknowledged
            // after the table was read: the /proc scan can take seconds on
            // a loaded host). Its transition (exact age, stack) is still in
            // the ring buffer; the next refresh has it. Calling it older
            // than tcptrace would be wrong. (At the first refresh, a
            // connection idle since before it and closed by its peer
            // during the scan still shows as older, for that refresh.)
            let during_this_refresh =
                self.refreshes > 0 || entered_ns.is_some_and(|t| t + ENTRY_SLACK_NS >= now_ns);
            if self.live
                && during_this_refresh
                && traced.is_none()
                && !self.estimates.contains_key(&key)
            {
                self.estimates.insert(key, (now_ns, true));
                continue;
            }
            let opened = self.stacks.then(|| match traced {
                Some((_, Some(o))) => (*o).clone(),
                _ => Opened::Unknown("in CLOSE_WAIT before tcptrace started"),
            });
            let age = match traced {
                Some((since, _)) => Age::Exact(Duration::from_nanos(now_ns.saturating_sub(*since))),
                None => {
                    let estimate = entered_ns.map(|t| t.min(now_ns));
                    let (since, first_sight) = *self
                        .estimates
                        .entry(key)
                        .or_insert((estimate.unwrap_or(now_ns), estimate.is_none()));
                    let d = Duration::from_nanos(now_ns.saturating_sub(since));
                    if first_sight && d.is_zero() {
                        Age::Unknown
                    } else {
                        Age::AtLeast(d)
                    }
                }
            };
            let mut holders = if d.inode != 0 {
                self.index.cached(d.inode)
            } else {
                Vec::new()
            };
            // Not accepted yet: no file; it belongs to its listener.
            if holders.is_empty()
                && let Some(l) = listener_of(d)
            {
                holders = self.index.cached(l.inode);
            }
            let server_side = listeners.iter().any(|&(ns, port, addr)| {
                ns == d.netns && port == d.sport && (addr == d.saddr || addr.is_unspecified())
            });
            sockets.push(LeakSocket {
                tuple,
                inode: d.inode,
                netns: d.netns,
                server_side,
                age,
                holders,
                opened,
            });
        }
        self.estimates.retain(|k, _| seen.contains(k));
        self.refreshes += 1;
        let mut rows = group(sockets, self.own_netns);
        rows.retain(|r| {
            self.selection
                .owner_passes(r.pid, &crate::model::owner::Comm::new(r.comm.as_bytes()))
        });
        let who: Vec<(u32, u64)> = rows.iter().map(|r| (r.pid, r.start_time)).collect();
        for (r, facts) in rows.iter_mut().zip(self.index.facts(&who)) {
            r.fill_process_facts(facts);
        }
        Ok(rows)
    }
}

/// CLOSE_WAIT counts per process over time, for the growth column.
#[derive(Default)]
pub struct Trend {
    samples: HashMap<(u32, u64), VecDeque<(Instant, usize)>>,
}

impl Trend {
    pub fn record(&mut self, rows: &mut [ProcessLeaks], now: Instant) {
        const WINDOW: Duration = Duration::from_secs(60);
        for r in rows.iter_mut() {
            let q = self.samples.entry((r.pid, r.start_time)).or_default();
            // The oldest sample at least a minute old, else the oldest we have.
            while q.len() >= 2 && now.duration_since(q[1].0) >= WINDOW {
                q.pop_front();
            }
            r.growth_1m = q.front().map(|(_, n)| r.sockets.len() as i64 - *n as i64);
            q.push_back((now, r.sockets.len()));
        }
        let alive: HashSet<(u32, u64)> = rows.iter().map(|r| (r.pid, r.start_time)).collect();
        self.samples.retain(|k, _| alive.contains(k));
    }
}

/// `pid 1 (systemd), pid 7 (x), ...`.
fn named_pids(pids: &[u32], total: usize) -> String {
    let mut text = pids
        .iter()
        .map(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            format!("pid {pid} ({})", comm.trim_end_matches('\n'))
        })
        .collect::<Vec<_>>()
        .join(", ");
    if total > pids.len() {
        text.push_str(", ...");
    }
    text
}

/// Why /proc refuses: the capabilities tcptrace lacks, or, with them, the
/// kernel's own reasons (a process more privileged than tcptrace, a
/// security module).
fn unreadable_why() -> &'static str {
    use crate::host::sys::{CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE, has_capability};
    if has_capability(CAP_SYS_PTRACE) && has_capability(CAP_DAC_READ_SEARCH) {
        "refused despite CAP_SYS_PTRACE: they hold capabilities tcptrace lacks, or a security module denies it"
    } else {
        "another user's, without CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH"
    }
}

/// What `leaks --check` concludes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No process holds `min_count` CLOSE_WAIT sockets that are, or might
    /// be, older than `min_age`.
    NoLeak,
    /// A process holds at least `min_count` sockets known to be that old.
    Leak,
    /// None is known to, but this process would if enough of its
    /// `unknown` sockets of unknown age were old: "no leak" could be wrong.
    Undetermined {
        pid: u32,
        comm: String,
        unknown: usize,
    },
}

/// Whether any process holds at least `min_count` CLOSE_WAIT sockets older
/// than `min_age`, saying so when unknown ages leave it open.
pub fn verdict(rows: &[ProcessLeaks], min_age: Duration, min_count: u64) -> Verdict {
    if rows
        .iter()
        .any(|r| r.older_than(min_age) as u64 >= min_count)
    {
        return Verdict::Leak;
    }
    rows.iter()
        .find_map(|r| {
            let unknown = r.sockets.iter().filter(|s| s.age == Age::Unknown).count();
            ((r.older_than(min_age) + unknown) as u64 >= min_count).then(|| Verdict::Undetermined {
                pid: r.pid,
                comm: r.comm.clone(),
                unknown,
            })
        })
        .unwrap_or(Verdict::NoLeak)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    pub(crate) fn sock(rport: u16, age_s: u64, holders: &[(u32, &str)]) -> LeakSocket {
        LeakSocket {
            tuple: Tuple {
                laddr: Ipv4Addr::LOCALHOST.into(),
                lport: 40000 + rport % 100,
                raddr: Ipv4Addr::new(10, 0, 0, 5).into(),
                rport,
            },
            inode: 1,
            netns: 1,
            age: Age::Exact(Duration::from_secs(age_s)),
            server_side: false,
            opened: None,
            holders: holders
                .iter()
                .map(|(pid, comm)| Holder {
                    pid: *pid,
                    fd: 3,
                    netns: Some(1),
                    comm: (*comm).into(),
                    start_time: u64::from(*pid) * 10,
                })
                .collect(),
        }
    }

    #[test]
    fn groups_by_holder_worst_first_and_counts_peers() {
        let rows = group(
            vec![
                sock(61616, 5, &[(10, "java")]),
                sock(61616, 50, &[(10, "java")]),
                sock(5432, 1, &[(10, "java")]),
                sock(80, 900, &[(20, "nginx")]),
                // Inherited across fork: both processes hold it.
                sock(443, 7, &[(30, "parent"), (31, "child")]),
            ],
            1,
        );
        let summary: Vec<(u32, usize)> = rows.iter().map(|r| (r.pid, r.sockets.len())).collect();
        assert_eq!(summary, vec![(10, 3), (20, 1), (30, 1), (31, 1)]);
        assert_eq!(
            rows[0].oldest().unwrap().age,
            Age::Exact(Duration::from_secs(50))
        );
        assert_eq!(
            rows[0].peers()[0],
            (Ipv4Addr::new(10, 0, 0, 5).into(), 61616, 2)
        );
        assert_eq!(rows[0].older_than(Duration::from_secs(5)), 2);
        assert_eq!(verdict(&rows, Duration::from_secs(600), 1), Verdict::Leak);
        assert_eq!(
            verdict(&rows, Duration::from_secs(1000), 1),
            Verdict::NoLeak
        );
        assert_eq!(verdict(&rows, Duration::from_secs(5), 3), Verdict::NoLeak);
        assert!(!rows[0].other_netns);
    }

    #[test]
    fn unknown_ages_count_only_when_any_age_does() {
        let mut s = sock(80, 0, &[(10, "a")]);
        s.age = Age::Unknown;
        let rows = group(vec![s, sock(81, 100, &[(10, "a")])], 2);
        assert_eq!(rows[0].older_than(Duration::ZERO), 2);
        assert_eq!(rows[0].older_than(Duration::from_secs(1)), 1);
        assert!(rows[0].other_netns, "namespace 1 is not tcptrace's (2)");
        // One known to be old and one that might be: a check for two cannot
        // say "no leak"; for three it can.
        assert_eq!(verdict(&rows, Duration::ZERO, 2), Verdict::Leak);
        assert_eq!(
            verdict(&rows, Duration::from_secs(60), 2),
            Verdict::Undetermined {
                pid: 10,
                comm: "a".to_owned(),
                unknown: 1
            }
        );
        assert_eq!(verdict(&rows, Duration::from_secs(60), 1), Verdict::Leak);
        assert_eq!(verdict(&rows, Duration::from_secs(60), 3), Verdict::NoLeak);
    }

    /// A socket that entered CLOSE_WAIT after the first refresh read the
    /// socket table has its transition still in the ring buffer: it waits
    /// for the next refresh instead of being called older than tcptrace.
    /// One that was in CLOSE_WAIT before is shown at once.
    #[test]
    fn the_first_refresh_does_not_call_new_leaks_older_than_tcptrace() {
        use std::net::{TcpListener, TcpStream};
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let close_wait = || {
            let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
            drop(l.accept().unwrap());
            std::thread::sleep(Duration::from_millis(50));
            c
        };
        let old = close_wait();
        std::thread::sleep(Duration::from_millis(100));
        let table_read = crate::host::sys::monotonic_ns();
        let new = close_wait();
        let selection = Selection {
            rports: vec![port],
            ..Selection::default()
        };
        let mut c = Collector::new(selection, true, true).unwrap();
        let lport = |s: &TcpStream| s.local_addr().unwrap().port();
        let mine = |rows: &[ProcessLeaks]| -> Vec<(u16, Age, Option<Opened>)> {
            let mut v: Vec<_> = rows
                .iter()
                .filter(|r| r.pid == std::process::id())
                .flat_map(|r| &r.sockets)
                .map(|s| (s.tuple.lport, s.age, s.opened.clone()))
                .collect();
            v.sort_by_key(|s| s.0);
            v
        };
        let first = mine(&c.collect(&SocketTable::new(1), table_read).unwrap());
        assert_eq!(first.len(), 1, "{first:?}");
        assert_eq!(first[0].0, lport(&old));
        assert!(
            matches!(first[0].1, Age::AtLeast(d) if d >= Duration::from_millis(100)),
            "{first:?}"
        );
        assert_eq!(
            first[0].2,
            Some(Opened::Unknown("in CLOSE_WAIT before tcptrace started"))
        );
        let later = crate::host::sys::monotonic_ns();
        let second = mine(&c.collect(&SocketTable::new(1), later).unwrap());
        assert_eq!(
            second.iter().map(|s| s.0).collect::<Vec<_>>(),
            {
                let mut v = vec![lport(&old), lport(&new)];
                v.sort_unstable();
                v
            },
            "{second:?}"
        );
    }

    #[test]
    fn unheld_sockets_are_shown_not_dropped() {
        let rows = group(vec![sock(80, 1, &[])], 1);
        assert_eq!((rows[0].pid, rows[0].comm.as_str()), (0, "?"));
    }

    #[test]
    fn growth_compares_with_a_minute_ago() {
        let mut t = Trend::default();
        let t0 = Instant::now();
        let mut rows = group(vec![sock(1, 1, &[(10, "a")])], 1);
        t.record(&mut rows, t0);
        assert_eq!(rows[0].growth_1m, None);
        let mut rows = group(vec![sock(1, 1, &[(10, "a")]), sock(2, 1, &[(10, "a")])], 1);
        t.record(&mut rows, t0 + Duration::from_secs(30));
        assert_eq!(rows[0].growth_1m, Some(1));
        let mut rows = group((1..=5).map(|p| sock(p, 1, &[(10, "a")])).collect(), 1);
        t.record(&mut rows, t0 + Duration::from_secs(95));
        // Compared with the 30 s sample (the newest that is >= 60 s old): 5 - 2.
        assert_eq!(rows[0].growth_1m, Some(3));
    }
}
