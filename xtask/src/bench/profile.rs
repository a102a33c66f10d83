//! Where a tracer's cost goes: `perf record -a -g` (cpu-clock, which works
//! in VMs without a PMU) over one loaded run, summarised three ways.
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use super::load::{Load, which};
use super::sys::Proc;
use super::tracers::{self, Config, Poker, Tools};

pub struct Profile {
    pub config: Config,
    pub secs: u64,
    pub conns_per_sec: f64,
    /// System-wide symbols by self time.
    pub top: String,
    /// Kernel symbols on the tracing path, with their children.
    pub tracing_path: String,
    /// The tracer process's symbols, with their children.
    pub tracer: String,
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
        25,
    );
    Ok(Profile {
        config,
        secs,
        conns_per_sec: run.conns_per_sec,
        top,
        tracing_path,
        tracer,
    })
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
    let path = match config {
        Config::Tcpstates => tools.tcpstates.clone(),
        Config::Bpftrace => tools.bpftrace.clone(),
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
    fn report_rows() {
        let report = "# Overhead  Symbol\n# ....\n#\n    18.96%  [k] native_write_msr\n     2.48%  [k] _raw_spin_unlock\n\n";
        let r = rows(report, |l| l.contains("msr"), 5);
        assert_eq!(r, " Overhead  Symbol\n    18.96%  [k] native_write_msr\n");
    }
}
