//! Where a tracer's cost goes: `perf record -a -g` (cpu-clock, which works
//! in VMs without a PMU) over one loaded run, summarised three ways.
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use super::load::{Load, which};
use super::sys::Proc;
use super::tracers::{self, Config, Floor, Poker, Tools};

pub struct Profile {
    pub secs: u64,
    pub conns_per_sec: f64,
    /// System-wide symbols by self time.
    pub top: String,
    /// Kernel symbols on the tracing path, with their children.
    pub tracing_path: String,
    /// The tracer process's symbols, with their children.
    pub tracer: String,
    /// Where the kernel program's samples were: its own code or the kernel
    /// function it called, by share of its samples (largest first).
    pub program: Vec<(String, f64)>,
    pub program_samples: u64,
}

pub fn run(
    tools: &Tools,
    config: Config,
    load: &mut Load,
    poker: &Poker,
    secs: u64,
    dir: &Path,
) -> Result<Profile> {
    if which("perf").is_none() {
        bail!("perf is not installed");
    }
    let data = dir.join("perf.data");
    let tracer = tracers::start(tools, config, poker)?;
    let mut perf = Proc::spawn(
        "perf record",
        Command::new("perf")
            .args(["record", "-e", "cpu-clock", "-a", "-g", "-o"])
            .arg(&data)
            .args(["--", "sleep", &secs.to_string()])
            .stdout(Stdio::null()),
    )?;
    // perf needs a moment before it samples.
    std::thread::sleep(Duration::from_millis(300));
    let run = load.run(secs);
    while perf.running() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let perf_lines = perf.stop(Duration::from_secs(5));
    let comm = tracer_comm(tools, config);
    tracer.stop();
    let run = run?;
    if !data.exists() {
        bail!("perf record wrote nothing: {}", tracers::tail(&perf_lines));
    }
    let report = |args: &[&str]| -> Result<String> {
        let out = Command::new("perf")
            .arg("report")
            .arg("-i")
            .arg(&data)
            .args(["--stdio", "-g", "none"])
            .args(args)
            .stderr(Stdio::null())
            .output()
            .context("cannot run perf report")?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let top = rows(
        &report(&["--no-children", "--sort", "comm,dso,sym"])?,
        |_| true,
        20,
    );
    let tracing_path = rows(
        &report(&["--children", "--sort", "sym"])?,
        |l| {
            [
                "bpf_prog_",
                "bpf_ringbuf",
                "irq_work",
                "bpf_probe_read",
                "bpf_get_current",
                "bpf_perf_event_output",
                "perf_trace_inet_sock_set_state",
                "trace_call_bpf",
                "write_msr",
                "send_IPI",
            ]
            .iter()
            .any(|s| l.contains(s))
        },
        20,
    );
    let tracer = rows(
        &report(&[
            "--children",
            "--comm",
            &comm,
            "--percentage",
            "relative",
            "--sort",
            "sym",
        ])?,
        |_| true,
        15,
    );
    let script = Command::new("perf")
        .arg("script")
        .arg("-i")
        .arg(&data)
        .args(["-F", "ip,sym"])
        .stderr(Stdio::null())
        .output()
        .context("cannot run perf script")?;
    let (program, program_samples) = program_breakdown(&String::from_utf8_lossy(&script.stdout));
    let _ = std::fs::remove_file(&data);
    Ok(Profile {
        secs,
        conns_per_sec: run.conns_per_sec,
        top,
        tracing_path,
        tracer,
        program,
        program_samples,
    })
}

/// What the state-change program was doing in each sample that was in it
/// (`perf script -F ip,sym` call chains, leaf first): running its own code
/// (BPF subprograms included) or inside the kernel function it called, a
/// helper. `bpftool prog profile` would say the same with hardware counters,
/// but it needs fentry/fexit programs, which this kernel refuses.
fn program_breakdown(script: &str) -> (Vec<(String, f64)>, u64) {
    const OWN: &str = "(its own code)";
    let mut counts: Vec<(String, u64)> = Vec::new();
    let mut total = 0;
    for sample in script.split("\n\n") {
        let syms: Vec<&str> = sample
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .collect();
        if !syms.contains(&"perf_trace_inet_sock_set_state") {
            continue;
        }
        let Some(i) = syms.iter().position(|s| s.starts_with("bpf_prog_")) else {
            continue;
        };
        let what = if i == 0 { OWN } else { syms[i - 1] };
        total += 1;
        match counts.iter_mut().find(|(w, _)| w == what) {
            Some((_, n)) => *n += 1,
            None => counts.push((what.to_owned(), 1)),
        }
    }
    counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let shares = counts
        .into_iter()
        .map(|(w, n)| (w, n as f64 / total.max(1) as f64))
        .collect();
    (shares, total)
}

/// `perf record -g` of one run of `cmd` (stdout to /dev/null): its symbols
/// with their children, top 25.
pub fn command(cmd: &mut Command, dir: &Path) -> Result<String> {
    if which("perf").is_none() {
        bail!("perf is not installed");
    }
    let data = dir.join("perf-once.data");
    let status = Command::new("perf")
        .args(["record", "-e", "cpu-clock", "-F", "10000", "-g", "-o"])
        .arg(&data)
        .arg("--")
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("cannot run perf record")?;
    if !status.success() {
        bail!("perf record failed ({status})");
    }
    let out = Command::new("perf")
        .arg("report")
        .arg("-i")
        .arg(&data)
        .args(["--stdio", "-g", "none", "--children", "--sort", "sym"])
        .stderr(Stdio::null())
        .output()
        .context("cannot run perf report")?;
    let _ = std::fs::remove_file(&data);
    Ok(rows(&String::from_utf8_lossy(&out.stdout), |_| true, 25))
}

/// The comm perf records for the tracer (the kernel keeps 15 characters).
fn tracer_comm(tools: &Tools, config: Config) -> String {
    let path = match (config, config.floor()) {
        (Config::Tcpstates, _) => tools.tcpstates.clone(),
        (Config::Bpftrace, _) | (_, Some(Floor::Bpftrace(_))) => tools.bpftrace.clone(),
        (_, Some(Floor::Own(_))) => Some(super::sys::own_exe()),
        _ => Some(tools.tcptrace.clone()),
    };
    path.and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .map(|n| n.chars().take(15).collect())
        .unwrap_or_else(|| "tcptrace".to_owned())
}

/// The sample rows of a `perf report --stdio` (percentage first), filtered,
/// at most `max`, with the column header.
fn rows(report: &str, keep: impl Fn(&str) -> bool, max: usize) -> String {
    let mut out: Vec<&str> = Vec::new();
    let mut header = None;
    for line in report.lines() {
        let t = line.trim_start();
        if t.starts_with("# Overhead") || t.starts_with("# Children") {
            header = Some(line.trim_start_matches('#'));
        }
        if t.starts_with('#') || t.is_empty() {
            continue;
        }
        if t.split_whitespace()
            .next()
            .is_some_and(|w| w.ends_with('%'))
            && keep(t)
        {
            out.push(line);
            if out.len() >= max {
                break;
            }
        }
    }
    let mut text = String::new();
    if let Some(h) = header {
        text.push_str(h.trim_end());
        text.push('\n');
    }
    for l in out {
        text.push_str(l.trim_end());
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_samples_by_callee() {
        let script = "\n\tffff1 __bpf_ringbuf_reserve\n\tffff2 bpf_ringbuf_reserve\n\tffff3 bpf_prog_abc_inet_sock_set_state\n\tffff4 trace_call_bpf\n\tffff5 perf_trace_inet_sock_set_state\n\n\
            \n\tffff3 bpf_prog_abc_inet_sock_set_state\n\tffff4 trace_call_bpf\n\tffff5 perf_trace_inet_sock_set_state\n\n\
            \n\tffff6 bpf_ktime_get_ns\n\tffff3 bpf_prog_abc_inet_sock_set_state\n\tffff5 perf_trace_inet_sock_set_state\n\n\
            \n\tffff3 bpf_prog_abc_inet_sock_set_state\n\tffff5 perf_trace_inet_sock_set_state\n\n\
            \n\tffff7 bpf_prog_other\n\tffff8 cgroup_bpf_run\n\n\
            \n\tffff9 tcp_v4_rcv\n\tffff5 perf_trace_inet_sock_set_state\n";
        let (shares, total) = program_breakdown(script);
        assert_eq!(total, 4);
        assert_eq!(
            shares,
            vec![
                ("(its own code)".to_owned(), 0.5),
                ("bpf_ktime_get_ns".to_owned(), 0.25),
                ("bpf_ringbuf_reserve".to_owned(), 0.25),
            ]
        );
    }

    #[test]
    fn report_rows() {
        let report = "# Overhead  Symbol\n# ....\n#\n    18.96%  [k] native_write_msr\n     2.48%  [k] _raw_spin_unlock\n\n";
        let r = rows(report, |l| l.contains("msr"), 5);
        assert_eq!(r, " Overhead  Symbol\n    18.96%  [k] native_write_msr\n");
    }
}
