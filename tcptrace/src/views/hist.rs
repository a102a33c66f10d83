//! `tcptrace hist [INTERVAL [COUNT]]`: log2 histograms of the time sockets
//! spend in each TCP state and in each handshake, bcc style.
//!
//! By default the kernel does the work (aggregate mode): it keeps each
//! socket's timestamps in a set-associative array, measures every transition
//! and counts it in per-CPU log2 histograms, so a connection storm never wakes
//! us. Not grouping, a histogram per kind lives in a per-CPU array, one entry
//! for even intervals and one for odd ones, which the kernel resets when a new
//! interval first writes to it; grouping, each counter is a key of a per-CPU
//! hash that carries its interval, and we delete the keys we have read. Either
//! way an interval's counts are read after it is over and nothing is reset
//! under the kernel's feet.
//!
//! `--exact` streams the transitions instead (as `watch` does) and keeps every
//! value in an HdrHistogram, for percentiles that are not interpolated within
//! a bucket. Both paths measure with the same function,
//! [`tcptrace_common::measure`].

use std::{
    collections::{BTreeMap, HashMap},
    io::{self, BufWriter, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    ops::{ControlFlow, RangeInclusive},
    process::ExitCode,
    time::Duration,
};

use anyhow::Context as _;
use aya::maps::{MapData, PerCpuArray, PerCpuHashMap};
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{Value, json};
use tcptrace_common::{
    AF_INET, AggregateConfig, GROUP_LPORT, GROUP_NONE, GROUP_PROCESS, GROUP_RADDR, GROUP_RPORT,
    HS_ACCEPT, HS_ACTIVE_CLOSE, HS_CONNECT, HS_PASSIVE_APP, HS_PASSIVE_CLOSE, HS_PASSIVE_LAST_ACK,
    HistKey, LOG2_BUCKETS, ListenerOwner, SLOT_MAX, SockTimes, TASK_COMM_LEN, TOTAL_KINDS,
    TotalHist, measure, total_kind,
};
use tokio::{
    signal::unix::{SignalKind, signal},
    time::Instant,
};

use crate::{
    cli::{FilterArgs, HistArgs},
    host::holders::HolderIndex,
    host::sockdiag,
    kernel::loader::{AggregateMaps, AggregateProbe, Probe, ProbeConfig},
    model::clock::{Clock, monotonic_ns},
    model::log2::{BUCKETS, Log2Hist},
    model::owner::Attributor,
    model::state::TcpState,
    pipeline::tracer::{Context, DEFAULT_TICK, Filters, Sink, Tracer, Transition},
};

/// How long after an interval ends we read it: a program that took its
/// timestamp just before the boundary has long finished by then.
const GRACE: Duration = Duration::from_millis(20);
const UNIT: &str = "usecs";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupBy {
    Process,
    Lport,
    Rport,
    Raddr,
}

impl GroupBy {
    const ALL: [(Self, &'static str); 4] = [
        (Self::Process, "process"),
        (Self::Lport, "lport"),
        (Self::Rport, "rport"),
        (Self::Raddr, "raddr"),
    ];

    fn kernel(self) -> u32 {
        match self {
            Self::Process => GROUP_PROCESS,
            Self::Lport => GROUP_LPORT,
            Self::Rport => GROUP_RPORT,
            Self::Raddr => GROUP_RADDR,
        }
    }
}

/// The shortest INTERVAL: the kernel keeps two intervals' counts (the one
/// being written and the one being read), so we must read each before the
/// next but one begins, and we read it `GRACE` after it ends.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// A duration as `parse_duration` reads it, of at least [`MIN_INTERVAL`].
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = crate::cli::parse_duration(s)?;
    if d < MIN_INTERVAL {
        return Err(format!(
            "an interval of {d:?} is too short (at least {MIN_INTERVAL:?})"
        ));
    }
    Ok(d)
}

pub fn parse_group_by(s: &str) -> Result<GroupBy, String> {
    let t = s.trim().to_ascii_lowercase();
    let t = match t.as_str() {
        "pid" | "comm" => "process",
        other => other,
    };
    GroupBy::ALL
        .into_iter()
        .find(|(_, name)| *name == t)
        .map(|(g, _)| g)
        .ok_or_else(|| format!("cannot group by '{s}' (one of process, lport, rport, raddr)"))
}

/// What `--handshake` selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handshake {
    Connect,
    ActiveClose,
    PassiveClose,
}

impl Handshake {
    /// The histograms it shows.
    fn kinds(self) -> &'static [u8] {
        match self {
            Self::Connect => &[HS_CONNECT, HS_ACCEPT],
            Self::ActiveClose => &[HS_ACTIVE_CLOSE],
            Self::PassiveClose => &[HS_PASSIVE_CLOSE, HS_PASSIVE_APP, HS_PASSIVE_LAST_ACK],
        }
    }
}

pub fn parse_handshake(s: &str) -> Result<Handshake, String> {
    match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
        "connect" => Ok(Handshake::Connect),
        "active-close" => Ok(Handshake::ActiveClose),
        "passive-close" => Ok(Handshake::PassiveClose),
        _ => Err(format!(
            "unknown handshake '{s}' (one of connect, active-close, passive-close)"
        )),
    }
}

