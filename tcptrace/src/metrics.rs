//! The Prometheus metrics of `tcptrace serve`: their names, how one
//! transition updates them, and how the periodic snapshots (sockets per
//! state, CLOSE_WAIT holders, tcptrace's own counts) replace theirs.
//!
//! Named by the Prometheus guide: one `tcptrace_` prefix, seconds, `_total`
//! counters, lowercase state labels as node_exporter's
//! `node_tcp_connection_states`. Per-process series are bounded by `--top`;
//! there are no per-socket labels.

use std::{
    collections::HashMap,
    fmt::{self, Write as _},
    sync::{Arc, Mutex, PoisonError, RwLock, atomic::AtomicU64},
};

use prometheus_client::{
    collector::Collector,
    encoding::{
        DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
    },
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
        info::Info,
    },
    registry::{Registry, Unit},
};

use crate::{
    decode::Event,
    leaks::ProcessLeaks,
    socket_table::{Socket, SocketTable},
    state::TcpState,
    trace::{Stats, Transition},
};

/// Histogram buckets: 10 µs × 4^k up to ~45 min (loopback handshakes take
/// tens of µs, leaks last minutes), 15 buckets plus +Inf.
pub const BUCKET_START_SECONDS: f64 = 1e-5;
pub const BUCKET_FACTOR: f64 = 4.0;
pub const BUCKET_COUNT: u16 = 15;

/// TCP state numbers are below this (include/net/tcp_states.h).
const STATES: usize = 16;

/// The states `tcptrace_sockets` reports. LISTEN is left out (listeners that
/// existed at start are not in the socket table) and so is TIME_WAIT (the
/// tracepoint reports it as FIN_WAIT2 -> CLOSE): node_exporter's
/// `node_tcp_connection_states` has both.
pub const SOCKET_STATES: [TcpState; 8] = [
    TcpState::Established,
    TcpState::SynSent,
    TcpState::SynRecv,
    TcpState::FinWait1,
    TcpState::FinWait2,
    TcpState::CloseWait,
    TcpState::LastAck,
    TcpState::Closing,
];

/// A state as a label value: `close_wait`. Hashes as the enum, so the hot
/// path allocates nothing; the text is written at scrape time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StateLabel(pub TcpState);

impl EncodeLabelValue for StateLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        for c in self.0.name().chars() {
            encoder.write_char(c.to_ascii_lowercase())?;
        }
        Ok(())
    }
}

/// The connection phases `tcptrace_handshake_duration_seconds` measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Handshake {
    /// SYN_SENT -> ESTABLISHED.
    Connect,
    /// SYN_RECV -> ESTABLISHED.
    Accept,
    /// Entering FIN_WAIT1 -> CLOSE (we closed first).
    ActiveClose,
    /// Entering CLOSE_WAIT -> CLOSE (the peer closed first).
    PassiveClose,
}

impl Handshake {
    pub const ALL: [Self; 4] = [
        Self::Connect,
        Self::Accept,
        Self::ActiveClose,
        Self::PassiveClose,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Accept => "accept",
            Self::ActiveClose => "active_close",
            Self::PassiveClose => "passive_close",
        }
    }
}

