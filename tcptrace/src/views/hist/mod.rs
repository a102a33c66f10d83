//! `tcptrace hist [INTERVAL [COUNT]]`: log2 histograms of the time sockets
//! spend in each TCP state and in each handshake, bcc style.
//!
//! By default the kernel does the work (aggregate mode): it keeps each
//! socket's timestamps in a set-associative array, measures every transition
//! and counts it in per-CPU log2 histograms, so a connection storm never
//! wakes us; [`KernelSink`] reads an interval's counts once it is over (see
//! `kernel::maps`). `--exact` streams the transitions instead (as `watch`
//! does) and keeps every value in an HdrHistogram ([`ExactSink`]), for
//! percentiles that are not interpolated within a bucket. Both measure with
//! the same function, [`tcptrace_common::measure`].

pub mod report;
pub mod summary;

use std::{collections::HashMap, io::Write, ops::ControlFlow, time::Duration};

use anyhow::Context as _;
use tcptrace_common::{SockEntry, TcpState, measure};
use tokio::time::Instant;

use crate::{
    host::{clock::Clock, clock::monotonic_ns, names::Names},
    model::owner::Comm,
    pipeline::sink::{Context, Sink, Transition},
};
pub use report::Report;
pub use summary::{Group, GroupBy, Handshake, Shown, Summary};

/// The shortest INTERVAL: the kernel keeps two intervals' counts (the one
/// being written and the one being read), so we must read each before the
/// next but one begins, and we read it `GRACE` after it ends.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// How long after an interval ends we read it: a program that took its
/// timestamp just before the boundary has long finished by then.
const GRACE: Duration = Duration::from_millis(20);

/// When summaries are printed.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    /// Every INTERVAL; `None`: one summary at the end.
    pub interval: Option<Duration>,
    /// Stop after this many.
    pub count: Option<u64>,
}

/// What both sinks print, how, and how often: the summaries' end.
pub struct Printer<W: Write> {
    pub out: W,
    pub report: Report,
    pub by: Option<GroupBy>,
    pub schedule: Schedule,
    printed: u64,
}

impl<W: Write> Printer<W> {
    pub fn new(out: W, report: Report, by: Option<GroupBy>, schedule: Schedule) -> Self {
        Self {
            out,
            report,
            by,
            schedule,
            printed: 0,
        }
    }

    fn print(&mut self, summary: &Summary, names: &mut Names) -> anyhow::Result<()> {
        self.printed += 1;
        self.report
            .write(&mut self.out, summary, monotonic_ns(), names)
            .context("writing output")
    }

    /// Whether COUNT summaries were printed.
    fn done(&self) -> bool {
        self.schedule.count.is_some_and(|c| self.printed >= c)
    }

    /// Stop once done.
    fn flow(&self) -> ControlFlow<()> {
        if self.done() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }
}

/// Aggregate mode: prints the kernel's histograms of each interval.
pub struct KernelSink<W: Write> {
    printer: Printer<W>,
    /// When the kernel's interval 0 began (its `start_ns`).
    start: Instant,
    /// The first interval not yet printed.
    epoch: u32,
    /// Whether the intervals before the attach were skipped.
    begun: bool,
    measured: u64,
}

impl<W: Write> KernelSink<W> {
    pub fn new(printer: Printer<W>, start: Instant) -> Self {
        Self {
            printer,
            start,
            epoch: 0,
            begun: false,
            measured: 0,
        }
    }

    /// Reads and prints the intervals `self.epoch..=upto`.
    fn print(&mut self, ctx: &mut Context<'_>, upto: u32) -> anyhow::Result<()> {
        let maps = ctx
            .probe
            .aggregate
            .as_mut()
            .context("the kernel program has no histogram maps")?;
        let epochs = self.epoch..=upto;
        let mut summary = Summary::default();
        let by = self.printer.by;
        if by.is_some() {
            for (key, value) in maps
                .drain_grouped(&epochs)
                .context("reading the kernel's histograms")?
            {
                let group = Group::from_key(by, &key);
                if let Group::Process(Some(pid)) = group
                    && let Some(c) = maps.comm(pid)
                {
                    ctx.names.learn(pid, Comm::from_kernel(c));
                }
                summary.add_kernel(&key, group, value);
            }
        } else {
            for (kind, h) in maps
                .totals(&epochs)
                .context("reading the kernel's histograms")?
            {
                summary.add_total(kind, &h);
            }
        }
        self.measured += summary.measured();
        self.printer.print(&summary, ctx.names)?;
        self.epoch = upto.saturating_add(1);
        Ok(())
    }
}

