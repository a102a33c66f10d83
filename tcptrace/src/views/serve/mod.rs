//! `tcptrace serve`: a Prometheus exporter. The kernel counts and times every
//! transition (aggregate mode, as `hist`), and streams only CLOSE_WAIT's
//! comings and goings; [`ServeSink`] copies the kernel's figures, the sockets
//! per state of every network namespace and the CLOSE_WAIT holders into the
//! metrics ([`metrics`]) on ticks, and [`http`] serves them: over TLS and
//! to known users only with `--web-config` ([`webconfig`], [`tls`],
//! [`auth`]), to every address fairly ([`limits`]).

mod auth;
mod conn;
pub mod http;
mod limits;
pub mod metrics;
mod refusals;
pub mod reload;
mod tls;
mod webconfig;

use std::{
    ops::ControlFlow,
    time::{Duration, Instant},
};

use tcptrace_common::TcpState;

use crate::{
    host::{clock::monotonic_ns, netns},
    kernel::maps::AggregateMaps,
    model::{event::Family, selection::Selection},
    pipeline::sink::{Context, Sink},
    views::leaks::Collector,
};
use metrics::{Handshake, KernelHist, KernelSnapshot, Metrics, SOCKET_STATES};

/// How often the kernel's figures and the socket gauges are refreshed.
const SNAPSHOT_PERIOD: Duration = Duration::from_secs(1);
/// The sockets-per-state dump costs in proportion to the host's sockets: it
/// runs at most once per this many times its own duration (1% of a CPU).
const DUMP_DUTY: u32 = 100;

pub struct ServeOptions {
    /// Processes named in the per-process series; the rest are "other".
    pub top: usize,
    /// How often the CLOSE_WAIT rows are recomputed (sock_diag + /proc scan).
    pub interval: Duration,
    pub selection: Selection,
    /// SIGHUP reloads the web configuration instead of ending the trace.
    pub reloads: bool,
}

/// Feeds the metrics from the trace: snapshots on ticks.
pub struct ServeSink {
    metrics: Metrics,
    /// The CLOSE_WAIT holders, in every network namespace.
    collector: Collector,
    opts: ServeOptions,
    last_snapshot: Option<Instant>,
    /// When the sockets per state were last dumped, and how long it took.
    last_dump: Option<(Instant, Duration)>,
    last_rows: Option<Instant>,
    bpf_run_time_ns: Option<u64>,
    warned: bool,
}

impl ServeSink {
    pub fn new(opts: ServeOptions, metrics: Metrics) -> anyhow::Result<Self> {
        Ok(Self {
            metrics,
            collector: Collector::new(opts.selection.clone(), false, true)?,
            opts,
            last_snapshot: None,
            last_dump: None,
            last_rows: None,
            bpf_run_time_ns: None,
            warned: false,
        })
    }

    fn refresh_rows(&mut self, ctx: &Context<'_>) {
        match self.collector.collect(ctx.table, monotonic_ns()) {
            Ok(rows) => self.metrics.set_close_wait(&rows, self.opts.top),
            // Keep the last rows: a gap would reset alerts' `for:` clocks.
            Err(e) if !self.warned => {
                eprintln!("tcptrace: warning: listing CLOSE_WAIT sockets: {e:#}");
                self.warned = true;
            }
            Err(e) => log::debug!("listing CLOSE_WAIT sockets: {e:#}"),
        }
    }

    /// Sockets per state in every network namespace (those of the last
    /// /proc scan), within the port and family filters, unless the last dump
    /// was too recent for its cost.
    fn refresh_sockets(&mut self, now: Instant) {
        if let Some((at, took)) = self.last_dump
            && now.duration_since(at) < took.saturating_mul(DUMP_DUTY)
        {
            return;
        }
        let states = u32::from(TcpState::mask(&SOCKET_STATES));
        let started = Instant::now();
        let sel = &self.opts.selection;
        match netns::dump_all(
            &self.collector.namespaces(),
            states,
            sel.family.map(Family::af),
            self.collector.route(),
        ) {
            Ok(host) => {
                let mut counts = [0i64; metrics::STATES];
                for d in host
                    .sockets
                    .iter()
                    .filter(|d| sel.socket_passes(d.sport, d.dport, Family::from_af(d.family)))
                {
                    if let Some(n) = counts.get_mut(usize::from(d.state)) {
                        *n += 1;
                    }
                }
                self.metrics.set_sockets(&counts, host.namespaces);
            }
            Err(e) => log::warn!("dump of sockets per state: {e:#}"),
        }
        self.last_dump = Some((now, started.elapsed()));
    }
}

fn due(last: Option<Instant>, period: Duration, now: Instant) -> bool {
    last.is_none_or(|t| now.duration_since(t) >= period)
}

/// What the kernel has counted since it was attached.
fn read_kernel(maps: &AggregateMaps) -> anyhow::Result<KernelSnapshot> {
    // Interval 0 never ends: serve's histograms are cumulative.
    let all = 0..=u64::MAX;
    let hist = |kind: u8| -> anyhow::Result<Option<KernelHist>> {
        let Some(index) = tcptrace_common::total_index(kind, 0) else {
            return Ok(None);
        };
        Ok(maps.total(index, &all)?.map(|t| KernelHist {
            buckets: t.buckets,
            sum_ns: t.sum_ns,
        }))
    };
    let mut snapshot = KernelSnapshot {
        transitions: maps.transitions()?,
        ..KernelSnapshot::default()
    };
    for state in TcpState::ALL {
        if let Some(h) = hist(state as u8)? {
            snapshot.states.push((state, h));
        }
    }
    for handshake in Handshake::ALL {
        let h = hist(handshake.kernel_kind())?.unwrap_or_default();
        snapshot.handshakes.push((handshake, h));
    }
    Ok(snapshot)
}

impl Sink for ServeSink {
    fn hangup_stops(&self) -> bool {
        !self.opts.reloads
    }

    fn tick(&mut self, ctx: &mut Context<'_>) -> anyhow::Result<ControlFlow<()>> {
        let now = Instant::now();
        if due(self.last_snapshot, SNAPSHOT_PERIOD, now) {
            self.last_snapshot = Some(now);
            self.bpf_run_time_ns = ctx.probe.run_time_ns();
            match ctx.probe.aggregate.as_ref().map(read_kernel) {
                Some(Ok(snapshot)) => self.metrics.set_kernel(snapshot),
                Some(Err(e)) => log::warn!("reading the kernel's counters: {e:#}"),
                None => log::warn!("the kernel program has no aggregate maps"),
            }
        }
        // Every tick, so events_total keeps up with transitions_total.
        self.metrics.set_own(ctx.stats, self.bpf_run_time_ns);
        if due(self.last_rows, self.opts.interval, now) {
            self.last_rows = Some(now);
            self.refresh_rows(ctx);
        }
        // After the rows: their /proc scan finds the namespaces to dump.
        if self.last_rows.is_some() {
            self.refresh_sockets(now);
        }
        Ok(ControlFlow::Continue(()))
    }
}
