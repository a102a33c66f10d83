//! The pipeline every subcommand shares: kernel probe -> ring buffer ->
//! decode -> socket table -> owner attribution -> a [`Sink`]. Runs until a
//! signal, the duration, or the sink says stop; then detaches and reports.

use std::{io, ops::ControlFlow, time::Duration};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};

use crate::{
    host::sockdiag,
    kernel::decode::{self, Event, Family},
    kernel::loader::{Probe, ProbeConfig},
    model::clock::Clock,
    model::owner::{Attributor, Owner, OwnerSource},
    model::socket_table::{Socket, SocketTable, Tuple},
    model::state::TcpState,
};

/// One transition as consumers see it.
pub struct Transition<'a> {
    pub ev: &'a Event,
    /// Time in the old state; `None` when its start was not seen.
    pub dwell_ns: Option<u64>,
    pub socket: &'a Socket,
    /// First is the primary owner; several when a socket is shared.
    pub owners: &'a [Owner],
}

/// Userspace filters: exact where the kernel's are a superset.
#[derive(Clone, Debug, Default)]
pub struct Filters {
    pub pids: Vec<u32>,
    pub comm: Option<String>,
    pub states: Vec<TcpState>,
}

impl Filters {
    pub fn owner_passes(&self, owners: &[Owner]) -> bool {
        (self.pids.is_empty() || owners.iter().any(|o| self.pids.contains(&o.pid)))
            && self
                .comm
                .as_ref()
                .is_none_or(|c| owners.iter().any(|o| &o.comm == c))
    }

    pub fn transition_passes(&self, ev: &Event) -> bool {
        self.states.is_empty()
            || self.states.contains(&ev.oldstate)
            || self.states.contains(&ev.newstate)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub events: u64,
    pub lost: u64,
    pub evicted: u64,
    pub undecodable: u64,
    /// Runs the kernel skipped because another BPF program was running on
    /// the CPU (`recursion_misses`): transitions never seen, so never hidden.
    pub missed: u64,
}

impl Stats {
    pub fn summary(&self) -> String {
        let mut s = format!(
            "tcptrace: {} events, {} lost, {} evicted",
            self.events, self.lost, self.evicted
        );
        if self.undecodable > 0 {
            s.push_str(&format!(", {} undecodable", self.undecodable));
        }
        if self.missed > 0 {
            s.push_str(&format!(
                ", {} missed (another BPF program was running on the CPU)",
                self.missed
            ));
        }
        s
    }
}

/// What a subcommand does with the stream.
pub trait Sink {
    fn transition(&mut self, t: &Transition<'_>, clock: &Clock) -> io::Result<()>;
    /// Called after each drained batch and on every tick.
    fn flush(&mut self) -> io::Result<()>;
    /// Called every `tick` of [`Options`]; `Break` stops the trace.
    fn tick(&mut self, _ctx: &mut Context<'_>) -> io::Result<ControlFlow<()>> {
        Ok(ControlFlow::Continue(()))
    }
}

/// What a sink may look at on a tick.
pub struct Context<'a> {
    pub table: &'a SocketTable,
    pub attributor: &'a mut Attributor,
    pub stats: Stats,
    pub clock: &'a Clock,
}

/// The poll period bounds how late a line can appear when the kernel does
/// not wake us (it wakes us only once a batch is pending).
pub const DEFAULT_TICK: Duration = Duration::from_millis(50);

/// Records handled before the loop looks at signals and ticks again.
const DRAIN_BATCH: usize = 4096;

pub struct Tracer {
    probe: Probe,
    table: SocketTable,
    attributor: Attributor,
    filters: Filters,
    clock: Clock,
    stats: Stats,
    warned_lost: u64,
    warned_missed: u64,
}

impl Tracer {
    pub fn attach(
        opts_probe: &ProbeConfig,
        filters: Filters,
        max_sockets: usize,
        attributor: Attributor,
    ) -> anyhow::Result<Self> {
        let probe = Probe::load(opts_probe)?;
        Ok(Self {
            probe,
            table: SocketTable::new(max_sockets),
            attributor,
            filters,
            clock: Clock::new(),
            stats: Stats::default(),
            warned_lost: 0,
            warned_missed: 0,
        })
    }

