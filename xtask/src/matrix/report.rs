//! The verdict: one row per kernel, the summary table, each failure's
//! output.
use std::collections::BTreeMap;
use std::time::Duration;

use super::guest::Console;
use super::root::BOOTED;
use super::select::TestBinary;

/// One kernel's line in the summary.
pub struct Row {
    series: String,
    version: String,
    elapsed: Option<Duration>,
    /// Seconds from qemu's start to init (the guest's uptime then).
    boot: Option<f64>,
    passed: usize,
    failed: Vec<String>,
    /// Why the kernel failed as a whole (download, boot, timeout).
    problem: Option<String>,
    failures: BTreeMap<String, Vec<String>>,
    /// The crash of a first boot that a second one did not repeat.
    pub crashed_once: Option<String>,
}

impl Row {
    pub fn broken(series: &str, problem: String) -> Self {
        println!("[{series}] FAILED: {problem}");
        Self {
            series: series.to_owned(),
            version: "-".to_owned(),
            elapsed: None,
            boot: None,
            passed: 0,
            failed: Vec::new(),
            problem: Some(problem),
            failures: BTreeMap::new(),
            crashed_once: None,
        }
    }

    fn ok(&self) -> bool {
        self.problem.is_none() && self.failed.is_empty()
    }
}

/// Every selected test counts: one without an `ok` line (failed, or never
/// reached because the guest died) is a failure.
pub fn row(series: &str, version: String, selected: &[TestBinary], console: Console) -> Row {
    let mut passed = 0;
    let mut failed = Vec::new();
    for b in selected {
        for t in &b.tests {
            let key = format!("{}::{t}", b.name);
            match console.results.get(&key) {
                Some(true) => passed += 1,
                Some(false) => failed.push(key),
                None => failed.push(format!("{key} (no result)")),
            }
        }
    }
    let crash = console
        .crash
        .as_ref()
        .map(|c| format!("the guest's kernel crashed: {c}"));
    let problem = crash
        .or(console.problem.clone())
        .or_else(|| match console.exit {
            Some(0) if failed.is_empty() => None,
            Some(0) => Some("tests failed, yet the guest's status was 0".to_owned()),
            // The failures say it all.
            Some(_) if !failed.is_empty() => None,
            Some(code) => Some(format!("the guest's tests ended with status {code}")),
            None => Some("no closing line on the console".to_owned()),
        });
    let problem = problem.map(|p| {
        if console.results.is_empty() {
            format!(
                "{p}; last console lines:\n    {}",
                console.tail.join("\n    ")
            )
        } else {
            p
        }
    });
    let boot = console
        .facts
        .iter()
        .find_map(|f| f.strip_prefix(BOOTED))
        .and_then(|s| s.trim().parse().ok());
    Row {
        series: series.to_owned(),
        version,
        elapsed: Some(console.elapsed),
        boot,
        passed,
        failed,
        problem,
        failures: console.failures,
        crashed_once: None,
    }
}

/// The table, then each failure's output (trimmed); returns the number of
/// kernels that failed.
pub fn print_summary(rows: &[Row], elapsed: Duration) -> usize {
    println!();
    println!("==> kernel matrix ({:.0} s in all)", elapsed.as_secs_f64());
    let width = rows
        .iter()
        .map(|r| r.version.len())
        .max()
        .unwrap_or(0)
        .max(7);
    println!(
        "{:<7} {:<width$} {:>6} {:>10} {:>6} {:>6}  failing",
        "kernel", "version", "boot", "boot+test", "passed", "failed"
    );
    for r in rows {
        let time = r
            .elapsed
            .map_or("-".to_owned(), |d| format!("{:.0} s", d.as_secs_f64()));
        let failing = match &r.problem {
            Some(p) if r.passed == 0 => format!("FAILED: {}", first_line(p)),
            _ if r.failed.is_empty() => "-".to_owned(),
            _ if r.failed.len() > 4 => {
                format!(
                    "{} (+{} more)",
                    r.failed[..3].join(", "),
                    r.failed.len() - 3
                )
            }
            _ => r.failed.join(", "),
        };
        let boot = r.boot.map_or("-".to_owned(), |b| format!("{b:.1} s"));
        println!(
            "{:<7} {:<width$} {boot:>6} {:>10} {:>6} {:>6}  {failing}",
            r.series,
            r.version,
            time,
            r.passed,
            r.failed.len()
        );
    }
    for r in rows {
        if let Some(crash) = &r.crashed_once {
            println!(
                "\n[{}] note: the first boot's kernel crashed ({crash}); the run above is the second boot's",
                r.series
            );
        }
    }
    for r in rows.iter().filter(|r| !r.ok()) {
        if let Some(p) = &r.problem {
            println!("\n[{}] {p}", r.series);
        }
        for test in &r.failed {
            println!("\n[{}] {test}", r.series);
            let lines = r.failures.get(test).map_or(&[][..], Vec::as_slice);
            // The backtrace only repeats the test's name.
            let mut in_backtrace = false;
            for line in lines.iter().filter(|l| !l.trim().is_empty()).take(40) {
                if line.starts_with("stack backtrace:") {
                    in_backtrace = true;
                } else if in_backtrace && line.starts_with("note: ") {
                    in_backtrace = false;
                } else if !in_backtrace {
                    println!("    {line}");
                }
            }
        }
    }
    rows.iter().filter(|r| !r.ok()).count()
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}
