//! The Prometheus metrics of `tcptrace serve`: their names, and how the
//! periodic snapshots replace their values: the kernel's counters and
//! histograms (every transition is counted in the kernel, none crosses to
//! userspace for these), sockets per state, CLOSE_WAIT holders, tcptrace's
//! own counts.
//!
//! Named by the Prometheus guide: one `tcptrace_` prefix, seconds, `_total`
//! counters, lowercase state labels as node_exporter's
//! `node_tcp_connection_states`. Per-process series are bounded by `--top`;
//! there are no per-socket labels.

use std::{
    fmt::{self, Write as _},
    sync::{Arc, Mutex, PoisonError, RwLock, atomic::AtomicU64},
};

use prometheus_client::{
    collector::Collector,
    encoding::{
        DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
    },
    metrics::{MetricType, counter::ConstCounter, family::Family, gauge::Gauge, info::Info},
    registry::{Registry, Unit},
};

use tcptrace_common::TcpState;

use crate::{
    model::log2::BUCKETS as LOG2_BUCKETS, pipeline::sink::Stats, views::leaks::ProcessLeaks,
};

/// Histogram buckets: `le` = 4^k µs for k = 1..=16, 4 µs to ~72 min
/// (loopback handshakes take tens of µs, leaks last minutes), plus +Inf.
/// Each is exactly two of the kernel's log2 buckets of microseconds, so the
/// counts are exact up to the microsecond the kernel truncates to.
pub const BUCKET_COUNT: usize = 16;

/// The upper bound of bucket `k` (1-based), in seconds.
pub fn bucket_bound_seconds(k: usize) -> f64 {
    4f64.powi(i32::try_from(k).unwrap_or(i32::MAX)) / 1e6
}

/// TCP state numbers are below this (include/net/tcp_states.h).
pub const STATES: usize = 16;

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
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
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

    /// The kernel's histogram kind for this phase (`HS_*`).
    pub const fn kernel_kind(self) -> u8 {
        match self {
            Self::Connect => tcptrace_common::HS_CONNECT,
            Self::Accept => tcptrace_common::HS_ACCEPT,
            Self::ActiveClose => tcptrace_common::HS_ACTIVE_CLOSE,
            Self::PassiveClose => tcptrace_common::HS_PASSIVE_CLOSE,
        }
    }

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
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
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

/// One process's series. `pid`, `container` and `netns` are empty (so
/// absent in Prometheus) on the `comm="other"` row; `container` is empty
/// outside containers, `netns` (the network namespace's inode) in
/// tcptrace's own namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ProcessLabels {
    pub pid: String,
    pub comm: String,
    pub container: String,
    pub netns: String,
}

