//! Each subcommand: its probe configuration, its sink, one run of the
//! pipeline, and its exit status.

use std::{
    io::{BufWriter, Write as _},
    path::Path,
    process::ExitCode,
    time::Duration,
};

use anyhow::Context as _;
use tcptrace_common::{
    AggregateConfig, Config, Filter, GROUP_NONE, MODE_AGGREGATE, MODE_STREAM, OWNERS_BY_INODE,
    OWNERS_TRACK, STACKS_ON, TcpState,
};

use crate::{
    cli::{HistArgs, LeaksArgs, ServeArgs, TuningArgs, WatchArgs},
    host::clock::{Clock, monotonic_ns},
    kernel::loader::ProbeConfig,
    model::selection::Selection,
    pipeline::{
        sink::{Sink, Stats},
        tracer::{Tracer, is_closed_pipe},
    },
    views::{
        hist::{self, ExactSink, GroupBy, KernelSink, Printer, Schedule, Shown},
        leaks::{self, Collector, LeaksSink, Report, Trend, Verdict},
        serve::{ServeOptions, ServeSink, http, metrics::Metrics, reload::Web},
        watch::WatchSink,
    },
};

/// Owners kept per socket in the kernel, seeded from /proc at start.
const OWNERS: u32 = OWNERS_TRACK | OWNERS_BY_INODE;

/// Where the run's statistics go, if asked (`--stats-json`).
pub struct Run<'a> {
    pub stats_json: Option<&'a Path>,
}

impl Run<'_> {
    /// Attaches, runs the pipeline into `sink`, reports, writes the statistics.
    /// `keep`: the states the sink follows sockets in (0: all).
    async fn trace(
        &self,
        probe: ProbeConfig,
        selection: &Selection,
        tuning: &TuningArgs,
        keep: u16,
        sink: &mut dyn Sink,
        duration: Option<Duration>,
    ) -> anyhow::Result<Stats> {
        let tracer = Tracer::attach(&probe, selection, tuning.max_sockets, keep)?;
        let stats = tracer.run(sink, duration).await?;
        eprintln!("{}", stats.summary());
        self.write_stats(&stats)?;
        Ok(stats)
    }

    fn write_stats(&self, stats: &Stats) -> anyhow::Result<()> {
        let Some(path) = self.stats_json else {
            return Ok(());
        };
        let text = serde_json::to_string(stats).context("encoding the statistics")?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("writing the statistics to {}", path.display()))
    }
}

fn stacks(on: bool) -> u32 {
    if on { STACKS_ON } else { 0 }
}

fn probe(config: Config, tuning: &TuningArgs) -> ProbeConfig {
    ProbeConfig {
        config,
        ring_bytes: tuning.ring_size,
        max_sockets: u32::try_from(tuning.max_sockets).unwrap_or(u32::MAX),
        transitions: false,
    }
}

/// The kernel's filter for a view that applies the owner filters itself.
fn sockets_only(selection: &Selection) -> anyhow::Result<Filter> {
    Selection {
        pids: Vec::new(),
        comm: None,
        ..selection.clone()
    }
    .kernel_filter()
}