impl EncodeLabelValue for Handshake {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        encoder.write_str(self.name())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TransitionLabels {
    from: StateLabel,
    to: StateLabel,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StateLabels {
    state: StateLabel,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HandshakeLabels {
    handshake: Handshake,
}

/// One process's series. `pid` and `container` are empty (so absent in
/// Prometheus) on the `comm="other"` row.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ProcessLabels {
    pub pid: String,
    pub comm: String,
    pub container: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(
        BUCKET_START_SECONDS,
        BUCKET_FACTOR,
        BUCKET_COUNT,
    ))
}

/// Everything `serve` exports; the handles share their values with the
/// [`Exposition`] that renders them.
pub struct Metrics {
    transitions: Family<TransitionLabels, Counter>,
    state_duration: Histograms<StateLabels>,
    handshake_duration: Histograms<HandshakeLabels>,
    handshakes: HandshakeTracker,
    /// The series `observe` feeds, by state number: handles share their
    /// values with the families, and skip a hashed, locked lookup per event.
    transition_series: Vec<Option<Counter>>,
    duration_series: Vec<Option<Histogram>>,
    handshake_series: Vec<Histogram>,
    sockets: Family<StateLabels, Gauge>,
    close_wait: Family<ProcessLabels, Gauge>,
    close_wait_oldest: Family<ProcessLabels, Gauge<f64, AtomicU64>>,
    open_fds: Family<ProcessLabels, Gauge>,
    fd_limit: Family<ProcessLabels, Gauge>,
    own: Arc<OwnCounters>,
    /// Held to replace a snapshot, so a scrape never sees one half replaced.
    snapshot: Arc<RwLock<()>>,
}

/// What the HTTP server renders, from any thread.
pub struct Exposition {
    registry: Registry,
    snapshot: Arc<RwLock<()>>,
}

impl Exposition {
    /// The Prometheus text format 0.0.4 ([`CONTENT_TYPE`]).
    pub fn render(&self) -> Result<String, fmt::Error> {
        let _consistent = self.snapshot.read().unwrap_or_else(PoisonError::into_inner);
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

impl Metrics {
    /// The metrics and what renders them (names prefixed `tcptrace_`).
    /// `max_open` bounds the sockets whose close is being timed.
    pub fn new(max_open: usize) -> (Self, Exposition) {
        let mut reg = Registry::with_prefix("tcptrace");
        let mut m = Self {
            transitions: Family::default(),
            state_duration: Family::new_with_constructor(duration_histogram),
            handshake_duration: Family::new_with_constructor(duration_histogram),
            handshakes: HandshakeTracker::new(max_open),
            transition_series: vec![None; STATES * STATES],
            duration_series: vec![None; STATES],
            handshake_series: Vec::new(),
            sockets: Family::default(),
            close_wait: Family::default(),
            close_wait_oldest: Family::default(),
            open_fds: Family::default(),
            fd_limit: Family::default(),
            own: Arc::new(OwnCounters::default()),
            snapshot: Arc::new(RwLock::new(())),
        };
        reg.register(
            "transitions",
            "TCP state transitions, by old and new state",
            m.transitions.clone(),
        );
        reg.register(
            "sockets",
            "Sockets tracked in each connection state, including those that existed at start",
            m.sockets.clone(),
        );
        reg.register_with_unit(
            "state_duration",
            "Time sockets spent in a state, observed when they leave it",
            Unit::Seconds,
            m.state_duration.clone(),
        );
        reg.register_with_unit(
            "handshake_duration",
            "Connection phases: connect (SYN_SENT to ESTABLISHED), accept (SYN_RECV to ESTABLISHED), \
             active_close (FIN_WAIT1 to CLOSE), passive_close (CLOSE_WAIT to CLOSE)",
            Unit::Seconds,
            m.handshake_duration.clone(),
        );
        reg.register(
            "close_wait_sockets",
            "CLOSE_WAIT sockets held per process (the top --top processes; the rest summed under comm=\"other\")",
            m.close_wait.clone(),
        );
        reg.register_with_unit(
            "close_wait_oldest",
            "Age of the oldest CLOSE_WAIT socket per process (a lower bound for sockets older than tcptrace)",
            Unit::Seconds,
            m.close_wait_oldest.clone(),
        );
        reg.register(
            "process_open_fds",
            "Open file descriptors of the processes in tcptrace_close_wait_sockets",
            m.open_fds.clone(),
        );
        reg.register(
            "process_fd_limit",
            "Soft RLIMIT_NOFILE of the processes in tcptrace_close_wait_sockets (absent when unlimited)",
            m.fd_limit.clone(),
        );
        reg.register(
            "build",
            "tcptrace's version",
            Info::new(vec![(
                "version".to_owned(),
                env!("CARGO_PKG_VERSION").to_owned(),
            )]),
        );
        reg.register_collector(Box::new(m.own.clone()));
        // Known series exist from the start, so rate() and absent() behave.
        for state in SOCKET_STATES {
            drop(m.sockets.get_or_create(&StateLabels {
                state: StateLabel(state),
            }));
        }
        for handshake in Handshake::ALL {
            let series = m
                .handshake_duration
                .get_or_create(&HandshakeLabels { handshake })
                .clone();
            m.handshake_series.push(series);
        }
        let exposition = Exposition {
            registry: reg,
            snapshot: m.snapshot.clone(),
        };
        (m, exposition)
    }

    /// Counts one transition and observes the durations it ends. The only
    /// place histograms are fed from the event stream.
    pub fn observe(&mut self, t: &Transition<'_>) {
        let ev = t.ev;
        let (from, to) = (ev.oldstate as usize, ev.newstate as usize);
        let transitions = &self.transitions;
        self.transition_series[from * STATES + to]
            .get_or_insert_with(|| {
                transitions
                    .get_or_create(&TransitionLabels {
                        from: StateLabel(ev.oldstate),
                        to: StateLabel(ev.newstate),
                    })
                    .clone()
            })
            .inc();
        if let Some(ns) = t.dwell_ns {
            let durations = &self.state_duration;
            self.duration_series[from]
                .get_or_insert_with(|| {
                    durations
                        .get_or_create(&StateLabels {
                            state: StateLabel(ev.oldstate),
                        })
                        .clone()
                })
                .observe(seconds(ns));
        }
        if let Some((handshake, ns)) = self.handshakes.on(ev, t.dwell_ns) {
            self.handshake_series[handshake as usize].observe(seconds(ns));
        }
    }

    /// Replaces `tcptrace_sockets` with the table's counts of the sockets `keep` selects.
    pub fn set_sockets(&self, table: &SocketTable, keep: impl Fn(&Socket) -> bool) {
        let mut counts = [0i64; 256];
        for (_, s) in table.iter().filter(|(_, s)| keep(s)) {
            counts[s.state as usize] += 1;
        }
        let _replacing = self
            .snapshot
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        for state in SOCKET_STATES {
            self.sockets
                .get_or_create(&StateLabels {
                    state: StateLabel(state),
                })
                .set(counts[state as usize]);
        }
    }

    /// Replaces the per-process series: the first `top` rows (worst first)
    /// by name, the rest summed under `comm="other"`.
    pub fn set_close_wait(&self, rows: &[ProcessLeaks], top: usize) {
        let _replacing = self
            .snapshot
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        self.close_wait.clear();
        self.close_wait_oldest.clear();
        self.open_fds.clear();
        self.fd_limit.clear();
        let oldest = |r: &ProcessLeaks| r.oldest().map_or(0.0, |s| s.age.as_secs_f64());
        for r in rows.iter().take(top) {
            let labels = ProcessLabels {
                pid: r.pid.to_string(),
                comm: r.comm.clone(),
                container: r.container.clone().unwrap_or_default(),
            };
            self.close_wait
                .get_or_create(&labels)
                .set(r.sockets.len() as i64);
            self.close_wait_oldest.get_or_create(&labels).set(oldest(r));
            if let Some(n) = r.fds {
                self.open_fds.get_or_create(&labels).set(clamp(n));
            }
            if let Some(n) = r.fd_limit {
                self.fd_limit.get_or_create(&labels).set(clamp(n));
            }
        }
        let rest = rows.get(top..).unwrap_or_default();
        if !rest.is_empty() {
            let labels = ProcessLabels {
                pid: String::new(),
                comm: "other".to_owned(),
                container: String::new(),
            };
            let sockets: usize = rest.iter().map(|r| r.sockets.len()).sum();
            self.close_wait.get_or_create(&labels).set(sockets as i64);
            self.close_wait_oldest
                .get_or_create(&labels)
                .set(rest.iter().map(oldest).fold(0.0, f64::max));
        }
    }

    /// tcptrace's own counts; `bpf_run_time_ns` is `None` while the kernel
    /// has not timed our program, and then the metric is not exported.
    pub fn set_own(&self, stats: Stats, bpf_run_time_ns: Option<u64>) {
        *self.own.0.lock().unwrap_or_else(PoisonError::into_inner) = OwnSnapshot {
            events: stats.events,
            lost: stats.lost,
            evicted: stats.evicted,
            bpf_run_time_ns,
        };
    }

    /// Sockets whose close is being timed (bounded by `max_open`).
    pub fn open_handshakes(&self) -> usize {
        self.handshakes.open.len()
    }
}

pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[derive(Clone, Copy, Debug, Default)]
struct OwnSnapshot {
    events: u64,
    lost: u64,
    evicted: u64,
    bpf_run_time_ns: Option<u64>,
}

/// Counters the tracer keeps itself, copied in on each tick and rendered as
/// they are (a collector, so the BPF run time can be absent).
#[derive(Debug, Default)]
struct OwnCounters(Mutex<OwnSnapshot>);

impl Collector for OwnCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let s = *self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for (name, help, value) in [
            (
                "events",
                "Transition events read from the kernel ring buffer.",
                s.events,
            ),
            (
                "events_lost",
                "Events the kernel dropped because the ring buffer was full (raise --ring-size).",
                s.lost,
            ),
            (
                "socket_table_evictions",
                "Sockets evicted from the full socket table (raise --max-sockets).",
                s.evicted,
            ),
        ] {
            let c = ConstCounter::new(value);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        if let Some(ns) = s.bpf_run_time_ns {
            let c = ConstCounter::new(seconds(ns));
            c.encode(encoder.encode_descriptor(
                "bpf_run_time",
                "CPU time spent in tcptrace's kernel programs (exported once kernel BPF statistics are on, e.g. sysctl kernel.bpf_stats_enabled=1).",
                Some(&Unit::Seconds),
                c.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// Times the phases that span several transitions of one socket. Connect
/// and accept are one state's dwell time; a close runs from entering
/// FIN_WAIT1 or CLOSE_WAIT to CLOSE, so its start is kept per socket
/// (bounded: the oldest are dropped when full, as the socket table does).
pub struct HandshakeTracker {
    open: HashMap<u64, (Handshake, u64)>,
    cap: usize,
}

impl HandshakeTracker {
    pub fn new(cap: usize) -> Self {
        Self {
            open: HashMap::new(),
            cap: cap.max(1),
        }
    }

    /// The phase this event ends and how long it took, if any.
    pub fn on(&mut self, ev: &Event, dwell_ns: Option<u64>) -> Option<(Handshake, u64)> {
        use TcpState::*;
        // A new lifecycle at this address: nothing carries over.
        if ev.oldstate == Close || (ev.oldstate == Listen && ev.newstate == SynRecv) {
            self.open.remove(&ev.skaddr);
        }
        match (ev.oldstate, ev.newstate) {
            (SynSent, Established) => dwell_ns.map(|ns| (Handshake::Connect, ns)),
            (SynRecv, Established) => dwell_ns.map(|ns| (Handshake::Accept, ns)),
            (_, FinWait1) => {
                self.start(ev.skaddr, Handshake::ActiveClose, ev.ts_ns);
                None
            }
            (_, CloseWait) => {
                self.start(ev.skaddr, Handshake::PassiveClose, ev.ts_ns);
                None
            }
            (_, Close) => self
                .open
                .remove(&ev.skaddr)
                .and_then(|(kind, start)| Some((kind, ev.ts_ns.checked_sub(start)?))),
            _ => None,
        }
    }

    fn start(&mut self, key: u64, kind: Handshake, ts_ns: u64) {
        if self.open.len() >= self.cap && !self.open.contains_key(&key) {
            let ages = self.open.iter().map(|(k, v)| (v.1, *k));
            for k in crate::socket_table::eviction_batch(ages, self.cap) {
                self.open.remove(&k);
            }
        }
        self.open.insert(key, (kind, ts_ns));
    }
}

#[cfg(test)]
mod tests {
    use std::{net::Ipv4Addr, time::Duration};

    use super::*;
    use crate::{
        decode::Family as AddrFamily,
        holders::Holder,
        leaks::{LeakSocket, group},
        owner::Owner,
        socket_table::Tuple,
    };

    use TcpState::*;

    use crate::decode::test_event as ev;

    fn sock(state: TcpState, lport: u16) -> Socket {
        Socket {
            state,
            since_ns: 0,
            since_estimated: false,
            family: AddrFamily::V4,
            tuple: Tuple {
                laddr: Ipv4Addr::LOCALHOST.into(),
                lport,
                raddr: Ipv4Addr::LOCALHOST.into(),
                rport: 61616,
            },
            inode: 0,
            owner: None,
        }
    }

    fn feed(m: &mut Metrics, events: &[(TcpState, TcpState, u64, Option<u64>)]) {
        for (old, new, ts_ms, dwell_ms) in events {
            let e = ev(0xffff_0000_0000_0001, *ts_ms, *old, *new);
            let s = sock(*new, 5000);
            m.observe(&Transition {
                ev: &e,
                dwell_ns: dwell_ms.map(|d| d * 1_000_000),
                socket: &s,
                owners: &[Owner::task(1, "t")],
            });
        }
    }

    fn text(reg: &Exposition) -> String {
        reg.render().unwrap()
    }

    #[test]
    fn a_lifecycle_feeds_counters_and_histograms() {
        let (mut m, reg) = Metrics::new(16);
        feed(
            &mut m,
            &[
                (Close, SynSent, 0, None),
                (SynSent, Established, 1, Some(1)),
                (Established, FinWait1, 101, Some(100)),
                (FinWait1, FinWait2, 102, Some(1)),
                (FinWait2, Close, 103, Some(1)),
            ],
        );
        let t = text(&reg);
        assert!(
            t.contains("tcptrace_transitions_total{from=\"syn_sent\",to=\"established\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("tcptrace_state_duration_seconds_count{state=\"established\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("tcptrace_handshake_duration_seconds_count{handshake=\"connect\"} 1"),
            "{t}"
        );
        // FIN_WAIT1 at 101 ms to CLOSE at 103 ms.
        assert!(
            t.contains("tcptrace_handshake_duration_seconds_sum{handshake=\"active_close\"} 0.002"),
            "{t}"
        );
        assert!(
            t.contains("tcptrace_handshake_duration_seconds_count{handshake=\"passive_close\"} 0"),
            "{t}"
        );
        assert!(
            t.contains("# TYPE tcptrace_transitions_total counter"),
            "{t}"
        );
        assert!(t.contains("tcptrace_build_info{version="), "{t}");
        assert!(t.contains("tcptrace_events_total 0"), "{t}");
        assert!(!t.contains("bpf_run_time"), "{t}");
        assert_eq!(m.open_handshakes(), 0);
    }

    #[test]
    fn passive_close_and_accept_and_fresh_lifecycles() {
        let mut h = HandshakeTracker::new(16);
        let k = 0xffff_0000_0000_0002;
        assert_eq!(h.on(&ev(k, 0, Listen, SynRecv), None), None);
        assert_eq!(
            h.on(&ev(k, 1, SynRecv, Established), Some(7)),
            Some((Handshake::Accept, 7))
        );
        assert_eq!(h.on(&ev(k, 10, Established, CloseWait), Some(9)), None);
        assert_eq!(h.on(&ev(k, 510, CloseWait, LastAck), Some(500)), None);
        assert_eq!(
            h.on(&ev(k, 511, LastAck, Close), Some(1)),
            Some((Handshake::PassiveClose, 501_000_000))
        );
        // A CLOSE whose start we did not see is not a duration.
        assert_eq!(h.on(&ev(k, 600, FinWait2, Close), None), None);
        // A lost CLOSE, then the address is reused: the old start is dropped.
        h.on(&ev(k, 700, Established, FinWait1), None);
        h.on(&ev(k, 800, Close, SynSent), None);
        assert_eq!(h.on(&ev(k, 900, SynSent, Close), Some(1)), None);
    }

    #[test]
    fn the_close_timer_table_is_bounded() {
        let mut h = HandshakeTracker::new(32);
        for i in 0..100 {
            h.on(
                &ev(0xffff_0000_0001_0000 + i, i, Established, CloseWait),
                None,
            );
        }
        assert!(h.open.len() <= 32, "{}", h.open.len());
        // The newest survived.
        assert!(
            h.on(&ev(0xffff_0000_0001_0000 + 99, 200, CloseWait, Close), None)
                .is_some()
        );
    }

    #[test]
    fn sockets_per_state_from_the_table() {
        let (m, reg) = Metrics::new(16);
        let mut table = SocketTable::new(64);
        for (i, st) in [CloseWait, CloseWait, Established, SynSent]
            .into_iter()
            .enumerate()
        {
            let mut s = sock(st, 6000 + i as u16);
            if i == 1 {
                s.tuple.lport = 7000;
            }
            table.seed(i as u64 + 1, s);
        }
        m.set_sockets(&table, |s| s.tuple.lport != 7000);
        let t = text(&reg);
        assert!(
            t.contains("tcptrace_sockets{state=\"close_wait\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("tcptrace_sockets{state=\"established\"} 1"),
            "{t}"
        );
        assert!(t.contains("tcptrace_sockets{state=\"fin_wait2\"} 0"), "{t}");
        assert!(!t.contains("state=\"listen\""), "{t}");
    }

    fn leak(rport: u16, age_s: u64, pid: u32, comm: &str) -> LeakSocket {
        LeakSocket {
            tuple: Tuple {
                laddr: Ipv4Addr::LOCALHOST.into(),
                lport: 40000,
                raddr: Ipv4Addr::new(10, 0, 0, 5).into(),
                rport,
            },
            inode: 1,
            age: Duration::from_secs(age_s),
            age_estimated: false,
            server_side: false,
            holders: vec![Holder {
                pid,
                fd: 3,
                comm: comm.into(),
                start_time: u64::from(pid),
            }],
        }
    }

    #[test]
    fn top_processes_by_name_and_the_rest_summed_as_other() {
        let (m, reg) = Metrics::new(16);
        let mut rows = group(vec![
            leak(1, 10, 10, "java"),
            leak(2, 20, 10, "java"),
            leak(3, 30, 10, "java"),
            leak(4, 400, 20, "nginx"),
            leak(5, 50, 20, "nginx"),
            leak(6, 600, 30, "python3"),
            leak(7, 5, 40, "ruby"),
        ]);
        rows[0].fds = Some(12);
        rows[0].fd_limit = Some(1024);
        rows[0].container = Some("0123456789ab".into());
        m.set_close_wait(&rows, 2);
        let t = text(&reg);
        assert!(
            t.contains(
                "tcptrace_close_wait_sockets{pid=\"10\",comm=\"java\",container=\"0123456789ab\"} 3"
            ),
            "{t}"
        );
        assert!(
            t.contains("tcptrace_close_wait_sockets{pid=\"20\",comm=\"nginx\",container=\"\"} 2"),
            "{t}"
        );
        assert!(
            t.contains("tcptrace_close_wait_sockets{pid=\"\",comm=\"other\",container=\"\"} 2"),
            "{t}"
        );
        assert!(
            t.contains(
                "tcptrace_close_wait_oldest_seconds{pid=\"\",comm=\"other\",container=\"\"} 600"
            ),
            "{t}"
        );
        assert!(
            t.contains(
                "tcptrace_process_open_fds{pid=\"10\",comm=\"java\",container=\"0123456789ab\"} 12"
            ),
            "{t}"
        );
        assert!(t.contains("tcptrace_process_fd_limit{pid=\"10\""), "{t}");
        // A leak that ends takes its series with it.
        m.set_close_wait(&rows[1..2], 2);
        let t = text(&reg);
        assert!(!t.contains("comm=\"java\""), "{t}");
        assert!(!t.contains("{pid=\"\",comm=\"other\""), "{t}");
        assert!(!t.contains("tcptrace_process_open_fds{"), "{t}");
    }

    #[test]
    fn own_counters_and_bpf_time_only_when_known() {
        let (m, reg) = Metrics::new(16);
        m.set_own(
            Stats {
                events: 5,
                lost: 2,
                evicted: 1,
                ..Stats::default()
            },
            Some(1_500_000_000),
        );
        let t = text(&reg);
        for line in [
            "tcptrace_events_total 5",
            "tcptrace_events_lost_total 2",
            "tcptrace_socket_table_evictions_total 1",
            "tcptrace_bpf_run_time_seconds_total 1.5",
            "# TYPE tcptrace_bpf_run_time_seconds_total counter",
        ] {
            assert!(t.contains(line), "{line}\n{t}");
        }
        m.set_own(Stats::default(), None);
        assert!(!text(&reg).contains("bpf_run_time"));
    }
}
