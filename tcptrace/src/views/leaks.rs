//! `tcptrace leaks`: which processes hold sockets in CLOSE_WAIT, how many,
//! how old, to which peers, and how close they are to "Too many open files".
//!
//! Truth about which CLOSE_WAIT sockets exist and their inodes comes from a
//! sock_diag dump (as `ss`); who holds them from /proc/*/fd; how long they
//! have been there from the traced transition when we saw it, else an
//! estimate from tcp_info (time since the last ACK arrived: a lower bound).

use std::{
    collections::{HashMap, VecDeque},
    io::{self, Write},
    net::IpAddr,
    ops::ControlFlow,
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{
    host::cgroup::{cgroup_path_of_pid, container_id},
    host::holders::{Holder, HolderIndex, process_info},
    host::sockdiag::{self, DiagSocket},
    kernel::decode::endpoint,
    model::clock::{Clock, monotonic_ns},
    model::socket_table::{Socket, SocketTable, Tuple},
    model::state::TcpState,
    pipeline::tracer::{Context, Sink, Transition},
};

pub const HINT: &str = "hint: CLOSE_WAIT = the peer closed and the local process has not called close(); \
only the application can end it (TCP keepalive does not reap it): fix the code path that \
ignores EOF, or restart the process.";

/// How many peers the text view lists per process.
const TOP_PEERS: usize = 3;

/// One CLOSE_WAIT socket with its age and holders.
#[derive(Clone, Debug, PartialEq)]
pub struct LeakSocket {
    pub tuple: Tuple,
    pub inode: u64,
    pub age: Duration,
    pub age_estimated: bool,
    /// Accepted from one of our listeners: the peer's port is ephemeral, so
    /// the text view groups such peers by address and our listening port.
    pub server_side: bool,
    pub holders: Vec<Holder>,
}

impl LeakSocket {
    fn peer_label(&self) -> String {
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
}

impl ProcessLeaks {
    /// Open fds, fd limit and container, if the process (same start time) still runs.
    pub fn fill_process_facts(&mut self) {
        if let Some(info) = process_info(self.pid).filter(|i| i.start_time == self.start_time) {
            self.fds = Some(info.open_fds);
            self.fd_limit = info.fd_limit;
            self.container = cgroup_path_of_pid(self.pid).and_then(|p| container_id(&p));
        }
    }

    pub fn oldest(&self) -> Option<&LeakSocket> {
        self.sockets.iter().max_by_key(|s| s.age)
    }

    pub fn older_than(&self, min_age: Duration) -> usize {
        self.sockets.iter().filter(|s| s.age >= min_age).count()
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

/// Filters as the leaks view applies them (all exact, in userspace).
#[derive(Clone, Debug, Default)]
pub struct LeakFilter {
    pub pids: Vec<u32>,
    pub comm: Option<String>,
    pub lports: Vec<u16>,
    pub rports: Vec<u16>,
    pub family: Option<u16>,
}

impl LeakFilter {
    fn socket_passes(&self, d: &DiagSocket) -> bool {
        (self.lports.is_empty() || self.lports.contains(&d.sport))
            && (self.rports.is_empty() || self.rports.contains(&d.dport))
            && self.family.is_none_or(|f| f == d.family)
    }

    pub fn process_passes(&self, p: &ProcessLeaks) -> bool {
        (self.pids.is_empty() || self.pids.contains(&p.pid))
            && self.comm.as_ref().is_none_or(|c| *c == p.comm)
    }
}

/// Groups sockets by holding process, worst first: most sockets, then oldest.
pub fn group(sockets: Vec<LeakSocket>) -> Vec<ProcessLeaks> {
    let mut by_proc: HashMap<(u32, u64), ProcessLeaks> = HashMap::new();
    for s in sockets {
        let holders: Vec<(u32, u64, String)> = if s.holders.is_empty() {
            // Nobody holds a file for it (not accepted, or the holder is gone).
            vec![(0, 0, "?".to_owned())]
        } else {
            let mut hs: Vec<_> = s
                .holders
                .iter()
                .map(|h| (h.pid, h.start_time, h.comm.clone()))
                .collect();
            hs.dedup_by_key(|h| (h.0, h.1));
            hs
        };
        for (pid, start_time, comm) in holders {
            by_proc
                .entry((pid, start_time))
                .or_insert_with(|| ProcessLeaks {
                    pid,
                    start_time,
                    comm,
                    sockets: Vec::new(),
                    fds: None,
                    fd_limit: None,
                    growth_1m: None,
                    container: None,
                })
                .sockets
                .push(s.clone());
        }
    }
    let mut rows: Vec<ProcessLeaks> = by_proc.into_values().collect();
    for r in &mut rows {
        r.sockets
            .sort_by(|a, b| b.age.cmp(&a.age).then(a.tuple.lport.cmp(&b.tuple.lport)));
    }
    rows.sort_by(|a, b| {
        b.sockets
            .len()
            .cmp(&a.sockets.len())
            .then_with(|| b.oldest().map(|s| s.age).cmp(&a.oldest().map(|s| s.age)))
            .then(a.pid.cmp(&b.pid))
    });
    rows
}

/// Collects the CLOSE_WAIT sockets that exist now.
pub struct Collector {
    index: HolderIndex,
    /// First-seen estimates of sockets we did not see enter CLOSE_WAIT, so
    /// their age keeps growing from a fixed point instead of being re-guessed.
    estimates: HashMap<(Tuple, u64), u64>,
    filter: LeakFilter,
}

impl Collector {
    pub fn new(filter: LeakFilter) -> Self {
        let mut index = HolderIndex::new();
        // A refresh rescans on purpose; misses after it need no second scan.
        index.set_min_full_rescan(Duration::from_secs(3600));
        Self {
            index,
            estimates: HashMap::new(),
            filter,
        }
    }

    /// Holders of a socket inode as the last `collect`'s /proc scan saw them.
    pub fn holders(&self, inode: u64) -> Vec<Holder> {
        self.index.cached(inode)
    }

    /// `table`: sockets whose entry into CLOSE_WAIT was traced give exact ages.
    pub fn collect(
        &mut self,
        table: &SocketTable,
        now_ns: u64,
    ) -> anyhow::Result<Vec<ProcessLeaks>> {
        let known: HashMap<Tuple, &Socket> = table
            .iter()
            .filter(|(_, s)| s.state == TcpState::CloseWait)
            .map(|(_, s)| (s.tuple, s))
            .collect();
        let states = sockdiag::state_bit(sockdiag::TCP_CLOSE_WAIT)
            | sockdiag::state_bit(sockdiag::TCP_LISTEN);
        let dump = sockdiag::dump_tcp(states, self.filter.family)?;
        self.index.full_scan();
        // A CLOSE_WAIT socket nobody accepted yet has no file: it belongs to its listener.
        let listeners: Vec<&DiagSocket> = dump
            .iter()
            .filter(|d| d.state == sockdiag::TCP_LISTEN)
            .collect();
        let mut seen = HashMap::new();
        let mut sockets = Vec::new();
        for d in dump.iter().filter(|d| d.state == sockdiag::TCP_CLOSE_WAIT) {
            if !self.filter.socket_passes(d) {
                continue;
            }
            let tuple = Tuple {
                laddr: d.saddr,
                lport: d.sport,
                raddr: d.daddr,
                rport: d.dport,
            };
            let (since_ns, estimated) = match known.get(&tuple) {
                Some(s) if s.state == TcpState::CloseWait => (s.since_ns, s.since_estimated),
                _ => {
                    let guess = now_ns.saturating_sub(
                        d.info
                            .map_or(0, |i| u64::from(i.last_ack_recv_ms) * 1_000_000),
                    );
                    (
                        *self.estimates.entry((tuple, d.inode)).or_insert(guess),
                        true,
                    )
                }
            };
            seen.insert((tuple, d.inode), ());
            let mut holders = if d.inode != 0 {
                self.index.cached(d.inode)
            } else {
                Vec::new()
            };
            if holders.is_empty()
                && let Some(l) = listeners.iter().find(|l| {
                    l.sport == d.sport && (l.saddr == d.saddr || l.saddr.is_unspecified())
                })
            {
                holders = self.index.cached(l.inode);
            }
            let server_side = listeners
                .iter()
                .any(|l| l.sport == d.sport && (l.saddr == d.saddr || l.saddr.is_unspecified()));
            sockets.push(LeakSocket {
                tuple,
                inode: d.inode,
                server_side,
                age: Duration::from_nanos(now_ns.saturating_sub(since_ns)),
                age_estimated: estimated,
                holders,
            });
        }
        self.estimates.retain(|k, _| seen.contains_key(k));
        let mut rows = group(sockets);
        rows.retain(|r| self.filter.process_passes(r));
        for r in &mut rows {
            r.fill_process_facts();
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
        let alive: Vec<(u32, u64)> = rows.iter().map(|r| (r.pid, r.start_time)).collect();
        self.samples.retain(|k, _| alive.contains(k));
    }
}

/// Human age: `45s`, `12m03s`, `3h05m`, `2d04h`.
pub fn human_age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

#[derive(Serialize)]
struct JsonPeer {
    raddr: String,
    rport: u16,
    count: usize,
}

#[derive(Serialize)]
struct JsonSocket {
    laddr: String,
    lport: u16,
    raddr: String,
    rport: u16,
    age_s: f64,
    age_estimated: bool,
}

#[derive(Serialize)]
struct JsonRow<'a> {
    time: &'a str,
    pid: u32,
    comm: &'a str,
    close_wait: usize,
    oldest_s: f64,
    fds: Option<u64>,
    fd_limit: Option<u64>,
    peers: Vec<JsonPeer>,
    sockets: Vec<JsonSocket>,
}

pub struct Report {
    pub json: bool,
    pub min_age: Duration,
}

impl Report {
    pub fn write(
        &self,
        out: &mut dyn Write,
        rows: &[ProcessLeaks],
        time: &str,
        lost: Option<u64>,
    ) -> io::Result<()> {
        if self.json {
            for r in rows {
                let row = JsonRow {
                    time,
                    pid: r.pid,
                    comm: &r.comm,
                    close_wait: r.sockets.len(),
                    oldest_s: r.oldest().map_or(0.0, |s| s.age.as_secs_f64()),
                    fds: r.fds,
                    fd_limit: r.fd_limit,
                    peers: r
                        .peers()
                        .into_iter()
                        .map(|(a, p, n)| JsonPeer {
                            raddr: a.to_string(),
                            rport: p,
                            count: n,
                        })
                        .collect(),
                    sockets: r
                        .sockets
                        .iter()
                        .map(|s| JsonSocket {
                            laddr: s.tuple.laddr.to_string(),
                            lport: s.tuple.lport,
                            raddr: s.tuple.raddr.to_string(),
                            rport: s.tuple.rport,
                            age_s: s.age.as_secs_f64(),
                            age_estimated: s.age_estimated,
                        })
                        .collect(),
                };
                serde_json::to_writer(&mut *out, &row)?;
                out.write_all(b"\n")?;
            }
            return out.flush();
        }
        let total: usize = rows.iter().map(|r| r.sockets.len()).sum();
        let lost = lost.map_or_else(String::new, |n| format!(", {n} events lost"));
        writeln!(
            out,
            "{time}  {total} CLOSE_WAIT sockets in {} processes{lost}",
            rows.len()
        )?;
        if rows.is_empty() {
            return out.flush();
        }
        let min_age_col = format!(">={}", human_age(self.min_age));
        writeln!(
            out,
            "{:<8} {:<16} {:>10} {:>9} {:>9} {:>9} {:>16}  TOP PEERS",
            "PID", "COMM", "CLOSE_WAIT", "OLDEST", min_age_col, "GROWTH/1m", "FDS/LIMIT"
        )?;
        for r in rows {
            let oldest = r.oldest().map_or_else(String::new, |s| {
                format!(
                    "{}{}",
                    human_age(s.age),
                    if s.age_estimated { "~" } else { "" }
                )
            });
            let growth = r
                .growth_1m
                .map_or_else(|| "-".to_owned(), |g| format!("{g:+}"));
            let fds = match (r.fds, r.fd_limit) {
                (Some(n), Some(l)) if l > 0 => format!("{n}/{l} ({}%)", n * 100 / l),
                (Some(n), None) => format!("{n}/unlimited"),
                _ => "-".to_owned(),
            };
            let peers: Vec<String> = r
                .peer_labels()
                .into_iter()
                .take(TOP_PEERS)
                .map(|(label, n)| format!("{label} \u{d7}{n}"))
                .collect();
            // A container's processes read as `comm@container`, like `docker top`'s id.
            let comm = r
                .container
                .as_ref()
                .map_or_else(|| r.comm.clone(), |c| format!("{}@{c}", r.comm));
            writeln!(
                out,
                "{:<8} {:<16} {:>10} {:>9} {:>9} {:>9} {:>16}  {}",
                r.pid,
                comm,
                r.sockets.len(),
                oldest,
                r.older_than(self.min_age),
                growth,
                fds,
                peers.join(", ")
            )?;
        }
        writeln!(
            out,
            "(~ = age estimated from the last ACK received: a lower bound)"
        )?;
        writeln!(out, "{HINT}")?;
        out.flush()
    }
}

/// Whether any process holds at least `min_count` CLOSE_WAIT sockets older than `min_age`.
pub fn leak_found(rows: &[ProcessLeaks], min_age: Duration, min_count: u64) -> bool {
    rows.iter()
        .any(|r| r.older_than(min_age) as u64 >= min_count)
}

/// One snapshot from the sockets that exist now, without tracing.
pub fn snapshot(filter: LeakFilter) -> anyhow::Result<Vec<ProcessLeaks>> {
    Collector::new(filter).collect(&SocketTable::new(1), monotonic_ns())
}

/// The live view as a trace sink.
pub struct LeaksSink<W: Write> {
    pub out: W,
    pub collector: Collector,
    pub report: Report,
    pub trend: Trend,
    pub interval: Duration,
    pub last: Option<Instant>,
    /// Redraw in place, like top, when writing to a terminal.
    pub clear_screen: bool,
}

impl<W: Write> Sink for LeaksSink<W> {
    fn transition(&mut self, _t: &Transition<'_>, _clock: &Clock) -> io::Result<()> {
        // The socket table keeps what we need; the view refreshes on ticks.
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn tick(&mut self, ctx: &mut Context<'_>) -> io::Result<ControlFlow<()>> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < self.interval)
        {
            return Ok(ControlFlow::Continue(()));
        }
        self.last = Some(now);
        let now_ns = monotonic_ns();
        let mut rows = self
            .collector
            .collect(ctx.table, now_ns)
            .map_err(io::Error::other)?;
        self.trend.record(&mut rows, now);
        let time = ctx.clock.rfc3339(now_ns);
        if self.clear_screen {
            write!(self.out, "\x1b[H\x1b[2J")?;
        }
        self.report
            .write(&mut self.out, &rows, &time, Some(ctx.stats.lost))?;
        Ok(ControlFlow::Continue(()))
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn sock(rport: u16, age_s: u64, holders: &[(u32, &str)]) -> LeakSocket {
        LeakSocket {
            tuple: Tuple {
                laddr: Ipv4Addr::LOCALHOST.into(),
                lport: 40000 + rport % 100,
                raddr: Ipv4Addr::new(10, 0, 0, 5).into(),
                rport,
            },
            inode: 1,
            age: Duration::from_secs(age_s),
            age_estimated: false,
            server_side: false,
            holders: holders
                .iter()
                .map(|(pid, comm)| Holder {
                    pid: *pid,
                    fd: 3,
                    comm: (*comm).into(),
                    start_time: u64::from(*pid) * 10,
                })
                .collect(),
        }
    }

    #[test]
    fn groups_by_holder_worst_first_and_counts_peers() {
        let rows = group(vec![
            sock(61616, 5, &[(10, "java")]),
            sock(61616, 50, &[(10, "java")]),
            sock(5432, 1, &[(10, "java")]),
            sock(80, 900, &[(20, "nginx")]),
            // Inherited across fork: both processes hold it.
            sock(443, 7, &[(30, "parent"), (31, "child")]),
        ]);
        let summary: Vec<(u32, usize)> = rows.iter().map(|r| (r.pid, r.sockets.len())).collect();
        assert_eq!(summary, vec![(10, 3), (20, 1), (30, 1), (31, 1)]);
        assert_eq!(rows[0].oldest().unwrap().age, Duration::from_secs(50));
        assert_eq!(
            rows[0].peers()[0],
            (Ipv4Addr::new(10, 0, 0, 5).into(), 61616, 2)
        );
        assert_eq!(rows[0].older_than(Duration::from_secs(5)), 2);
        assert!(leak_found(&rows, Duration::from_secs(600), 1));
        assert!(!leak_found(&rows, Duration::from_secs(1000), 1));
        assert!(!leak_found(&rows, Duration::from_secs(5), 3));
    }

    #[test]
    fn unheld_sockets_are_shown_not_dropped() {
        let rows = group(vec![sock(80, 1, &[])]);
        assert_eq!((rows[0].pid, rows[0].comm.as_str()), (0, "?"));
    }

    #[test]
    fn growth_compares_with_a_minute_ago() {
        let mut t = Trend::default();
        let t0 = Instant::now();
        let mut rows = group(vec![sock(1, 1, &[(10, "a")])]);
        t.record(&mut rows, t0);
        assert_eq!(rows[0].growth_1m, None);
        let mut rows = group(vec![sock(1, 1, &[(10, "a")]), sock(2, 1, &[(10, "a")])]);
        t.record(&mut rows, t0 + Duration::from_secs(30));
        assert_eq!(rows[0].growth_1m, Some(1));
        let mut rows = group((1..=5).map(|p| sock(p, 1, &[(10, "a")])).collect());
        t.record(&mut rows, t0 + Duration::from_secs(95));
        // Compared with the 30 s sample (the newest that is >= 60 s old): 5 - 2.
        assert_eq!(rows[0].growth_1m, Some(3));
    }

    #[test]
    fn ages_read_like_ss_users_expect() {
        assert_eq!(human_age(Duration::from_secs(45)), "45s");
        assert_eq!(human_age(Duration::from_secs(723)), "12m03s");
        assert_eq!(human_age(Duration::from_secs(3 * 3600 + 300)), "3h05m");
        assert_eq!(
            human_age(Duration::from_secs(2 * 86400 + 4 * 3600)),
            "2d04h"
        );
    }

    #[test]
    fn text_and_json_reports() {
        let rows = group(vec![sock(61616, 130, &[(10, "java")])]);
        let mut buf = Vec::new();
        Report {
            json: false,
            min_age: Duration::from_secs(60),
        }
        .write(&mut buf, &rows, "T", Some(0))
        .unwrap();
        let text = String::from_utf8(buf).unwrap();
        assert!(text.contains("10.0.0.5:61616 \u{d7}1"), "{text}");
        assert!(text.contains("2m10s"), "{text}");
        assert!(text.contains("keepalive"), "{text}");
        let mut buf = Vec::new();
        Report {
            json: true,
            min_age: Duration::ZERO,
        }
        .write(&mut buf, &rows, "T", None)
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "close_wait",
                "comm",
                "fd_limit",
                "fds",
                "oldest_s",
                "peers",
                "pid",
                "sockets",
                "time"
            ]
        );
        assert_eq!(v["peers"][0]["rport"], 61616);
        assert_eq!(v["sockets"][0]["age_s"], 130.0);
    }
}
