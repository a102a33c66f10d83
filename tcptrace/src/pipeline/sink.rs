//! What a view plugs into the pipeline, and what it is given.

use std::{io, ops::ControlFlow};

use serde::Serialize;

use crate::{
    host::{clock::Clock, names::Names},
    kernel::loader::Probe,
    model::{
        event::Event,
        owner::Owner,
        socket_table::{Socket, SocketTable},
        stack::Opened,
    },
};

/// One transition as views see it.
pub struct Transition<'a> {
    pub ev: &'a Event,
    /// Time in the old state; `None` when its start was not seen.
    pub dwell_ns: Option<u64>,
    /// The socket after the transition; its tuple fills ports the event lacked.
    pub socket: &'a Socket,
    /// Who owns it, named; `None` when the kernel does not know.
    pub owner: Option<Owner>,
}

impl Transition<'_> {
    /// The code that opened the socket (into CLOSE_WAIT, with stacks on).
    pub fn opened(&self) -> Option<&Opened> {
        self.socket.opened.as_ref()
    }
}

/// What a subcommand does with the trace. Every method has a default, so a
/// view implements what it uses.
pub trait Sink {
    /// One transition from the ring buffer.
    fn transition(&mut self, _t: &Transition<'_>, _clock: &Clock) -> io::Result<()> {
        Ok(())
    }
    /// After each drained batch and on every tick.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// Every tick (50 ms); `Break` stops the trace.
    fn tick(&mut self, _ctx: &mut Context<'_>) -> anyhow::Result<ControlFlow<()>> {
        Ok(ControlFlow::Continue(()))
    }
    /// Whether SIGHUP ends the trace (as SIGINT and SIGTERM do); a sink
    /// that reloads something on SIGHUP says no.
    fn hangup_stops(&self) -> bool {
        true
    }
    /// Once, when the trace stops (a signal, the duration, a `Break`).
    fn finish(&mut self, _ctx: &mut Context<'_>) -> anyhow::Result<()> {
        Ok(())
    }
    /// Dwell times the kernel measured for this view, if it measures any.
    fn measured(&self) -> Option<u64> {
        None
    }
}

/// What a sink may look at on a tick.
pub struct Context<'a> {
    pub table: &'a SocketTable,
    pub probe: &'a mut Probe,
    pub names: &'a mut Names,
    pub stats: Stats,
    pub clock: &'a Clock,
}

/// The trace's own counts: what it saw and what it could not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Records read from the ring buffer.
    pub events: u64,
    /// Records the kernel could not queue (ring buffer full).
    pub lost: u64,
    /// Sockets evicted from a full table (the kernel's or tcptrace's).
    pub evicted: u64,
    /// Records that could not be decoded.
    pub undecodable: u64,
    /// Runs the kernel skipped because another BPF program was running on
    /// the CPU (`recursion_misses`): transitions never seen, so never hidden.
    pub missed: u64,
    /// Histogram updates the kernel dropped (its grouping map was full).
    pub dropped: u64,
    /// User stacks the kernel could not keep (with stacks on).
    pub stacks_lost: u64,
    /// Dwell times the kernel measured and counted (`hist`); `None` where
    /// the view measures none in the kernel.
    pub measured: Option<u64>,
}

impl Stats {
    /// `tcptrace: N events, L lost, E evicted, D dropped, M missed`: every
    /// count, always, so scripts can read it (or use `--stats-json`).
    pub fn summary(&self) -> String {
        let mut s = format!(
            "tcptrace: {} events, {} lost, {} evicted, {} dropped, {} missed",
            self.events, self.lost, self.evicted, self.dropped, self.missed
        );
        if self.undecodable > 0 {
            s.push_str(&format!(", {} undecodable", self.undecodable));
        }
        if self.stacks_lost > 0 {
            s.push_str(&format!(", {} stacks lost", self.stacks_lost));
        }
        s
    }
}
