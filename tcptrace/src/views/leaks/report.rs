//! The leaks report: a table worst first, or one JSON object per process.

use std::{
    io::{self, Write},
    time::Duration,
};

use serde::Serialize;

use super::collect::{Age, ProcessLeaks};
use crate::model::stack::Opened;

pub const HINT: &str = "hint: CLOSE_WAIT = the peer closed and the local process has not called close(); \
only the application can end it (TCP keepalive does not reap it): fix the code path that \
ignores EOF, or restart the process.";

/// How many peers the text view lists per process.
const TOP_PEERS: usize = 3;

/// Human age: `45s`, `12m03s`, `3h05m`, `2d04h`.
pub fn human_age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

/// `45s`, `45s~` (at least), `?` (unknown).
fn age_text(age: Age) -> String {
    match age {
        Age::Exact(d) => human_age(d),
        Age::AtLeast(d) => format!("{}~", human_age(d)),
        Age::Unknown => "?".to_owned(),
    }
}

/// Where a process runs, as the text view appends it to its name:
/// `@<container id>`, `@net:[<inode>]` in another namespace, else nothing.
pub fn place(r: &ProcessLeaks) -> String {
    match (&r.container, r.netns) {
        (Some(c), _) => format!("@{c}"),
        (None, Some(ns)) if r.other_netns => format!("@net:[{ns}]"),
        _ => String::new(),
    }
}

#[derive(Serialize)]
struct JsonPeer {
    raddr: String,
    rport: u16,
    count: usize,
}

#[derive(Serialize)]
struct JsonSocket<'a> {
    laddr: String,
    lport: u16,
    raddr: String,
    rport: u16,
    /// `null` when unknown.
    age_s: Option<f64>,
    /// A lower bound: older than tcptrace's view of it.
    age_estimated: bool,
    /// With --stacks: the code that opened it.
    #[serde(skip_serializing_if = "Option::is_none")]
    stack: Option<&'a Opened>,
}

#[derive(Serialize)]
struct JsonStack<'a> {
    count: usize,
    stack: &'a Opened,
}

#[derive(Serialize)]
struct JsonRow<'a> {
    time: &'a str,
    pid: u32,
    comm: &'a str,
    container: Option<&'a str>,
    netns: Option<u64>,
    close_wait: usize,
    oldest_s: Option<f64>,
    fds: Option<u64>,
    fd_limit: Option<u64>,
    peers: Vec<JsonPeer>,
    sockets: Vec<JsonSocket<'a>>,
    /// With --stacks: the code that opened the sockets, most sockets first.
    #[serde(skip_serializing_if = "Option::is_none")]
    stacks: Option<Vec<JsonStack<'a>>>,
}

pub struct Report {
    pub json: bool,
    pub min_age: Duration,
    /// Say what opened the sockets (their stacks are taken).
    pub stacks: bool,
}

/// Callers shown after the function that opened sockets (text).
const STACK_CALLERS: usize = 3;

impl Report {
    pub fn write(
        &self,
        out: &mut dyn Write,
        rows: &[ProcessLeaks],
        time: &str,
        lost: Option<u64>,
    ) -> io::Result<()> {
        if self.json {
            for r in rows {
                serde_json::to_writer(&mut *out, &json_row(r, time, self.stacks))?;
                out.write_all(b"\n")?;
            }
            return out.flush();
        }
        let total: usize = rows.iter().map(|r| r.sockets.len()).sum();
        let lost = lost.map_or_else(String::new, |n| format!(", {n} events lost"));
        writeln!(
            out,
            "{time}  {total} CLOSE_WAIT {} in {} {}{lost}",
            if total == 1 { "socket" } else { "sockets" },
            rows.len(),
            if rows.len() == 1 {
                "process"
            } else {
                "processes"
            }
        )?;
        if rows.is_empty() {
            return out.flush();
        }
        let min_age_col = format!(">={}", human_age(self.min_age));
        let names: Vec<String> = rows
            .iter()
            .map(|r| format!("{}{}", r.comm, place(r)))
            .collect();
        // As wide as the longest `comm@container`, so the columns stay aligned.
        let comm_width = names.iter().map(|n| n.chars().count()).fold(16, usize::max);
        writeln!(
            out,
            "{:<8} {:<comm_width$} {:>10} {:>9} {:>9} {:>9} {:>16}  TOP PEERS",
            "PID", "COMM", "CLOSE_WAIT", "OLDEST", min_age_col, "GROWTH/1m", "FDS/LIMIT"
        )?;
        for (r, name) in rows.iter().zip(&names) {
            let oldest = r.oldest().map_or_else(String::new, |s| age_text(s.age));
            let growth = r
                .growth_1m
                .map_or_else(|| "-".to_owned(), |g| format!("{g:+}"));
            let fds = match (r.fds, r.fd_limit) {
                (Some(n), Some(l)) if l > 0 => format!("{n}/{l} ({}%)", n * 100 / l),
                (Some(n), None) => format!("{n}/unlimited"),
                _ => "-".to_owned(),
            };
            let peers: Vec<String> = r
                .peer_labels()
                .into_iter()
                .take(TOP_PEERS)
                .map(|(label, n)| format!("{label} \u{d7}{n}"))
                .collect();
            writeln!(
                out,
                "{:<8} {:<comm_width$} {:>10} {:>9} {:>9} {:>9} {:>16}  {}",
                r.pid,
                name,
                r.sockets.len(),
                oldest,
                r.older_than(self.min_age),
                growth,
                fds,
                peers.join(", ")
            )?;
            if self.stacks {
                for (opened, n) in r.opened_by() {
                    writeln!(out, "    {n:>6} {}", opened.summary(STACK_CALLERS))?;
                }
            }
        }
        writeln!(
            out,
            "(~ = older than tcptrace saw: at least this old; ? = unknown; @ = the container or other network namespace the process runs in)"
        )?;
        writeln!(out, "{HINT}")?;
        out.flush()
    }
}