pub async fn watch(args: WatchArgs, run: &Run<'_>) -> anyhow::Result<ExitCode> {
    let selection = args.filter.selection(&args.states);
    let mut filter = selection.kernel_filter()?;
    if args.stacks {
        // The holders of a socket whose stack's process has exited.
        filter.inode_states = TcpState::CloseWait.bit();
    }
    let config = Config {
        filter,
        mode: MODE_STREAM,
        owners: OWNERS,
        stacks: stacks(args.stacks),
        ..Config::NONE
    };
    // The sink writes whole batches of lines: no buffer in between.
    let mut sink = WatchSink::new(
        std::io::stdout().lock(),
        args.json,
        args.timestamp,
        args.stacks,
    );
    run.trace(
        probe(config, &args.tuning),
        &selection,
        &args.tuning,
        0,
        &mut sink,
        args.duration,
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}

pub async fn leaks(args: LeaksArgs, run: &Run<'_>) -> anyhow::Result<ExitCode> {
    let selection = args.filter.selection(&[]);
    let report = Report {
        json: args.json,
        min_age: args.min_age,
        stacks: args.stacks,
    };
    let live = !args.once && !args.check;
    let mut collector = Collector::new(selection.clone(), args.stacks && live, live)?;
    let mut stdout = std::io::stdout().lock();
    if args.once || args.check {
        // Existing sockets only: no kernel program needed.
        let rows = leaks::snapshot(&mut collector)?;
        let time = Clock::new().rfc3339(monotonic_ns());
        // Buffered: a write per line cost 2,000 system calls over 2,000 processes.
        let mut out = BufWriter::new(&mut stdout);
        if let Err(e) = report
            .write(&mut out, &rows, &time, None)
            .and_then(|()| out.flush())
        {
            let e = anyhow::Error::from(e);
            if !is_closed_pipe(&e) {
                return Err(e.context("writing output"));
            }
        }
        drop(out);
        if !args.check {
            return Ok(ExitCode::SUCCESS);
        }
        return Ok(match leaks::verdict(&rows, args.min_age, args.min_count) {
            Verdict::NoLeak => ExitCode::SUCCESS,
            Verdict::Leak => ExitCode::from(3),
            Verdict::Undetermined { pid, comm, unknown } => {
                eprintln!(
                    "tcptrace: cannot tell whether {comm} (pid {pid}) leaks: {unknown} of its CLOSE_WAIT sockets are of unknown age (read from /proc/net/tcp, which has none: another network namespace without CAP_SYS_ADMIN, or a kernel without tcp_diag); grant CAP_SYS_ADMIN, or check with --min-age 0"
                );
                ExitCode::from(4)
            }
        });
    }
    let mut filter = sockets_only(&selection)?;
    // Entering and leaving CLOSE_WAIT: all a leak's age needs. The table
    // forgets a socket that leaves it (its CLOSE is not sent), so a
    // connection costs two records, not three.
    filter.states = TcpState::CloseWait.bit();
    // A leak traced into CLOSE_WAIT is known by the inode it had then.
    filter.inode_states = TcpState::CloseWait.bit();
    // The view rescans /proc on each refresh: the kernel need not track owners.
    let config = Config {
        filter,
        mode: MODE_STREAM,
        stacks: stacks(args.stacks),
        ..Config::NONE
    };
    let clear_screen = std::io::IsTerminal::is_terminal(&stdout) && !args.json;
    let mut sink = LeaksSink {
        out: stdout,
        collector,
        report,
        trend: Trend::default(),
        interval: args.interval,
        last: None,
        clear_screen,
    };
    run.trace(
        probe(config, &args.tuning),
        &selection,
        &args.tuning,
        TcpState::CloseWait.bit(),
        &mut sink,
        args.duration,
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}

/// `tcptrace serve`: the port is bound before the kernel program loads, so a
/// port in use fails at once; then metrics are served until a signal.
pub async fn serve(args: ServeArgs, run: &Run<'_>) -> anyhow::Result<ExitCode> {
    // A file that cannot be used is bad usage, said before anything starts.
    let web = match &args.web_config {
        Some(path) => match Web::load(path) {
            Ok(web) => web,
            Err(e) => {
                eprintln!("tcptrace: {}", format!("{e:#}").replace('\n', " "));
                return Ok(ExitCode::from(2));
            }
        },
        None => Web::none(),
    };
    let listener = http::bind(args.listen)?;
    let selection = args.filter.selection(&[]);
    let mut filter = selection.kernel_filter()?;
    // A leak traced into CLOSE_WAIT is known by the inode it had then.
    filter.inode_states = TcpState::CloseWait.bit();
    // Every transition is counted and timed in the kernel, as `hist` does;
    // only CLOSE_WAIT's comings and goings reach userspace, for exact ages
    // (the table forgets a socket that leaves it, as in `leaks`).
    let config = Config {
        filter,
        mode: MODE_AGGREGATE,
        owners: if selection.by_owner() { OWNERS } else { 0 },
        aggregate: AggregateConfig {
            stream_states: u32::from(TcpState::CloseWait.bit()),
            ..AggregateConfig::NONE
        },
        ..Config::NONE
    };
    let (metrics, exposition) = Metrics::new();
    let mut sink = ServeSink::new(
        ServeOptions {
            top: args.top,
            interval: args.interval,
            selection: selection.clone(),
            reloads: web.path().is_some(),
        },
        metrics,
    )?;
    let scheme = if web.current().tls.is_some() {
        "https"
    } else {
        "http"
    };
    let addr = http::spawn_http(listener, exposition, web)?;
    eprintln!("tcptrace: serving metrics on {scheme}://{addr}/metrics");
    run.trace(
        ProbeConfig {
            transitions: true,
            ..probe(config, &args.tuning)
        },
        &selection,
        &args.tuning,
        TcpState::CloseWait.bit(),
        &mut sink,
        None,
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}

/// `tcptrace hist`: histograms aggregated in the kernel, or from the stream
/// (as `watch` streams it) with `--exact`.
pub async fn hist(args: HistArgs, run: &Run<'_>) -> anyhow::Result<ExitCode> {
    let selection = args.filter.selection(&[]);
    let report = hist::Report {
        json: args.json,
        shown: Shown {
            states: args.states.clone(),
            handshakes: args.handshakes.clone(),
        },
        timestamps: args.interval.is_some(),
    };
    let schedule = Schedule {
        interval: args.interval,
        count: args.count,
    };
    let owners = if args.by == Some(GroupBy::Process) || selection.by_owner() {
        OWNERS
    } else {
        0
    };
    let printer = Printer::new(
        BufWriter::new(std::io::stdout().lock()),
        report,
        args.by,
        schedule,
    );
    let filter = selection.kernel_filter()?;
    // --exact streams every transition and measures in userspace; otherwise
    // the kernel measures and counts, and nothing crosses per event.
    let (config, mut sink): (Config, Box<dyn Sink>) = if args.exact {
        let config = Config {
            filter,
            mode: MODE_STREAM,
            owners,
            ..Config::NONE
        };
        let sink = ExactSink::new(printer, args.tuning.max_sockets);
        (config, Box::new(sink))
    } else {
        let start = tokio::time::Instant::now();
        let config = Config {
            filter,
            mode: MODE_AGGREGATE,
            owners,
            aggregate: AggregateConfig {
                start_ns: monotonic_ns(),
                interval_ns: args
                    .interval
                    .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
                group_by: args.by.map_or(GROUP_NONE, GroupBy::kernel),
                stream_states: 0,
            },
            ..Config::NONE
        };
        let sink = KernelSink::new(printer, start);
        (config, Box::new(sink))
    };
    run.trace(
        probe(config, &args.tuning),
        &selection,
        &args.tuning,
        0,
        sink.as_mut(),
        None,
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}

/// `tcptrace completions SHELL`: the script clap derives from the CLI.
pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<ExitCode> {
    use clap::CommandFactory as _;
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut crate::cli::Cli::command(), "tcptrace", &mut out);
    write_stdout(&out)
}

/// `tcptrace man [DIR]`: the man page in roff on stdout; with DIR, tcptrace.1
/// and the subcommands' pages it refers to (tcptrace-watch.1, ...) in DIR.
pub fn man(dir: Option<&Path>) -> anyhow::Result<ExitCode> {
    use clap::CommandFactory as _;
    if let Some(dir) = dir {
        // Each page says which tcptrace it documents.
        clap_mangen::generate_to(crate::cli::Cli::command().propagate_version(true), dir)
            .with_context(|| format!("writing the man pages into {}", dir.display()))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = Vec::new();
    clap_mangen::Man::new(crate::cli::Cli::command())
        .render(&mut out)
        .context("rendering the man page")?;
    write_stdout(&out)
}

fn write_stdout(bytes: &[u8]) -> anyhow::Result<ExitCode> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("writing output"),
        _ => Ok(ExitCode::SUCCESS),
    }
}
