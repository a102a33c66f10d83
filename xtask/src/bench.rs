//! `cargo xtask bench`: what tcptrace costs a machine opening and closing
//! TCP connections as fast as it can, next to no tracer, libbpf-tools'
//! tcpstates and a bpftrace one-liner; then memory, `leaks --once` and
//! start-up at scale, `leaks --once` over 200 network namespaces
//! (bench/netns.rs), and whether `watch` names each socket's true owner
//! (bench/owners.rs, bench/activemq.rs). Writes BENCHMARKS.md (see
//! bench/report.rs). With `--soak SECS`, only the churn soak
//! (bench/soak.rs), which adds its own section to BENCHMARKS.md.
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

mod activemq;
mod floors;
mod load;
mod netns;
mod owners;
mod profile;
mod report;
mod scale;
mod soak;
mod stacks;
mod stats;
mod storm;
mod sys;
mod tracers;

use load::{Load, LoadChoice};
use report::{Bench, Machine, Measured, RunRecord};
use tracers::{Config, Poker, Snapshot, Tools};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Rounds: each configuration runs once per round, between two untraced runs
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Seconds of load per run
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    secs: u64,
    /// Smoke run: one round of 2 s, fewer scale repetitions; the report goes to target/bench/
    #[arg(long)]
    quick: bool,
    /// The load generator
    #[arg(long, value_enum, default_value_t = LoadChoice::Auto)]
    load: LoadChoice,
    /// Only these configurations (watch, watch-json, leaks, hist, serve,
    /// leaks-stacks, watch-stacks, tcpstates, bpftrace) and figures (scale, owners, activemq, netns), a
    /// comma list. Without a configuration there are no throughput rounds;
    /// without a figure, the figures not skipped by a --no-* switch run
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    only: Vec<String>,
    /// Skip the scale figures (100,000 sockets, leaks --once vs ss, start-up, network namespaces)
    #[arg(long)]
    no_scale: bool,
    /// Skip the perf profile
    #[arg(long)]
    no_profile: bool,
    /// Report file [default: BENCHMARKS.md at the workspace root for a full
    /// run, target/bench/BENCHMARKS-partial.md otherwise]
    #[arg(long, value_name = "PATH")]
    output: Option<PathBuf>,
    /// Only the churn soak, for SECS seconds (the issue asks for 600): `tcptrace
    /// watch --json --max-sockets 4096` under the in-repo storm, sampled every
    /// 10 s; adds or replaces `## Soak` in BENCHMARKS.md (or --output)
    #[arg(
        long,
        value_name = "SECS",
        value_parser = clap::value_parser!(u64).range(1..),
        conflicts_with_all = ["rounds", "secs", "quick", "load", "only", "no_scale", "no_profile", "no_owners", "no_activemq", "no_netns"]
    )]
    soak: Option<u64>,
    /// With --soak: hold the storm to at most this many connections per
    /// second [default: as fast as the storm's threads go]
    #[arg(long, value_name = "CONNS_PER_SEC", requires = "soak", value_parser = clap::value_parser!(u64).range(1..))]
    soak_rate: Option<u64>,
    /// Skip owner truth (issue 11): the loopback storm and the ActiveMQ scenario
    #[arg(long)]
    no_owners: bool,
    /// Skip the ActiveMQ scenario only (it installs Debian's activemq and a JDK when missing)
    #[arg(long)]
    no_activemq: bool,
    /// Skip the network namespaces' scale figure (200 namespaces × 100 CLOSE_WAIT sockets)
    #[arg(long)]
    no_netns: bool,
    /// Bench this tcptrace binary instead of a release build of the workspace
    #[arg(long, value_name = "PATH")]
    tcptrace: Option<PathBuf>,
    /// Also run the tcptrace modes as built at REV (a git revision, built
    /// under target/bench/before/) in the same rounds, to see whether a
    /// change made any mode slower. A full run compares with the last commit
    /// before the layered redesign (REDESIGN_BASE); `none` skips it
    #[arg(long, value_name = "REV")]
    before: Option<String>,
    /// Internal: hold N loopback connections open until stdin closes (the
    /// scale figures' helper processes)
    #[arg(long, hide = true, value_name = "N")]
    hold: Option<usize>,
    /// Internal: owner truth's server process
    #[arg(long, hide = true, value_name = "PRE")]
    owner_server: Option<usize>,
    /// Internal: owner truth's client process
    #[arg(long, hide = true, value_name = "ADDR/PRE")]
    owner_client: Option<String>,
    /// Internal: a pod of the namespace scale figure
    #[arg(long, hide = true, value_name = "NS/N")]
    hold_close_wait: Option<String>,
    /// Internal: PROCS processes holding PER CLOSE_WAIT sockets each (the
    /// scale figure of many small holders)
    #[arg(long, hide = true, value_name = "PROCS/PER")]
    hold_spread: Option<String>,
    /// Internal: run this floor program (tcptrace-ebpf/src/floors.rs) until killed
    #[arg(long, hide = true, value_name = "NAME", requires = "floor_object")]
    floor: Option<String>,
    /// Internal: the floor programs' object
    #[arg(long, hide = true, value_name = "PATH")]
    floor_object: Option<PathBuf>,
}

