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
    /// The Debian release whose kernel it is (`12 bookworm`).
    pub debian: String,
    version: String,
    elapsed: Option<Duration>,
    /// Seconds from qemu's start to init (the guest's uptime then).
    boot: Option<f64>,
    passed: usize,
    failed: Vec<String>,
    /// Why the kernel failed as a whole (download, boot, timeout).
    problem: Option<String>,
    failures: BTreeMap<String, Vec<String>>,
    /// Every selected test (`binary::module::test`) and whether it passed.
    verdicts: BTreeMap<String, bool>,
    /// The guest's `facts: ` lines.
    facts: Vec<String>,
    /// The crash of a first boot that a second one did not repeat.
    pub crashed_once: Option<String>,
}

impl Row {
    pub fn broken(series: &str, problem: String) -> Self {
        println!("[{series}] FAILED: {problem}");
        Self {
            series: series.to_owned(),
            debian: String::new(),
            version: "-".to_owned(),
            elapsed: None,
            boot: None,
            passed: 0,
            failed: Vec::new(),
            problem: Some(problem),
            failures: BTreeMap::new(),
            verdicts: BTreeMap::new(),
            facts: Vec::new(),
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
    let mut verdicts = BTreeMap::new();
    for b in selected {
        for t in &b.tests {
            let key = format!("{}::{t}", b.name);
            let verdict = console.results.get(&key).copied();
            verdicts.insert(key.clone(), verdict == Some(true));
            match verdict {
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
    let boot = fact(&console.facts, BOOTED).and_then(|s| s.parse().ok());
    Row {
        series: series.to_owned(),
        debian: String::new(),
        version,
        elapsed: Some(console.elapsed),
        boot,
        passed,
        failed,
        problem,
        failures: console.failures,
        verdicts,
        facts: console.facts,
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

/// The views whose program load time each guest reports.
const VIEWS: [&str; 4] = ["watch", "leaks", "hist", "serve"];

/// Whether each view's program attached, and in how long: "yes: watch
/// 2.9 s, ...", or which did not.
fn attaches(facts: &[String]) -> String {
    let mut took = Vec::new();
    let mut failed = Vec::new();
    for view in VIEWS {
        match fact(facts, &format!("tcptrace {view} attaches: ")) {
            // "yes ('watch --duration 1' took 2.94 s)", "yes (in 5.09 s)"
            Some(f) if f.starts_with("yes") => {
                let secs = f
                    .strip_suffix(" s)")
                    .and_then(|f| f.rsplit(' ').next())
                    .unwrap_or("?");
                took.push(format!("{view} {secs} s"));
            }
            Some(_) => failed.push(view),
            None => {}
        }
    }
    match (took.is_empty(), failed.is_empty()) {
        (true, true) => "-".to_owned(),
        (_, true) => format!("yes: {}", took.join(", ")),
        _ => format!(
            "**no: {}** (see target/matrix/<kernel>/facts.txt)",
            failed.join(", ")
        ),
    }
}

/// The fact starting with `prefix`, without it.
fn fact<'a>(facts: &'a [String], prefix: &str) -> Option<&'a str> {
    facts
        .iter()
        .find_map(|f| f.strip_prefix(prefix))
        .map(str::trim)
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

/// Where the README's generated support table goes.
pub const SUPPORT_BEGIN: &str = "<!-- kernel-support:begin -->";
pub const SUPPORT_END: &str = "<!-- kernel-support:end -->";

/// The support table (Markdown) of a run: per kernel, whether the program
/// loads, each view's tests, `--stacks`' caller, a non-root tracer with the
/// documented capabilities, and the tests passed.
pub fn support_table(rows: &[Row], about: &str) -> String {
    let mut out = String::new();
    out.push_str(&format!("{about}\n\n"));
    out.push_str("| Debian | kernel | programs attach (under TCG) | watch | leaks | hist | serve | `--stacks` caller of `connect()` | non-root, documented capabilities | tests passed |\n");
    out.push_str("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for r in rows {
        let loads = attaches(&r.facts);
        let module = |m: &str| {
            let tests: Vec<bool> = r
                .verdicts
                .iter()
                .filter(|(k, _)| k.split("::").nth(1) == Some(m))
                .map(|(_, v)| *v)
                .collect();
            let ok = tests.iter().filter(|v| **v).count();
            match tests.len() {
                0 => "not run".to_owned(),
                n if ok == n => format!("ok ({ok}/{n})"),
                n => format!("**{ok}/{n}**"),
            }
        };
        let stacks = match fact(&r.facts, "stacks caller: ") {
            Some(f) if f.starts_with("yes") => "yes".to_owned(),
            Some(_) => "no: the caller may be missing (`bpf_task_pt_regs` needs 5.15)".to_owned(),
            None => "-".to_owned(),
        };
        let caps = non_root(&r.facts);
        let total = r.verdicts.len();
        let passed = r.verdicts.values().filter(|v| **v).count();
        let tests = if r.problem.is_some() && passed == 0 {
            "**failed to run**".to_owned()
        } else if passed == total {
            format!("{passed}/{total}")
        } else {
            format!("**{passed}/{total}**")
        };
        let (release, _) = r.version.split_once(' ').unwrap_or((&r.version, ""));
        let version = r.version.split_once(" (").map_or(String::new(), |(_, v)| {
            format!(" ({}", v.replace(" from ", ", "))
        });
        out.push_str(&format!(
            "| {} | {release}{version} | {loads} | {} | {} | {} | {} | {stacks} | {caps} | {tests} |\n",
            r.debian,
            module("watch"),
            module("leaks"),
            module("hist"),
            module("serve"),
        ));
    }
    out
}

/// What the guest's non-root attach facts say: works as documented, or
/// what more it needs.
fn non_root(facts: &[String]) -> String {
    // `as nobody with CAPS, perf_event_paranoid N: exit S ...`
    let tries: Vec<(bool, bool, u32)> = facts
        .iter()
        .filter_map(|f| f.strip_prefix("as nobody with "))
        .filter_map(|f| {
            let (caps, rest) = f.split_once(", perf_event_paranoid ")?;
            let (level, rest) = rest.split_once(": exit ")?;
            Some((
                caps.contains("sys_admin"),
                rest.starts_with("0 "),
                level.trim().parse().ok()?,
            ))
        })
        .collect();
    let works = |admin: bool, pred: &dyn Fn(u32) -> bool| {
        tries
            .iter()
            .find(|(a, _, l)| *a == admin && pred(*l))
            .map(|(_, ok, _)| *ok)
    };
    let default = tries.first().map(|(_, _, l)| *l).unwrap_or_default();
    match (
        works(false, &|l| l == default),
        works(false, &|l| l <= 2),
        works(true, &|_| true),
    ) {
        (Some(true), _, _) => "yes".to_owned(),
        (Some(false), Some(true), admin) => format!(
            "at `perf_event_paranoid` {default} only with CAP_SYS_ADMIN{}; yes at 2",
            if admin == Some(true) {
                ""
            } else {
                " (not tried)"
            }
        ),
        (Some(false), _, _) => "**no**".to_owned(),
        _ => "-".to_owned(),
    }
}

/// README.md with the text between the support markers replaced by `table`;
/// None when the markers are missing.
pub fn with_support_table(readme: &str, table: &str) -> Option<String> {
    let begin = readme.find(SUPPORT_BEGIN)? + SUPPORT_BEGIN.len();
    let end = begin + readme[begin..].find(SUPPORT_END)?;
    Some(format!("{}\n{}{}", &readme[..begin], table, &readme[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(facts: &[&str]) -> String {
        attaches(&facts.iter().map(|f| f.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn each_views_attach_time_or_the_views_that_did_not() {
        let watch = "tcptrace watch attaches: yes ('watch --duration 1' took 2.94 s)";
        assert_eq!(
            cell(&[
                watch,
                "tcptrace leaks attaches: yes (in 2.04 s)",
                "tcptrace hist attaches: yes (in 5.09 s)",
                "tcptrace serve attaches: yes (in 7.12 s)",
            ]),
            "yes: watch 2.94 s, leaks 2.04 s, hist 5.09 s, serve 7.12 s"
        );
        assert_eq!(
            cell(&[
                watch,
                "tcptrace serve attaches: no (after 306.37 s); the end of its -v output:",
            ]),
            "**no: serve** (see target/matrix/<kernel>/facts.txt)"
        );
        assert_eq!(cell(&[]), "-");
    }
}