/// A histogram kind: `("state" | "handshake", name, what it spans)`.
fn describe(kind: u8) -> Option<(&'static str, &'static str, Option<&'static str>)> {
    if let Some(state) = TcpState::from_kernel(kind) {
        return Some(("state", state.name(), None));
    }
    let (name, span) = match kind {
        HS_CONNECT => ("connect.client", "SYN_SENT -> ESTABLISHED"),
        HS_ACCEPT => ("connect.server", "SYN_RECV -> ESTABLISHED"),
        HS_ACTIVE_CLOSE => ("active_close", "FIN_WAIT1 -> CLOSE"),
        HS_PASSIVE_CLOSE => ("passive_close", "CLOSE_WAIT -> CLOSE"),
        HS_PASSIVE_APP => (
            "passive_close.close_wait",
            "CLOSE_WAIT: waiting for the application to close",
        ),
        HS_PASSIVE_LAST_ACK => (
            "passive_close.last_ack",
            "LAST_ACK: waiting for the last ACK",
        ),
        _ => return None,
    };
    Some(("handshake", name, Some(span)))
}

/// Which histograms are shown: everything unless `--state`/`--handshake` pick.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    pub states: Vec<TcpState>,
    pub handshakes: Vec<Handshake>,
}

impl Selection {
    pub fn shows(&self, kind: u8) -> bool {
        if self.states.is_empty() && self.handshakes.is_empty() {
            return true;
        }
        match TcpState::from_kernel(kind) {
            Some(s) => self.states.contains(&s),
            None => self.handshakes.iter().any(|h| h.kinds().contains(&kind)),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Group {
    All,
    Process(u32),
    Lport(u16),
    Rport(u16),
    Raddr(IpAddr),
}

impl Group {
    /// Decodes the group the kernel wrote into a key.
    pub fn from_key(by: Option<GroupBy>, key: &HistKey) -> Self {
        let g = &key.group;
        match by {
            None => Self::All,
            Some(GroupBy::Process) => Self::Process(u32::from_ne_bytes([g[0], g[1], g[2], g[3]])),
            Some(GroupBy::Lport) => Self::Lport(u16::from_ne_bytes([g[0], g[1]])),
            Some(GroupBy::Rport) => Self::Rport(u16::from_ne_bytes([g[0], g[1]])),
            Some(GroupBy::Raddr) if key.family == AF_INET => {
                Self::Raddr(IpAddr::V4(Ipv4Addr::new(g[0], g[1], g[2], g[3])))
            }
            Some(GroupBy::Raddr) => Self::Raddr(IpAddr::V6(Ipv6Addr::from(*g))),
        }
    }

    fn text(&self, comms: &mut Comms) -> Option<String> {
        Some(match self {
            Self::All => return None,
            Self::Process(pid) => match comms.get(*pid) {
                Some(c) => format!("process = {pid} ({c})"),
                None => format!("process = {pid}"),
            },
            Self::Lport(p) => format!("lport = {p}"),
            Self::Rport(p) => format!("rport = {p}"),
            Self::Raddr(a) => format!("raddr = {a}"),
        })
    }

    fn json(&self, comms: &mut Comms) -> Value {
        match self {
            Self::All => Value::Null,
            Self::Process(pid) => json!({"pid": pid, "comm": comms.get(*pid)}),
            Self::Lport(p) => json!({ "lport": p }),
            Self::Rport(p) => json!({ "rport": p }),
            Self::Raddr(a) => json!({"raddr": a.to_string()}),
        }
    }
}

/// Names of grouped processes: the process's own (`/proc/PID/comm`, its
/// main thread's) while it runs; once it has exited, the last name read or
/// the one its sockets' threads had when the kernel (or `--exact`) saw them.
#[derive(Default)]
pub struct Comms(HashMap<u32, String>);

impl Comms {
    fn get(&mut self, pid: u32) -> Option<String> {
        if let Ok(c) = std::fs::read_to_string(format!("/proc/{pid}/comm")) {
            self.0.insert(pid, c.trim_end().to_owned());
        }
        self.0.get(&pid).cloned()
    }
}

/// One histogram: log2 buckets, and with `--exact` every value.
#[derive(Clone, Debug, Default)]
pub struct Entry {
    pub log2: Log2Hist,
    pub exact: Option<Histogram<u64>>,
}

impl Entry {
    fn percentile(&self, q: f64) -> Option<u64> {
        match &self.exact {
            Some(h) if !h.is_empty() => Some(h.value_at_quantile(q).min(self.log2.max_us())),
            _ => self.log2.percentile(q),
        }
    }
}

/// The histograms of one interval, by (kind, group); kinds sort states first
/// (by number), then handshakes.
#[derive(Debug, Default)]
pub struct Summary {
    pub hists: BTreeMap<(u8, Group), Entry>,
}

impl Summary {
    /// One counter read from the kernel, summed (or maxed) over CPUs.
    pub fn add_kernel(&mut self, key: &HistKey, group: Group, value: u64) {
        let e = self.hists.entry((key.kind, group)).or_default();
        if key.slot == SLOT_MAX {
            e.log2.max_ns = e.log2.max_ns.max(value);
        } else if let Some(b) = e.log2.buckets.get_mut(usize::from(key.slot)) {
            *b += value;
        }
    }

    /// One value measured in userspace (`--exact`).
    pub fn observe(&mut self, kind: u8, group: Group, ns: u64) {
        let e = self.hists.entry((kind, group)).or_default();
        e.log2.observe_ns(ns);
        let h = e
            .exact
            .get_or_insert_with(|| Histogram::new(3).expect("3 significant digits is valid"));
        // `record` grows the histogram; `saturating_record` would clamp instead.
        if h.record(ns / 1000).is_err() {
            h.saturating_record(ns / 1000);
        }
    }

    /// Dwell times measured, over all states.
    pub fn measured(&self) -> u64 {
        self.hists
            .iter()
            .filter(|((kind, _), _)| TcpState::from_kernel(*kind).is_some())
            .map(|(_, e)| e.log2.count())
            .sum()
    }
}

/// One histogram as NDJSON; these keys, in this order.
#[derive(Serialize)]
struct JsonHist {
    time: String,
    kind: &'static str,
    name: &'static str,
    group: Value,
    unit: &'static str,
    buckets: Vec<JsonBucket>,
    count: u64,
    p50: u64,
    p90: u64,
    p99: u64,
    max: u64,
}

#[derive(Serialize)]
struct JsonBucket {
    low: u64,
    high: u64,
    count: u64,
}

pub struct Report {
    pub json: bool,
    pub selection: Selection,
    /// Print the time above each text summary (interval mode).
    pub timestamps: bool,
    pub comms: Comms,
}

impl Report {
    pub fn write(&mut self, out: &mut impl Write, s: &Summary, ts_ns: u64) -> io::Result<()> {
        let clock = Clock::new();
        if self.timestamps && !self.json {
            writeln!(out, "{}", &clock.local_hms(ts_ns)[..8])?;
        }
        for ((kind, group), e) in &s.hists {
            let count = e.log2.count();
            if count == 0 || !self.selection.shows(*kind) {
                continue;
            }
            let Some((class, name, span)) = describe(*kind) else {
                continue;
            };
            let p = |q| e.percentile(q).unwrap_or(0);
            if self.json {
                let line = JsonHist {
                    time: clock.rfc3339(ts_ns),
                    kind: class,
                    name,
                    group: group.json(&mut self.comms),
                    unit: UNIT,
                    buckets: e
                        .log2
                        .rows()
                        .map(|(low, high, count)| JsonBucket { low, high, count })
                        .collect(),
                    count,
                    p50: p(0.5),
                    p90: p(0.9),
                    p99: p(0.99),
                    max: e.log2.max_us(),
                };
                serde_json::to_writer(&mut *out, &line)?;
                out.write_all(b"\n")?;
                continue;
            }
            let mut heading = format!("{class} = {name}");
            if let Some(span) = span {
                heading.push_str(&format!(" ({span})"));
            }
            if let Some(g) = group.text(&mut self.comms) {
                heading.push_str(&format!(", {g}"));
            }
            writeln!(out, "\n{heading}")?;
            e.log2.write_text(out, UNIT)?;
            let kind_of_percentiles = if e.exact.is_some() { "" } else { "~" };
            writeln!(
                out,
                "count {count}, p50 {k}{}, p90 {k}{}, p99 {k}{}, max {} {UNIT}",
                p(0.5),
                p(0.9),
                p(0.99),
                e.log2.max_us(),
                k = kind_of_percentiles,
            )?;
        }
        out.flush()
    }
}

/// `stream`: the probe configuration `watch` uses, for `--exact`.
pub async fn run(args: HistArgs, stream: ProbeConfig) -> anyhow::Result<ExitCode> {
    let report = Report {
        json: args.json,
        selection: Selection {
            states: args.states.clone(),
            handshakes: args.handshakes.clone(),
        },
        timestamps: args.interval.is_some(),
        comms: Comms::default(),
    };
    let out = BufWriter::new(io::stdout().lock());
    if args.exact {
        exact(args, stream, report, out).await
    } else {
        aggregate(args, report, out).await
    }
}

/// The kernel's comm filter: the name as the kernel stores it (at most 15 bytes).
pub fn kernel_comm(comm: Option<&str>) -> (u32, [u8; TASK_COMM_LEN]) {
    let mut out = [0u8; TASK_COMM_LEN];
    let Some(c) = comm else { return (0, out) };
    let n = c.len().min(TASK_COMM_LEN - 1);
    out[..n].copy_from_slice(&c.as_bytes()[..n]);
    (1, out)
}

async fn aggregate(
    args: HistArgs,
    mut report: Report,
    mut out: impl Write,
) -> anyhow::Result<ExitCode> {
    let (has_comm, comm) = kernel_comm(args.filter.comm.as_deref());
    let start_ns = monotonic_ns();
    let start = Instant::now();
    let config = AggregateConfig {
        start_ns,
        interval_ns: args.interval.map_or(u64::MAX, |d| {
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
        }),
        group_by: args.by.map_or(GROUP_NONE, GroupBy::kernel),
        has_comm,
        // The loader sizes SOCKETS and sets this.
        socket_sets: 0,
        stream_states: 0,
        comm,
    };
    let mut probe = Probe::load(&ProbeConfig {
        filter: args.filter.kernel_filter()?,
        ring_bytes: args.tuning.ring_size,
        wakeup_bytes: 0,
        inodes: false,
        aggregate: Some(AggregateProbe {
            config,
            max_sockets: u32::try_from(args.tuning.max_sockets).unwrap_or(u32::MAX),
        }),
    })?;
    let mut maps = probe
        .aggregate
        .take()
        .context("the kernel program has no histogram maps")?;
    if config.group_by == GROUP_PROCESS || !args.filter.pids.is_empty() || has_comm != 0 {
        seed_listeners(&mut maps.listen_owners, &args.filter, &comm)?;
    }
    let mut stop = Signals::new()?;
    eprintln!("tcptrace: attached to sock:inet_sock_set_state (aggregating in the kernel)");
    // The first interval not yet printed.
    let (mut epoch, mut printed, mut measured) = (0u32, 0u64, 0u64);
    let (mut warned, mut warned_missed) = (0u64, 0u64);
    loop {
        let stopped = match args.interval {
            Some(i) => {
                let end = start + i.saturating_mul(epoch.saturating_add(1)) + GRACE;
                tokio::select! {
                    () = tokio::time::sleep_until(end) => false,
                    () = stop.recv() => true,
                }
            }
            None => {
                stop.recv().await;
                true
            }
        };
        // At a stop, the interval in progress too.
        let upto = if stopped { u32::MAX } else { epoch };
        let summary = read_kernel(&mut maps, epoch..=upto, args.by)
            .context("reading the kernel's histograms")?;
        if args.by == Some(GroupBy::Process) {
            learn_comms(&maps.comms, &summary, &mut report.comms);
        }
        measured += summary.measured();
        match report.write(&mut out, &summary, monotonic_ns()) {
            // Output piped into `head` ends quietly.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => break,
            r => r.context("writing output")?,
        }
        printed += 1;
        epoch = epoch.saturating_add(1);
        let full = probe.hist_full();
        if full > warned {
            eprintln!(
                "tcptrace: warning: {} histogram updates dropped: the kernel map is full (group by something coarser)",
                full - warned
            );
            warned = full;
        }
        let missed = probe.missed();
        if missed > warned_missed {
            eprintln!(
                "tcptrace: warning: the kernel skipped {} transitions: another BPF program was running on the same CPU",
                missed - warned_missed
            );
            warned_missed = missed;
        }
        if stopped || args.count.is_some_and(|c| printed >= c) {
            break;
        }
    }
    eprintln!(
        "tcptrace: {measured} dwell times measured in the kernel, {warned} dropped, {} evicted, {warned_missed} missed",
        probe.evicted()
    );
    Ok(ExitCode::SUCCESS)
}

/// Tells the kernel who owns the listeners that existed before it was
/// attached, so the sockets they create in softirq get their owner rather
/// than whoever was on the CPU.
pub fn seed_listeners(
    map: &mut aya::maps::HashMap<MapData, u16, ListenerOwner>,
    filter: &FilterArgs,
    comm: &[u8; TASK_COMM_LEN],
) -> anyhow::Result<()> {
    let family = Some(filter.family()).filter(|f| *f != 0);
    let listeners = sockdiag::dump_tcp(sockdiag::state_bit(sockdiag::TCP_LISTEN), family)
        .context("sock_diag dump of listeners")?;
    let mut index = HolderIndex::new();
    index.full_scan();
    let wanted = comm.split(|b| *b == 0).next().unwrap_or_default();
    for l in listeners {
        let Some(h) = index.holders(l.inode, None).into_iter().next() else {
            continue;
        };
        let passes = (filter.pids.is_empty() || filter.pids.contains(&h.pid))
            && (filter.comm.is_none() || h.comm.as_bytes() == wanted);
        let owner = ListenerOwner {
            tgid: h.pid,
            passes: u32::from(passes),
        };
        map.insert(l.sport, owner, 0)
            .context("seeding the kernel's listener owners")?;
    }
    Ok(())
}

/// Names the grouped processes from what the kernel saw them run as.
fn learn_comms(
    map: &aya::maps::HashMap<MapData, u32, [u8; TASK_COMM_LEN]>,
    summary: &Summary,
    comms: &mut Comms,
) {
    for (_, group) in summary.hists.keys() {
        if let Group::Process(pid) = group
            && let Ok(raw) = map.get(pid, 0)
        {
            let name = raw.split(|b| *b == 0).next().unwrap_or_default();
            comms
                .0
                .insert(*pid, String::from_utf8_lossy(name).into_owned());
        }
    }
}

/// The histograms of the intervals in `epochs`, which are over (but at a
/// stop, when the last one is cut short): the kernel writes only the current
/// interval's counters.
pub fn read_kernel(
    maps: &mut AggregateMaps,
    epochs: RangeInclusive<u32>,
    by: Option<GroupBy>,
) -> anyhow::Result<Summary> {
    match by {
        None => read_totals(&maps.totals, &epochs),
        Some(_) => read_hist(&mut maps.hist, &epochs, by),
    }
}

/// Not grouping: each kind's entries whose interval is in `epochs`, summed
/// over CPUs. The next interval of the same parity resets them.
fn read_totals(
    map: &PerCpuArray<MapData, TotalHist>,
    epochs: &RangeInclusive<u32>,
) -> anyhow::Result<Summary> {
    let wanted = u64::from(*epochs.start())..=u64::from(*epochs.end());
    let mut summary = Summary::default();
    for index in 0..TOTAL_KINDS * 2 {
        let Some(h) = total_entry(map, index, &wanted)? else {
            continue;
        };
        let e = summary
            .hists
            .entry((total_kind(index), Group::All))
            .or_default();
        for (sum, n) in e.log2.buckets.iter_mut().zip(h.buckets) {
            *sum += n;
        }
        e.log2.max_ns = e.log2.max_ns.max(h.max_ns);
    }
    Ok(summary)
}

/// `TOTALS` entry `index` summed over the CPUs whose copy is for an interval
/// in `wanted` (buckets and sums added, the maximum kept); `None` when empty.
pub fn total_entry(
    map: &PerCpuArray<MapData, TotalHist>,
    index: u32,
    wanted: &RangeInclusive<u64>,
) -> anyhow::Result<Option<TotalHist>> {
    let mut total: Option<TotalHist> = None;
    for h in map.get(&index, 0)?.iter() {
        if !wanted.contains(&h.epoch) || h.buckets.iter().all(|n| *n == 0) {
            continue;
        }
        let t = total.get_or_insert(TotalHist {
            epoch: h.epoch,
            max_ns: 0,
            sum_ns: 0,
            buckets: [0; LOG2_BUCKETS as usize],
        });
        for (sum, n) in t.buckets.iter_mut().zip(h.buckets) {
            *sum += n;
        }
        t.max_ns = t.max_ns.max(h.max_ns);
        t.sum_ns += h.sum_ns;
    }
    Ok(total)
}

/// Grouping: reads and deletes the keys of the intervals in `epochs`.
fn read_hist(
    map: &mut PerCpuHashMap<MapData, HistKey, u64>,
    epochs: &RangeInclusive<u32>,
    by: Option<GroupBy>,
) -> anyhow::Result<Summary> {
    // Collect first: deleting while walking the keys would restart the walk.
    let mut keys = Vec::new();
    for key in map.keys() {
        let key = key?;
        if epochs.contains(&key.epoch) {
            keys.push(key);
        }
    }
    let mut summary = Summary::default();
    for key in keys {
        let per_cpu = map.get(&key, 0)?;
        let value = if key.slot == SLOT_MAX {
            per_cpu.iter().copied().max().unwrap_or(0)
        } else {
            per_cpu.iter().sum()
        };
        summary.add_kernel(&key, Group::from_key(by, &key), value);
        map.remove(&key)?;
    }
    Ok(summary)
}

/// SIGINT, SIGTERM and SIGHUP all end the trace with a last summary.
struct Signals([tokio::signal::unix::Signal; 3]);

impl Signals {
    fn new() -> anyhow::Result<Self> {
        let make = |kind| signal(kind).context("installing a signal handler");
        Ok(Self([
            make(SignalKind::interrupt())?,
            make(SignalKind::terminate())?,
            make(SignalKind::hangup())?,
        ]))
    }

    async fn recv(&mut self) {
        let [a, b, c] = &mut self.0;
        tokio::select! {
            _ = a.recv() => {}
            _ = b.recv() => {}
            _ = c.recv() => {}
        }
    }
}

/// `--exact`: the stream of transitions, measured in userspace.
async fn exact(
    args: HistArgs,
    probe: ProbeConfig,
    report: Report,
    out: impl Write,
) -> anyhow::Result<ExitCode> {
    let filters = Filters {
        pids: args.filter.pids.clone(),
        comm: args.filter.comm.clone(),
        // Every transition: a handshake spans several.
        states: Vec::new(),
    };
    // /proc is read only when owners matter.
    let owners_matter = args.by == Some(GroupBy::Process)
        || !args.filter.pids.is_empty()
        || args.filter.comm.is_some();
    let mut tracer = Tracer::attach(
        &probe,
        filters,
        args.tuning.max_sockets,
        Attributor::new(owners_matter.then(HolderIndex::new)),
    )?;
    let family = Some(args.filter.family()).filter(|f| *f != 0);
    tracer.seed_existing(
        family,
        crate::host::sockdiag::state_bit(crate::host::sockdiag::TCP_LISTEN),
    )?;
    let mut sink = ExactSink {
        out,
        report,
        summary: Summary::default(),
        sockets: HashMap::new(),
        cap: args.tuning.max_sockets,
        by: args.by,
        interval: args.interval,
        next: args.interval.map(|i| Instant::now() + i),
        count: args.count,
        printed: 0,
    };
    let stats = tracer.run(&mut sink, None, DEFAULT_TICK).await?;
    let done = sink.count.is_some_and(|c| sink.printed >= c);
    if !done {
        // The interval in progress at the signal, or the one summary.
        sink.print().or_else(quiet_pipe)?;
    }
    eprintln!("{}", stats.summary());
    Ok(ExitCode::SUCCESS)
}

struct ExactSink<W: Write> {
    out: W,
    report: Report,
    summary: Summary,
    /// What the kernel's SOCKETS map holds in aggregate mode.
    sockets: HashMap<u64, SockTimes>,
    cap: usize,
    by: Option<GroupBy>,
    interval: Option<Duration>,
    next: Option<Instant>,
    count: Option<u64>,
    printed: u64,
}

impl<W: Write> ExactSink<W> {
    fn print(&mut self) -> io::Result<()> {
        let summary = std::mem::take(&mut self.summary);
        self.printed += 1;
        self.report.write(&mut self.out, &summary, monotonic_ns())
    }
}

impl<W: Write> Sink for ExactSink<W> {
    fn transition(&mut self, t: &Transition<'_>, _clock: &Clock) -> io::Result<()> {
        let ev = t.ev;
        let group = match self.by {
            None => Group::All,
            Some(GroupBy::Process) => {
                let (pid, comm) = t
                    .owners
                    .first()
                    .map_or((ev.tgid, &ev.comm), |o| (o.pid, &o.comm));
                self.report.comms.0.insert(pid, comm.clone());
                Group::Process(pid)
            }
            Some(GroupBy::Lport) => Group::Lport(ev.lport),
            Some(GroupBy::Rport) => Group::Rport(ev.rport),
            Some(GroupBy::Raddr) => Group::Raddr(ev.raddr),
        };
        let (old, new) = (ev.oldstate as u8, ev.newstate as u8);
        let prev = self.sockets.get(&ev.skaddr).copied();
        let measured = measure(prev.as_ref(), old, new, ev.ts_ns);
        for (kind, ns) in measured.values() {
            self.summary.observe(kind, group.clone(), ns);
        }
        let (handshake, handshake_ns) = (measured.handshake, measured.handshake_ns);
        if ev.newstate == TcpState::Close {
            self.sockets.remove(&ev.skaddr);
            return Ok(());
        }
        if self.sockets.len() >= self.cap
            && !self.sockets.contains_key(&ev.skaddr)
            && let Some(any) = self.sockets.keys().next().copied()
        {
            // Bounded like the kernel's LRU map; which one goes matters little.
            self.sockets.remove(&any);
        }
        self.sockets.insert(
            ev.skaddr,
            SockTimes {
                skaddr: ev.skaddr,
                entered_ns: ev.ts_ns,
                handshake_ns,
                owner: 0,
                state: new,
                handshake,
                owner_passes: 1,
                _pad: 0,
            },
        );
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn tick(&mut self, _ctx: &mut Context<'_>) -> io::Result<ControlFlow<()>> {
        let (Some(interval), Some(next)) = (self.interval, self.next) else {
            return Ok(ControlFlow::Continue(()));
        };
        if Instant::now() < next {
            return Ok(ControlFlow::Continue(()));
        }
        self.next = Some(next + interval);
        self.print()?;
        Ok(if self.count.is_some_and(|c| self.printed >= c) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        })
    }
}

/// Output piped into `head` ends quietly.
fn quiet_pipe(e: io::Error) -> anyhow::Result<()> {
    if e.kind() == io::ErrorKind::BrokenPipe {
        Ok(())
    } else {
        Err(e).context("writing output")
    }
}

const _: () = assert!(BUCKETS == SLOT_MAX as usize);

#[cfg(test)]
mod tests {
    use tcptrace_common::{
        HS_NONE, TCP_CLOSE, TCP_CLOSE_WAIT, TCP_CLOSING, TCP_ESTABLISHED, TCP_FIN_WAIT1,
        TCP_FIN_WAIT2, TCP_LAST_ACK, TCP_LISTEN, TCP_SYN_RECV, TCP_SYN_SENT,
    };

    use super::*;

    const MS: u64 = 1_000_000;

    /// Runs `measure` over a socket's life as the kernel does (entry deleted
    /// at CLOSE) and returns what it recorded, as (kind, ns).
    fn life(steps: &[(u8, u8, u64)]) -> Vec<(u8, u64)> {
        let mut entry: Option<SockTimes> = None;
        let mut out = Vec::new();
        for &(old, new, now) in steps {
            let m = measure(entry.as_ref(), old, new, now);
            out.extend(m.values());
            let (handshake, handshake_ns) = (m.handshake, m.handshake_ns);
            entry = (new != TCP_CLOSE).then_some(SockTimes {
                skaddr: 1,
                entered_ns: now,
                handshake_ns,
                owner: 0,
                state: new,
                handshake,
                owner_passes: 1,
                _pad: 0,
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
        let stale = SockTimes {
            skaddr: 1,
            entered_ns: 0,
            handshake_ns: 0,
            owner: 0,
            state: TCP_ESTABLISHED,
            handshake: HS_NONE,
            owner_passes: 1,
            _pad: 0,
        };
        let n = |m: tcptrace_common::Measured| m.values().count();
        assert_eq!(n(measure(Some(&stale), TCP_FIN_WAIT2, TCP_CLOSE, MS)), 0);
        // A reused address: leaving CLOSE or a listener's child is a new socket.
        let old_socket = SockTimes {
            state: TCP_CLOSE,
            ..stale
        };
        assert_eq!(
            n(measure(Some(&old_socket), TCP_CLOSE, TCP_SYN_SENT, MS)),
            0
        );
        let listener = SockTimes {
            state: TCP_LISTEN,
            ..stale
        };
        assert_eq!(n(measure(Some(&listener), TCP_LISTEN, TCP_SYN_RECV, MS)), 0);
        // A clock that went backwards never underflows.
        let rec = life(&[(TCP_CLOSE, TCP_LISTEN, 10), (TCP_LISTEN, TCP_CLOSE, 5)]);
        assert_eq!(rec, vec![(TCP_LISTEN, 0)]);
    }

    fn key(kind: u8, slot: u8, group: [u8; 16], family: u16) -> HistKey {
        HistKey {
            group,
            epoch: 0,
            family,
            kind,
            slot,
        }
    }

    #[test]
    fn socket_sets_spread_slab_addresses() {
        // struct tcp_sock objects sit about 2.5 KiB apart in 32 KiB slabs:
        // their low bits agree, the set must come from the others.
        let sets = 1 << 16;
        let mut used = std::collections::HashSet::new();
        for i in 0..4096u64 {
            let skaddr = 0xffff_8880_1000_0000 + (i / 12) * 32768 + (i % 12) * 2560;
            let set = tcptrace_common::socket_set(skaddr, sets);
            assert!(set < sets);
            used.insert(set);
        }
        // 4096 sockets over 65536 sets: almost all alone.
        assert!(used.len() > 3900, "{}", used.len());
        assert_eq!(tcptrace_common::socket_set(u64::MAX, 1), 0);
    }

    #[test]
    fn totals_index_every_kind_once() {
        let kinds: Vec<u8> = (1..=12).chain(HS_CONNECT..=HS_PASSIVE_LAST_ACK).collect();
        assert_eq!(kinds.len() as u32, TOTAL_KINDS);
        let mut seen = std::collections::BTreeSet::new();
        for k in kinds {
            for epoch in [0, 1, 2, 7, u32::MAX] {
                let i = tcptrace_common::total_index(k, epoch).unwrap();
                assert!(i < TOTAL_KINDS * 2, "{k}");
                assert_eq!(i % 2, epoch % 2);
                assert_eq!(total_kind(i), k);
                seen.insert(i);
            }
        }
        assert_eq!(seen.len() as u32, TOTAL_KINDS * 2);
        for bad in [0, 13, 31, 38, 255] {
            assert_eq!(tcptrace_common::total_index(bad, 0), None);
        }
    }

    #[test]
    fn groups_decode_what_the_kernel_wrote() {
        let mut g = [0u8; 16];
        g[..4].copy_from_slice(&4321u32.to_ne_bytes());
        assert_eq!(
            Group::from_key(Some(GroupBy::Process), &key(1, 0, g, 0)),
            Group::Process(4321)
        );
        let mut g = [0u8; 16];
        g[..2].copy_from_slice(&8080u16.to_ne_bytes());
        assert_eq!(
            Group::from_key(Some(GroupBy::Lport), &key(1, 0, g, 0)),
            Group::Lport(8080)
        );
        assert_eq!(
            Group::from_key(Some(GroupBy::Rport), &key(1, 0, g, 0)),
            Group::Rport(8080)
        );
        let mut g = [0u8; 16];
        g[..4].copy_from_slice(&[10, 0, 0, 1]);
        assert_eq!(
            Group::from_key(Some(GroupBy::Raddr), &key(1, 0, g, AF_INET)),
            Group::Raddr("10.0.0.1".parse().unwrap())
        );
        let v6: Ipv6Addr = "2001:db8::1".parse().unwrap();
        assert_eq!(
            Group::from_key(
                Some(GroupBy::Raddr),
                &key(1, 0, v6.octets(), tcptrace_common::AF_INET6)
            ),
            Group::Raddr(IpAddr::V6(v6))
        );
        assert_eq!(Group::from_key(None, &key(1, 0, [7; 16], 0)), Group::All);
    }

    #[test]
    fn kernel_counters_sum_and_the_max_slot_is_a_max() {
        let mut s = Summary::default();
        s.add_kernel(&key(TCP_CLOSE_WAIT, 18, [0; 16], 0), Group::All, 2);
        s.add_kernel(&key(TCP_CLOSE_WAIT, 18, [0; 16], 0), Group::All, 1);
        s.add_kernel(
            &key(TCP_CLOSE_WAIT, SLOT_MAX, [0; 16], 0),
            Group::All,
            300 * MS,
        );
        s.add_kernel(
            &key(TCP_CLOSE_WAIT, SLOT_MAX, [0; 16], 0),
            Group::All,
            299 * MS,
        );
        s.add_kernel(&key(HS_CONNECT, 3, [0; 16], 0), Group::All, 1);
        let e = &s.hists[&(TCP_CLOSE_WAIT, Group::All)];
        assert_eq!(
            (e.log2.count(), e.log2.buckets[18], e.log2.max_ns),
            (3, 3, 300 * MS)
        );
        // Only states count as dwell times.
        assert_eq!(s.measured(), 3);
    }

    #[test]
    fn selection_and_parsers() {
        let all = Selection::default();
        assert!(all.shows(TCP_CLOSE_WAIT) && all.shows(HS_ACTIVE_CLOSE));
        let some = Selection {
            states: vec![TcpState::CloseWait],
            handshakes: vec![Handshake::PassiveClose],
        };
        assert!(some.shows(TCP_CLOSE_WAIT) && !some.shows(TCP_LAST_ACK));
        for k in [HS_PASSIVE_CLOSE, HS_PASSIVE_APP, HS_PASSIVE_LAST_ACK] {
            assert!(some.shows(k));
        }
        assert!(!some.shows(HS_CONNECT) && !some.shows(HS_ACTIVE_CLOSE));
        assert_eq!(parse_handshake("Active_Close"), Ok(Handshake::ActiveClose));
        assert_eq!(
            parse_handshake("passive-close"),
            Ok(Handshake::PassiveClose)
        );
        assert!(
            parse_handshake("close")
                .unwrap_err()
                .contains("one of connect")
        );
        assert_eq!(parse_interval("0.1"), Ok(MIN_INTERVAL));
        assert!(parse_interval("0.05").unwrap_err().contains("too short"));
        assert!(parse_interval("0").is_err());
        assert_eq!(parse_group_by("LPORT"), Ok(GroupBy::Lport));
        assert_eq!(parse_group_by("pid"), Ok(GroupBy::Process));
        assert!(parse_group_by("port").is_err());
        assert_eq!(kernel_comm(None), (0, [0; 16]));
        let (on, c) = kernel_comm(Some("a-very-long-command-name"));
        assert_eq!((on, &c[..15], c[15]), (1, &b"a-very-long-com"[..], 0));
    }

    #[test]
    fn report_json_has_the_documented_keys() {
        let mut s = Summary::default();
        s.observe(TCP_CLOSE_WAIT, Group::Lport(8080), 300 * MS);
        s.observe(HS_PASSIVE_LAST_ACK, Group::Lport(8080), 40_000);
        let mut report = Report {
            json: true,
            selection: Selection::default(),
            timestamps: false,
            comms: Comms::default(),
        };
        let mut out = Vec::new();
        report.write(&mut out, &s, monotonic_ns()).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        // The keys, in this order.
        let first = text.lines().next().unwrap();
        let at: Vec<usize> = [
            "time", "kind", "name", "group", "unit", "buckets", "count", "p50", "p90", "p99", "max",
        ]
        .iter()
        .map(|k| {
            first
                .find(&format!("\"{k}\":"))
                .unwrap_or_else(|| panic!("{k}"))
        })
        .collect();
        assert!(at.is_sorted(), "{first}");
        assert_eq!(lines[0].as_object().unwrap().len(), 11);
        assert_eq!(lines[0]["kind"], "state");
        assert_eq!(lines[0]["name"], "CLOSE_WAIT");
        assert_eq!(lines[0]["group"], json!({"lport": 8080}));
        assert_eq!(
            lines[0]["buckets"],
            json!([{"low": 262144, "high": 524287, "count": 1}])
        );
        assert_eq!(lines[0]["max"], 300_000);
        assert_eq!(lines[0]["p99"], 300_000);
        assert_eq!(lines[1]["kind"], "handshake");
        assert_eq!(lines[1]["name"], "passive_close.last_ack");
    }

    #[test]
    fn report_text_names_each_histogram() {
        let mut s = Summary::default();
        s.add_kernel(&key(HS_ACTIVE_CLOSE, 2, [0; 16], 0), Group::Rport(443), 3);
        s.add_kernel(
            &key(HS_ACTIVE_CLOSE, SLOT_MAX, [0; 16], 0),
            Group::Rport(443),
            6_500,
        );
        let mut report = Report {
            json: false,
            selection: Selection::default(),
            timestamps: false,
            comms: Comms::default(),
        };
        let mut out = Vec::new();
        report.write(&mut out, &s, monotonic_ns()).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "",
                "handshake = active_close (FIN_WAIT1 -> CLOSE), rport = 443",
                "     usecs               : count     distribution",
                "         4 -> 7          : 3        |****************************************|",
                "count 3, p50 ~5, p90 ~6, p99 ~6, max 6 usecs",
            ]
        );
    }
}