/// The last commit before the layered redesign (issue 13), which a full
/// run's modes are compared with: the redesign must have made none slower.
const REDESIGN_BASE: &str = "4b96809";

/// The figures beside the throughput rounds, as `--only` names them.
const FIGURES: [&str; 4] = ["scale", "owners", "activemq", "netns"];

pub fn bench(args: &BenchArgs) -> Result<()> {
    if let Some(n) = args.hold {
        return scale::hold(n);
    }
    if let Some(pre) = args.owner_server {
        return owners::server(pre);
    }
    if let Some(spec) = &args.owner_client {
        return owners::client(spec);
    }
    if let Some(spec) = &args.hold_close_wait {
        return netns::hold_close_wait(spec);
    }
    if let Some(spec) = &args.hold_spread {
        return scale::hold_spread(spec);
    }
    if let (Some(name), Some(object)) = (&args.floor, &args.floor_object) {
        return floors::run(name, object);
    }
    let started = Instant::now();
    if !crate::setup::is_root() {
        bail!(
            "the bench loads BPF programs and sets sysctls: run it as root (`sudo -E cargo xtask bench`)"
        );
    }
    if let Some(soak_secs) = args.soak {
        let output = args
            .output
            .clone()
            .unwrap_or_else(|| crate::workspace_root().join("BENCHMARKS.md"));
        let tcptrace = tcptrace_binary(args)?;
        sys::catch_interrupt();
        return soak::run(&tcptrace, soak_secs, args.soak_rate, &output);
    }
    let (rounds, secs) = if args.quick {
        (1, 2)
    } else {
        (args.rounds, args.secs)
    };
    let (figure_keys, config_keys): (Vec<&str>, Vec<&str>) = args
        .only
        .iter()
        .map(|k| k.trim())
        .partition(|k| FIGURES.contains(k));
    let before = match args.before.as_deref() {
        Some("none") => None,
        Some(rev) => Some(rev),
        None if args.only.is_empty() && !args.quick => Some(REDESIGN_BASE),
        None => None,
    };
    let mut configs = vec![Config::Baseline];
    if args.only.is_empty() {
        configs.extend(
            Config::ALL
                .into_iter()
                .filter(|c| *c != Config::Baseline && (before.is_some() || !c.is_before())),
        );
    } else {
        for key in &config_keys {
            let c = Config::from_key(key).with_context(|| {
                format!(
                    "--only: unknown configuration or figure '{key}' (configurations: {}; figures: {})",
                    Config::ALL.map(Config::key).join(", "),
                    FIGURES.join(", ")
                )
            })?;
            if !configs.contains(&c) {
                configs.push(c);
            }
        }
    }
    // `--only` naming figures runs those; otherwise every figure runs but
    // those a `--no-*` switch skips.
    let wants = |figure: &str, skipped: bool| {
        if figure_keys.is_empty() {
            !skipped
        } else {
            figure_keys.contains(&figure)
        }
    };
    let run_rounds = args.only.is_empty() || !config_keys.is_empty();
    let run_scale = wants("scale", args.no_scale);
    let run_owners = wants("owners", args.no_owners);
    let run_activemq = wants("activemq", args.no_owners || args.no_activemq);
    let run_netns = wants("netns", args.no_scale || args.no_netns);
    let partial = args.quick
        || !args.only.is_empty()
        || args.no_scale
        || args.no_profile
        || args.no_owners
        || args.no_activemq
        || args.no_netns;
    let output = args.output.clone().unwrap_or_else(|| {
        if partial {
            crate::target_dir().join("bench").join(if args.quick {
                "BENCHMARKS-quick.md"
            } else {
                "BENCHMARKS-partial.md"
            })
        } else {
            crate::workspace_root().join("BENCHMARKS.md")
        }
    });

    let tcptrace = tcptrace_binary(args)?;
    sys::catch_interrupt();
    let mut tools = Tools::find(tcptrace);
    if let Some(rev) = before
        && run_rounds
    {
        tools.before = Some(build_before(rev)?);
    }
    // The floor programs are built with the workspace (tcptrace-ebpf's
    // `floors`), whichever tcptrace is benched.
    if run_rounds && args.only.is_empty() {
        tools.floors = floors::object().map_err(|e| format!("{e:#}"));
        if let Err(e) = &tools.floors {
            eprintln!("bench: floor programs: {e}");
        }
    }
    let unavailable: Vec<(Config, String)> = configs
        .iter()
        .filter_map(|&c| tools.unavailable(c).map(|why| (c, why)))
        .collect();
    for (c, why) in &unavailable {
        eprintln!("bench: {}: {why}", c.key());
    }
    let traced: Vec<Config> = configs
        .iter()
        .copied()
        .filter(|c| *c != Config::Baseline && tools.unavailable(*c).is_none())
        .collect();

    let mut machine = machine(&tools, args.tcptrace.is_some());
    let stats = sys::Sysctl::set("kernel.bpf_stats_enabled", "1")?;
    let stats_was = stats.old().to_owned();
    let dir = sys::TempDir::new("bench")?;
    let poker = Poker::new()?;
    let rounds_done = if run_rounds {
        run_rounds_and_profiles(&tools, &poker, args, &traced, (rounds, secs), dir.path())?
    } else {
        Rounds::default()
    };

    let scale = if run_scale {
        sys::bail_if_interrupted()?;
        Some(scale::run(
            &tools,
            &poker,
            if args.quick { 3 } else { 10 },
            dir.path(),
        ))
    } else {
        None
    };
    let netns = if run_netns {
        sys::bail_if_interrupted()?;
        let (namespaces, repeats) = if args.quick {
            (netns::NAMESPACES_QUICK, 3)
        } else {
            (netns::NAMESPACES, 5)
        };
        eprintln!(
            "bench: netns: {namespaces} network namespaces of {} CLOSE_WAIT sockets each",
            netns::PER_NAMESPACE
        );
        Some(
            netns::run(&tools, namespaces, repeats, dir.path()).map_err(|e| {
                eprintln!("bench: netns failed: {e:#}");
                format!("{e:#}")
            }),
        )
    } else {
        None
    };
    let owner_truth = if run_owners {
        sys::bail_if_interrupted()?;
        let (owner_secs, pre) = if args.quick {
            (2, owners::PRE_CONNECTIONS_QUICK)
        } else {
            (5, owners::PRE_CONNECTIONS)
        };
        eprintln!("bench: owners: owner truth on loopback, {owner_secs} s of storm");
        Some(
            owners::run(&tools, &poker, owner_secs, pre, dir.path()).map_err(|e| {
                eprintln!("bench: owners failed: {e:#}");
                format!("{e:#}")
            }),
        )
    } else {
        None
    };
    let broker = if run_activemq {
        sys::bail_if_interrupted()?;
        eprintln!(
            "bench: activemq: owner truth with Debian's ActiveMQ broker and its client library"
        );
        Some(activemq::run(&tools, &poker, dir.path()).map_err(|e| {
            eprintln!("bench: activemq failed: {e:#}");
            format!("{e:#}")
        }))
    } else {
        None
    };
    sys::bail_if_interrupted()?;
    drop(stats);

    machine.loadavg_end = loadavg();
    let bench = Bench {
        machine,
        load_name: rounds_done.load_name,
        load: rounds_done.load,
        fallback: rounds_done.fallback,
        rounds,
        secs,
        quick: args.quick,
        stats_was,
        configs: if run_rounds { configs } else { Vec::new() },
        unavailable,
        before: tools.before.as_ref().map(|(_, commit)| commit.clone()),
        runs: rounds_done.runs,
        storm_check: rounds_done.storm_check,
        scale,
        netns,
        owners: owner_truth,
        activemq: broker,
        floors: rounds_done.floors,
        profiles: rounds_done.profiles,
        prog_names: rounds_done.prog_names,
        elapsed: started.elapsed(),
    };
    let mut text = report::render(&bench);
    if let Some(parent) = output.parent() {
        fs::create_dir_all(parent)?;
    }
    // The soak is run on its own (`--soak`): keep its section.
    if let Some(section) = fs::read_to_string(&output)
        .ok()
        .as_deref()
        .and_then(soak::section_of)
    {
        text = soak::splice(&text, section);
    }
    fs::write(&output, &text).with_context(|| format!("writing {}", output.display()))?;
    let summaries = report::summarize(&bench);
    if !bench.runs.is_empty() {
        println!("\n{}", report::results_table(&summaries));
    }
    if let Some(f) = &bench.scale {
        println!("{}", report::scale_table(f));
    }
    println!(
        "{}",
        report::targets_table(&report::targets(&bench, &summaries))
    );
    eprintln!(
        "bench: wrote {} in {:.1} min",
        output.display(),
        bench.elapsed.as_secs_f64() / 60.0
    );
    Ok(())
}

