//! `cargo xtask bench --soak SECS`: `tcptrace watch --json` under the
//! in-repo storm for SECS seconds, with `--max-sockets` far below the number
//! of sockets the storm opens, sampling the tracer's memory, fds and BPF
//! objects every 10 s; then whether it kept up, stayed flat and detached on
//! SIGINT. Adds or replaces `## Soak` in BENCHMARKS.md and leaves the rest
//! of the file alone.
use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use super::report::thousands;
use super::stats::{RunStats, StatsFile};
use super::storm::StormRun;
use super::sys::{self, Held, Proc};
use super::tracers::{self, Poker, Tools};

/// `--max-sockets` for the tracer: the storm goes through this many sockets
/// in well under a second.
pub const MAX_SOCKETS: u32 = 4096;
pub const SAMPLE_EVERY_SECS: u64 = 10;
/// Samples before this are left out of the memory and fd comparisons
/// (a quarter of the run when that is shorter).
pub const WARM_UP_SECS: u64 = 30;
/// Memory is flat when the last half's peak is within this fraction, or
/// [`RSS_SLACK_KIB`] if larger, of the first half's.
pub const RSS_SLACK_FRACTION: f64 = 0.10;
pub const RSS_SLACK_KIB: u64 = 4 * 1024;
pub const HEADING: &str = "## Soak";

/// One look at the tracer.
#[derive(Clone, Debug)]
pub struct Sample {
    /// Seconds into the storm (the nominal time; each look is within
    /// milliseconds of it).
    pub t: u64,
    pub rss_kib: Option<u64>,
    pub held: Option<Held>,
    /// Connections the storm had completed by then.
    pub conns: u64,
    /// Runs of the tracer's busiest BPF program (one per state change).
    pub prog_runs: u64,
}

/// A pass/fail line of the verdict.
pub struct Check {
    pub what: String,
    pub pass: bool,
    pub detail: String,
}

/// What the tracer left behind after it exited: ids still loaded, or `None`
/// when bpftool could not say.
pub struct Detach {
    pub progs_left: Option<Vec<u32>>,
    pub links_left: Option<Vec<u32>>,
    pub maps_left: Option<Vec<u32>>,
    /// From the tracer's exit to the check that found nothing left (or gave up).
    pub after: Duration,
}

pub struct Soak {
    pub secs: u64,
    pub pace: Option<u64>,
    pub storm: String,
    pub machine: super::report::Machine,
    pub command: String,
    pub samples: Vec<Sample>,
    pub run: StormRun,
    /// The tracer died during the soak.
    pub exited_early: bool,
    pub exit: String,
    pub stop_took: Duration,
    /// What it wrote to `--stats-json` at exit.
    pub stats: Option<RunStats>,
    pub warnings: Vec<String>,
    /// Every BPF object the tracer held at any sample.
    pub held: Held,
    pub detach: Detach,
    pub elapsed: Duration,
}