    /// Puts the sockets that exist now into the table, so states and
    /// CLOSE_WAIT leaks from before we started are known at once. Their time
    /// of entry is unknown: CLOSE_WAIT is estimated from tcp_info (time since
    /// the last ACK arrived, a lower bound), others are marked estimated.
    /// `states` (a sock_diag state mask) limits it to what the caller uses:
    /// on a host with 100,000 sockets, seeding them all costs ~40 MiB at start.
    pub fn seed_existing(&mut self, family: Option<u16>, states: u32) -> anyhow::Result<usize> {
        let dump =
            sockdiag::dump_tcp(states, family).context("sock_diag dump of existing sockets")?;
        let now = crate::model::clock::monotonic_ns();
        if let Some(index) = self.attributor.holders_mut() {
            index.full_scan();
        }
        let mut n = 0;
        for d in &dump {
            let Some(state) = TcpState::from_kernel(d.state) else {
                continue;
            };
            let family = if d.family == tcptrace_common::AF_INET6 {
                Family::V6
            } else {
                Family::V4
            };
            // Owners now for the states that matter at once; the rest lazily.
            let owner = if matches!(state, TcpState::Listen | TcpState::CloseWait) && d.inode != 0 {
                self.attributor
                    .holders_mut()
                    .and_then(|idx| idx.cached(d.inode).first().map(Owner::from_holder))
            } else {
                None
            };
            if state == TcpState::Listen {
                if let Some(o) = &owner {
                    self.attributor.add_listener(d.sport, o.clone());
                }
                continue;
            }
            let age_ns = match (state, d.info) {
                (TcpState::CloseWait, Some(info)) => u64::from(info.last_ack_recv_ms) * 1_000_000,
                _ => 0,
            };
            self.table.seed(
                d.cookie,
                Socket {
                    state,
                    since_ns: now.saturating_sub(age_ns),
                    since_estimated: true,
                    family,
                    tuple: Tuple {
                        laddr: d.saddr,
                        lport: d.sport,
                        raddr: d.daddr,
                        rport: d.dport,
                    },
                    inode: d.inode,
                    owner,
                },
            );
            n += 1;
        }
        Ok(n)
    }

    pub fn table(&self) -> &SocketTable {
        &self.table
    }

    /// The aggregate mode's maps, for a sink that reads them itself.
    pub fn take_aggregate(&mut self) -> Option<crate::kernel::loader::AggregateMaps> {
        self.probe.aggregate.take()
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn stats(&self) -> Stats {
        Stats {
            lost: self.probe.lost(),
            evicted: self.table.evicted() + self.probe.evicted(),
            missed: self.probe.missed(),
            ..self.stats
        }
    }

    /// Reads until stopped; returns the final counts.
    pub async fn run(
        mut self,
        sink: &mut dyn Sink,
        duration: Option<Duration>,
        tick: Duration,
    ) -> anyhow::Result<Stats> {
        let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
        let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        let mut sighup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
        let deadline = tokio::time::sleep(duration.unwrap_or(Duration::from_secs(u64::MAX / 4)));
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Take the ring out so draining it can borrow the rest of `self`.
        let ring = self
            .probe
            .events
            .take()
            .context("ring buffer already taken")?;
        // SAFETY: the ring owns its map fd, which stays open until the AsyncFd drops it.
        let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| e.into_parts().1)
            .context("polling the ring buffer")?;
        eprintln!("tcptrace: attached to sock:inet_sock_set_state");
        let mut backlog = false;
        loop {
            #[derive(Clone, Copy)]
            enum Wake {
                Ring,
                Tick,
                Stop,
            }
            // Signals and ticks first, so a storm that keeps the ring full
            // cannot starve them; a backlog is drained without waiting.
            let wake = tokio::select! {
                biased;
                _ = sigint.recv() => Wake::Stop,
                _ = sigterm.recv() => Wake::Stop,
                _ = sighup.recv() => Wake::Stop,
                () = &mut deadline => Wake::Stop,
                _ = ticker.tick() => Wake::Tick,
                () = std::future::ready(()), if backlog => Wake::Ring,
                r = ring.readable_mut() => {
                    r.context("waiting on the ring buffer")?.clear_ready();
                    Wake::Ring
                }
            };
            let drained = self.drain(ring.get_mut(), sink);
            backlog = matches!(drained, Ok(n) if n == DRAIN_BATCH);
            let flushed = sink.flush();
            let mut stop =
                matches!(wake, Wake::Stop) || is_closed_pipe(&drained) || is_closed_pipe(&flushed);
            drained.map(drop).or_else(quiet_pipe)?;
            flushed.or_else(quiet_pipe)?;
            if matches!(wake, Wake::Tick) && !stop {
                self.warn_lost();
                let mut ctx = Context {
                    table: &self.table,
                    attributor: &mut self.attributor,
                    stats: Stats {
                        lost: self.probe.lost(),
                        evicted: self.table.evicted() + self.probe.evicted(),
                        missed: self.warned_missed,
                        ..self.stats
                    },
                    clock: &self.clock,
                };
                match sink.tick(&mut ctx) {
                    Ok(ControlFlow::Break(())) => stop = true,
                    Ok(ControlFlow::Continue(())) => {}
                    Err(e) if e.kind() == io::ErrorKind::BrokenPipe => stop = true,
                    Err(e) => return Err(e).context("writing output"),
                }
            }
            if stop {
                break;
            }
        }
        let stats = self.stats();
        // Detach before saying we are done.
        drop(ring);
        drop(self);
        Ok(stats)
    }