impl<W: Write> Sink for KernelSink<W> {
    fn tick(&mut self, ctx: &mut Context<'_>) -> anyhow::Result<ControlFlow<()>> {
        let Some(interval) = self.printer.schedule.interval else {
            return Ok(ControlFlow::Continue(()));
        };
        if !self.begun {
            // The kernel's intervals run from `start`, taken before loading;
            // those over before the program was attached counted nothing and
            // are not INTERVALs of the trace (loading can take seconds).
            self.begun = true;
            let before =
                Instant::from_std(ctx.probe.attached).saturating_duration_since(self.start);
            self.epoch =
                u32::try_from(before.as_nanos() / interval.as_nanos().max(1)).unwrap_or(u32::MAX);
        }
        let end = self.start + interval.saturating_mul(self.epoch.saturating_add(1)) + GRACE;
        if Instant::now() >= end {
            self.print(ctx, self.epoch)?;
        }
        Ok(self.printer.flow())
    }

    fn finish(&mut self, ctx: &mut Context<'_>) -> anyhow::Result<()> {
        // The interval in progress at the stop, or the one summary.
        if !self.printer.done() {
            self.print(ctx, u32::MAX)?;
        }
        eprintln!(
            "tcptrace: {} dwell times measured in the kernel",
            self.measured
        );
        Ok(())
    }

    fn measured(&self) -> Option<u64> {
        Some(self.measured)
    }
}

/// `--exact`: the stream of transitions, measured in userspace.
pub struct ExactSink<W: Write> {
    printer: Printer<W>,
    summary: Summary,
    /// What the kernel's SOCKETS map holds in aggregate mode.
    sockets: HashMap<u64, SockEntry>,
    cap: usize,
    /// When the current interval ends (from the attach, at the first tick).
    next: Option<Instant>,
    /// Owners' names, taken from the transitions.
    names: Names,
}

impl<W: Write> ExactSink<W> {
    pub fn new(printer: Printer<W>, cap: usize) -> Self {
        Self {
            printer,
            summary: Summary::default(),
            sockets: HashMap::new(),
            cap,
            next: None,
            names: Names::default(),
        }
    }

    fn print(&mut self) -> anyhow::Result<()> {
        let summary = std::mem::take(&mut self.summary);
        self.printer.print(&summary, &mut self.names)
    }
}

impl<W: Write> Sink for ExactSink<W> {
    fn transition(&mut self, t: &Transition<'_>, _clock: &Clock) -> std::io::Result<()> {
        let ev = t.ev;
        let group = match self.printer.by {
            None => Group::All,
            Some(GroupBy::Process) => {
                if let Some(o) = &t.owner {
                    self.names.learn(o.pid, o.comm);
                }
                Group::Process(t.owner.map(|o| o.pid))
            }
            Some(GroupBy::Lport) => Group::Lport(t.socket.tuple.lport),
            Some(GroupBy::Rport) => Group::Rport(t.socket.tuple.rport),
            Some(GroupBy::Raddr) => Group::Raddr(ev.raddr),
        };
        let (old, new) = (ev.oldstate as u8, ev.newstate as u8);
        let prev = self.sockets.get(&ev.skaddr).copied();
        let measured = measure(prev.as_ref(), old, new, ev.ts_ns);
        for (kind, ns) in measured.values() {
            self.summary.observe(kind, group.clone(), ns);
        }
        if ev.newstate == TcpState::Close {
            self.sockets.remove(&ev.skaddr);
            return Ok(());
        }
        if self.sockets.len() >= self.cap
            && !self.sockets.contains_key(&ev.skaddr)
            && let Some(any) = self.sockets.keys().next().copied()
        {
            // Bounded like the kernel's table; which one goes matters little.
            self.sockets.remove(&any);
        }
        self.sockets.insert(
            ev.skaddr,
            SockEntry {
                skaddr: ev.skaddr,
                entered_ns: ev.ts_ns,
                handshake_ns: measured.handshake_ns,
                state: new,
                handshake: measured.handshake,
                ..SockEntry::FREE
            },
        );
        Ok(())
    }

    fn tick(&mut self, ctx: &mut Context<'_>) -> anyhow::Result<ControlFlow<()>> {
        let Some(interval) = self.printer.schedule.interval else {
            return Ok(ControlFlow::Continue(()));
        };
        // The first interval begins at the attach, not at the start.
        let next = *self
            .next
            .get_or_insert_with(|| Instant::from_std(ctx.probe.attached) + interval);
        if Instant::now() < next {
            return Ok(ControlFlow::Continue(()));
        }
        self.next = Some(next + interval);
        self.print()?;
        Ok(self.printer.flow())
    }

    fn finish(&mut self, _ctx: &mut Context<'_>) -> anyhow::Result<()> {
        if self.printer.done() {
            return Ok(());
        }
        self.print()
    }
}

/// A duration of at least [`MIN_INTERVAL`], for `hist INTERVAL`.
pub fn check_interval(d: Duration) -> Result<Duration, String> {
    if d < MIN_INTERVAL {
        return Err(format!(
            "an interval of {d:?} is too short (at least {MIN_INTERVAL:?})"
        ));
    }
    Ok(d)
}
