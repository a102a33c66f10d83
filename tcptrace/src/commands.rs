//! Each subcommand: turn its arguments into a probe configuration and a sink.

use std::{io::BufWriter, process::ExitCode};

use anyhow::Context as _;
use tcptrace_common::AggregateConfig;

use crate::{
    cli::{FilterArgs, LeaksArgs, TuningArgs, WatchArgs},
    host::holders::HolderIndex,
    host::sockdiag,
    kernel::loader::{AggregateProbe, ProbeConfig},
    model::clock::{Clock, monotonic_ns},
    model::owner::Attributor,
    model::state::TcpState,
    pipeline::tracer::{DEFAULT_TICK, Filters, Tracer},
    views::leaks::{self, Collector, LeakFilter, LeaksSink, Report, Trend},
    views::watch::WatchSink,
};

/// Batch wake-ups: the reader also polls every tick, so a quiet socket's
/// transition shows within a tick; a storm wakes us once per this many bytes.
const WAKEUP_BYTES: u64 = 64 * 1024;

fn probe_config(filter: &FilterArgs, tuning: &TuningArgs) -> anyhow::Result<ProbeConfig> {
    Ok(ProbeConfig {
        filter: filter.kernel_filter()?,
        ring_bytes: tuning.ring_size,
        wakeup_bytes: WAKEUP_BYTES.min(u64::from(tuning.ring_size) / 4),
        inodes: true,
        aggregate: None,
    })
}

fn family(filter: &FilterArgs) -> Option<u16> {
    Some(filter.family()).filter(|f| *f != 0)
}

pub async fn watch(args: WatchArgs) -> anyhow::Result<ExitCode> {
    let mut probe = probe_config(&args.filter, &args.tuning)?;
    probe.filter.states = TcpState::mask(&args.states);
    // An owner comes from the task in process context, else from the listener
    // or, for a socket seen first in softirq with a file (ESTABLISHED on the
    // connecting side, CLOSE_WAIT), from /proc by inode. Other transitions
    // need no inode: two kernel reads saved on most events.
    probe.filter.inode_states = TcpState::mask(&[TcpState::Established, TcpState::CloseWait]);
    let filters = Filters {
        pids: args.filter.pids.clone(),
        comm: args.filter.comm.clone(),
        states: args.states.clone(),
    };
    let mut tracer = Tracer::attach(
        &probe,
        filters,
        args.tuning.max_sockets,
        Attributor::new(Some(HolderIndex::new())),
    )?;
    // Listeners, for the owner of sockets accepted before we saw them; the
    // rest would only cost memory: their dwell times are unknown anyway.
    tracer.seed_existing(
        family(&args.filter),
        sockdiag::state_bit(sockdiag::TCP_LISTEN),
    )?;
    let stdout = std::io::stdout().lock();
    let mut sink = WatchSink::new(
        BufWriter::with_capacity(64 * 1024, stdout),
        args.json,
        args.timestamp,
    );
    let stats = tracer.run(&mut sink, args.duration, DEFAULT_TICK).await?;
    eprintln!("{}", stats.summary());
    Ok(ExitCode::SUCCESS)
}

pub async fn leaks(args: LeaksArgs) -> anyhow::Result<ExitCode> {
    let filter = LeakFilter {
        pids: args.filter.pids.clone(),
        comm: args.filter.comm.clone(),
        lports: args.filter.lports.clone().map(|p| p.0).unwrap_or_default(),
        rports: args.filter.rports.clone().map(|p| p.0).unwrap_or_default(),
        family: family(&args.filter),
    };
    let report = Report {
        json: args.json,
        min_age: args.min_age,
    };
    let mut stdout = std::io::stdout().lock();
    if args.once || args.check {
        // Existing sockets only: no kernel program needed.
        let rows = leaks::snapshot(filter)?;
        let time = Clock::new().rfc3339(monotonic_ns());
        report
            .write(&mut stdout, &rows, &time, None)
            .or_else(ignore_closed_pipe)?;
        let found = leaks::leak_found(&rows, args.min_age, args.min_count);
        return Ok(if args.check && found {
            ExitCode::from(3)
        } else {
            ExitCode::SUCCESS
        });
    }
    let mut probe = probe_config(&args.filter, &args.tuning)?;
    // Entering and leaving CLOSE_WAIT, and LAST_ACK's end: all a leak's age needs.
    probe.filter.states = TcpState::mask(&[TcpState::CloseWait, TcpState::LastAck]);
    // The holders of a leak are found by the inode it had entering CLOSE_WAIT.
    probe.filter.inode_states = TcpState::mask(&[TcpState::CloseWait]);
    // The view reads the socket table and rescans /proc on each refresh, so
    // transitions need neither filtering nor owner lookups here.
    let mut tracer = Tracer::attach(
        &probe,
        Filters::default(),
        args.tuning.max_sockets,
        Attributor::new(None),
    )?;
    tracer.seed_existing(
        family(&args.filter),
        sockdiag::state_bit(sockdiag::TCP_CLOSE_WAIT),
    )?;
    let clear_screen = std::io::IsTerminal::is_terminal(&stdout) && !args.json;
    let mut sink = LeaksSink {
        out: stdout,
        collector: Collector::new(filter),
        report,
        trend: Trend::default(),
        interval: args.interval,
        last: None,
        clear_screen,
    };
    let stats = tracer.run(&mut sink, args.duration, DEFAULT_TICK).await?;
    eprintln!("{}", stats.summary());
    Ok(ExitCode::SUCCESS)
}