    fn warn_lost(&mut self) {
        let lost = self.probe.lost();
        if lost > self.warned_lost {
            eprintln!(
                "tcptrace: warning: {} events lost (ring buffer full; try a larger --ring-size)",
                lost - self.warned_lost
            );
            self.warned_lost = lost;
        }
        let missed = self.probe.missed();
        if missed > self.warned_missed {
            eprintln!(
                "tcptrace: warning: {} transitions missed (the kernel skips the program while another BPF program runs on the same CPU)",
                missed - self.warned_missed
            );
            self.warned_missed = missed;
        }
    }

    /// Reads at most [`DRAIN_BATCH`] records; returns how many it read.
    fn drain(&mut self, ring: &mut RingBuf<MapData>, sink: &mut dyn Sink) -> io::Result<usize> {
        let mut n = 0;
        while n < DRAIN_BATCH
            && let Some(item) = ring.next()
        {
            n += 1;
            let ev = match decode::decode(&item) {
                Ok(ev) => ev,
                Err(e) => {
                    self.stats.undecodable += 1;
                    log::warn!("undecodable ring buffer record: {e}");
                    continue;
                }
            };
            drop(item);
            self.stats.events += 1;
            self.handle(&ev, sink)?;
        }
        Ok(n)
    }

    fn handle(&mut self, ev: &Event, sink: &mut dyn Sink) -> io::Result<()> {
        let applied = self.table.apply(ev);
        let owners = self.attributor.attribute(ev, &applied.socket);
        let mut socket = applied.socket;
        // Remember a known owner (not a guess) for the socket's later
        // transitions. It is mostly the one remembered already: skip the
        // clone and the second lookup then (the table holds what `socket` does).
        if let Some(primary) = owners.first().filter(|o| o.source != OwnerSource::OnCpu)
            && socket.owner.as_ref() != Some(primary)
        {
            socket.owner = Some(primary.clone());
            if let Some(s) = self.table.get_mut(ev.skaddr) {
                s.owner.clone_from(&socket.owner);
            }
        }
        if !self.filters.transition_passes(ev) || !self.filters.owner_passes(&owners) {
            return Ok(());
        }
        sink.transition(
            &Transition {
                ev,
                dwell_ns: applied.dwell_ns,
                socket: &socket,
                owners: &owners,
            },
            &self.clock,
        )
    }
}

fn is_closed_pipe<T>(r: &io::Result<T>) -> bool {
    matches!(r, Err(e) if e.kind() == io::ErrorKind::BrokenPipe)
}

/// Output piped into `head` ends quietly.
fn quiet_pipe(e: io::Error) -> anyhow::Result<()> {
    if e.kind() == io::ErrorKind::BrokenPipe {
        Ok(())
    } else {
        Err(e).context("writing output")
    }
}
