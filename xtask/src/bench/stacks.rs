//! Issue 14's figure: what capturing stacks adds to `leaks`, from the same
//! rounds as every other mode (same load, same machine, neighbours
//! untraced), and the default it decides.
//!
//! With `--stacks` the kernel takes one user stack per connection (at the
//! `connect()`/`accept()` that makes it), not per transition, so the cost
//! is read per connection: all the tracer's programs' time (state changes
//! and syscall exits) over the connections the load made.
use std::fmt::Write as _;

use super::report::{Bench, Summary, median, ran, thousands};
use super::tracers::Config;

/// Kernel ns per connection of each run of `config`.
fn ns_per_connection(bench: &Bench, config: Config) -> Vec<f64> {
    bench
        .runs
        .iter()
        .filter(|r| r.config == config)
        .filter_map(|r| {
            let m = r.outcome.as_ref().ok()?;
            let k = m.kernel.as_ref()?;
            let connections = m.conns * bench.secs as f64;
            (connections > 0.0).then(|| k.ns_per_event * k.events as f64 / connections)
        })
        .collect()
}

/// `## Stacks`, when both `leaks` and `leaks --stacks` ran.
pub fn section(r: &mut String, bench: &Bench, summaries: &[Summary]) {
    let ran = |c: Config| ran(summaries, c);
    let (Some(plain), Some(stacks)) = (ran(Config::Leaks), ran(Config::LeaksStacks)) else {
        return;
    };
    r.push_str("\n## Stacks\n\n");
    r.push_str("What `leaks --stacks` costs over `leaks`, in the rounds above (medians): kernel time is every program the tracer holds (the state change, and with stacks the `connect()`/`accept()` exits that take one user stack per connection) over the connections the load made.\n\n");
    r.push_str("| Configuration | kernel ns/event | kernel ns/connection | vs untraced | machine CPU taken |\n|---|---:|---:|---:|---:|\n");
    let row = |r: &mut String, s: &Summary| -> Option<f64> {
        let per_conn = median(&ns_per_connection(bench, s.config));
        let _ = writeln!(
            r,
            "| {} | {} | {} | {} | {} |",
            s.config.label(),
            median(&s.kernel_ns).map_or("—".to_owned(), thousands),
            per_conn.map_or("—".to_owned(), thousands),
            s.ratio().map_or("—".to_owned(), |x| format!("{x:.3}")),
            median(&s.cpu_share).map_or("—".to_owned(), |c| format!("{:.1}%", c * 100.0)),
        );
        per_conn
    };
    let without = row(r, plain);
    let with = row(r, stacks);
    if let (Some(without), Some(with)) = (without, with) {
        let _ = writeln!(
            r,
            "\nA stack costs {} ns of kernel time per connection here ({:.2}× `leaks`' kernel time).",
            thousands(with - without),
            with / without
        );
    }
    // The rule: on by default in `leaks` if it stays at the cost
    // of counting (the bpftrace counter, per transition, in the same run).
    let counting = ran(Config::Bpftrace).and_then(|s| median(&s.kernel_ns));
    let stacks_ns = median(&stacks.kernel_ns);
    let _ = match (stacks_ns, counting) {
        (Some(s), Some(c)) if s <= c => writeln!(
            r,
            "\nDefault: `leaks --stacks` costs {} ns/event, at most the counter's {} ns: stacks could be on by default.",
            thousands(s),
            thousands(c)
        ),
        (Some(s), Some(c)) => writeln!(
            r,
            "\nDefault: `leaks --stacks` costs {} ns/event, {:.1}× the bpftrace counter's {} ns (the cost of counting): stacks stay behind `--stacks`.",
            thousands(s),
            s / c,
            thousands(c)
        ),
        _ => writeln!(
            r,
            "\nDefault: not decided by this run (the bpftrace counter did not run): stacks stay behind `--stacks`."
        ),
    };
}