pub fn run(tcptrace: &Path, secs: u64, pace: Option<u64>, output: &Path) -> Result<()> {
    let started = Instant::now();
    let tools = Tools::find(tcptrace.to_path_buf());
    // Its section names no tool versions, so whether tcptrace was given does not show.
    let machine = super::machine(&tools, false);
    // Run counts prove the tracer attached, and count the state changes.
    let bpf_stats = sys::Sysctl::set("kernel.bpf_stats_enabled", "1")?;
    let storm = super::load::default_storm()?;
    let storm_desc = storm.describe();
    let poker = Poker::new()?;

    let args = [
        "watch".to_owned(),
        "--json".to_owned(),
        "--max-sockets".to_owned(),
        MAX_SOCKETS.to_string(),
    ];
    let command = format!("tcptrace --stats-json FILE {} > /dev/null", args.join(" "));
    eprintln!("soak: starting `{command}`");
    let stats_file = StatsFile::new();
    let mut proc = Proc::spawn(
        "watch-json",
        Command::new(tcptrace)
            .args(stats_file.args())
            .args(&args)
            .stdout(Stdio::null()),
    )?;
    if proc
        .wait_line("attached", Duration::from_secs(30))
        .is_none()
    {
        let lines = proc.stop(Duration::from_secs(2));
        bail!(
            "no \"attached\" line within 30 s: {}",
            tracers::tail(&lines)
        );
    }
    tracers::wait_attached(&mut proc, &poker, Duration::from_secs(30))?;
    let pid = proc.pid();
    let mut held = sys::held(pid).context("cannot read the tracer's fds")?;
    // Links the kernel lists for the tracer's programs (a perf-event
    // attachment made through bpf_link_create has one without our holding
    // its fd under that name).
    if let Some(links) = bpftool_objects("link") {
        for (id, prog) in links {
            if prog.is_some_and(|p| held.progs.contains(&p)) && !held.links.contains(&id) {
                held.links.push(id);
            }
        }
    }
    eprintln!(
        "soak: attached: {} fds, BPF programs {:?}, maps {:?}, links {:?}",
        held.fds, held.progs, held.maps, held.links
    );
    eprintln!(
        "soak: {} for {secs} s{}; a sample every {SAMPLE_EVERY_SECS} s",
        storm_desc,
        pace.map_or(String::new(), |p| format!(
            ", held to {} conns/s",
            thousands(p as f64)
        ))
    );

    let done = Arc::new(AtomicU64::new(0));
    let abort = AtomicBool::new(false);
    let mut samples: Vec<Sample> = Vec::new();
    let mut warnings: Vec<String> = Vec::new();
    let mut exited_early = false;
    let run = thread::scope(|s| {
        let storm_thread = s.spawn(|| {
            storm.run_observed(
                Duration::from_secs(secs),
                pace.map(|p| p as f64),
                &done,
                &abort,
            )
        });
        let t0 = Instant::now();
        for k in 0.. {
            let t = (k * SAMPLE_EVERY_SECS).min(secs);
            let due = t0 + Duration::from_secs(t);
            while Instant::now() < due && !storm_thread.is_finished() && !sys::interrupted() {
                thread::sleep(Duration::from_millis(50));
            }
            if sys::interrupted() {
                abort.store(true, Ordering::Relaxed);
                break;
            }
            let sample = Sample {
                t,
                rss_kib: sys::status_kib(pid, "VmRSS"),
                held: sys::held(pid),
                conns: done.load(Ordering::Relaxed),
                prog_runs: prog_runs(pid),
            };
            for line in proc.drain() {
                eprintln!("soak: tracer: {line}");
                warnings.push(line);
            }
            if !proc.running() {
                eprintln!("soak: the tracer exited at {t} s");
                exited_early = true;
                abort.store(true, Ordering::Relaxed);
                break;
            }
            if let Some(h) = &sample.held {
                for (all, now) in [
                    (&mut held.progs, &h.progs),
                    (&mut held.maps, &h.maps),
                    (&mut held.links, &h.links),
                ] {
                    for id in now {
                        if !all.contains(id) {
                            all.push(*id);
                        }
                    }
                }
            }
            eprintln!("soak: {}", progress(&sample, secs));
            samples.push(sample);
            if t >= secs {
                break;
            }
        }
        storm_thread
            .join()
            .expect("the storm thread does not panic")
    });
    sys::bail_if_interrupted()?;
    eprintln!(
        "soak: storm done: {} connections in {:.0} s ({} conns/s), {} failed",
        thousands(run.completed as f64),
        run.elapsed.as_secs_f64(),
        thousands(run.conns_per_sec),
        thousands(run.errors as f64)
    );

    // Let it drain what the storm left in its ring, then stop it as a user would.
    tracers::settle(pid, Duration::from_secs(10));
    let stopping = Instant::now();
    let lines = proc.stop(Duration::from_secs(15));
    let stop_took = stopping.elapsed();
    let exit = match proc.exit_status() {
        Some(s) if s.success() => "exit 0".to_owned(),
        Some(s) => format!("{s}"),
        None => "unknown".to_owned(),
    };
    let stats = stats_file.read();
    for l in &lines {
        if l.contains("warning") && !warnings.contains(l) {
            warnings.push(l.clone());
        }
    }
    warnings.retain(|l| l.contains("warning") || l.contains("error"));
    eprintln!(
        "soak: tracer stopped with SIGINT in {} ms ({exit}): {}",
        stop_took.as_millis(),
        match &stats {
            Ok(s) => s.text.clone(),
            Err(e) => format!("{e:#}"),
        }
    );
    let detach = detached(&held);
    drop(bpf_stats);

    let soak = Soak {
        secs,
        pace,
        storm: storm_desc,
        machine,
        command,
        samples,
        run,
        exited_early,
        exit,
        stop_took,
        stats: stats.ok(),
        warnings,
        held,
        detach,
        elapsed: started.elapsed(),
    };
    let checks = checks(&soak);
    let section = render(&soak, &checks);
    let old = fs::read_to_string(output).unwrap_or_default();
    let text = if old.trim().is_empty() {
        format!("# Benchmarks\n\n{section}")
    } else {
        splice(&old, &section)
    };
    fs::write(output, text).with_context(|| format!("writing {}", output.display()))?;
    eprintln!();
    for c in &checks {
        eprintln!(
            "soak: {}: {} ({})",
            c.what,
            if c.pass { "pass" } else { "FAIL" },
            c.detail
        );
    }
    eprintln!(
        "soak: wrote `{HEADING}` in {} in {:.1} min",
        output.display(),
        soak.elapsed.as_secs_f64() / 60.0
    );
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| !c.pass)
        .map(|c| c.what.as_str())
        .collect();
    if !failed.is_empty() {
        bail!(
            "soak: {} of {} checks failed: {}",
            failed.len(),
            checks.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

/// Runs of the tracer's busiest program so far (`bpf_stats_enabled` is on).
fn prog_runs(pid: u32) -> u64 {
    sys::bpf_progs(pid)
        .iter()
        .map(|p| p.run_cnt)
        .max()
        .unwrap_or(0)
}

fn progress(s: &Sample, secs: u64) -> String {
    let mut parts = vec![format!(
        "[{:>w$}/{secs} s]",
        s.t,
        w = secs.to_string().len()
    )];
    parts.push(format!(
        "RSS {}",
        s.rss_kib
            .map_or("?".to_owned(), |k| format!("{:.1} MiB", mib(k)))
    ));
    match &s.held {
        Some(h) => parts.push(format!(
            "{} fds, {} progs, {} maps",
            h.fds,
            h.progs.len(),
            h.maps.len()
        )),
        None => parts.push("fds ?".to_owned()),
    }
    parts.push(format!("{} conns", thousands(s.conns as f64)));
    parts.push(format!("{} program runs", thousands(s.prog_runs as f64)));
    parts.join(", ")
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Every object of `bpftool KIND show -j` (prog, map, link): its id and,
/// for links, its program's id. `None` when bpftool is missing or fails.
fn bpftool_objects(kind: &str) -> Option<Vec<(u32, Option<u32>)>> {
    let out = crate::cmd::stdout(Command::new("bpftool").args([kind, "show", "-j"]))?;
    Some(parse_objects(&out))
}

/// bpftool prints each object as `{"id":N,...}`; nested objects (`pids`)
/// have no `id` key.
fn parse_objects(json: &str) -> Vec<(u32, Option<u32>)> {
    let number = |s: &str| -> Option<u32> {
        let digits: String = s
            .trim_start()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    };
    json.split("{\"id\":")
        .skip(1)
        .filter_map(|chunk| {
            let id = number(chunk)?;
            let prog = chunk
                .find("\"prog_id\":")
                .and_then(|i| number(&chunk[i + 10..]));
            Some((id, prog))
        })
        .collect()
}

/// Waits up to 5 s for the kernel to free everything the tracer held.
fn detached(held: &Held) -> Detach {
    let exited = Instant::now();
    let left = |kind: &str, ids: &[u32]| -> Option<Vec<u32>> {
        let objects = bpftool_objects(kind)?;
        Some(
            objects
                .into_iter()
                .map(|(id, _)| id)
                .filter(|id| ids.contains(id))
                .collect(),
        )
    };
    loop {
        let d = Detach {
            progs_left: left("prog", &held.progs),
            links_left: left("link", &held.links),
            maps_left: left("map", &held.maps),
            after: exited.elapsed(),
        };
        let clear = |v: &Option<Vec<u32>>| v.as_ref().is_some_and(Vec::is_empty);
        let done = clear(&d.progs_left) && clear(&d.links_left) && clear(&d.maps_left);
        if done || exited.elapsed() > Duration::from_secs(5) {
            return d;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// The first and last halves of the run after the warm-up: (from, to) in
/// seconds, inclusive of the sample times they take.
fn halves(secs: u64) -> ((u64, u64), (u64, u64)) {
    let warm = WARM_UP_SECS.min(secs / 4);
    let half = secs / 2;
    ((warm, half), (half + 1, secs))
}

fn window<T: Ord + Copy>(
    samples: &[Sample],
    (from, to): (u64, u64),
    f: impl Fn(&Sample) -> Option<T>,
) -> Option<T> {
    samples
        .iter()
        .filter(|s| s.t >= from && s.t <= to)
        .filter_map(f)
        .max()
}

fn fds(s: &Sample) -> Option<usize> {
    s.held.as_ref().map(|h| h.fds)
}

pub fn checks(soak: &Soak) -> Vec<Check> {
    let (first, last) = halves(soak.secs);
    let mut checks = Vec::new();

    let ran = !soak.exited_early && soak.exit == "exit 0";
    checks.push(Check {
        what: "Ran to the end, exited cleanly on SIGINT".to_owned(),
        pass: ran,
        detail: if soak.exited_early {
            "the tracer exited during the soak".to_owned()
        } else {
            format!("{} after {} ms", soak.exit, soak.stop_took.as_millis())
        },
    });

    let rss = (
        window(&soak.samples, first, |s| s.rss_kib),
        window(&soak.samples, last, |s| s.rss_kib),
    );
    checks.push(match rss {
        (Some(a), Some(b)) => {
            let slack = ((a as f64 * RSS_SLACK_FRACTION) as u64).max(RSS_SLACK_KIB);
            Check {
                what: "Memory flat".to_owned(),
                pass: b <= a + slack,
                detail: format!(
                    "VmRSS peak {:.1} MiB over {}–{} s, {:.1} MiB over {}–{} s: {:+.1} MiB, limit +{:.1} MiB",
                    mib(a),
                    first.0,
                    first.1,
                    mib(b),
                    last.0,
                    last.1,
                    mib(b) - mib(a),
                    mib(slack)
                ),
            }
        }
        _ => Check {
            what: "Memory flat".to_owned(),
            pass: false,
            detail: "too few samples to compare the halves".to_owned(),
        },
    });

    let fd = (
        window(&soak.samples, first, fds),
        window(&soak.samples, last, fds),
    );
    checks.push(match fd {
        (Some(a), Some(b)) => Check {
            what: "fd count flat".to_owned(),
            pass: b <= a,
            detail: format!(
                "peak {a} over {}–{} s, {b} over {}–{} s",
                first.0, first.1, last.0, last.1
            ),
        },
        _ => Check {
            what: "fd count flat".to_owned(),
            pass: false,
            detail: "too few samples to compare the halves".to_owned(),
        },
    });

    let counts: Vec<(usize, usize)> = soak
        .samples
        .iter()
        .filter_map(|s| s.held.as_ref().map(|h| (h.progs.len(), h.maps.len())))
        .collect();
    let same = counts.windows(2).all(|w| w[0] == w[1]);
    checks.push(Check {
        what: "BPF programs and maps held constant".to_owned(),
        pass: same && !counts.is_empty(),
        detail: match (counts.first(), counts.iter().max()) {
            (Some(f), _) if same => format!("programs {}, maps {} at every sample", f.0, f.1),
            (Some(f), Some(m)) => format!(
                "programs {}, maps {} at first; up to programs {}, maps {}",
                f.0, f.1, m.0, m.1
            ),
            _ => "not sampled".to_owned(),
        },
    });

    checks.push(match soak.stats {
        Some(RunStats { events, lost, .. }) => Check {
            what: "Zero lost events".to_owned(),
            pass: lost == 0,
            detail: format!(
                "{} lost of {} events",
                thousands(lost as f64),
                thousands((events + lost) as f64)
            ),
        },
        None => Check {
            what: "Zero lost events".to_owned(),
            pass: false,
            detail: "no statistics written at exit (`--stats-json`)".to_owned(),
        },
    });

    let d = &soak.detach;
    let list = |v: &Option<Vec<u32>>, of: &[u32], what: &str| match v {
        None => format!("{what}: bpftool could not say"),
        Some(left) if left.is_empty() => format!("{what}: all {} gone", of.len()),
        Some(left) => format!("{what} {left:?} still loaded"),
    };
    let clear = |v: &Option<Vec<u32>>| v.as_ref().is_some_and(Vec::is_empty);
    checks.push(Check {
        what: "Detached after exit".to_owned(),
        pass: clear(&d.progs_left) && clear(&d.links_left),
        detail: format!(
            "{}, {}, {} ({} ms after exit)",
            list(&d.progs_left, &soak.held.progs, "programs"),
            list(&d.links_left, &soak.held.links, "links"),
            list(&d.maps_left, &soak.held.maps, "maps"),
            d.after.as_millis()
        ),
    });
    checks
}

pub fn render(soak: &Soak, checks: &[Check]) -> String {
    let m = &soak.machine;
    let (first, last) = halves(soak.secs);
    let mut r = String::new();
    let _ = writeln!(r, "{HEADING}\n");
    let _ = writeln!(
        r,
        "Written by `cargo xtask bench --soak {}{}` ({:.1} min) on {}, commit {}, kernel {}, {} × {}; rerun it rather than editing this section (a full `cargo xtask bench` keeps it).\n",
        soak.secs,
        soak.pace
            .map_or(String::new(), |p| format!(" --soak-rate {p}")),
        soak.elapsed.as_secs_f64() / 60.0,
        m.date,
        m.commit,
        m.kernel,
        m.cpus,
        m.model
    );
    let _ = writeln!(
        r,
        "`{}` for {} s under the {}{}. Every {SAMPLE_EVERY_SECS} s: the tracer's VmRSS (/proc/PID/status), its open fds (/proc/PID/fd) and the BPF programs and maps it holds (`prog_id`/`map_id` in /proc/PID/fdinfo). Then SIGINT, the statistics it writes at exit (`--stats-json`), and `bpftool prog/link/map show -j` for its ids. Memory flat: VmRSS's peak over the last half is within {:.0} % (or {:.0} MiB, whichever is larger) of its peak over the first half after a warm-up ({}–{} s against {}–{} s). fd count flat: the last half's peak is no higher than the first half's.\n",
        soak.command,
        soak.secs,
        soak.storm,
        soak.pace.map_or(String::new(), |p| format!(
            ", held to {} conns/s",
            thousands(p as f64)
        )),
        RSS_SLACK_FRACTION * 100.0,
        mib(RSS_SLACK_KIB),
        first.0,
        first.1,
        last.0,
        last.1
    );

    r.push_str("| | |\n|---|---|\n");
    let _ = writeln!(
        r,
        "| Duration | {} s of storm ({:.1} s measured) |",
        soak.secs,
        soak.run.elapsed.as_secs_f64()
    );
    let sockets = 2 * soak.run.completed;
    let _ = writeln!(
        r,
        "| Connections made | {} ({} conns/s; {} failed) — about {} sockets, {} × `--max-sockets {MAX_SOCKETS}` |",
        thousands(soak.run.completed as f64),
        thousands(soak.run.conns_per_sec),
        thousands(soak.run.errors as f64),
        thousands(sockets as f64),
        thousands(sockets as f64 / f64::from(MAX_SOCKETS))
    );
    let runs = soak.samples.last().map_or(0, |s| s.prog_runs);
    match &soak.stats {
        Some(stats) => {
            let (events, lost, evicted) = (stats.events, stats.lost, stats.evicted);
            let _ = writeln!(
                r,
                "| Events | {} reported by the tracer ({:.1} per connection; its program ran {} times by the last sample) |",
                thousands(events as f64),
                events as f64 / soak.run.completed.max(1) as f64,
                thousands(runs as f64)
            );
            let _ = writeln!(r, "| Lost | {} |", thousands(lost as f64));
            let _ = writeln!(
                r,
                "| Evicted | {} (sockets pushed out of the `--max-sockets` table) |",
                thousands(evicted as f64)
            );
            let _ = writeln!(r, "| Missed | {} |", thousands(stats.missed as f64));
            let _ = writeln!(
                r,
                "| Statistics written at exit (`--stats-json`) | `{}` |",
                stats.text
            );
        }
        None => {
            let _ = writeln!(r, "| Statistics written at exit (`--stats-json`) | none |");
        }
    }
    let rss = |w| window(&soak.samples, w, |s| s.rss_kib);
    let _ = writeln!(
        r,
        "| VmRSS peak, first half ({}–{} s) vs last half ({}–{} s) | {} vs {} |",
        first.0,
        first.1,
        last.0,
        last.1,
        rss(first).map_or("—".to_owned(), |k| format!("{:.1} MiB", mib(k))),
        rss(last).map_or("—".to_owned(), |k| format!("{:.1} MiB", mib(k)))
    );
    let fd = |w| window(&soak.samples, w, fds);
    let _ = writeln!(
        r,
        "| Open fds | {} at start; peak {} first half, {} last half |",
        soak.samples
            .first()
            .and_then(fds)
            .map_or("?".to_owned(), |n| n.to_string()),
        fd(first).map_or("—".to_owned(), |n| n.to_string()),
        fd(last).map_or("—".to_owned(), |n| n.to_string())
    );
    let _ = writeln!(
        r,
        "| BPF objects held | programs {:?}, maps {:?}, links {:?} |",
        soak.held.progs, soak.held.maps, soak.held.links
    );
    if !soak.warnings.is_empty() {
        let shown: Vec<String> = soak
            .warnings
            .iter()
            .take(5)
            .map(|w| format!("`{w}`"))
            .collect();
        let _ = writeln!(
            r,
            "| Tracer warnings | {}{} |",
            shown.join("; "),
            if soak.warnings.len() > 5 {
                format!(" and {} more", soak.warnings.len() - 5)
            } else {
                String::new()
            }
        );
    }

    r.push_str("\n| Check | Verdict | |\n|---|---|---|\n");
    for c in checks {
        let _ = writeln!(
            r,
            "| {} | {} | {} |",
            c.what,
            if c.pass { "pass" } else { "**FAIL**" },
            c.detail
        );
    }
    let all = checks.iter().all(|c| c.pass);
    let _ = writeln!(
        r,
        "| **Overall** | **{}** | |",
        if all { "pass" } else { "FAIL" }
    );

    r.push_str("\n<details><summary>Samples</summary>\n\n| t (s) | VmRSS (MiB) | fds | BPF programs / maps | connections | program runs |\n|---:|---:|---:|---:|---:|---:|\n");
    for s in &soak.samples {
        let _ = writeln!(
            r,
            "| {} | {} | {} | {} | {} | {} |",
            s.t,
            s.rss_kib
                .map_or("?".to_owned(), |k| format!("{:.1}", mib(k))),
            fds(s).map_or("?".to_owned(), |n| n.to_string()),
            s.held.as_ref().map_or("?".to_owned(), |h| format!(
                "{} / {}",
                h.progs.len(),
                h.maps.len()
            )),
            thousands(s.conns as f64),
            thousands(s.prog_runs as f64)
        );
    }
    r.push_str("\n</details>\n");
    r
}

/// Where `## Soak` starts and ends in `doc` (up to the next `## ` heading).
fn find_section(doc: &str) -> Option<(usize, usize)> {
    let start = if doc.starts_with(&format!("{HEADING}\n")) {
        0
    } else {
        doc.find(&format!("\n{HEADING}\n"))? + 1
    };
    let body = start + HEADING.len();
    let end = doc[body..]
        .find("\n## ")
        .map_or(doc.len(), |i| body + i + 1);
    Some((start, end))
}

/// `doc` with its `## Soak` section replaced by `section`, or `section`
/// appended when there is none.
pub fn splice(doc: &str, section: &str) -> String {
    match find_section(doc) {
        Some((start, end)) => {
            let rest = &doc[end..];
            let sep = if rest.is_empty() { "" } else { "\n" };
            format!("{}{section}{sep}{rest}", &doc[..start])
        }
        None => format!("{}\n\n{section}", doc.trim_end()),
    }
}

/// The `## Soak` section of `doc`, if it has one.
pub fn section_of(doc: &str) -> Option<&str> {
    find_section(doc).map(|(start, end)| &doc[start..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splices_the_section() {
        let doc = "# Benchmarks\n\n## Results\n\nx\n";
        let s1 = "## Soak\n\nfirst\n";
        let once = splice(doc, s1);
        assert_eq!(
            once,
            "# Benchmarks\n\n## Results\n\nx\n\n## Soak\n\nfirst\n"
        );
        let s2 = "## Soak\n\nsecond\n";
        let twice = splice(&once, s2);
        assert_eq!(
            twice,
            "# Benchmarks\n\n## Results\n\nx\n\n## Soak\n\nsecond\n"
        );
        assert_eq!(section_of(&twice), Some(s2));
        // A section followed by another heading keeps that heading.
        let mid = "# B\n\n## Soak\n\nold\n\n## Later\n\ny\n";
        assert_eq!(
            splice(mid, s2),
            "# B\n\n## Soak\n\nsecond\n\n## Later\n\ny\n"
        );
        assert_eq!(section_of("## Soaking\n"), None);
        assert_eq!(section_of(doc), None);
    }

    #[test]
    fn bpftool_json() {
        let json = r#"[{"id":12,"type":"tracepoint","name":"x","map_ids":[3,4],"pids":[{"pid":9,"comm":"t"}]},{"id":15,"type":"perf_event","prog_id":12}]"#;
        assert_eq!(parse_objects(json), vec![(12, None), (15, Some(12))]);
        assert_eq!(parse_objects("[]"), vec![]);
    }

    #[test]
    fn halves_after_warm_up() {
        assert_eq!(halves(600), ((30, 300), (301, 600)));
        assert_eq!(halves(30), ((7, 15), (16, 30)));
    }
}