/// Everything `serve` exports; the handles share their values with the
/// [`Exposition`] that renders them.
pub struct Metrics {
    kernel: Arc<KernelSeries>,
    sockets: Family<StateLabels, Gauge>,
    namespaces: Gauge,
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
    pub fn new() -> (Self, Exposition) {
        let mut reg = Registry::with_prefix("tcptrace");
        let m = Self {
            kernel: Arc::new(KernelSeries::default()),
            sockets: Family::default(),
            namespaces: Gauge::default(),
            close_wait: Family::default(),
            close_wait_oldest: Family::default(),
            open_fds: Family::default(),
            fd_limit: Family::default(),
            own: Arc::new(OwnCounters::default()),
            snapshot: Arc::new(RwLock::new(())),
        };
        reg.register_collector(Box::new(m.kernel.clone()));
        // One line per metric: name (and unit), help, the metric.
        macro_rules! register {
            ($name:literal, $help:literal => $metric:expr) => {
                reg.register($name, $help, $metric)
            };
            ($name:literal in $unit:expr, $help:literal => $metric:expr) => {
                reg.register_with_unit($name, $help, $unit, $metric)
            };
        }
        register!("sockets", "Sockets in each connection state, in every network namespace" => m.sockets.clone());
        register!("network_namespaces", "Network namespaces whose sockets tcptrace_sockets and the CLOSE_WAIT series cover" => m.namespaces.clone());
        register!("close_wait_sockets", "CLOSE_WAIT sockets held per process (the top --top processes; the rest summed under comm=\"other\")" => m.close_wait.clone());
        register!("close_wait_oldest" in Unit::Seconds, "Age of the oldest CLOSE_WAIT socket per process (a lower bound for sockets older than tcptrace)" => m.close_wait_oldest.clone());
        register!("process_open_fds", "Open file descriptors of the processes in tcptrace_close_wait_sockets" => m.open_fds.clone());
        register!("process_fd_limit", "Soft RLIMIT_NOFILE of the processes in tcptrace_close_wait_sockets (absent when unlimited)" => m.fd_limit.clone());
        let version = ("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned());
        register!("build", "tcptrace's version" => Info::new(vec![version]));
        reg.register_collector(Box::new(m.own.clone()));
        // Known series exist from the start, so rate() and absent() behave.
        for state in SOCKET_STATES {
            drop(m.sockets.get_or_create(&StateLabels {
                state: StateLabel(state),
            }));
        }
        let exposition = Exposition {
            registry: reg,
            snapshot: m.snapshot.clone(),
        };
        (m, exposition)
    }

    /// Replaces the kernel's counters and histograms with a newer reading.
    pub fn set_kernel(&self, snapshot: KernelSnapshot) {
        *self.kernel.0.lock().unwrap_or_else(PoisonError::into_inner) = snapshot;
    }

    /// Replaces `tcptrace_sockets` with these counts, indexed by state
    /// number, over `namespaces` network namespaces.
    pub fn set_sockets(&self, counts: &[i64; STATES], namespaces: usize) {
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
        self.namespaces.set(clamp(namespaces as u64));
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
        // An unknown age counts as 0: the series says "at least".
        let oldest = |r: &ProcessLeaks| {
            r.oldest()
                .and_then(|s| s.age.known())
                .map_or(0.0, |d| d.as_secs_f64())
        };
        for r in rows.iter().take(top) {
            let labels = ProcessLabels {
                pid: r.pid.to_string(),
                comm: r.comm.clone(),
                container: r.container.clone().unwrap_or_default(),
                netns: match r.netns {
                    Some(ns) if r.other_netns => ns.to_string(),
                    _ => String::new(),
                },
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
                netns: String::new(),
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
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
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

/// One of the kernel's histograms, summed over CPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelHist {
    /// Log2 buckets of microseconds, as the kernel counts them.
    pub buckets: [u64; LOG2_BUCKETS],
    pub sum_ns: u64,
}

impl Default for KernelHist {
    fn default() -> Self {
        Self {
            buckets: [0; LOG2_BUCKETS],
            sum_ns: 0,
        }
    }
}

impl KernelHist {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// Prometheus buckets `(le, count in it)`, +Inf last: bucket k (4^k µs)
    /// holds the kernel's log2 buckets 2k-2 and 2k-1, values below 2^(2k) µs.
    fn prometheus_buckets(&self) -> Vec<(f64, u64)> {
        let mut out: Vec<(f64, u64)> = (1..=BUCKET_COUNT)
            .map(|k| {
                let n = self.buckets[2 * k - 2] + self.buckets[2 * k - 1];
                (bucket_bound_seconds(k), n)
            })
            .collect();
        let rest = self.buckets[2 * BUCKET_COUNT..].iter().sum();
        out.push((f64::INFINITY, rest));
        out
    }
}

/// What the kernel has counted since it was attached, read on each snapshot.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KernelSnapshot {
    /// `(old, new, count)`, the transitions seen at least once.
    pub transitions: Vec<(TcpState, TcpState, u64)>,
    /// Time spent in each state, for the states left at least once.
    pub states: Vec<(TcpState, KernelHist)>,
    /// Every phase, measured or not: its series exist from the start.
    pub handshakes: Vec<(Handshake, KernelHist)>,
}

/// The kernel's counters and histograms, rendered as they were last read
/// (a collector: the values are the kernel's, not incremented here).
#[derive(Debug, Default)]
struct KernelSeries(Mutex<KernelSnapshot>);

impl Collector for KernelSeries {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let s = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut family = encoder.encode_descriptor(
            "transitions",
            "TCP state transitions, by old and new state.",
            None,
            MetricType::Counter,
        )?;
        for (from, to, n) in &s.transitions {
            let labels = TransitionLabels {
                from: StateLabel(*from),
                to: StateLabel(*to),
            };
            ConstCounter::new(*n).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "state_duration",
            "Time sockets spent in a state, observed when they leave it.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for (state, h) in &s.states {
            let labels = StateLabels {
                state: StateLabel(*state),
            };
            encode_histogram(family.encode_family(&labels)?, h)?;
        }
        let mut family = encoder.encode_descriptor(
            "handshake_duration",
            "Connection phases: connect (SYN_SENT to ESTABLISHED), accept (SYN_RECV to ESTABLISHED), \
             active_close (FIN_WAIT1 to CLOSE), passive_close (CLOSE_WAIT to CLOSE).",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for (handshake, h) in &s.handshakes {
            let labels = HandshakeLabels {
                handshake: *handshake,
            };
            encode_histogram(family.encode_family(&labels)?, h)?;
        }
        Ok(())
    }
}

fn encode_histogram(
    mut encoder: prometheus_client::encoding::MetricEncoder<'_>,
    h: &KernelHist,
) -> fmt::Result {
    encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
        seconds(h.sum_ns),
        h.count(),
        &h.prometheus_buckets(),
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::leaks::collect::{LeakSocket, group, tests::sock};

    use TcpState::*;

    fn text(reg: &Exposition) -> String {
        reg.render().unwrap()
    }

    /// A kernel histogram with `n` values in each of these log2 buckets.
    fn kernel_hist(values: &[(usize, u64)], sum_ns: u64) -> KernelHist {
        let mut h = KernelHist::default();
        for (bucket, n) in values {
            h.buckets[*bucket] += n;
        }
        h.sum_ns = sum_ns;
        h
    }

    #[test]
    fn each_prometheus_bucket_is_two_kernel_buckets() {
        let all = KernelHist {
            buckets: [1; LOG2_BUCKETS],
            sum_ns: 0,
        };
        let b = all.prometheus_buckets();
        assert_eq!(b.len(), BUCKET_COUNT + 1);
        assert!(b[..BUCKET_COUNT].iter().all(|(_, n)| *n == 2), "{b:?}");
        assert_eq!(b[BUCKET_COUNT], (f64::INFINITY, 32));
        assert_eq!(b[0].0, 4e-6);
        assert_eq!(b[9].0, 1.048576);
        assert_eq!(b[15].0, 4294.967296);
        // 100 µs is in log2 bucket 6 ([64, 127] µs): below 256 µs, above 64 µs.
        let one = kernel_hist(&[(6, 1)], 100_000);
        let b = one.prometheus_buckets();
        assert_eq!((b[3].0, b[3].1), (2.56e-4, 1));
        assert_eq!(b.iter().map(|(_, n)| n).sum::<u64>(), 1);
    }

    #[test]
    fn the_kernels_counters_and_histograms_render_as_read() {
        let (m, reg) = Metrics::new();
        let t = text(&reg);
        // Before the first reading: the families exist, the phases' series not yet.
        assert!(
            t.contains("# TYPE tcptrace_transitions_total counter"),
            "{t}"
        );
        assert!(
            t.contains("# TYPE tcptrace_state_duration_seconds histogram"),
            "{t}"
        );
        assert!(t.contains("tcptrace_events_total 0"), "{t}");
        assert!(!t.contains("bpf_run_time"), "{t}");
        m.set_kernel(KernelSnapshot {
            transitions: vec![(SynSent, Established, 3), (Established, FinWait1, 2)],
            states: vec![(Established, kernel_hist(&[(6, 2), (19, 1)], 600_200_000))],
            handshakes: Handshake::ALL
                .into_iter()
                .map(|h| {
                    let hist = if h == Handshake::ActiveClose {
                        kernel_hist(&[(10, 1)], 2_000_000)
                    } else {
                        KernelHist::default()
                    };
                    (h, hist)
                })
                .collect(),
        });
        let t = text(&reg);
        for line in [
            "tcptrace_transitions_total{from=\"syn_sent\",to=\"established\"} 3",
            "tcptrace_transitions_total{from=\"established\",to=\"fin_wait1\"} 2",
            "tcptrace_state_duration_seconds_count{state=\"established\"} 3",
            "tcptrace_state_duration_seconds_sum{state=\"established\"} 0.6002",
            "tcptrace_state_duration_seconds_bucket{state=\"established\",le=\"0.000256\"} 2",
            "tcptrace_state_duration_seconds_bucket{state=\"established\",le=\"0.262144\"} 2",
            "tcptrace_state_duration_seconds_bucket{state=\"established\",le=\"1.048576\"} 3",
            "tcptrace_state_duration_seconds_bucket{state=\"established\",le=\"+Inf\"} 3",
            "tcptrace_handshake_duration_seconds_sum{handshake=\"active_close\"} 0.002",
            "tcptrace_handshake_duration_seconds_count{handshake=\"active_close\"} 1",
            "tcptrace_handshake_duration_seconds_count{handshake=\"passive_close\"} 0",
            "tcptrace_build_info{version=",
        ] {
            assert!(t.contains(line), "{line}\n{t}");
        }
        // A state never left has no duration series.
        assert!(
            !t.contains("tcptrace_state_duration_seconds_count{state=\"close_wait\"}"),
            "{t}"
        );
    }

    #[test]
    fn sockets_per_state_from_counts() {
        let (m, reg) = Metrics::new();
        let mut counts = [0i64; STATES];
        counts[CloseWait as usize] = 4;
        counts[Established as usize] = 1;
        counts[Listen as usize] = 9;
        m.set_sockets(&counts, 3);
        let t = text(&reg);
        assert!(
            t.contains("tcptrace_sockets{state=\"close_wait\"} 4"),
            "{t}"
        );
        assert!(
            t.contains("tcptrace_sockets{state=\"established\"} 1"),
            "{t}"
        );
        assert!(t.contains("tcptrace_sockets{state=\"fin_wait2\"} 0"), "{t}");
        assert!(!t.contains("state=\"listen\""), "{t}");
        assert!(t.contains("tcptrace_network_namespaces 3"), "{t}");
    }

    fn leak(rport: u16, age_s: u64, pid: u32, comm: &str) -> LeakSocket {
        sock(rport, age_s, &[(pid, comm)])
    }

    #[test]
    fn top_processes_by_name_and_the_rest_summed_as_other() {
        let (m, reg) = Metrics::new();
        let mut rows = group(
            vec![
                leak(1, 10, 10, "java"),
                leak(2, 20, 10, "java"),
                leak(3, 30, 10, "java"),
                leak(4, 400, 20, "nginx"),
                leak(5, 50, 20, "nginx"),
                leak(6, 600, 30, "python3"),
                leak(7, 5, 40, "ruby"),
            ],
            1,
        );
        rows[0].fds = Some(12);
        rows[0].fd_limit = Some(1024);
        rows[0].container = Some("0123456789ab".into());
        m.set_close_wait(&rows, 2);
        let t = text(&reg);
        assert!(
            t.contains(
                "tcptrace_close_wait_sockets{pid=\"10\",comm=\"java\",container=\"0123456789ab\",netns=\"\"} 3"
            ),
            "{t}"
        );
        assert!(
            t.contains(
                "tcptrace_close_wait_sockets{pid=\"20\",comm=\"nginx\",container=\"\",netns=\"\"} 2"
            ),
            "{t}"
        );
        assert!(
            t.contains(
                "tcptrace_close_wait_sockets{pid=\"\",comm=\"other\",container=\"\",netns=\"\"} 2"
            ),
            "{t}"
        );
        assert!(
            t.contains(
                "tcptrace_close_wait_oldest_seconds{pid=\"\",comm=\"other\",container=\"\",netns=\"\"} 600"
            ),
            "{t}"
        );
        assert!(
            t.contains(
                "tcptrace_process_open_fds{pid=\"10\",comm=\"java\",container=\"0123456789ab\",netns=\"\"} 12"
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
        let (m, reg) = Metrics::new();
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
