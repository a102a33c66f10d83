//! `tcptrace watch`: one line per transition, text or NDJSON.

use std::io::{self, Write};

use serde::Serialize;

use crate::{
    clock::Clock,
    decode::endpoint,
    owner::OwnerSource,
    trace::{Sink, Transition},
};

pub struct WatchSink<W: Write> {
    out: W,
    json: bool,
    wall_clock: bool,
    header_done: bool,
}

/// The NDJSON record; these keys and no others, in this order.
#[derive(Serialize)]
struct JsonLine<'a> {
    time: String,
    skaddr: String,
    pid: u32,
    comm: &'a str,
    family: &'static str,
    laddr: String,
    lport: u16,
    raddr: String,
    rport: u16,
    oldstate: &'static str,
    newstate: &'static str,
    ms: Option<f64>,
}

impl<W: Write> WatchSink<W> {
    pub fn new(out: W, json: bool, wall_clock: bool) -> Self {
        Self {
            out,
            json,
            wall_clock,
            header_done: false,
        }
    }

    fn header(&mut self) -> io::Result<()> {
        let time = if self.wall_clock { "TIME" } else { "TIME(s)" };
        writeln!(
            self.out,
            "{time:<15} {:<7} {:<16} {:<26} {:<26} {:<12}    {:<12} {:>10}",
            "PID", "COMM", "LADDR:LPORT", "RADDR:RPORT", "OLDSTATE", "NEWSTATE", "MS"
        )
    }
}

impl<W: Write> Sink for WatchSink<W> {
    fn transition(&mut self, t: &Transition<'_>, clock: &Clock) -> io::Result<()> {
        let ev = t.ev;
        // The socket's owner; the table's tuple fills ports the event lacked.
        let (pid, comm, guessed) = t
            .owners
            .first()
            .map_or((ev.tgid, ev.comm.as_str(), true), |o| {
                (o.pid, o.comm.as_str(), o.source == OwnerSource::OnCpu)
            });
        let ms = t.dwell_ns.map(|ns| ns as f64 / 1e6);
        if self.json {
            let line = JsonLine {
                time: clock.rfc3339(ev.ts_ns),
                skaddr: format!("{:016x}", ev.skaddr),
                pid,
                comm,
                family: ev.family.name(),
                laddr: ev.laddr.to_string(),
                lport: ev.lport,
                raddr: ev.raddr.to_string(),
                rport: ev.rport,
                oldstate: ev.oldstate.name(),
                newstate: ev.newstate.name(),
                ms,
            };
            serde_json::to_writer(&mut self.out, &line)?;
            return self.out.write_all(b"\n");
        }
        if !self.header_done {
            self.header()?;
            self.header_done = true;
        }
        let time = if self.wall_clock {
            clock.local_hms(ev.ts_ns)
        } else {
            format!("{:.6}", clock.since_start(ev.ts_ns))
        };
        // A trailing '?' marks a guess: the task on the CPU in softirq.
        let pid = if guessed {
            format!("{pid}?")
        } else {
            pid.to_string()
        };
        let ms = ms.map_or_else(|| "-".to_owned(), |m| format!("{m:.3}"));
        writeln!(
            self.out,
            "{time:<15} {pid:<7} {comm:<16} {:<26} {:<26} {:<12} -> {:<12} {ms:>10}",
            endpoint(ev.laddr, ev.lport),
            endpoint(ev.raddr, ev.rport),
            ev.oldstate,
            ev.newstate,
        )
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