fn json_row<'a>(r: &'a ProcessLeaks, time: &'a str, stacks: bool) -> JsonRow<'a> {
    JsonRow {
        time,
        pid: r.pid,
        comm: &r.comm,
        container: r.container.as_deref(),
        netns: r.netns,
        close_wait: r.sockets.len(),
        oldest_s: r
            .oldest()
            .and_then(|s| s.age.known())
            .map(|d| d.as_secs_f64()),
        fds: r.fds,
        fd_limit: r.fd_limit,
        peers: r
            .peers()
            .into_iter()
            .map(|(a, p, n)| JsonPeer {
                raddr: a.to_string(),
                rport: p,
                count: n,
            })
            .collect(),
        sockets: r
            .sockets
            .iter()
            .map(|s| JsonSocket {
                laddr: s.tuple.laddr.to_string(),
                lport: s.tuple.lport,
                raddr: s.tuple.raddr.to_string(),
                rport: s.tuple.rport,
                age_s: s.age.known().map(|d| d.as_secs_f64()),
                age_estimated: !matches!(s.age, Age::Exact(_)),
                stack: s.opened.as_ref().filter(|_| stacks),
            })
            .collect(),
        stacks: stacks.then(|| {
            r.opened_by()
                .into_iter()
                .map(|(stack, count)| JsonStack { count, stack })
                .collect()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::{super::collect::group, *};
    use crate::views::leaks::collect::tests::sock;

    #[test]
    fn ages_read_like_ss_users_expect() {
        assert_eq!(human_age(Duration::from_secs(45)), "45s");
        assert_eq!(human_age(Duration::from_secs(723)), "12m03s");
        assert_eq!(human_age(Duration::from_secs(3 * 3600 + 300)), "3h05m");
        assert_eq!(
            human_age(Duration::from_secs(2 * 86400 + 4 * 3600)),
            "2d04h"
        );
        assert_eq!(age_text(Age::AtLeast(Duration::from_secs(3))), "3s~");
        assert_eq!(age_text(Age::Unknown), "?");
    }

    #[test]
    fn text_and_json_reports() {
        let mut rows = group(vec![sock(61616, 130, &[(10, "java")])], 2);
        rows[0].container = None;
        let mut buf = Vec::new();
        Report {
            json: false,
            min_age: Duration::from_secs(60),
            stacks: false,
        }
        .write(&mut buf, &rows, "T", Some(0))
        .unwrap();
        let text = String::from_utf8(buf).unwrap();
        assert!(text.contains("10.0.0.5:61616 \u{d7}1"), "{text}");
        assert!(text.contains("2m10s"), "{text}");
        assert!(text.contains("java@net:[1]"), "{text}");
        assert!(text.contains("keepalive"), "{text}");
        let mut buf = Vec::new();
        Report {
            json: true,
            min_age: Duration::ZERO,
            stacks: false,
        }
        .write(&mut buf, &rows, "T", None)
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "close_wait",
                "comm",
                "container",
                "fd_limit",
                "fds",
                "netns",
                "oldest_s",
                "peers",
                "pid",
                "sockets",
                "time"
            ]
        );
        assert_eq!(v["peers"][0]["rport"], 61616);
        assert_eq!(v["sockets"][0]["age_s"], 130.0);
        assert_eq!(v["netns"], 1);
    }
}
