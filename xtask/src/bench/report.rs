//! BENCHMARKS.md: the machine, the method, the results, the scale figures,
//! the targets with how far each is, and the profile. Every number comes
//! from the run being reported.
use std::fmt::Write as _;
use std::time::Duration;

use super::profile::Profile;
use super::scale::{self, Figures};
use super::tracers::{Config, KernelCost};
use super::{activemq, netns, owners};

const MIB: f64 = 1024.0 * 1024.0;
/// The targets of issue 6.
pub const TARGET_KERNEL_NS: f64 = 150.0;
pub const TARGET_LOSS_QUIET: f64 = 0.03;
pub const TARGET_LOSS_WATCH_JSON: f64 = 0.10;
pub const TARGET_RSS_BASE_MIB: f64 = 64.0;
pub const TARGET_RSS_PER_SOCKET: f64 = 200.0;
pub const TARGET_ATTACH: Duration = Duration::from_millis(300);
/// Issue 17: kernel ns/event over the bpftrace counter's in the same run,
/// for hist, serve and leaks; for watch and watch --json.
pub const TARGET_KERNEL_VS_COUNTER: f64 = 1.0;
pub const TARGET_KERNEL_VS_COUNTER_WATCH: f64 = 1.5;
/// Issue 17: `watch --json`'s tracer CPU per event.
pub const TARGET_WATCH_JSON_USER_US: f64 = 0.3;
/// `leaks --once`'s wall time over `ss -tanp state close-wait`'s, for every shape (issue 17).
pub const TARGET_LEAKS_ONCE_VS_SS: f64 = 0.8;

pub struct Machine {
    pub cpus: usize,
    pub model: String,
    pub mem_kib: u64,
    pub kernel: String,
    pub date: String,
    pub commit: String,
    pub loadavg_start: String,
    pub loadavg_end: String,
    pub tools: Vec<(String, String)>,
    /// BPF programs named like a state-change tracer that were loaded by
    /// others when the bench started (tests running alongside).
    pub foreign_progs: usize,
}

/// What one run measured.
#[derive(Clone, Debug, Default)]
pub struct Measured {
    pub conns: f64,
    pub load_errors: Option<String>,
    pub kernel: Option<KernelCost>,
    pub cpu_us_per_event: Option<f64>,
    pub events_reported: Option<u64>,
    pub lost: Option<u64>,
    pub peak_rss_kib: Option<u64>,
    pub note: Option<String>,
    /// The machine's idle share of its CPU time during the load.
    pub idle: Option<f64>,
    /// The tracer's wake-ups per second during the load (its threads'
    /// voluntary context switches).
    pub wakeups_per_sec: Option<f64>,
}

pub struct RunRecord {
    pub round: u32,
    pub config: Config,
    pub outcome: Result<Measured, String>,
}

pub struct Bench {
    pub machine: Machine,
    /// `nginx + wrk` or `in-repo storm`.
    pub load_name: String,
    pub load: String,
    pub fallback: Option<String>,
    pub rounds: u32,
    pub secs: u64,
    pub quick: bool,
    pub stats_was: String,
    pub configs: Vec<Config>,
    pub unavailable: Vec<(Config, String)>,
    /// The commit the `Before*` configurations were built at.
    pub before: Option<String>,
    pub runs: Vec<RunRecord>,
    /// Each tcptrace mode once under the in-repo storm (when the main load was nginx).
    pub storm_check: Vec<(Config, Result<Measured, String>)>,
    pub scale: Option<Figures>,
    /// `leaks --once` over many network namespaces (issue 12).
    pub netns: Option<Result<netns::Scale, String>>,
    /// Owner truth on loopback, and with the ActiveMQ broker (issue 11).
    pub owners: Option<Result<owners::OwnerTruth, String>>,
    pub activemq: Option<Result<activemq::Broker, String>>,
    /// The floor programs, once each under the load.
    pub floors: Vec<(Config, Result<Measured, String>)>,
    /// Each tcptrace mode under perf.
    pub profiles: Vec<(Config, Result<Profile, String>)>,
    pub prog_names: Vec<(Config, String)>,
    pub elapsed: Duration,
}

/// One configuration over every round.
pub struct Summary {
    pub config: Config,
    pub unavailable: Option<String>,
    pub failures: Vec<String>,
    pub conns: Vec<f64>,
    pub ratios: Vec<f64>,
    pub kernel_ns: Vec<f64>,
    pub cpu_us: Vec<f64>,
    /// Each run: the tracer's kernel and process CPU time over the machine's
    /// CPU time during the load (a steadier cost than the throughput ratio).
    pub cpu_share: Vec<f64>,
    /// Each run: the machine's idle share during the load.
    pub idle: Vec<f64>,
    /// Each run: the tracer's wake-ups per second.
    pub wakeups: Vec<f64>,
    pub lost: Option<u64>,
    pub events: u64,
    pub rss_kib: Option<u64>,
    pub notes: Vec<String>,
}

impl Summary {
    pub fn ratio(&self) -> Option<f64> {
        median(&self.ratios)
    }

    /// Throughput lost to the tracer, as a fraction.
    pub fn loss(&self) -> Option<f64> {
        self.ratio().map(|r| 1.0 - r)
    }
}

pub fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

fn min_max(v: &[f64]) -> Option<(f64, f64)> {
    let min = v.iter().copied().reduce(f64::min)?;
    let max = v.iter().copied().reduce(f64::max)?;
    Some((min, max))
}

/// The untraced rates just before and after run `i`.
fn neighbours(runs: &[RunRecord], i: usize) -> Vec<f64> {
    let base = |i: usize| match (&runs[i].config, &runs[i].outcome) {
        (Config::Baseline, Ok(m)) => Some(m.conns),
        _ => None,
    };
    let prev = (0..i).rev().find_map(base);
    let next = (i + 1..runs.len()).find_map(base);
    prev.into_iter().chain(next).collect()
}

/// Each traced run over the mean of the untraced runs just before and after it.
pub fn run_ratios(runs: &[RunRecord]) -> Vec<Option<f64>> {
    (0..runs.len())
        .map(|i| {
            let Ok(m) = &runs[i].outcome else {
                return None;
            };
            if runs[i].config == Config::Baseline {
                return None;
            }
            let neighbours = neighbours(runs, i);
            let mean = neighbours.iter().sum::<f64>() / neighbours.len() as f64;
            (!neighbours.is_empty() && mean > 0.0).then(|| m.conns / mean)
        })
        .collect()
}

/// How far apart the untraced runs around a traced run may be before the
/// run is left out of its medians: past this, the host's own load moved
/// during it (a shared VM: untraced runs 12,084 and 8,486 conns/s either
/// side of one run were seen, where 10% apart is usual), and its ns/event
/// and ratio measure the host as much as the tracer.
pub const UNSTEADY_SPREAD: f64 = 0.20;

/// For each run: the spread of the untraced runs around it (the larger over
/// the smaller, less one) when it is over [`UNSTEADY_SPREAD`].
pub fn unsteady(runs: &[RunRecord]) -> Vec<Option<f64>> {
    (0..runs.len())
        .map(|i| {
            if runs[i].config == Config::Baseline {
                return None;
            }
            let &[a, b] = neighbours(runs, i).as_slice() else {
                return None;
            };
            let (lo, hi) = (a.min(b), a.max(b));
            let spread = (lo > 0.0).then(|| hi / lo - 1.0)?;
            (spread > UNSTEADY_SPREAD).then_some(spread)
        })
        .collect()
}

/// Runs kept in a configuration's medians: at least this many steady ones,
/// else all of them (noted), since a median of one says little either way.
const STEADY_RUNS_NEEDED: usize = 2;

pub fn summarize(bench: &Bench) -> Vec<Summary> {
    summarize_runs(
        &bench.configs,
        &bench.unavailable,
        &bench.runs,
        bench.secs,
        bench.machine.cpus,
    )
}

