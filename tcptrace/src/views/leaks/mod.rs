//! `tcptrace leaks`: which processes hold sockets in CLOSE_WAIT, in every
//! network namespace, how many, how old, to which peers, and how close they
//! are to "Too many open files".

pub mod collect;
pub mod report;

use std::{
    io::Write,
    ops::ControlFlow,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::{
    model::socket_table::SocketTable,
    pipeline::sink::{Context, Sink},
};

pub use collect::{Collector, ProcessLeaks, Trend, Verdict, verdict};
pub use report::Report;

/// One snapshot of the sockets that exist now, without tracing.
pub fn snapshot(collector: &mut Collector) -> anyhow::Result<Vec<ProcessLeaks>> {
    collector
        .collect(&SocketTable::new(1), crate::host::sys::monotonic_ns())
        .context("listing CLOSE_WAIT sockets")
}

/// The live view: the socket table keeps what it needs from the
/// transitions; the report is redrawn every `interval`.
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
    fn tick(&mut self, ctx: &mut Context<'_>) -> anyhow::Result<ControlFlow<()>> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < self.interval)
        {
            return Ok(ControlFlow::Continue(()));
        }
        self.last = Some(now);
        let now_ns = crate::host::sys::monotonic_ns();
        let mut rows = self
            .collector
            .collect(ctx.table, now_ns)
            .context("listing CLOSE_WAIT sockets")?;
        self.trend.record(&mut rows, now);
        let time = ctx.clock.rfc3339(now_ns);
        if self.clear_screen {
            write!(self.out, "\x1b[H\x1b[2J").context("writing output")?;
        }
        self.report
            .write(&mut self.out, &rows, &time, Some(ctx.stats.lost))
            .context("writing output")?;
        Ok(ControlFlow::Continue(()))
    }
}
