//! The pipeline every subcommand shares: kernel program -> ring buffer ->
//! decode -> socket table -> a [`Sink`]. Runs until a signal, the duration,
//! or the sink says stop; then the programs are detached, the rings read to
//! the end, the sink finishes, and the run's statistics are returned.

use std::{io, ops::ControlFlow, time::Duration};

use anyhow::Context as _;
use aya::maps::{MapData, StackTraceMap};
use tcptrace_common::TcpState;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    host::{clock::Clock, holders::HolderIndex, names::Names, symbols::Symbolizer},
    kernel::loader::{Probe, ProbeConfig},
    model::{
        event::Event, owner::Owner, selection::Selection, socket_table::SocketTable, stack::Opened,
    },
    pipeline::{
        rings::RingReader,
        seed,
        sink::{Context, Sink, Stats, Transition},
    },
};

/// The poll period bounds how late a line can appear when the kernel does
/// not wake us (it wakes us only once a batch is pending).
pub const TICK: Duration = Duration::from_millis(50);

/// Records handled before the loop looks at signals and ticks again.
const DRAIN_BATCH: usize = 4096;

pub struct Tracer {
    probe: Probe,
    table: SocketTable,
    names: Names,
    /// Names the stacks that opened sockets, with stacks on.
    stacks: Option<Stacks>,
    clock: Clock,
    stats: Stats,
    /// What was last reported, so warnings say what is new.
    warned: Stats,
}

impl Tracer {
    /// Loads and attaches the program; when it tracks owners, tells it who
    /// holds the sockets and listeners that exist already.
    /// `keep`: the states the view follows sockets in ([`SocketTable::keeping`]).
    pub fn attach(
        probe: &ProbeConfig,
        selection: &Selection,
        max_sockets: usize,
        keep: u16,
    ) -> anyhow::Result<Self> {
        let mut probe = Probe::load(probe)?;
        let mut names = Names::default();
        if let Some(maps) = &mut probe.owners {
            let seeded = seed::owners(maps, selection, &mut names)?;
            log::debug!("owners seeded: {seeded:?}");
        }
        let stacks = probe.stacks.take().map(|map| Stacks {
            map,
            symbolizer: Symbolizer::default(),
            holders: HolderIndex::new(),
        });
        Ok(Self {
            probe,
            table: SocketTable::keeping(max_sockets, keep),
            names,
            stacks,
            clock: Clock::new(),
            stats: Stats::default(),
            warned: Stats::default(),
        })
    }

    fn stats(&self) -> Stats {
        Stats {
            lost: self.probe.lost(),
            evicted: self.table.evicted() + self.probe.evicted(),
            missed: self.probe.missed(),
            dropped: self.probe.hist_full(),
            stacks_lost: self.probe.stacks_lost(),
            ..self.stats
        }
    }

    /// Reads until stopped; returns the final counts.
    pub async fn run(
        mut self,
        sink: &mut dyn Sink,
        duration: Option<Duration>,
    ) -> anyhow::Result<Stats> {
        let mut stop = Signals::new(sink.hangup_stops())?;
        let deadline = tokio::time::sleep(duration.unwrap_or(Duration::from_secs(u64::MAX / 4)));
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Take the rings out so draining them can borrow the rest of `self`.
        let mut rings = RingReader::new(std::mem::take(&mut self.probe.events))?;
        eprintln!(
            "tcptrace: attached to {}:{}",
            crate::kernel::tracefs::STATE_CHANGE.0,
            crate::kernel::tracefs::STATE_CHANGE.1
        );
        let mut backlog = false;
        loop {
            #[derive(Clone, Copy)]
            enum Wake {
                Ring,
                Tick,
                Stop,
            }
            // Signals and ticks first, so a storm that keeps the ring full
            // cannot starve them. A backlog is drained after a yield, not at
            // once: this one-thread runtime only hears of a signal or a timer
            // when its driver runs, which is when the task yields. Without
            // it, a tracer that could not keep up ignored SIGINT (seen: a
            // debug build under a storm, until killed).
            let wake = tokio::select! {
                biased;
                () = stop.recv() => Wake::Stop,
                () = &mut deadline => Wake::Stop,
                _ = ticker.tick() => Wake::Tick,
                () = tokio::task::yield_now(), if backlog => Wake::Ring,
                r = rings.readable() => {
                    r.context("waiting on the ring buffer")?;
                    Wake::Ring
                }
            };
            let drained = self.drain(&mut rings, sink, false);
            backlog = matches!(drained, Ok(true));
            let flushed = sink.flush();
            let mut stopping = matches!(wake, Wake::Stop)
                || closed_pipe(drained.map(drop))?
                || closed_pipe(flushed)?;
            if matches!(wake, Wake::Tick) && !stopping {
                // Read once a tick: `missed` opens a /proc fdinfo file per
                // program, 4.7% of watch's CPU when read twice a tick.
                let stats = self.stats();
                self.warn(&stats);
                match sink.tick(&mut self.context(stats)) {
                    Ok(ControlFlow::Break(())) => stopping = true,
                    Ok(ControlFlow::Continue(())) => {}
                    Err(e) if is_closed_pipe(&e) => stopping = true,
                    Err(e) => return Err(e),
                }
            }
            if stopping {
                break;
            }
        }
        // Detached first, the rings then hold every record there will be, all
        // committed: the last drain reads them to the end, so none is left
        // unread or can still be in flight behind one held back.
        self.probe.detach();
        closed_pipe(self.drain(&mut rings, sink, true).map(drop))?;
        let mut stats = self.stats();
        match sink.finish(&mut self.context(stats)) {
            Err(e) if !is_closed_pipe(&e) => return Err(e),
            _ => {}
        }
        stats.measured = sink.measured();
        // Unload before saying we are done.
        drop(rings);
        drop(self);
        Ok(stats)
    }