/// `tcptrace serve`: the port is bound before the kernel program loads, so a
/// port in use fails at once; then metrics are served until a signal.
pub async fn serve(args: crate::cli::ServeArgs) -> anyhow::Result<ExitCode> {
    use crate::views::serve::{Scope, ServeOptions, ServeSink, bind, spawn_http};
    let listener = bind(args.listen)?;
    let mut probe = probe_config(&args.filter, &args.tuning)?;
    let by_owner = !args.filter.pids.is_empty() || args.filter.comm.is_some();
    // Every transition is counted and timed in the kernel, as `hist` does;
    // only CLOSE_WAIT's comings and goings reach userspace, for the holders
    // of the leaks sock_diag cannot list (other network namespaces).
    let (has_comm, comm) = crate::views::hist::kernel_comm(args.filter.comm.as_deref());
    probe.aggregate = Some(AggregateProbe {
        config: AggregateConfig {
            has_comm,
            comm,
            stream_states: u32::from(TcpState::mask(&[TcpState::CloseWait, TcpState::LastAck])),
            ..AggregateConfig::NONE
        },
        max_sockets: u32::try_from(args.tuning.max_sockets).unwrap_or(u32::MAX),
    });
    if !by_owner {
        // Without an owner filter, inodes serve only to name those holders.
        probe.filter.inode_states = TcpState::mask(&[TcpState::CloseWait]);
    }
    let filters = Filters {
        pids: args.filter.pids.clone(),
        comm: args.filter.comm.clone(),
        states: Vec::new(),
    };
    let mut tracer = Tracer::attach(
        &probe,
        filters,
        args.tuning.max_sockets,
        Attributor::new(by_owner.then(HolderIndex::new)),
    )?;
    let mut maps = tracer
        .take_aggregate()
        .context("the kernel program has no aggregate maps")?;
    if by_owner {
        // Sockets listeners create in softirq inherit their owner.
        crate::views::hist::seed_listeners(&mut maps.listen_owners, &args.filter, &comm)?;
    }
    let lports = args.filter.lports.clone().map(|p| p.0).unwrap_or_default();
    let rports = args.filter.rports.clone().map(|p| p.0).unwrap_or_default();
    let (mut sink, exposition) = ServeSink::new(
        ServeOptions {
            top: args.top,
            interval: args.interval,
            leak_filter: LeakFilter {
                pids: args.filter.pids.clone(),
                comm: args.filter.comm.clone(),
                lports: lports.clone(),
                rports: rports.clone(),
                family: family(&args.filter),
            },
            scope: Scope {
                lports,
                rports,
                family: family(&args.filter),
            },
        },
        maps,
    );
    let addr = spawn_http(listener, exposition)?;
    eprintln!("tcptrace: serving metrics on http://{addr}/metrics");
    let stats = tracer.run(&mut sink, None, DEFAULT_TICK).await?;
    eprintln!("{}", stats.summary());
    Ok(ExitCode::SUCCESS)
}

/// `tcptrace hist`: histograms aggregated in the kernel, or from the stream
/// (the probe `watch` uses) with `--exact`.
pub async fn hist(args: crate::cli::HistArgs) -> anyhow::Result<ExitCode> {
    let stream = probe_config(&args.filter, &args.tuning)?;
    crate::views::hist::run(args, stream).await
}

/// `tcptrace completions SHELL`: the script clap derives from the CLI.
pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<ExitCode> {
    use clap::CommandFactory as _;
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut crate::cli::Cli::command(), "tcptrace", &mut out);
    write_stdout(&out)
}

/// `tcptrace man`: the man page, in roff, for packages to install as tcptrace.1.
pub fn man() -> anyhow::Result<ExitCode> {
    use clap::CommandFactory as _;
    let mut out = Vec::new();
    clap_mangen::Man::new(crate::cli::Cli::command())
        .render(&mut out)
        .context("rendering the man page")?;
    write_stdout(&out)
}

fn write_stdout(bytes: &[u8]) -> anyhow::Result<ExitCode> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(bytes)
        .and_then(|()| stdout.flush())
        .or_else(ignore_closed_pipe)?;
    Ok(ExitCode::SUCCESS)
}

fn ignore_closed_pipe(e: std::io::Error) -> anyhow::Result<()> {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        Ok(())
    } else {
        Err(e.into())
    }
}
