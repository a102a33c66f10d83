//! The hist report: bcc-style log2 histograms in text, or one JSON object
//! per histogram.

use std::io::{self, Write};

use serde::Serialize;
use serde_json::{Value, json};

use super::summary::{Group, Shown, Summary, describe};
use crate::host::{clock::Clock, names::Names};

const UNIT: &str = "usecs";

/// One histogram as NDJSON; these keys, in this order.
#[derive(Serialize)]
struct JsonHist {
    time: String,
    kind: &'static str,
    name: &'static str,
    group: Value,
    unit: &'static str,
    buckets: Vec<JsonBucket>,
    count: u64,
    p50: u64,
    p90: u64,
    p99: u64,
    max: u64,
}

#[derive(Serialize)]
struct JsonBucket {
    low: u64,
    high: u64,
    count: u64,
}

pub struct Report {
    pub json: bool,
    pub shown: Shown,
    /// Print the time above each text summary (interval mode).
    pub timestamps: bool,
}

fn group_text(g: &Group, names: &mut Names) -> Option<String> {
    Some(match g {
        Group::All => return None,
        Group::Process(None) => "process = unknown".to_owned(),
        Group::Process(Some(pid)) => match names.get(*pid) {
            c if c.is_empty() => format!("process = {pid}"),
            c => format!("process = {pid} ({c})"),
        },
        Group::Lport(p) => format!("lport = {p}"),
        Group::Rport(p) => format!("rport = {p}"),
        Group::Raddr(a) => format!("raddr = {a}"),
    })
}

fn group_json(g: &Group, names: &mut Names) -> Value {
    match g {
        Group::All => Value::Null,
        Group::Process(None) => json!({"pid": null, "comm": null}),
        Group::Process(Some(pid)) => {
            let c = names.get(*pid);
            json!({"pid": pid, "comm": (!c.is_empty()).then(|| c.text().into_owned())})
        }
        Group::Lport(p) => json!({ "lport": p }),
        Group::Rport(p) => json!({ "rport": p }),
        Group::Raddr(a) => json!({"raddr": a.to_string()}),
    }
}

impl Report {
    pub fn write(
        &self,
        out: &mut impl Write,
        s: &Summary,
        ts_ns: u64,
        names: &mut Names,
    ) -> io::Result<()> {
        let clock = Clock::new();
        if self.timestamps && !self.json {
            writeln!(out, "{}", &clock.local_hms(ts_ns)[..8])?;
        }
        for ((kind, group), e) in &s.hists {
            let count = e.log2.count();
            if count == 0 || !self.shown.shows(*kind) {
                continue;
            }
            let Some((class, name, span)) = describe(*kind) else {
                continue;
            };
            let p = |q| e.percentile(q).unwrap_or(0);
            if self.json {
                let line = JsonHist {
                    time: clock.rfc3339(ts_ns),
                    kind: class,
                    name,
                    group: group_json(group, names),
                    unit: UNIT,
                    buckets: e
                        .log2
                        .rows()
                        .map(|(low, high, count)| JsonBucket { low, high, count })
                        .collect(),
                    count,
                    p50: p(0.5),
                    p90: p(0.9),
                    p99: p(0.99),
                    max: e.log2.max_us(),
                };
                serde_json::to_writer(&mut *out, &line)?;
                out.write_all(b"\n")?;
                continue;
            }
            let mut heading = format!("{class} = {name}");
            if let Some(span) = span {
                heading.push_str(&format!(" ({span})"));
            }
            if let Some(g) = group_text(group, names) {
                heading.push_str(&format!(", {g}"));
            }
            writeln!(out, "\n{heading}")?;
            e.log2.write_text(out, UNIT)?;
            let kind_of_percentiles = if e.exact.is_some() { "" } else { "~" };
            writeln!(
                out,
                "count {count}, p50 {k}{}, p90 {k}{}, p99 {k}{}, max {} {UNIT}",
                p(0.5),
                p(0.9),
                p(0.99),
                e.log2.max_us(),
                k = kind_of_percentiles,
            )?;
        }
        out.flush()
    }
}

#[cfg(test)]
mod tests {
    use tcptrace_common::{HS_ACTIVE_CLOSE, HS_PASSIVE_LAST_ACK, HistKey, SLOT_MAX, TcpState};

    use super::*;
    use crate::host::clock::monotonic_ns;

    const MS: u64 = 1_000_000;

    fn key(kind: u8, slot: u8) -> HistKey {
        HistKey {
            group: [0; 16],
            epoch: 0,
            family: 0,
            kind,
            slot,
        }
    }

    /// What a report of `s` prints, in JSON or as text.
    fn written(s: &Summary, json: bool) -> String {
        let report = Report {
            json,
            shown: Shown::default(),
            timestamps: false,
        };
        let mut out = Vec::new();
        report
            .write(&mut out, s, monotonic_ns(), &mut Names::default())
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn report_json_has_the_documented_keys() {
        let mut s = Summary::default();
        s.observe(TcpState::CloseWait as u8, Group::Lport(8080), 300 * MS);
        s.observe(HS_PASSIVE_LAST_ACK, Group::Lport(8080), 40_000);
        s.observe(TcpState::CloseWait as u8, Group::Process(None), MS);
        let text = written(&s, true);
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        // The keys, in this order.
        let first = text.lines().next().unwrap();
        let at: Vec<usize> = [
            "time", "kind", "name", "group", "unit", "buckets", "count", "p50", "p90", "p99", "max",
        ]
        .iter()
        .map(|k| {
            first
                .find(&format!("\"{k}\":"))
                .unwrap_or_else(|| panic!("{k}"))
        })
        .collect();
        assert!(at.is_sorted(), "{first}");
        assert_eq!(lines[0].as_object().unwrap().len(), 11);
        assert_eq!(lines[0]["kind"], "state");
        assert_eq!(lines[0]["name"], "CLOSE_WAIT");
        // An unknown owner is null, never a guess.
        assert_eq!(lines[0]["group"], json!({"pid": null, "comm": null}));
        assert_eq!(lines[1]["group"], json!({"lport": 8080}));
        assert_eq!(
            lines[1]["buckets"],
            json!([{"low": 262144, "high": 524287, "count": 1}])
        );
        assert_eq!(lines[1]["max"], 300_000);
        assert_eq!(lines[1]["p99"], 300_000);
        assert_eq!(lines[2]["kind"], "handshake");
        assert_eq!(lines[2]["name"], "passive_close.last_ack");
    }

    #[test]
    fn report_text_names_each_histogram() {
        let mut s = Summary::default();
        s.add_kernel(&key(HS_ACTIVE_CLOSE, 2), Group::Rport(443), 3);
        s.add_kernel(&key(HS_ACTIVE_CLOSE, SLOT_MAX), Group::Rport(443), 6_500);
        let text = written(&s, false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "",
                "handshake = active_close (FIN_WAIT1 -> CLOSE), rport = 443",
                "     usecs               : count     distribution",
                "         4 -> 7          : 3        |****************************************|",
                "count 3, p50 ~5, p90 ~6, p99 ~6, max 6 usecs",
            ]
        );
    }
}