fn summarize_runs(
    configs: &[Config],
    unavailable: &[(Config, String)],
    runs: &[RunRecord],
    secs: u64,
    cpus: usize,
) -> Vec<Summary> {
    let ratios = run_ratios(runs);
    let unsteady = unsteady(runs);
    configs
        .iter()
        .map(|&config| {
            let mut s = Summary {
                config,
                unavailable: unavailable
                    .iter()
                    .find(|(c, _)| *c == config)
                    .map(|(_, why)| why.clone()),
                failures: Vec::new(),
                conns: Vec::new(),
                ratios: Vec::new(),
                kernel_ns: Vec::new(),
                cpu_us: Vec::new(),
                cpu_share: Vec::new(),
                idle: Vec::new(),
                wakeups: Vec::new(),
                lost: None,
                events: 0,
                rss_kib: None,
                notes: Vec::new(),
            };
            let steady = runs
                .iter()
                .zip(&unsteady)
                .filter(|(r, u)| r.config == config && r.outcome.is_ok() && u.is_none())
                .count();
            let leave_out = steady >= STEADY_RUNS_NEEDED;
            for ((run, ratio), shift) in runs.iter().zip(&ratios).zip(&unsteady) {
                if run.config != config {
                    continue;
                }
                match &run.outcome {
                    Err(e) => s.failures.push(format!("round {}: {e}", run.round)),
                    Ok(m) => {
                        // Lost and seen events, memory and notes count
                        // whatever the host did.
                        if let Some(k) = &m.kernel {
                            s.events += k.events;
                        }
                        if let Some(l) = m.lost {
                            s.lost = Some(s.lost.unwrap_or(0) + l);
                        }
                        s.rss_kib = s.rss_kib.max(m.peak_rss_kib);
                        if let Some(n) = &m.note
                            && !s.notes.contains(n)
                        {
                            s.notes.push(n.clone());
                        }
                        if let Some(e) = &m.load_errors {
                            s.notes.push(format!("round {}: load: {e}", run.round));
                        }
                        if let Some(spread) = shift {
                            s.notes.push(if leave_out {
                                format!(
                                    "round {}: left out of the medians: the untraced runs around it are {:.0}% apart (the host's load moved)",
                                    run.round,
                                    spread * 100.0
                                )
                            } else {
                                format!(
                                    "round {}: the untraced runs around it are {:.0}% apart (the host's load moved), kept: fewer than {STEADY_RUNS_NEEDED} steady runs",
                                    run.round,
                                    spread * 100.0
                                )
                            });
                            if leave_out {
                                continue;
                            }
                        }
                        s.conns.push(m.conns);
                        s.ratios.extend(*ratio);
                        s.cpu_us.extend(m.cpu_us_per_event);
                        s.idle.extend(m.idle);
                        s.wakeups.extend(m.wakeups_per_sec);
                        if let Some(k) = &m.kernel {
                            s.kernel_ns.push(k.ns_per_event);
                            let ns = k.events as f64
                                * (k.ns_per_event + m.cpu_us_per_event.unwrap_or(0.0) * 1e3);
                            let machine = secs as f64 * 1e9 * cpus.max(1) as f64;
                            s.cpu_share.push(ns / machine);
                        }
                    }
                }
            }
            s
        })
        .collect()
}