/// What the throughput rounds, and the runs that share their load, measured.
#[derive(Default)]
struct Rounds {
    load_name: String,
    load: String,
    fallback: Option<String>,
    runs: Vec<RunRecord>,
    storm_check: Vec<(Config, Result<Measured, String>)>,
    floors: Vec<(Config, Result<Measured, String>)>,
    profiles: Vec<(Config, Result<profile::Profile, String>)>,
    prog_names: Vec<(Config, String)>,
}

/// The rounds under the load, the lost-events check under the storm, the
/// floor programs and the profiles.
fn run_rounds_and_profiles(
    tools: &Tools,
    poker: &Poker,
    args: &BenchArgs,
    traced: &[Config],
    (rounds, secs): (u32, u64),
    dir: &Path,
) -> Result<Rounds> {
    let (mut load, fallback) = Load::start(args.load, dir)?;
    if let Some(f) = &fallback {
        eprintln!("bench: {f}");
    }
    eprintln!("bench: load: {}", load.describe());

    // The builds just before (tcptrace, --before's tree, the floors) leave
    // hundreds of MiB of dirty pages; written back in the background, they
    // take CPU from the first round. Written now, before the warm-up.
    // SAFETY: takes no arguments, cannot fail.
    unsafe { libc::sync() };
    eprintln!("bench: warm-up run ({secs} s, not counted)");
    let warm = load.run(secs)?;
    eprintln!(
        "bench: warm-up: {} conns/s",
        report::thousands(warm.conns_per_sec)
    );

    // The sequence: untraced, A, untraced, B, ..., untraced; each round
    // rotates the order so no configuration always follows the same one.
    let mut plan: Vec<(u32, Config)> = Vec::new();
    for round in 1..=rounds {
        if round == 1 {
            plan.push((round, Config::Baseline));
        }
        let shift = (round as usize - 1) % traced.len().max(1);
        for i in 0..traced.len() {
            plan.push((round, traced[(i + shift) % traced.len()]));
            plan.push((round, Config::Baseline));
        }
        if traced.is_empty() && round > 1 {
            plan.push((round, Config::Baseline));
        }
    }
    let mut runs: Vec<RunRecord> = Vec::new();
    let mut prog_names: Vec<(Config, String)> = Vec::new();
    for (i, &(round, config)) in plan.iter().enumerate() {
        sys::bail_if_interrupted()?;
        let outcome = measure(tools, config, &mut load, poker, secs);
        let line = match &outcome {
            Ok((m, _)) => progress(m),
            Err(e) => format!("failed: {e:#}"),
        };
        eprintln!(
            "bench: [{}/{}] round {round} {}: {line}",
            i + 1,
            plan.len(),
            config.key()
        );
        let outcome = outcome.map(|(m, names)| {
            if !names.is_empty() && !prog_names.iter().any(|(c, _)| *c == config) {
                prog_names.push((config, names.join("`, `")));
            }
            m
        });
        runs.push(RunRecord {
            round,
            config,
            outcome: outcome.map_err(|e| format!("{e:#}")),
        });
    }

    // Lost events at the in-repo storm's full rate, which is higher than
    // nginx's: each tcptrace mode once more, under the storm.
    let mut storm_check: Vec<(Config, Result<Measured, String>)> = Vec::new();
    let modes: Vec<Config> = traced.iter().copied().filter(|c| c.is_tcptrace()).collect();
    if !load.is_storm() && !modes.is_empty() {
        let mut storm = Load::storm()?;
        eprintln!("bench: lost events under the {}", storm.describe());
        for config in modes {
            sys::bail_if_interrupted()?;
            let outcome = measure(tools, config, &mut storm, poker, secs).map(|(m, _)| m);
            match &outcome {
                Ok(m) => eprintln!("bench: storm {}: {}", config.key(), progress(m)),
                Err(e) => eprintln!("bench: storm {}: failed: {e:#}", config.key()),
            }
            storm_check.push((config, outcome.map_err(|e| format!("{e:#}"))));
        }
    }

    // What any program on this tracepoint costs here, piece by piece: the
    // scale the kernel figures are read against.
    let mut floors: Vec<(Config, Result<Measured, String>)> = Vec::new();
    if args.only.is_empty() {
        for (config, _, _) in tracers::FLOOR_PROGRAMS {
            sys::bail_if_interrupted()?;
            if let Some(why) = tools.unavailable(config) {
                floors.push((config, Err(why)));
                continue;
            }
            let outcome = measure(tools, config, &mut load, poker, secs).map(|(m, _)| m);
            match &outcome {
                Ok(m) => eprintln!("bench: floor {}: {}", config.key(), progress(m)),
                Err(e) => eprintln!("bench: floor {}: failed: {e:#}", config.key()),
            }
            floors.push((config, outcome.map_err(|e| format!("{e:#}"))));
        }
    }

    // Where each mode's cost goes.
    let mut profiles: Vec<(Config, Result<profile::Profile, String>)> = Vec::new();
    if !args.no_profile {
        for config in traced.iter().copied().filter(|c| c.is_tcptrace()) {
            sys::bail_if_interrupted()?;
            eprintln!(
                "bench: profile: perf record -a -g for {secs} s with {}",
                config.key()
            );
            let p = profile::run(tools, config, &mut load, poker, secs, dir).map_err(|e| {
                eprintln!("bench: profile failed: {e:#}");
                format!("{e:#}")
            });
            profiles.push((config, p));
        }
    }
    Ok(Rounds {
        load: load.describe(),
        load_name: if load.is_storm() {
            "in-repo storm"
        } else {
            "nginx + wrk"
        }
        .to_owned(),
        fallback,
        runs,
        storm_check,
        floors,
        profiles,
        prog_names,
    })
}