    fn context(&mut self, stats: Stats) -> Context<'_> {
        Context {
            table: &self.table,
            probe: &mut self.probe,
            names: &mut self.names,
            stats,
            clock: &self.clock,
        }
    }

    /// Says what was lost, missed or dropped since it last said so.
    fn warn(&mut self, now: &Stats) {
        if now.lost > self.warned.lost {
            eprintln!(
                "tcptrace: warning: {} events lost (ring buffer full; try a larger --ring-size)",
                now.lost - self.warned.lost
            );
        }
        if now.missed > self.warned.missed {
            eprintln!(
                "tcptrace: warning: {} transitions missed (the kernel skips the program while another BPF program runs on the same CPU)",
                now.missed - self.warned.missed
            );
        }
        if now.dropped > self.warned.dropped {
            eprintln!(
                "tcptrace: warning: {} histogram updates dropped: the kernel map is full (group by something coarser)",
                now.dropped - self.warned.dropped
            );
        }
        self.warned = *now;
    }

    /// Reads at most [`DRAIN_BATCH`] records and handles those released;
    /// returns whether a backlog is left. `last` (the programs detached):
    /// reads the rings to the end and handles everything.
    fn drain(
        &mut self,
        rings: &mut RingReader,
        sink: &mut dyn Sink,
        last: bool,
    ) -> io::Result<bool> {
        let mut undecodable = 0;
        let mut handle = |ev: &Event| {
            self.stats.events += 1;
            self.handle(ev, sink)
        };
        let mut backlog = rings.drain(DRAIN_BATCH, &mut undecodable, &mut handle);
        while last && matches!(backlog, Ok(true)) {
            backlog = rings.drain(DRAIN_BATCH, &mut undecodable, &mut handle);
        }
        let finished = if last {
            rings.finish(&mut handle)
        } else {
            Ok(())
        };
        self.stats.undecodable += undecodable;
        let backlog = backlog?;
        finished?;
        Ok(backlog)
    }

    fn handle(&mut self, ev: &Event, sink: &mut dyn Sink) -> io::Result<()> {
        let opened = match &mut self.stacks {
            Some(stacks) if ev.newstate == TcpState::CloseWait => {
                Some(stacks.opened(ev, self.probe.stacks_lost()))
            }
            _ => None,
        };
        let applied = self.table.apply(ev, opened);
        // The kernel decided the owner; a name it read with it is the
        // freshest, and is taken as it is.
        let owner = ev.owner.map(|pid| {
            let comm = if ev.comm.is_empty() {
                self.names.get_at(pid, ev.ts_ns)
            } else {
                self.names.learn_at(pid, ev.comm, ev.ts_ns);
                ev.comm
            };
            Owner {
                pid,
                comm,
                source: ev.owner_source,
            }
        });
        sink.transition(
            &Transition {
                ev,
                dwell_ns: applied.dwell_ns,
                socket: applied.socket,
                owner,
            },
            &self.clock,
        )
    }
}

/// The stacks the kernel took, named.
struct Stacks {
    map: StackTraceMap<MapData>,
    symbolizer: Symbolizer,
    /// The holders of a socket whose stack's process is gone: a child it
    /// forked shares its memory layout.
    holders: HolderIndex,
}

impl Stacks {
    /// What opened the socket of this transition into CLOSE_WAIT. `lost`:
    /// the stacks the kernel could not keep so far.
    fn opened(&mut self, ev: &Event, lost: u64) -> Opened {
        let Some(r) = ev.stack else {
            return Opened::Unknown(if lost == 0 {
                "opened before tcptrace started"
            } else {
                "opened before tcptrace started, or its stack was not kept"
            });
        };
        let ips: Vec<u64> = match self.map.get(&r.id, 0) {
            Ok(trace) => trace.frames().iter().map(|f| f.ip).collect(),
            Err(e) => {
                log::debug!("stack {}: {e}", r.id);
                return Opened::Unknown("its stack was not kept");
            }
        };
        // The process it was taken in, else one with its memory layout:
        // the owner, or a holder (a child it forked before exiting).
        let mut pids = vec![r.pid];
        pids.extend(ev.owner);
        for pid in pids {
            if let Some(s) = self.symbolizer.stack(pid, &ips, r.caller) {
                return Opened::By(s);
            }
        }
        for h in self.holders.holders(ev.inode, None) {
            if let Some(s) = self.symbolizer.stack(h.pid, &ips, r.caller) {
                return Opened::By(s);
            }
        }
        Opened::Unknown("the process that opened it exited before its stack could be named")
    }
}

/// SIGINT, SIGTERM and (unless the sink reloads on it) SIGHUP end the trace.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new(hangup: bool) -> anyhow::Result<Self> {
        let make = |kind| signal(kind).context("installing a signal handler");
        Ok(Self {
            interrupt: make(SignalKind::interrupt())?,
            terminate: make(SignalKind::terminate())?,
            hangup: if hangup {
                Some(make(SignalKind::hangup())?)
            } else {
                None
            },
        })
    }

    async fn recv(&mut self) {
        let Self {
            interrupt,
            terminate,
            hangup,
        } = self;
        let hangup = async {
            match hangup {
                Some(h) => drop(h.recv().await),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
            () = hangup => {}
        }
    }
}

/// Whether an output error is a closed pipe (`tcptrace ... | head`), which
/// ends the trace quietly.
pub fn is_closed_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// `Ok(true)` for a closed pipe, `Ok(false)` for success, else the error.
fn closed_pipe(r: io::Result<()>) -> anyhow::Result<bool> {
    match r {
        Ok(()) => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(true),
        Err(e) => Err(e).context("writing output"),
    }
}