pub fn thousands(v: f64) -> String {
    let n = v.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

pub fn durations_ms(v: &[Duration]) -> Vec<f64> {
    v.iter().map(|d| d.as_secs_f64() * 1e3).collect()
}

pub fn med_range(v: &[f64], unit: &str, digits: usize) -> String {
    match (median(v), min_max(v)) {
        (Some(m), Some((lo, hi))) if v.len() > 1 => {
            format!("{m:.digits$} {unit} ({lo:.digits$}–{hi:.digits$})")
        }
        (Some(m), _) => format!("{m:.digits$} {unit}"),
        _ => "—".to_owned(),
    }
}

/// The results table, as printed at the end of the run and in the report.
pub fn results_table(summaries: &[Summary]) -> String {
    let mut t = String::new();
    t.push_str("| Configuration | conns/s median (min–max) | vs untraced | kernel ns/event | tracer CPU µs/event | machine CPU taken | lost / events | peak RSS |\n");
    t.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for s in summaries {
        if let Some(why) = &s.unavailable {
            let _ = writeln!(t, "| {} | {why} | | | | | | |", s.config.label());
            continue;
        }
        if s.conns.is_empty() {
            let _ = writeln!(
                t,
                "| {} | failed: {} | | | | | | |",
                s.config.label(),
                s.failures.first().map_or("no run", String::as_str)
            );
            continue;
        }
        let conns = match (median(&s.conns), min_max(&s.conns)) {
            (Some(m), Some((lo, hi))) => {
                format!("{} ({}–{})", thousands(m), thousands(lo), thousands(hi))
            }
            _ => "—".to_owned(),
        };
        let ratio = match s.config {
            Config::Baseline => "1.00".to_owned(),
            _ => s.ratio().map_or("—".to_owned(), |r| {
                format!("{r:.3} ({:+.1}%)", (r - 1.0) * 100.0)
            }),
        };
        let kernel = median(&s.kernel_ns).map_or("—".to_owned(), thousands);
        let cpu = median(&s.cpu_us).map_or("—".to_owned(), |c| format!("{c:.2}"));
        let share = median(&s.cpu_share).map_or("—".to_owned(), |c| format!("{:.1}%", c * 100.0));
        let lost = match (s.config, s.lost) {
            (Config::Baseline, _) => "—".to_owned(),
            (Config::Bpftrace, None) => format!("n/a (map) / {}", thousands(s.events as f64)),
            (_, Some(l)) => format!("{} / {}", thousands(l as f64), thousands(s.events as f64)),
            (_, None) => format!("? / {}", thousands(s.events as f64)),
        };
        let rss = s.rss_kib.map_or("—".to_owned(), mib);
        let _ = writeln!(
            t,
            "| {} | {conns} | {ratio} | {kernel} | {cpu} | {share} | {lost} | {rss} |",
            s.config.label()
        );
    }
    t
}

/// One row of the targets table.
pub struct Target {
    pub what: String,
    pub measured: String,
    pub met: Option<bool>,
    pub gap: String,
}

/// The summary of `config` if it ran at least once.
pub fn ran(summaries: &[Summary], config: Config) -> Option<&Summary> {
    summaries
        .iter()
        .find(|s| s.config == config && !s.conns.is_empty())
}

/// Kernel ns/event of the floor program `config`, if it was measured.
fn floor_ns(bench: &Bench, config: Config) -> Option<f64> {
    bench
        .floors
        .iter()
        .find(|(f, _)| *f == config)
        .and_then(|(_, o)| kernel_ns(o))
}

pub fn targets(bench: &Bench, summaries: &[Summary]) -> Vec<Target> {
    let mut out = Vec::new();
    let ran = |c: Config| ran(summaries, c);
    // Kernel cost: every tcptrace mode (watch, leaks and serve share one
    // program; hist aggregates in the kernel).
    // With --stacks the syscall exits' programs add theirs: that cost is
    // the Stacks section's, not the state change's.
    let per_mode: Vec<(Config, f64)> = summaries
        .iter()
        .filter(|s| {
            s.config.is_tcptrace() && !matches!(s.config, Config::LeaksStacks | Config::WatchStacks)
        })
        .filter_map(|s| median(&s.kernel_ns).map(|k| (s.config, k)))
        .collect();
    let kernel_what =
        format!("state-change program ≤ {TARGET_KERNEL_NS:.0} ns/event in the kernel");
    match per_mode.iter().map(|m| m.1).reduce(f64::max) {
        Some(worst) => out.push(Target {
            what: kernel_what,
            measured: per_mode
                .iter()
                .map(|(c, ns)| format!("{}: {} ns", c.key(), thousands(*ns)))
                .collect::<Vec<_>>()
                .join("; "),
            met: Some(worst <= TARGET_KERNEL_NS),
            gap: if worst <= TARGET_KERNEL_NS {
                format!("{} ns to spare", thousands(TARGET_KERNEL_NS - worst))
            } else {
                let floor = |c: Config| floor_ns(bench, c);
                let mut gap = format!(
                    "worst {:.1}× the target (+{} ns)",
                    worst / TARGET_KERNEL_NS,
                    thousands(worst - TARGET_KERNEL_NS)
                );
                if let (Some(empty), Some(clock)) =
                    (floor(Config::FloorEmpty), floor(Config::FloorClock))
                {
                    let _ = write!(
                        gap,
                        "; here an empty program costs {} ns and one that only reads the clock {} ns (Floor, Profiles)",
                        thousands(empty),
                        thousands(clock)
                    );
                }
                gap
            },
        }),
        None if !bench.runs.is_empty() => out.push(not_measured(kernel_what)),
        None => {}
    }
    for (config, limit) in [
        (Config::Leaks, TARGET_LOSS_QUIET),
        (Config::Hist, TARGET_LOSS_QUIET),
        (Config::Serve, TARGET_LOSS_QUIET),
        (Config::WatchJson, TARGET_LOSS_WATCH_JSON),
    ] {
        let what = format!(
            "`{}` costs ≤ {:.0}% of the throughput",
            config.key().replace('-', " --"),
            limit * 100.0
        );
        if !bench.configs.contains(&config) {
            continue;
        }
        let Some(s) = ran(config) else {
            let why = summaries
                .iter()
                .find(|s| s.config == config)
                .and_then(|s| {
                    s.unavailable
                        .clone()
                        .or_else(|| s.failures.first().cloned())
                })
                .unwrap_or_else(|| "did not run".to_owned());
            out.push(Target {
                what,
                measured: why,
                met: None,
                gap: "not measured".to_owned(),
            });
            continue;
        };
        out.push(match s.loss() {
            Some(loss) => Target {
                what,
                measured: format!(
                    "{:.1}% lost; the tracer took {} of the machine's CPU",
                    loss * 100.0,
                    median(&s.cpu_share).map_or("?".to_owned(), |c| format!("{:.1}%", c * 100.0))
                ),
                met: Some(loss <= limit),
                gap: if loss <= limit {
                    format!("{:.1} points to spare", (limit - loss) * 100.0)
                } else {
                    let mut gap = format!("{:.1} points over", (loss - limit) * 100.0);
                    // The issue's "cost of counting", measured here in the same run.
                    if let Some(counting) = ran(Config::Bpftrace).and_then(Summary::loss) {
                        let _ = write!(
                            gap,
                            "; the bpftrace counter loses {:.1}% here",
                            counting * 100.0
                        );
                    }
                    gap.push_str(" (Profiles)");
                    gap
                },
            },
            None => not_measured(what),
        });
    }
    let modes: Vec<&Summary> = summaries
        .iter()
        .filter(|s| s.config.is_tcptrace() && !s.conns.is_empty())
        .collect();
    let main_load: Vec<(Config, Option<u64>, u64)> =
        modes.iter().map(|s| (s.config, s.lost, s.events)).collect();
    if !main_load.is_empty() {
        out.push(lost_target(
            &format!(
                "no event lost in any mode at full rate ({})",
                bench.load_name
            ),
            &main_load,
        ));
    }
    let storm: Vec<(Config, Option<u64>, u64)> = bench
        .storm_check
        .iter()
        .filter_map(|(c, m)| {
            let m = m.as_ref().ok()?;
            Some((*c, m.lost, m.kernel.as_ref().map_or(0, |k| k.events)))
        })
        .collect();
    if !storm.is_empty() {
        out.push(lost_target(
            "no event lost in any mode at full rate (in-repo storm)",
            &storm,
        ));
    }
    let rss_what = format!(
        "RSS ≤ {TARGET_RSS_BASE_MIB:.0} MiB + {TARGET_RSS_PER_SOCKET:.0} B per tracked socket"
    );
    if let Some(peak) = modes.iter().filter_map(|s| s.rss_kib).max() {
        let limit = TARGET_RSS_BASE_MIB * MIB;
        let got = peak as f64 * 1024.0;
        out.push(Target {
            what: format!("{rss_what}: under load (few sockets tracked at once)"),
            measured: format!("{} (largest of the modes)", mib(peak)),
            met: Some(got <= limit),
            gap: rss_gap(got, limit),
        });
    }
    if let Some(Figures { tracked: Ok(t), .. }) = &bench.scale {
        let limit = TARGET_RSS_BASE_MIB * MIB + TARGET_RSS_PER_SOCKET * t.sockets as f64;
        let worst = t.hwm_kib.max(t.seeded_hwm_kib.unwrap_or(0));
        let got = worst as f64 * 1024.0;
        out.push(Target {
            what: format!(
                "{rss_what}: {} sockets (budget {})",
                thousands(t.sockets as f64),
                mib((limit / 1024.0) as u64)
            ),
            measured: format!(
                "{} peak tracking them as they open ({:.0} B per socket over idle); {} peak when found at start",
                mib(t.hwm_kib),
                t.bytes_per_socket(),
                t.seeded_hwm_kib.map_or("—".to_owned(), mib)
            ),
            met: Some(got <= limit),
            gap: rss_gap(got, limit),
        });
    }
    if let Some(f) = &bench.scale {
        for l in [&f.leaks_once, &f.leaks_spread].into_iter().flatten() {
            let (lk, ss) = (
                median(&durations_ms(&l.leaks)).unwrap_or(f64::NAN),
                median(&durations_ms(&l.ss)).unwrap_or(f64::NAN),
            );
            let ratio = lk / ss;
            out.push(Target {
                what: format!(
                    "`leaks --once` ≤ {TARGET_LEAKS_ONCE_VS_SS}× the time of `ss -tanp state close-wait` ({} CLOSE_WAIT in {})",
                    thousands(l.sockets as f64),
                    holders(l)
                ),
                measured: format!("{lk:.0} ms vs {ss:.0} ms (medians): {ratio:.2}×"),
                met: Some(ratio <= TARGET_LEAKS_ONCE_VS_SS),
                gap: if ratio <= TARGET_LEAKS_ONCE_VS_SS {
                    format!("{:.0} ms to spare", ss * TARGET_LEAKS_ONCE_VS_SS - lk)
                } else {
                    format!("+{:.0} ms", lk - ss * TARGET_LEAKS_ONCE_VS_SS)
                },
            });
        }
    }
    if let Some(Figures { attach: Ok(a), .. }) = &bench.scale {
        let v = durations_ms(a);
        let med = median(&v).unwrap_or(f64::NAN);
        let limit = TARGET_ATTACH.as_secs_f64() * 1e3;
        out.push(Target {
            what: format!("attached ≤ {limit:.0} ms after start"),
            measured: format!(
                "{med:.0} ms median, {:.0} ms worst",
                min_max(&v).map_or(f64::NAN, |m| m.1)
            ),
            met: Some(med <= limit),
            gap: if med <= limit {
                format!("{:.0} ms to spare", limit - med)
            } else {
                format!("+{:.0} ms", med - limit)
            },
        });
    }
    figure_targets(bench, &mut out);
    counter_targets(bench, summaries, &mut out);
    out
}

/// Issue 17's targets: each mode as a ratio to the bpftrace counter in the
/// same run (absolute nanoseconds differ between hosts; ratios do). Where
/// a mode misses, the gap names its floor program's ratio: what the mode
/// cannot avoid, measured in the same run.
fn counter_targets(bench: &Bench, summaries: &[Summary], out: &mut Vec<Target>) {
    let ran = |c: Config| ran(summaries, c);
    let Some(counter) = ran(Config::Bpftrace) else {
        return;
    };
    let floor = |c: Config| floor_ns(bench, c);
    let (Some(counter_ns), Some(counter_ratio)) = (median(&counter.kernel_ns), counter.ratio())
    else {
        return;
    };
    for (config, limit, floor_config) in [
        (Config::Hist, TARGET_KERNEL_VS_COUNTER, Config::FloorEntry),
        (Config::Serve, TARGET_KERNEL_VS_COUNTER, Config::FloorServe),
        (
            Config::Leaks,
            TARGET_KERNEL_VS_COUNTER,
            Config::FloorCloseWait,
        ),
        (
            Config::Watch,
            TARGET_KERNEL_VS_COUNTER_WATCH,
            Config::FloorStream,
        ),
        (
            Config::WatchJson,
            TARGET_KERNEL_VS_COUNTER_WATCH,
            Config::FloorStream,
        ),
    ] {
        let Some(ns) = ran(config).and_then(|s| median(&s.kernel_ns)) else {
            continue;
        };
        let x = ns / counter_ns;
        out.push(Target {
            what: format!(
                "`{}` kernel ns/event ≤ {limit:.1}× the bpftrace counter's",
                config.key().replace('-', " --")
            ),
            measured: format!(
                "{} ns vs {} ns: {x:.2}×",
                thousands(ns),
                thousands(counter_ns)
            ),
            met: Some(x <= limit),
            gap: if x <= limit {
                format!("{:.2}× to spare", limit - x)
            } else {
                let mut gap = format!("+{:.2}×", x - limit);
                if let Some(f) = floor(floor_config) {
                    // watch holds the accept exits' program too, and its
                    // ns/event counts that program's time: so does its floor.
                    let accept = matches!(config, Config::Watch | Config::WatchJson)
                        .then(|| Some(floor(Config::FloorAcceptWalk)? - floor(Config::FloorEmpty)?))
                        .flatten()
                        .filter(|a| *a > 0.0);
                    gap += &floor_gap(
                        ns,
                        counter_ns,
                        limit,
                        floor_config,
                        f + accept.unwrap_or(0.0),
                    );
                    if let Some(a) = accept {
                        gap += &format!(
                            " (`{}` plus the accept exit's walk, {} ns: `{}` over `{}`)",
                            floor_config.key(),
                            thousands(a),
                            Config::FloorAcceptWalk.key(),
                            Config::FloorEmpty.key()
                        );
                    }
                }
                gap
            },
        });
    }
    if let Some(us) = ran(Config::WatchJson).and_then(|s| median(&s.cpu_us)) {
        out.push(Target {
            what: format!("`watch --json` ≤ {TARGET_WATCH_JSON_USER_US} µs/event of tracer CPU"),
            measured: format!("{us:.2} µs/event"),
            met: Some(us <= TARGET_WATCH_JSON_USER_US),
            gap: if us <= TARGET_WATCH_JSON_USER_US {
                format!("{:.2} µs to spare", TARGET_WATCH_JSON_USER_US - us)
            } else {
                format!("+{:.2} µs", us - TARGET_WATCH_JSON_USER_US)
            },
        });
    }
    for (config, points) in [
        (Config::Hist, 3.0),
        (Config::Serve, 3.0),
        (Config::Leaks, 3.0),
        (Config::WatchJson, 6.0),
    ] {
        let Some(r) = ran(config).and_then(Summary::ratio) else {
            continue;
        };
        let behind = (counter_ratio - r) * 100.0;
        out.push(Target {
            what: format!(
                "`{}` throughput within {points:.0} points of the counter's",
                config.key().replace('-', " --")
            ),
            measured: format!("{r:.3} vs {counter_ratio:.3} of untraced"),
            met: Some(behind <= points),
            gap: if behind <= points {
                format!("{:.1} points to spare", points - behind)
            } else {
                format!("{:.1} points over", behind - points)
            },
        });
    }
}

/// What a mode's floor says of a kernel target it misses: whether the
/// floor program alone already misses it (the hardware cannot meet it),
/// and how far above its floor the mode is.
fn floor_gap(ns: f64, counter_ns: f64, limit: f64, floor: Config, floor_ns: f64) -> String {
    let reach = if floor_ns / counter_ns > limit {
        "out of reach here"
    } else {
        "within reach"
    };
    format!(
        "; its floor (`{}`) costs {} ns here, {:.2}× the counter, so the target is {reach}; the mode costs {:.2}× its floor",
        floor.key(),
        thousands(floor_ns),
        floor_ns / counter_ns,
        ns / floor_ns
    )
}

/// Modes with (lost, events): met when every mode reports 0 lost.
fn lost_target(what: &str, modes: &[(Config, Option<u64>, u64)]) -> Target {
    let lossy: Vec<String> = modes
        .iter()
        .filter(|m| m.1 != Some(0))
        .map(|(c, lost, events)| match lost {
            Some(l) => format!(
                "{}: {} of {}",
                c.key(),
                thousands(*l as f64),
                thousands(*events as f64)
            ),
            None => format!("{}: not reported", c.key()),
        })
        .collect();
    let total: u64 = modes.iter().filter_map(|m| m.1).sum();
    Target {
        what: what.to_owned(),
        measured: if lossy.is_empty() {
            format!("0 lost in {} modes", modes.len())
        } else {
            lossy.join("; ")
        },
        met: Some(lossy.is_empty()),
        gap: if lossy.is_empty() {
            "—".to_owned()
        } else {
            format!("{} events lost", thousands(total as f64))
        },
    }
}

fn not_measured(what: String) -> Target {
    Target {
        what,
        measured: "not measured".to_owned(),
        met: None,
        gap: "—".to_owned(),
    }
}

fn rss_gap(got: f64, limit: f64) -> String {
    if got <= limit {
        format!("{:.1} MiB to spare", (limit - got) / MIB)
    } else {
        format!("+{:.1} MiB over", (got - limit) / MIB)
    }
}

pub fn targets_table(targets: &[Target]) -> String {
    let mut t = String::from("| Target | Measured | Met | Gap |\n|---|---|---|---|\n");
    for x in targets {
        let met = match x.met {
            Some(true) => "met",
            Some(false) => "**not met**",
            None => "not measured",
        };
        let _ = writeln!(t, "| {} | {} | {met} | {} |", x.what, x.measured, x.gap);
    }
    t
}

pub fn scale_table(f: &Figures) -> String {
    let mut t = String::from("| Figure | Value |\n|---|---|\n");
    match &f.tracked {
        Ok(x) => {
            let _ = writeln!(
                t,
                "| `tcptrace watch` RSS, attached and idle | {} |",
                mib(x.rss_idle_kib)
            );
            let _ = writeln!(
                t,
                "| … with {} sockets opened after it attached ({} loopback connections, opened in {:.1} s) | {} RSS, {} peak: {:.0} B per socket |",
                thousands(x.sockets as f64),
                thousands((x.sockets / 2) as f64),
                x.open_secs,
                mib(x.rss_kib),
                mib(x.hwm_kib),
                x.bytes_per_socket()
            );
            let _ = writeln!(
                t,
                "| … its summary | {} events, {} lost, {} evicted |",
                x.events.map_or("?".to_owned(), |v| thousands(v as f64)),
                x.lost.map_or("?".to_owned(), |v| thousands(v as f64)),
                x.evicted.map_or("?".to_owned(), |v| thousands(v as f64)),
            );
            let _ = writeln!(
                t,
                "| A second `tcptrace watch` started with them open (seeded from sock_diag) | attached in {}, peak RSS {} |",
                x.seeded_attach.map_or("—".to_owned(), ms),
                x.seeded_hwm_kib.map_or("—".to_owned(), mib)
            );
        }
        Err(e) => {
            let _ = writeln!(
                t,
                "| RSS with {} tracked sockets | failed: {e:#} |",
                thousands(scale::TRACKED_SOCKETS as f64)
            );
        }
    }
    for once in [&f.leaks_once, &f.leaks_spread] {
        match once {
            Ok(l) => {
                let _ = writeln!(
                    t,
                    "| `tcptrace leaks --once` over {} CLOSE_WAIT sockets in {} ({} runs) | {} |",
                    thousands(l.sockets as f64),
                    holders(l),
                    l.leaks.len(),
                    med_range(&durations_ms(&l.leaks), "ms", 0)
                );
                let _ = writeln!(
                    t,
                    "| `ss -tanp state close-wait` on the same sockets ({} runs) | {} |",
                    l.ss.len(),
                    med_range(&durations_ms(&l.ss), "ms", 0)
                );
                let _ = writeln!(
                    t,
                    "| Sockets listed: `ss` (whole machine) / `leaks --once --json` (the bench's); processes named with all theirs | {} / {}; {} of {} |",
                    thousands(l.ss_listed as f64),
                    l.leaks_found
                        .map_or("?".to_owned(), |v| thousands(v as f64)),
                    l.processes_found
                        .map_or("?".to_owned(), |v| thousands(v as f64)),
                    thousands(l.processes as f64)
                );
            }
            Err(e) => {
                let _ = writeln!(t, "| `leaks --once` vs `ss` | failed: {e:#} |");
            }
        }
    }
    match &f.attach {
        Ok(a) => {
            let _ = writeln!(
                t,
                "| `tcptrace watch`: start to \"attached\" on stderr ({} runs) | {} |",
                a.len(),
                med_range(&durations_ms(a), "ms", 0)
            );
        }
        Err(e) => {
            let _ = writeln!(t, "| start to attached | failed: {e:#} |");
        }
    }
    t
}

/// "one process" or "N processes of M each".
fn holders(l: &scale::LeaksOnce) -> String {
    if l.processes == 1 {
        "one process".to_owned()
    } else {
        format!(
            "{} processes of {} each",
            thousands(l.processes as f64),
            l.sockets / l.processes
        )
    }
}

pub fn render(bench: &Bench) -> String {
    let summaries = summarize(bench);
    let mut targets = targets(bench, &summaries);
    let m = &bench.machine;
    let mut r = String::new();
    r.push_str("# Benchmarks\n\n");
    let _ = writeln!(
        r,
        "Written by `cargo xtask bench{}` ({:.1} min); rerun it rather than editing this file.\n",
        if bench.quick { " --quick" } else { "" },
        bench.elapsed.as_secs_f64() / 60.0
    );
    if bench.quick {
        r.push_str(
            "**Quick smoke run** (`--quick`: one round of 2 s): checks that the bench works, not for quoting.\n\n",
        );
    }
    r.push_str("## Machine\n\n| | |\n|---|---|\n");
    let _ = writeln!(r, "| CPUs | {} × {} |", m.cpus, m.model);
    let _ = writeln!(r, "| Memory | {:.1} GiB |", m.mem_kib as f64 / MIB);
    let _ = writeln!(r, "| Kernel | {} |", m.kernel);
    let _ = writeln!(r, "| Date | {} |", m.date);
    let _ = writeln!(r, "| Commit | {} |", m.commit);
    let _ = writeln!(
        r,
        "| Load average (1, 5, 15 min) | {} at start, {} at end |",
        m.loadavg_start, m.loadavg_end
    );
    if m.foreign_progs > 0 {
        let _ = writeln!(
            r,
            "| Other state-change BPF programs loaded at start | {} (other tools or tests were running: figures are noisier) |",
            m.foreign_progs
        );
    }
    for (tool, version) in &m.tools {
        let _ = writeln!(r, "| {tool} | {version} |");
    }
    if !bench.runs.is_empty() {
        method_and_results(&mut r, bench, &summaries);
    }
    if let Some(f) = &bench.scale {
        r.push_str("\n## Scale\n\n");
        r.push_str(&scale_table(f));
    }
    netns_section(&mut r, bench);
    owners_section(&mut r, bench);
    let before = before_section(&mut r, bench.before.as_deref(), &summaries);
    r.push_str("\n## Targets\n\n");
    targets.extend(before);
    r.push_str(&targets_table(&targets));
    if bench.runs.is_empty() {
        return r;
    }
    if let Some(floor) = summaries
        .iter()
        .find(|s| s.config == Config::Bpftrace)
        .and_then(|s| median(&s.kernel_ns))
    {
        let _ = writeln!(
            r,
            "\nCalibration: the bpftrace one-liner that only counts transitions in a map costs {} ns/event on this machine (with stats enabled); the {TARGET_KERNEL_NS:.0} ns target was set where it costs about 83 ns. The floor and the profiles below say where each mode's cost goes.",
            thousands(floor)
        );
    }
    super::stacks::section(&mut r, bench, &summaries);
    floor_section(&mut r, bench, &summaries);
    profiles_section(&mut r, bench, &summaries);
    if let Some(f) = &bench.scale {
        for l in [&f.leaks_once, &f.leaks_spread].into_iter().flatten() {
            match &l.profile {
                Ok(p) => {
                    let _ = writeln!(
                        r,
                        "\n`perf record -g` of one `tcptrace leaks --once` over {} CLOSE_WAIT sockets in {}, with children:\n\n```\n{p}```",
                        thousands(l.sockets as f64),
                        holders(l)
                    );
                }
                Err(e) => {
                    let _ = writeln!(r, "\nNo profile of `leaks --once` ({}): {e}", holders(l));
                }
            }
        }
    }
    every_run(&mut r, bench);
    r
}

/// How much worse than before a mode's median may be and still be "not
/// slower" (the bench's figures move by about that between runs), and
/// the rule that every run of one build be worse than every run of the
/// other: on this VM the untraced throughput alone spreads by a third.
const BEFORE_COST_SLACK: f64 = 1.10;
const BEFORE_RATIO_SLACK: f64 = 0.02;

/// Each run's cost per event: its kernel program's and its process's.
fn costs(s: &Summary) -> Vec<f64> {
    if s.cpu_us.len() == s.kernel_ns.len() {
        s.kernel_ns
            .iter()
            .zip(&s.cpu_us)
            .map(|(k, c)| k + c * 1e3)
            .collect()
    } else {
        s.kernel_ns.clone()
    }
}

/// By how much `now` is above `before` (median), if it is beyond `slack`
/// (a factor, and an absolute amount) and every run of `now` is above
/// every run of `before`.
fn rose(now: &[f64], before: &[f64], slack: f64, slack_abs: f64) -> Option<f64> {
    let (n, b) = (median(now)?, median(before)?);
    let ((n_min, _), (_, b_max)) = (min_max(now)?, min_max(before)?);
    (n > b * slack + slack_abs && n_min > b_max).then_some(n - b)
}

/// `## Before the redesign`: each mode next to its build from `--before`,
/// in the same rounds; returns its target. A mode is slower when it costs
/// the machine more per event (its kernel program and its process
/// together) or takes more of the workload's throughput; a part that rose
/// while the whole did not is named beside the verdict, not hidden.
fn before_section(r: &mut String, commit: Option<&str>, summaries: &[Summary]) -> Option<Target> {
    let commit = commit?;
    let _ = writeln!(
        r,
        "\n## Before the redesign\n\nEach mode as built at {commit} (`--before`), run in the same rounds as today's build, between the same untraced runs. A mode is slower when its median cost per event (kernel program and tracer process together) is over {:.0}% above before, or its median throughput ratio more than {:.0} points below, and every one of its runs is worse than every run from before (the figures spread that much between runs here). A part (kernel or tracer CPU) that rose that way while the whole did not is named beside the verdict. Machine idle: the machine's idle share of its CPU time during the load (/proc/stat); tracer wake-ups: its threads' voluntary context switches per second. Where throughput fell at no higher cost per event with the machine at least {:.0} points more idle, the verdict says so: on a VM an idle vCPU halts and waking it takes a VM exit, so a tracer that wakes more often keeps the vCPUs awake and the load's own wake-ups quick.\n",
        (BEFORE_COST_SLACK - 1.0) * 100.0,
        BEFORE_RATIO_SLACK * 100.0,
        WAITED_IDLE_POINTS * 100.0
    );
    r.push_str("| mode | kernel ns/event: now / before | tracer CPU µs/event: now / before | cost ns/event: now / before | vs untraced: now / before | machine idle: now / before | tracer wake-ups/s: now / before | |\n|---|---:|---:|---:|---:|---:|---:|---|\n");
    let mut slower = Vec::new();
    let mut parts_rose = Vec::new();
    let mut compared = 0;
    for (now, before) in super::tracers::BEFORE {
        let (Some(n), Some(b)) = (ran(summaries, now), ran(summaries, before)) else {
            let _ = writeln!(r, "| `{}` | not measured | | | | |", now.key());
            continue;
        };
        compared += 1;
        let pair = |n: &[f64], b: &[f64], f: &dyn Fn(f64) -> String| match (median(n), median(b)) {
            (Some(n), Some(b)) => format!("{} / {}", f(n), f(b)),
            _ => "—".to_owned(),
        };
        let (cost_n, cost_b) = (costs(n), costs(b));
        let mut worse = Vec::new();
        if let Some(more) = rose(&cost_n, &cost_b, BEFORE_COST_SLACK, 0.0) {
            let b = median(&cost_b).unwrap_or(1.0);
            worse.push(format!(
                "cost +{} ns (+{:.0}%)",
                thousands(more),
                more / b * 100.0
            ));
        }
        // Throughput falls: the same test on the negated ratios.
        let neg = |v: &[f64]| v.iter().map(|r| -r).collect::<Vec<_>>();
        if let Some(fall) = rose(&neg(&n.ratios), &neg(&b.ratios), 1.0, BEFORE_RATIO_SLACK) {
            let mut fell = format!("throughput -{:.1} points", fall * 100.0);
            if worse.is_empty()
                && let Some(why) = waited(n, b)
            {
                let _ = write!(fell, " ({why})");
            }
            worse.push(fell);
        }
        let mut parts = Vec::new();
        if let Some(more) = rose(&n.kernel_ns, &b.kernel_ns, BEFORE_COST_SLACK, 0.0) {
            let b = median(&b.kernel_ns).unwrap_or(1.0);
            parts.push(format!(
                "kernel part +{} ns (+{:.0}%)",
                thousands(more),
                more / b * 100.0
            ));
        }
        if let Some(more) = rose(&n.cpu_us, &b.cpu_us, BEFORE_COST_SLACK, 0.005) {
            parts.push(format!("tracer CPU +{more:.2} µs"));
        }
        if !parts.is_empty() {
            parts_rose.push(format!("`{}`: {}", now.key(), parts.join(", ")));
        }
        let verdict = match (worse.is_empty(), parts.is_empty()) {
            (true, true) => "not slower".to_owned(),
            (true, false) => format!("not slower; {}", parts.join(", ")),
            (false, _) => {
                slower.push(format!("`{}`: {}", now.key(), worse.join(", ")));
                format!("**slower**: {}", worse.join(", "))
            }
        };
        let _ = writeln!(
            r,
            "| `{}` | {} | {} | {} | {} | {} | {} | {verdict} |",
            now.key(),
            pair(&n.kernel_ns, &b.kernel_ns, &|v| thousands(v)),
            pair(&n.cpu_us, &b.cpu_us, &|v| format!("{v:.2}")),
            pair(&cost_n, &cost_b, &|v| thousands(v)),
            pair(&n.ratios, &b.ratios, &|v| format!("{v:.3}")),
            pair(&n.idle, &b.idle, &|v| format!("{:.1}%", v * 100.0)),
            pair(&n.wakeups, &b.wakeups, &|v| thousands(v)),
        );
    }
    let what = format!("no mode slower than before the redesign ({commit}), same run");
    Some(if compared == 0 {
        not_measured(what)
    } else {
        let mut gap = if slower.is_empty() {
            "none slower".to_owned()
        } else {
            slower.join("; ")
        };
        if !parts_rose.is_empty() {
            let _ = write!(gap, " (parts that rose: {})", parts_rose.join("; "));
        }
        Target {
            what,
            measured: format!("{compared} modes compared"),
            met: Some(slower.is_empty() && compared == super::tracers::BEFORE.len()),
            gap,
        }
    })
}

/// How much more idle the machine must be, in medians, for a fall in
/// throughput at no higher cost to be the load waiting.
const WAITED_IDLE_POINTS: f64 = 0.02;

/// Why a mode's throughput fell while its cost per event did not rise, if
/// the machine was the more idle for it: the load waited rather than ran
/// short of CPU. On a VM an idle vCPU halts, and waking it takes a VM exit,
/// so a tracer that wakes more often (at a higher cost) keeps the vCPUs
/// awake and the load's wake-ups quick; a cheaper one leaves them to halt.
fn waited(now: &Summary, before: &Summary) -> Option<String> {
    let (idle_n, idle_b) = (median(&now.idle)?, median(&before.idle)?);
    if idle_n < idle_b + WAITED_IDLE_POINTS {
        return None;
    }
    let mut why = format!(
        "the machine {:.1} points more idle at no higher cost per event: the load waited, it was not short of CPU",
        (idle_n - idle_b) * 100.0
    );
    if let (Some(w_n), Some(w_b)) = (median(&now.wakeups), median(&before.wakeups)) {
        let _ = write!(
            why,
            "; the tracer woke {}/s against {}/s",
            thousands(w_n),
            thousands(w_b)
        );
    }
    Some(why)
}

/// `## Network namespaces`: `leaks --once` over many namespaces, next to `ss` in each.
fn netns_section(r: &mut String, bench: &Bench) {
    let Some(n) = &bench.netns else {
        return;
    };
    r.push_str("\n## Network namespaces\n\n");
    match n {
        Ok(s) => netns::render(
            r,
            s,
            &format!("{} × {}", bench.machine.cpus, bench.machine.model),
        ),
        Err(e) => {
            let _ = writeln!(r, "Failed: {e}");
        }
    }
}

/// `## Owner truth`: whom `watch` names, against whom holds each socket.
fn owners_section(r: &mut String, bench: &Bench) {
    if bench.owners.is_none() && bench.activemq.is_none() {
        return;
    }
    r.push_str("\n## Owner truth\n\nWhether `tcptrace watch --json` names the process holding each socket (issue 11), where the task on the CPU is often the peer: both ends local, clients closing on EOF at once. The target: every transition right or explicitly unknown (`pid: null`), none wrong.\n");
    if let Some(o) = &bench.owners {
        r.push_str("\n### Loopback: a server process and a client process\n\n");
        match o {
            Ok(o) => owners::render(r, o),
            Err(e) => {
                let _ = writeln!(r, "Failed: {e}");
            }
        }
    }
    if let Some(b) = &bench.activemq {
        r.push_str("\n### Debian's ActiveMQ broker and its client library\n\n");
        match b {
            Ok(b) => activemq::render(r, b),
            Err(e) => {
                let _ = writeln!(r, "Failed: {e}");
            }
        }
    }
}

/// The owner-truth target for one set of transitions.
fn owner_target(what: String, t: &owners::Tally) -> Target {
    let total = t.total();
    let share = |n: u64| n as f64 * 100.0 / total.max(1) as f64;
    Target {
        what,
        measured: format!(
            "{} transitions: {:.1}% right, {:.1}% unknown, {} wrong",
            thousands(total as f64),
            share(t.right()),
            share(t.unknown),
            thousands(t.wrong() as f64)
        ),
        met: Some(total > 0 && t.wrong() == 0),
        gap: if t.wrong() == 0 {
            "—".to_owned()
        } else {
            format!(
                "{} named the peer, {} another process",
                thousands(t.peer as f64),
                thousands(t.other as f64)
            )
        },
    }
}

fn failed_target(what: String, e: &str) -> Target {
    Target {
        what,
        measured: format!("failed: {e}"),
        met: None,
        gap: "not measured".to_owned(),
    }
}

/// The targets of the figures beside the rounds: namespaces and owner truth.
fn figure_targets(bench: &Bench, out: &mut Vec<Target>) {
    match &bench.netns {
        Some(Ok(s)) => {
            let total = (s.namespaces * s.per) as u64;
            let ss = netns::median_ms(&s.ss).unwrap_or(f64::NAN);
            for (how, times, found) in [
                ("as root", &s.root, &s.root_found),
                ("without CAP_SYS_ADMIN", &s.no_admin, &s.no_admin_found),
            ] {
                let lk = netns::median_ms(times).unwrap_or(f64::NAN);
                let whole = found.right == total && found.elsewhere == 0;
                out.push(Target {
                    what: format!(
                        "`leaks --once` {how} over {} namespaces × {} CLOSE_WAIT faster than `ss` in each, every socket with its holder's pid",
                        s.namespaces, s.per
                    ),
                    measured: format!(
                        "{lk:.0} ms vs {ss:.0} ms (medians); {} of {} sockets with the right pid and namespace",
                        thousands(found.right as f64),
                        thousands(total as f64)
                    ),
                    met: Some(lk < ss && whole),
                    gap: match (lk < ss, whole) {
                        (true, true) => format!("{:.2}× faster", ss / lk),
                        (false, _) => format!("{:.2}× slower (+{:.0} ms)", lk / ss, lk - ss),
                        (true, false) => format!(
                            "{} sockets missed, {} named wrongly",
                            thousands((total - found.right) as f64),
                            thousands(found.elsewhere as f64)
                        ),
                    },
                });
            }
        }
        Some(Err(e)) => out.push(failed_target(
            "`leaks --once` over 200 namespaces faster than `ss` in each".to_owned(),
            e,
        )),
        None => {}
    }
    match &bench.owners {
        Some(Ok(o)) => out.push(owner_target(
            "owner truth on loopback: every transition's owner right or unknown, none wrong"
                .to_owned(),
            &o.classified.total(),
        )),
        Some(Err(e)) => out.push(failed_target("owner truth on loopback".to_owned(), e)),
        None => {}
    }
    match &bench.activemq {
        Some(Ok(b)) => out.push(owner_target(
            "owner truth with ActiveMQ: the JVM's `ESTABLISHED -> CLOSE_WAIT` right or unknown, none wrong".to_owned(),
            &b.close_wait,
        )),
        Some(Err(e)) => out.push(failed_target("owner truth with ActiveMQ".to_owned(), e)),
        None => {}
    }
}

/// `## Method`, `## Results` and the lost-events check: the throughput rounds.
fn method_and_results(r: &mut String, bench: &Bench, summaries: &[Summary]) {
    r.push_str("\n## Method\n\n");
    let _ = writeln!(r, "- Load: {}.", bench.load);
    if let Some(f) = &bench.fallback {
        let _ = writeln!(r, "- **Fallback:** {f}.");
    }
    let _ = writeln!(
        r,
        "- {} round(s) of {} s per run after a discarded warm-up run. Each round runs every configuration once between two untraced runs (untraced, A, untraced, B, …, untraced), in an order rotated by one each round. conns/s: median (min–max) over the rounds. vs untraced: each traced run divided by the mean of the untraced runs just before and after it; the median of those ratios. A run whose two untraced neighbours are more than {:.0}% apart (the host's own load moved during it, on a shared VM) is left out of its configuration's medians when at least {STEADY_RUNS_NEEDED} steady runs remain, and named under the table; its lost events, events and memory still count, and every run is listed under Every run.",
        bench.rounds,
        bench.secs,
        UNSTEADY_SPREAD * 100.0
    );
    let _ = writeln!(
        r,
        "- Kernel ns/event: `kernel.bpf_stats_enabled=1` for the whole bench (it was {}; restored after); the deltas of `run_time_ns` and `run_cnt` (the counters `bpftool prog show` prints) of the BPF programs the tracer holds open — found through its fds' fdinfo, since tcptrace's and bpftrace's programs share the kernel name `inet_sock_set_s` — from attached to drained: all its programs' time over the runs of its busiest one (one run per state change). The stats themselves add about 20 ns per run, included.",
        bench.stats_was
    );
    r.push_str("- Tracer CPU: utime+stime of the tracer (/proc/PID/stat) over the same window, over the same event count. Lost: the statistics tcptrace writes when it exits (`--stats-json FILE`: `lost`, records the ring buffer could not queue, plus `dropped`, histogram updates the kernel could not count; evictions, misses and undecodable records are noted under the table when there are any), tcpstates' `lost N events` warnings; bpftrace counts in a map and cannot lose. events: state changes the program ran for; the tracer's events: the records it read (`events` in its statistics), for `hist` the dwell times its kernel program measured (its closing line: the statistics do not carry them). Peak RSS: VmHWM just before stopping. Machine CPU taken: the tracer's kernel time and process CPU time over the run, divided by the run's length times the CPUs (median over the rounds): what it costs the machine, steadier than the throughput ratio on a shared VM.\n");
    r.push_str("- Each tracer is started and proven attached (a test connection moves its program's run count) before its run, left to drain after it (until its CPU time stops moving), then stopped with SIGINT.\n");
    if !bench.prog_names.is_empty() {
        let names: Vec<String> = bench
            .prog_names
            .iter()
            .map(|(c, n)| format!("{} `{n}`", c.key()))
            .collect();
        let _ = writeln!(r, "- Kernel program names seen: {}.", names.join(", "));
    }
    r.push_str("\n## Results\n\n");
    r.push_str(&results_table(summaries));
    let notes: Vec<String> = summaries
        .iter()
        .flat_map(|s| {
            s.failures
                .iter()
                .map(move |f| format!("{}: failed {f}", s.config.key()))
                .chain(
                    s.notes
                        .iter()
                        .map(move |n| format!("{}: {n}", s.config.key())),
                )
        })
        .collect();
    if !notes.is_empty() {
        r.push('\n');
        for n in notes {
            let _ = writeln!(r, "- {n}");
        }
    }
    if !bench.storm_check.is_empty() {
        r.push_str("\n### Lost events under the in-repo storm\n\nEach tcptrace mode once more, under the in-repo storm (a higher connection rate than nginx's here), for the lost-events target:\n\n");
        r.push_str("| Configuration | conns/s | kernel ns/event | tracer CPU µs/event | lost / events |\n|---|---:|---:|---:|---:|\n");
        for (config, outcome) in &bench.storm_check {
            match outcome {
                Ok(m) => {
                    let events = m.kernel.as_ref().map_or(0, |k| k.events);
                    let _ = writeln!(
                        r,
                        "| {} | {} | {} | {} | {} / {} |",
                        config.label(),
                        thousands(m.conns),
                        m.kernel
                            .as_ref()
                            .map_or("—".to_owned(), |k| thousands(k.ns_per_event)),
                        m.cpu_us_per_event
                            .map_or("—".to_owned(), |c| format!("{c:.2}")),
                        m.lost.map_or("?".to_owned(), |l| thousands(l as f64)),
                        thousands(events as f64)
                    );
                }
                Err(e) => {
                    let _ = writeln!(r, "| {} | failed: {e} | | | |", config.label());
                }
            }
        }
    }
}

/// `## Every run`: each run in the order they ran.
fn every_run(r: &mut String, bench: &Bench) {
    r.push_str("\n## Every run\n\n<details><summary>In the order they ran</summary>\n\n");
    r.push_str("| # | Round | Configuration | conns/s | vs neighbours | kernel ns/event | program runs / tracer's events | CPU µs/event | lost | peak RSS |\n|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|\n");
    let ratios = run_ratios(&bench.runs);
    for (i, (run, ratio)) in bench.runs.iter().zip(&ratios).enumerate() {
        match &run.outcome {
            Ok(m) => {
                let _ = writeln!(
                    r,
                    "| {} | {} | {} | {} | {} | {} | {} / {} | {} | {} | {} |",
                    i + 1,
                    run.round,
                    run.config.key(),
                    thousands(m.conns),
                    ratio.map_or("—".to_owned(), |x| format!("{x:.3}")),
                    m.kernel
                        .as_ref()
                        .map_or("—".to_owned(), |k| thousands(k.ns_per_event)),
                    m.kernel
                        .as_ref()
                        .map_or("—".to_owned(), |k| thousands(k.events as f64)),
                    m.events_reported
                        .map_or("—".to_owned(), |e| thousands(e as f64)),
                    m.cpu_us_per_event
                        .map_or("—".to_owned(), |c| format!("{c:.2}")),
                    m.lost.map_or("—".to_owned(), |l| thousands(l as f64)),
                    m.peak_rss_kib.map_or("—".to_owned(), mib),
                );
            }
            Err(e) => {
                let _ = writeln!(
                    r,
                    "| {} | {} | {} | failed: {e} | | | | | | |",
                    i + 1,
                    run.round,
                    run.config.key()
                );
            }
        }
    }
    r.push_str("\n</details>\n");
}

/// Kernel ns/event of one measured run, if it ran.
fn kernel_ns(outcome: &Result<Measured, String>) -> Option<f64> {
    outcome
        .as_ref()
        .ok()?
        .kernel
        .as_ref()
        .map(|k| k.ns_per_event)
}

/// The floor programs: what a program on this tracepoint costs here before
/// it does anything, and what each kind of work adds.
fn floor_section(r: &mut String, bench: &Bench, summaries: &[Summary]) {
    if bench.floors.is_empty() {
        return;
    }
    let empty = floor_ns(bench, Config::FloorEmpty);
    r.push_str("\n## Floor: what a program on this tracepoint costs here\n\n");
    r.push_str("Programs that each do one thing, run once each under the same load with the same kernel statistics: bpftrace one-liners, and tcptrace-ebpf's floor programs (`src/floors.rs`), which do only what a mode cannot avoid, the way tcptrace does it. `bpftool prog profile` (hardware counters per program) needs fentry/fexit programs, which this kernel refuses, so the profiles below use perf's call chains instead.\n\n");
    r.push_str("| The program | kernel ns/event | over the empty program |\n|---|---:|---:|\n");
    let mut row = |label: &str, ns: Option<f64>, is_empty: bool| {
        let over = match (ns, empty) {
            (Some(n), Some(e)) if !is_empty => format!("{:+.0}", n - e),
            _ => "—".to_owned(),
        };
        let ns = ns.map_or_else(|| "failed".to_owned(), thousands);
        let _ = writeln!(r, "| {label} | {ns} | {over} |");
    };
    for (config, outcome) in &bench.floors {
        row(
            config.label(),
            kernel_ns(outcome),
            *config == Config::FloorEmpty,
        );
    }
    if let Some(ns) = summaries
        .iter()
        .find(|s| s.config == Config::Bpftrace)
        .and_then(|s| median(&s.kernel_ns))
    {
        row(
            "counts in a map (the bench's bpftrace one-liner)",
            Some(ns),
            false,
        );
    }
    if let (Some(shared), Some(own)) = (
        floor_ns(bench, Config::FloorRing),
        floor_ns(bench, Config::FloorRingPerCpu),
    ) {
        let _ = writeln!(r, "\n{}", ring_per_cpu_line(shared, own));
    }
    for (config, outcome) in &bench.floors {
        if let Err(e) = outcome {
            let _ = writeln!(r, "\n{}: {e}", config.label());
        }
    }
}

/// What tcptrace's ring per CPU saves on the record's cost, from the two ring floors.
fn ring_per_cpu_line(shared: f64, own: f64) -> String {
    let saved = shared - own;
    if saved > 0.0 {
        format!(
            "A ring per CPU instead of one shared ring: the same record costs {} ns less here ({:.0}% of `floor-ring`), what every stream mode's record saves; tcptrace and the stream floors write to a ring per CPU.",
            thousands(saved),
            saved / shared * 100.0
        )
    } else {
        format!(
            "A ring per CPU instead of one shared ring saves nothing here (`floor-ring-per-cpu` {} ns against `floor-ring` {} ns).",
            thousands(own),
            thousands(shared)
        )
    }
}

/// Each tcptrace mode under perf: where its kernel program's time goes, and
/// the tracer process's own time.
fn profiles_section(r: &mut String, bench: &Bench, summaries: &[Summary]) {
    if bench.profiles.is_empty() {
        return;
    }
    r.push_str("\n## Profiles\n\n`perf record -e cpu-clock -a -g` (no PMU in this VM) for one run of each mode under the same load. A kernel program's samples are split by what it was in: its own instructions or the kernel function it called (a helper); ≈ ns/event is that share of the mode's median kernel ns/event above.\n");
    for (i, (config, profile)) in bench.profiles.iter().enumerate() {
        let _ = writeln!(r, "\n### {}\n", config.label());
        let p = match profile {
            Ok(p) => p,
            Err(e) => {
                let _ = writeln!(r, "Not taken: {e}");
                continue;
            }
        };
        let ns = summaries
            .iter()
            .find(|s| s.config == *config)
            .and_then(|s| median(&s.kernel_ns));
        let _ = writeln!(
            r,
            "{} s at {} conns/s; {} samples in the kernel program{}.\n",
            p.secs,
            thousands(p.conns_per_sec),
            thousands(p.program_samples as f64),
            ns.map_or_else(String::new, |n| format!(
                " ({} ns/event in the rounds)",
                thousands(n)
            ))
        );
        if !p.program.is_empty() {
            r.push_str("| The program was in | share | ≈ ns/event |\n|---|---:|---:|\n");
            for (what, share) in p.program.iter().filter(|(_, sh)| *sh >= 0.01) {
                let est = ns.map_or_else(|| "?".to_owned(), |n| thousands(n * share));
                let _ = writeln!(r, "| `{what}` | {:.0}% | {est} |", share * 100.0);
            }
        }
        r.push_str("\nThe tracer process, with children (share of its samples; user-space call chains need frame pointers, so they are partial):\n\n```\n");
        r.push_str(&p.tracer);
        r.push_str("```\n");
        if i == 0 {
            r.push_str("\nWhole machine, by self time (top 20):\n\n```\n");
            r.push_str(&p.top);
            r.push_str("```\n\nThe tracing path in the kernel, with children (share of all samples):\n\n```\n");
            r.push_str(&p.tracing_path);
            r.push_str("```\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_thousands() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(-1000.0), "-1,000");
    }

    #[test]
    fn ring_per_cpu_says_what_it_saves_or_that_it_saves_nothing() {
        assert!(ring_per_cpu_line(210.0, 170.0).contains("40 ns less here (19% of `floor-ring`)"));
        assert!(ring_per_cpu_line(170.0, 175.0).contains("saves nothing here"));
    }

    #[test]
    fn a_floor_above_the_target_puts_it_out_of_reach() {
        let out = floor_gap(300.0, 200.0, 1.0, Config::FloorEntry, 240.0);
        assert!(
            out.contains("1.20× the counter, so the target is out of reach here"),
            "{out}"
        );
        assert!(out.contains("the mode costs 1.25× its floor"), "{out}");
        let within = floor_gap(300.0, 200.0, 1.5, Config::FloorEntry, 240.0);
        assert!(within.contains("so the target is within reach"), "{within}");
    }

    #[test]
    fn a_mode_slower_than_before_is_named() {
        let summary = |config, kernel_ns: &[f64], ratios: &[f64]| Summary {
            config,
            unavailable: None,
            failures: Vec::new(),
            conns: vec![1000.0; kernel_ns.len()],
            ratios: ratios.to_vec(),
            kernel_ns: kernel_ns.to_vec(),
            cpu_us: vec![0.3; kernel_ns.len()],
            cpu_share: Vec::new(),
            idle: vec![0.2; kernel_ns.len()],
            wakeups: vec![100.0; kernel_ns.len()],
            lost: Some(0),
            events: 1,
            rss_kib: None,
            notes: Vec::new(),
        };
        // Every mode as before (200 ns, 0.9 of untraced) but watch's
        // kernel figures and hist's throughput.
        let all = |watch_ns: &[f64], hist_ratios: &[f64]| -> Vec<Summary> {
            super::super::tracers::BEFORE
                .iter()
                .flat_map(|&(now, before)| {
                    let ns: &[f64] = if now == Config::Watch {
                        watch_ns
                    } else {
                        &[200.0]
                    };
                    let ratios: &[f64] = if now == Config::Hist {
                        hist_ratios
                    } else {
                        &[0.9]
                    };
                    [summary(now, ns, ratios), summary(before, &[200.0], &[0.9])]
                })
                .collect()
        };
        let mut r = String::new();
        // Within the slack: not slower.
        let t = before_section(&mut r, Some("4b96809"), &all(&[215.0], &[0.89])).unwrap();
        assert_eq!(t.met, Some(true), "{r}");
        assert_eq!(r.matches("not slower").count(), 5, "{r}");
        // 260 + 300 against 200 + 300 ns per event; 5 points of throughput.
        let t = before_section(&mut r, Some("4b96809"), &all(&[260.0], &[0.85])).unwrap();
        assert_eq!(t.met, Some(false));
        for want in [
            "`watch`: cost +60 ns (+12%)",
            "`hist`: throughput -5.0 points",
            "parts that rose: `watch`: kernel part +60 ns (+30%)",
        ] {
            assert!(t.gap.contains(want), "{want}: {}", t.gap);
        }
        // A part that rose while the whole did not: named, not slower.
        let t = before_section(&mut r, Some("4b96809"), &all(&[240.0], &[0.9])).unwrap();
        assert_eq!(t.met, Some(true), "{}", t.gap);
        assert!(r.contains("not slower; kernel part +40 ns (+20%)"), "{r}");
        // Medians apart but runs that overlap: the spread, not slower.
        let t = before_section(
            &mut r,
            Some("4b96809"),
            &all(&[190.0, 300.0, 320.0], &[1.05, 0.80, 0.75]),
        )
        .unwrap();
        assert_eq!(t.met, Some(true), "{}", t.gap);
        // Nothing from before: no target row at all.
        assert!(before_section(&mut r, None, &all(&[200.0], &[0.9])).is_none());
        // Throughput fell at no higher cost with the machine more idle:
        // still slower, and said why.
        let mut runs = all(&[200.0], &[0.85]);
        for s in runs.iter_mut().filter(|s| s.config == Config::Hist) {
            s.idle = vec![0.27];
            s.wakeups = vec![80.0];
        }
        let t = before_section(&mut r, Some("4b96809"), &runs).unwrap();
        assert_eq!(t.met, Some(false));
        assert!(
            t.gap.contains("`hist`: throughput -5.0 points (the machine 7.0 points more idle at no higher cost per event: the load waited, it was not short of CPU; the tracer woke 80/s against 100/s)"),
            "{}",
            t.gap
        );
        // As idle as before: no such reason.
        let t = before_section(&mut r, Some("4b96809"), &all(&[200.0], &[0.85])).unwrap();
        assert!(!t.gap.contains("waited"), "{}", t.gap);
    }

    #[test]
    fn ratios_use_neighbouring_baselines() {
        let run = |config, conns| RunRecord {
            round: 1,
            config,
            outcome: Ok(Measured {
                conns,
                ..Measured::default()
            }),
        };
        let runs = vec![
            run(Config::Baseline, 100.0),
            run(Config::Watch, 45.0),
            run(Config::Baseline, 80.0),
            run(Config::Leaks, 40.0),
        ];
        let r = run_ratios(&runs);
        assert_eq!(r[0], None);
        assert_eq!(r[1], Some(0.5));
        assert_eq!(r[3], Some(0.5));
    }

    #[test]
    fn a_run_the_host_moved_under_is_left_out_of_the_medians_not_its_losses() {
        let run = |round, config, conns, ns, lost| RunRecord {
            round,
            config,
            outcome: Ok(Measured {
                conns,
                kernel: (config != Config::Baseline).then_some(KernelCost {
                    ns_per_event: ns,
                    events: 1000,
                }),
                lost,
                ..Measured::default()
            }),
        };
        let runs = vec![
            run(1, Config::Baseline, 100.0, 0.0, None),
            run(1, Config::Watch, 90.0, 300.0, Some(0)),
            run(1, Config::Baseline, 104.0, 0.0, None),
            // The host slowed down: 104 then 70 around this run.
            run(2, Config::Watch, 50.0, 900.0, Some(3)),
            run(2, Config::Baseline, 70.0, 0.0, None),
            run(3, Config::Watch, 63.0, 310.0, Some(0)),
            run(3, Config::Baseline, 72.0, 0.0, None),
        ];
        assert_eq!(unsteady(&runs)[1], None);
        assert!(unsteady(&runs)[3].is_some_and(|s| (s - 104.0 / 70.0 + 1.0).abs() < 1e-9));
        let configs = [Config::Baseline, Config::Watch];
        let watch = summarize_runs(&configs, &[], &runs, 5, 2).remove(1);
        assert_eq!(watch.kernel_ns, vec![300.0, 310.0]);
        assert_eq!(watch.lost, Some(3));
        assert_eq!(watch.events, 3000);
        assert!(
            watch
                .notes
                .iter()
                .any(|n| n.starts_with("round 2: left out")),
            "{:?}",
            watch.notes
        );
        // With fewer than two steady runs, all stay in.
        let few = summarize_runs(&configs, &[], &runs[..5], 5, 2).remove(1);
        assert_eq!(few.kernel_ns, vec![300.0, 900.0]);
    }
}