/// `--tcptrace PATH`, or a release build of the workspace's.
fn tcptrace_binary(args: &BenchArgs) -> Result<PathBuf> {
    match &args.tcptrace {
        Some(path) => {
            if !path.is_file() {
                bail!("--tcptrace {}: no such file", path.display());
            }
            eprintln!(
                "bench: benching {} (--tcptrace), not a build of the workspace",
                path.display()
            );
            fs::canonicalize(path).with_context(|| format!("--tcptrace {}", path.display()))
        }
        None => build_release(),
    }
}

/// Set-up (packages: nginx, wrk, bpftrace, libbpf-tools, perf), then a
/// release build of tcptrace; its path.
fn build_release() -> Result<PathBuf> {
    if let Err(e) = crate::setup::ensure(false) {
        eprintln!("bench: set-up incomplete ({e:#}); carrying on with what is installed");
    }
    crate::cmd::run(
        Command::new(crate::cargo())
            .current_dir(crate::workspace_root())
            .args(["build", "--release", "-p", "tcptrace"]),
    )?;
    let tcptrace = crate::target_dir().join("release").join("tcptrace");
    if !tcptrace.is_file() {
        bail!("{} is missing after the build", tcptrace.display());
    }
    Ok(tcptrace)
}

/// tcptrace as built at `rev`, from a copy of the tree at that revision
/// (`git archive`, so the checkout is left alone), cached by commit.
fn build_before(rev: &str) -> Result<(PathBuf, String)> {
    let root = crate::workspace_root();
    let out = Command::new("git")
        .current_dir(root)
        .args(["rev-parse", "--verify", "--short=12"])
        .arg(format!("{rev}^{{commit}}"))
        .output()
        .context("running git rev-parse")?;
    if !out.status.success() {
        bail!(
            "--before {rev}: not a revision of this repository ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let commit = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let dir = crate::target_dir()
        .join("bench")
        .join("before")
        .join(&commit);
    let binary = dir.join("target").join("release").join("tcptrace");
    if binary.is_file() {
        eprintln!("bench: before: {} (built already)", binary.display());
        return Ok((binary, commit));
    }
    let tree = dir.join("tree");
    if tree.exists() {
        fs::remove_dir_all(&tree).with_context(|| format!("removing {}", tree.display()))?;
    }
    fs::create_dir_all(&tree).with_context(|| format!("creating {}", tree.display()))?;
    eprintln!(
        "bench: before: building tcptrace at {commit} in {}",
        dir.display()
    );
    crate::cmd::run(Command::new("sh").current_dir(root).args([
        "-c",
        "git archive --format=tar \"$1\" | tar -x -C \"$2\"",
        "sh",
        &commit,
        &tree.to_string_lossy(),
    ]))?;
    crate::cmd::run(
        Command::new(crate::cargo())
            .current_dir(&tree)
            .env("CARGO_TARGET_DIR", dir.join("target"))
            .args(["build", "--release", "-p", "tcptrace"]),
    )?;
    if !binary.is_file() {
        bail!("{} is missing after the build", binary.display());
    }
    Ok((binary, commit))
}

fn progress(m: &Measured) -> String {
    let mut parts = vec![format!("{} conns/s", report::thousands(m.conns))];
    if let Some(k) = &m.kernel {
        parts.push(format!(
            "kernel {} ns/event over {} events",
            report::thousands(k.ns_per_event),
            report::thousands(k.events as f64)
        ));
    }
    if let Some(c) = m.cpu_us_per_event {
        parts.push(format!("CPU {c:.2} µs/event"));
    }
    if let Some(l) = m.lost {
        parts.push(format!("{} lost", report::thousands(l as f64)));
    }
    if let Some(r) = m.peak_rss_kib {
        parts.push(format!("peak RSS {:.1} MiB", r as f64 / 1024.0));
    }
    if let Some(n) = &m.note {
        parts.push(n.clone());
    }
    if let Some(e) = &m.load_errors {
        parts.push(format!("load errors: {e}"));
    }
    parts.join(", ")
}

/// One run: the untraced load, or a tracer started, the load, the tracer
/// drained and stopped. Also returns the names of the tracer's BPF programs.
fn measure(
    tools: &Tools,
    config: Config,
    load: &mut Load,
    poker: &Poker,
    secs: u64,
) -> Result<(Measured, Vec<String>)> {
    if config == Config::Baseline {
        let idle_from = sys::machine_ticks();
        let run = load.run(secs)?;
        return Ok((
            Measured {
                conns: run.conns_per_sec,
                load_errors: run.errors,
                idle: idle_share(idle_from, sys::machine_ticks()),
                ..Measured::default()
            },
            Vec::new(),
        ));
    }
    let tracer = tracers::start(tools, config, poker)?;
    let pid = tracer.pid();
    let before = Snapshot::take(pid);
    let (idle_from, woken_from, started) =
        (sys::machine_ticks(), sys::wakeups(pid), Instant::now());
    let run = load.run(secs);
    let (idle, woken) = (
        idle_share(idle_from, sys::machine_ticks()),
        woken_from.zip(sys::wakeups(pid)),
    );
    let wakeups_per_sec =
        woken.map(|(from, to)| to.saturating_sub(from) as f64 / started.elapsed().as_secs_f64());
    tracers::settle(pid, Duration::from_secs(10));
    let after = Snapshot::take(pid);
    let hwm = sys::status_kib(pid, "VmHWM");
    // Names while the programs are still loaded.
    let names: Vec<String> = after
        .progs
        .iter()
        .filter_map(|p| sys::prog_name(p.id))
        .collect();
    let stopped = tracer.stop();
    let run = run?;
    if stopped.exited_early {
        bail!(
            "{} exited during the run: {}",
            config.key(),
            tracers::tail(&stopped.lines)
        );
    }
    let kernel = tracers::kernel_cost(&before, &after);
    let cpu_us_per_event = match (&kernel, before.cpu_ticks, after.cpu_ticks) {
        (Some(k), Some(b), Some(a)) => {
            Some((a - b) as f64 * 1e6 / sys::clk_tck() as f64 / k.events as f64)
        }
        _ => None,
    };
    let mut notes = Vec::new();
    if let Some(s) = &stopped.scrapes {
        notes.push(format!("{} scrapes ok, {} failed", s.ok, s.failed));
    }
    match &stopped.stats {
        Some(Ok(s)) => {
            for (n, what) in [
                (s.evicted, "evicted"),
                (s.missed, "missed"),
                (s.undecodable, "undecodable"),
                (s.dropped, "histogram updates dropped"),
            ] {
                if n > 0 {
                    notes.push(format!("{n} {what}"));
                }
            }
        }
        Some(Err(e)) => notes.push(format!("{e} ({})", tracers::tail(&stopped.lines))),
        None => {}
    }
    Ok((
        Measured {
            conns: run.conns_per_sec,
            load_errors: run.errors,
            cpu_us_per_event,
            events_reported: stopped.events(config),
            lost: stopped.lost(config),
            peak_rss_kib: hwm,
            note: (!notes.is_empty()).then(|| notes.join("; ")),
            kernel,
            idle,
            wakeups_per_sec,
        },
        names,
    ))
}

/// The machine's idle share of its CPU time between two `machine_ticks`.
fn idle_share(from: Option<(u64, u64)>, to: Option<(u64, u64)>) -> Option<f64> {
    let ((idle0, total0), (idle1, total1)) = (from?, to?);
    let total = total1.checked_sub(total0).filter(|&t| t > 0)?;
    Some(idle1.saturating_sub(idle0) as f64 / total as f64)
}

fn loadavg() -> String {
    sys::read_trimmed("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".to_owned())
}

fn machine(tools: &Tools, given: bool) -> Machine {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
        .map(|(_, m)| m.trim().to_owned())
        .unwrap_or_else(|| "?".to_owned());
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib = meminfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    let git = |args: &[&str]| {
        crate::cmd::stdout(
            Command::new("git")
                .current_dir(crate::workspace_root())
                .args(args),
        )
        .map(|s| s.trim().to_owned())
    };
    let mut commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "?".to_owned());
    if git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty()) {
        commit.push_str(" with uncommitted changes");
    }
    let date = crate::cmd::stdout(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| "?".to_owned());
    let mut tools_list = vec![(
        "tcptrace".to_owned(),
        crate::cmd::stdout(Command::new(&tools.tcptrace).arg("--version"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|| "?".to_owned())
            + &if given {
                format!(" ({}, given with --tcptrace)", tools.tcptrace.display())
            } else {
                " (release build)".to_owned()
            },
    )];
    for package in [
        "nginx",
        "wrk",
        "libbpf-tools",
        "bpftrace",
        "bpftool",
        "linux-perf",
    ] {
        if let Some(v) =
            crate::cmd::stdout(Command::new("dpkg-query").args(["-W", "-f=${Version}", package]))
                .filter(|v| !v.trim().is_empty())
        {
            tools_list.push((package.to_owned(), format!("{} (Debian)", v.trim())));
        }
    }
    let foreign_progs = crate::cmd::stdout(Command::new("bpftool").args(["prog", "show"]))
        .map(|s| {
            s.lines()
                .filter(|l| {
                    l.contains("name inet_sock_set_s") || l.contains("name handle_set_state")
                })
                .count()
        })
        .unwrap_or(0);
    Machine {
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        model,
        mem_kib,
        kernel: sys::read_trimmed("/proc/sys/kernel/osrelease").unwrap_or_else(|| "?".to_owned()),
        date,
        commit,
        loadavg_start: loadavg(),
        loadavg_end: String::new(),
        tools: tools_list,
        foreign_progs,
    }
}
