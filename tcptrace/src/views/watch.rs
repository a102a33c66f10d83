//! `tcptrace watch`: one line per transition, text or NDJSON.
//!
//! Each line is built in a reused buffer, field by field, without the
//! temporary Strings a `format!`/`#[derive(Serialize)]` line costs: under a
//! connection storm this formatting is most of the tracer's CPU time. Lines
//! accumulate in that buffer and reach the output in batches, so each byte
//! is copied once.

use std::{
    io::{self, Write},
    net::IpAddr,
};

use crate::{
    host::clock::{Clock, SecondText},
    model::owner::{Comm, Owner},
    pipeline::sink::{Sink, Transition},
};

pub struct WatchSink<W: Write> {
    out: W,
    json: bool,
    wall_clock: bool,
    /// Show what opened each socket entering CLOSE_WAIT.
    stacks: bool,
    header_done: bool,
    /// The lines not written yet.
    line: Vec<u8>,
    /// The time's second as text: RFC 3339 in JSON, else local (one per sink).
    time_cache: SecondText,
}

/// Lines are handed to the output once this many bytes are pending (and
/// after each batch of records, on `flush`).
const BATCH_BYTES: usize = 32 * 1024;

impl<W: Write> WatchSink<W> {
    /// `out` is written in batches of whole lines: it needs no buffer of its own.
    pub fn new(out: W, json: bool, wall_clock: bool, stacks: bool) -> Self {
        Self {
            out,
            json,
            wall_clock,
            stacks,
            header_done: false,
            line: Vec::with_capacity(BATCH_BYTES + 1024),
            time_cache: SecondText::default(),
        }
    }

    fn header(&mut self) -> io::Result<()> {
        let time = if self.wall_clock { "TIME" } else { "TIME(s)" };
        writeln!(
            self.line,
            "{time:<15} {:<7} {:<16} {:<26} {:<26} {:<12}    {:<12} {:>10}",
            "PID", "COMM", "LADDR:LPORT", "RADDR:RPORT", "OLDSTATE", "NEWSTATE", "MS"
        )
    }

    /// The NDJSON record: these keys and no others, in this order, values
    /// formatted as serde_json formats them. An unknown owner is `null`.
    fn json_line(&mut self, t: &Transition<'_>, clock: &Clock) -> io::Result<()> {
        let ev = t.ev;
        let l = &mut self.line;
        l.extend_from_slice(b"{\"time\":\"");
        clock.write_rfc3339(ev.ts_ns, &mut self.time_cache, l);
        l.extend_from_slice(b"\",\"skaddr\":\"");
        push_hex16(l, ev.skaddr);
        l.extend_from_slice(b"\",\"pid\":");
        match &t.owner {
            Some(o) => {
                push_dec(l, o.pid.into());
                l.extend_from_slice(b",\"comm\":");
                push_json_comm(l, &o.comm)?;
            }
            None => l.extend_from_slice(b"null,\"comm\":null"),
        }
        l.extend_from_slice(b",\"owner\":\"");
        l.extend_from_slice(owner_name(&t.owner).as_bytes());
        l.extend_from_slice(b"\",\"family\":\"");
        l.extend_from_slice(ev.family.name().as_bytes());
        l.extend_from_slice(b"\",\"laddr\":\"");
        push_ip(l, ev.laddr)?;
        l.extend_from_slice(b"\",\"lport\":");
        push_dec(l, ev.lport.into());
        l.extend_from_slice(b",\"raddr\":\"");
        push_ip(l, ev.raddr)?;
        l.extend_from_slice(b"\",\"rport\":");
        push_dec(l, ev.rport.into());
        l.extend_from_slice(b",\"oldstate\":\"");
        l.extend_from_slice(ev.oldstate.name().as_bytes());
        l.extend_from_slice(b"\",\"newstate\":\"");
        l.extend_from_slice(ev.newstate.name().as_bytes());
        l.extend_from_slice(b"\",\"ms\":");
        // serde_json's float text (and `null` for None), exactly.
        match t.dwell_ns {
            Some(ns) if push_ns_as_ms_json(l, ns) => {}
            dwell => serde_json::to_writer(&mut *l, &dwell.map(ms))?,
        }
        if let Some(opened) = t.opened().filter(|_| self.stacks) {
            l.extend_from_slice(b",\"stack\":");
            serde_json::to_writer(&mut *l, opened)?;
        }
        l.extend_from_slice(b"}\n");
        Ok(())
    }

    /// `{time:<15} {pid:<7} {comm:<16} {laddr:<26} {raddr:<26} {old:<12} -> {new:<12} {ms:>10}`
    fn text_line(&mut self, t: &Transition<'_>, clock: &Clock) -> io::Result<()> {
        let ev = t.ev;
        let l = &mut self.line;
        let line_start = l.len();
        if self.wall_clock {
            clock.write_local_hms(ev.ts_ns, &mut self.time_cache, l);
        } else if !clock
            .since_start_ns(ev.ts_ns)
            .is_some_and(|ns| push_ns_as_us::<6>(l, ns))
        {
            write!(l, "{:.6}", clock.since_start(ev.ts_ns))?;
        }
        pad(l, l.len() - line_start, 15);
        l.push(b' ');
        let start = l.len();
        // An unknown owner is a dash: never the task that was on the CPU.
        let comm = match &t.owner {
            Some(o) => {
                push_dec(l, o.pid.into());
                Some(&o.comm)
            }
            None => {
                l.push(b'-');
                None
            }
        };
        pad(l, l.len() - start, 7);
        l.push(b' ');
        match comm {
            // Printable ASCII, the common case: one byte per char.
            Some(c) if c.bytes().iter().all(|b| (0x20..0x7f).contains(b)) => {
                l.extend_from_slice(c.bytes());
                pad(l, c.bytes().len(), 16);
            }
            Some(c) => {
                let text = c.text();
                l.extend_from_slice(text.as_bytes());
                // Width counts chars, as `{:<16}` does: comm may be multibyte.
                pad(l, text.chars().count(), 16);
            }
            None => {
                l.push(b'-');
                pad(l, 1, 16);
            }
        }
        l.push(b' ');
        for (addr, port) in [(ev.laddr, ev.lport), (ev.raddr, ev.rport)] {
            let start = l.len();
            push_endpoint(l, addr, port)?;
            pad(l, l.len() - start, 26);
            l.push(b' ');
        }
        l.extend_from_slice(ev.oldstate.name().as_bytes());
        pad(l, ev.oldstate.name().len(), 12);
        l.extend_from_slice(b" -> ");
        l.extend_from_slice(ev.newstate.name().as_bytes());
        pad(l, ev.newstate.name().len(), 12);
        l.push(b' ');
        // Right-aligned: the text first, then the spaces moved before it.
        let start = l.len();
        match t.dwell_ns {
            Some(ns) if push_ns_as_us::<3>(l, ns) => {}
            Some(ns) => write!(l, "{:.3}", ms(ns))?,
            None => l.push(b'-'),
        }
        let written = l.len() - start;
        pad(l, written, 10);
        l[start..].rotate_right(10usize.saturating_sub(written));
        l.push(b'\n');
        if let Some(opened) = t.opened().filter(|_| self.stacks) {
            writeln!(l, "    {}", opened.summary(STACK_CALLERS))?;
        }
        Ok(())
    }
}

impl<W: Write> WatchSink<W> {
    /// Hands the pending lines to the output.
    fn write_out(&mut self) -> io::Result<()> {
        let written = self.out.write_all(&self.line);
        self.line.clear();
        written
    }
}

impl<W: Write> Sink for WatchSink<W> {
    fn transition(&mut self, t: &Transition<'_>, clock: &Clock) -> io::Result<()> {
        if self.json {
            self.json_line(t, clock)?;
        } else {
            if !self.header_done {
                self.header()?;
                self.header_done = true;
            }
            self.text_line(t, clock)?;
        }
        if self.line.len() >= BATCH_BYTES {
            self.write_out()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write_out()?;
        self.out.flush()
    }
}

/// Callers shown after the function that opened a socket (text).
const STACK_CALLERS: usize = 3;

/// How the owner is known: `holder`, `listener` or `unknown`.
fn owner_name(owner: &Option<Owner>) -> &'static str {
    owner.map_or("unknown", |o| o.source.name())
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// Spaces after a field `written` chars long, to left-align it in `width`.
fn pad(l: &mut Vec<u8>, written: usize, width: usize) {
    l.resize(l.len() + width.saturating_sub(written), b' ');
}

/// Appends the first bytes of an `N`-byte window that `write` fills in
/// place (it returns how many it wrote). Small variable-length appends
/// (`extend_from_slice`) were a fifth of `watch --json`'s CPU under the
/// storm, in calls to `memcpy`; text built on the stack and then copied
/// stalls the copy's load behind the byte stores. A window of constant size
/// is a few stores, and the digits go straight where they stay.
#[inline(always)]
fn push_in_place<const N: usize>(l: &mut Vec<u8>, write: impl FnOnce(&mut [u8; N]) -> usize) {
    let start = l.len();
    l.resize(start + N, 0);
    let window: &mut [u8; N] = (&mut l[start..]).try_into().expect("the window is N bytes");
    let n = write(window).min(N);
    l.truncate(start + n);
}

/// `{}` of `n`.
fn push_dec(l: &mut Vec<u8>, n: u64) {
    push_in_place::<20>(l, |text| {
        let digits = n.checked_ilog10().unwrap_or(0) as usize + 1;
        let mut rest = n;
        for d in text[..digits].iter_mut().rev() {
            *d = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        digits
    });
}

/// serde_json's text of `ns as f64 / 1e6` (milliseconds), without float
/// formatting, where that is provably the same: from 1 µs to below 10^15
/// ns, the quotient's shortest round-trip text is the exact decimal
/// `ns / 10^6` without trailing zeros (two decimals of at most 15
/// significant digits differ by more than the f64 spacing there), written
/// as serde_json writes it: `1.5`, `0.001`, an integer as `2.0`. Appends
/// nothing and returns false elsewhere.
fn push_ns_as_ms_json(l: &mut Vec<u8>, ns: u64) -> bool {
    if !(1_000..1_000_000_000_000_000).contains(&ns) {
        return false;
    }
    push_dec(l, ns / 1_000_000);
    l.push(b'.');
    let frac = ns % 1_000_000;
    if frac == 0 {
        l.push(b'0');
        return true;
    }
    push_in_place::<6>(l, |digits| {
        let mut f = frac;
        for d in digits.iter_mut().rev() {
            *d = b'0' + (f % 10) as u8;
            f /= 10;
        }
        let mut keep = 6;
        while digits[keep - 1] == b'0' {
            keep -= 1;
        }
        keep
    });
    true
}

/// `{:.D$}` of `ns as f64 / 10^(3 + D)`, that is `ns` rounded to whole µs,
/// without float formatting (the dearest part of a text line). Appends
/// nothing and returns false where the result could differ.
///
/// The f64 quotient is within 2^-53 of `ns` relatively: under 1 ns when
/// `ns < 2^53`, while a rounding boundary (a half µs) is at least 1 ns away
/// unless `ns` is on it, where the float's own error decides: left to it.
fn push_ns_as_us<const D: u32>(l: &mut Vec<u8>, ns: u64) -> bool {
    if ns >= 1 << 53 || ns % 1000 == 500 {
        return false;
    }
    let us = (ns + 500) / 1000;
    let unit = 10u64.pow(D);
    push_dec(l, us / unit);
    l.push(b'.');
    let start = l.len();
    l.resize(start + D as usize, b'0');
    let mut frac = us % unit;
    for digit in l[start..].iter_mut().rev() {
        *digit = b'0' + (frac % 10) as u8;
        frac /= 10;
    }
    true
}

/// `{:016x}`.
fn push_hex16(l: &mut Vec<u8>, n: u64) {
    let mut text = [0u8; 16];
    for (i, c) in text.iter_mut().enumerate() {
        *c = b"0123456789abcdef"[(n >> ((15 - i) * 4)) as usize & 0xf];
    }
    l.extend_from_slice(&text);
}

/// As `IpAddr`'s Display; IPv4, the common case, without the fmt machinery.
fn push_ip(l: &mut Vec<u8>, addr: IpAddr) -> io::Result<()> {
    match addr {
        IpAddr::V4(v4) => {
            push_in_place::<16>(l, |text| {
                let mut n = 0;
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        text[n] = b'.';
                        n += 1;
                    }
                    if octet >= 100 {
                        text[n] = b'0' + octet / 100;
                        n += 1;
                    }
                    if octet >= 10 {
                        text[n] = b'0' + octet / 10 % 10;
                        n += 1;
                    }
                    text[n] = b'0' + octet % 10;
                    n += 1;
                }
                n
            });
            Ok(())
        }
        IpAddr::V6(v6) => write!(l, "{v6}"),
    }
}

/// As `SocketAddr`'s Display: `1.2.3.4:80`, `[::1]:80`.
fn push_endpoint(l: &mut Vec<u8>, addr: IpAddr, port: u16) -> io::Result<()> {
    if addr.is_ipv6() {
        l.push(b'[');
    }
    push_ip(l, addr)?;
    if addr.is_ipv6() {
        l.push(b']');
    }
    l.push(b':');
    push_dec(l, port.into());
    Ok(())
}

/// A process name as a JSON string. Comm can hold any byte: printable
/// ASCII but `"` and `\\` is itself; anything else goes through
/// serde_json (after the lossy UTF-8 the text view shows), so the escaping
/// is serde_json's.
fn push_json_comm(l: &mut Vec<u8>, comm: &Comm) -> io::Result<()> {
    let b = comm.bytes();
    if b.iter()
        .all(|c| (0x20..0x7f).contains(c) && *c != b'"' && *c != b'\\')
    {
        l.push(b'"');
        push_in_place(l, |text| {
            *text = comm.raw();
            b.len()
        });
        l.push(b'"');
        Ok(())
    } else {
        Ok(serde_json::to_writer(l, &comm.text())?)
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use serde::Serialize;

    use super::*;
    use tcptrace_common::TcpState;

    use crate::{
        model::event::{Event, endpoint, test_event},
        model::{
            owner::{Comm, Owner, OwnerSource},
            socket_table::{Socket, Tuple},
        },
    };

    /// The formatting this module replaced (serde derive and `format!`):
    /// the reference the hand-built lines must equal byte for byte.
    fn reference(t: &Transition<'_>, clock: &Clock, json: bool, wall_clock: bool) -> String {
        #[derive(Serialize)]
        struct JsonLine<'a> {
            time: String,
            skaddr: String,
            pid: Option<u32>,
            comm: Option<&'a str>,
            owner: &'static str,
            family: &'static str,
            laddr: String,
            lport: u16,
            raddr: String,
            rport: u16,
            oldstate: &'static str,
            newstate: &'static str,
            ms: Option<f64>,
        }
        let ev = t.ev;
        let name = t.owner.map(|o| o.comm.text().into_owned());
        let (pid, comm) = (t.owner.map(|o| o.pid), name.as_deref());
        let ms = t.dwell_ns.map(|ns| ns as f64 / 1e6);
        if json {
            let line = JsonLine {
                time: clock.rfc3339(ev.ts_ns),
                skaddr: format!("{:016x}", ev.skaddr),
                pid,
                comm,
                owner: t.owner.map_or("unknown", |o| o.source.name()),
                family: ev.family.name(),
                laddr: ev.laddr.to_string(),
                lport: ev.lport,
                raddr: ev.raddr.to_string(),
                rport: ev.rport,
                oldstate: ev.oldstate.name(),
                newstate: ev.newstate.name(),
                ms,
            };
            return serde_json::to_string(&line).unwrap() + "\n";
        }
        let time = if wall_clock {
            clock.local_hms(ev.ts_ns)
        } else {
            format!("{:.6}", clock.since_start(ev.ts_ns))
        };
        let pid = pid.map_or_else(|| "-".to_owned(), |p| p.to_string());
        let comm = comm.unwrap_or("-");
        let ms = ms.map_or_else(|| "-".to_owned(), |m| format!("{m:.3}"));
        format!(
            "{time:<15} {pid:<7} {comm:<16} {:<26} {:<26} {:<12} -> {:<12} {ms:>10}\n",
            endpoint(ev.laddr, ev.lport),
            endpoint(ev.raddr, ev.rport),
            ev.oldstate,
            ev.newstate,
        )
    }

    fn events(clock_now: u64) -> Vec<Event> {
        let addrs: [IpAddr; 7] = [
            Ipv4Addr::LOCALHOST.into(),
            Ipv4Addr::UNSPECIFIED.into(),
            Ipv4Addr::new(255, 10, 200, 9).into(),
            Ipv6Addr::LOCALHOST.into(),
            Ipv6Addr::UNSPECIFIED.into(),
            "::ffff:10.0.0.1".parse().unwrap(),
            "2001:db8:0:1:ffff:abcd:0:1".parse().unwrap(),
        ];
        let comms = [
            "",
            "nginx",
            "0123456789abcdef",
            "a\"b\\c",
            "\n\t\u{1}\u{1f}\u{7f}",
            "é日本\u{fffd}",
            "</script>",
        ];
        let mut out = Vec::new();
        for (i, laddr) in addrs.into_iter().enumerate() {
            for (j, comm) in comms.iter().enumerate() {
                let mut ev = test_event(
                    [0, u64::MAX, 0xffff_8881_0a0b_0c00][j % 3],
                    0,
                    TcpState::ALL[(i + j) % 12],
                    TcpState::ALL[(i * 5 + j) % 12],
                );
                ev.ts_ns = [clock_now, clock_now + 999_999_999, 1, clock_now - 5][(i + j) % 4]
                    + (i * 7 + j) as u64 * 1_234_567;
                ev.laddr = laddr;
                ev.raddr = addrs[(i + j) % addrs.len()];
                ev.lport = [0, 80, 65535][i % 3];
                ev.rport = [61616, 1, 0][j % 3];
                ev.owner = [None, Some(1), Some(u32::MAX)][(i + j) % 3];
                ev.comm = Comm::new(comm.as_bytes());
                out.push(ev);
            }
        }
        out
    }

    /// `0..small`, 3,000 values from each base, `random` pseudo-random ones
    /// of every magnitude (xorshift from `seed`), and past the exact range.
    fn samples(small: u64, bases: &[u64], seed: u64, random: usize) -> Vec<u64> {
        let mut values: Vec<u64> = (0..small).collect();
        for base in bases {
            values.extend((0..3000).map(|i| base + i));
        }
        let mut x = seed;
        for _ in 0..random {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            values.push(x >> (x % 64));
        }
        values.extend([1 << 53, u64::MAX]);
        values
    }

    #[test]
    fn integer_rounding_matches_float_formatting() {
        let bases = [1_000_000, 999_999_500, 123_456_789_000, (1 << 53) - 5_000];
        for ns in samples(5000, &bases, 0x9e37_79b9_7f4a_7c15, 20_000) {
            for decimals in [3usize, 6] {
                let mut l = Vec::new();
                let pushed = if decimals == 3 {
                    push_ns_as_us::<3>(&mut l, ns)
                } else {
                    push_ns_as_us::<6>(&mut l, ns)
                };
                if pushed {
                    let want = format!(
                        "{:.*}",
                        decimals,
                        ns as f64 / 10f64.powi(3 + decimals as i32)
                    );
                    assert_eq!(String::from_utf8(l).unwrap(), want, "{ns}");
                } else {
                    assert!(l.is_empty() && (ns % 1000 == 500 || ns >= 1 << 53), "{ns}");
                }
            }
        }
    }

    #[test]
    fn integers_and_addresses_match_display() {
        let mut tens: Vec<u64> = (0..20).map(|k| 10u64.pow(k)).collect();
        tens.extend(tens.clone().iter().map(|t| t - 1));
        tens.extend([u64::MAX, 65_535, 4_194_304]);
        for n in tens {
            let mut l = b"x".to_vec();
            push_dec(&mut l, n);
            assert_eq!(l, format!("x{n}").into_bytes());
        }
        for ip in ["0.0.0.0", "255.255.255.255", "10.1.100.9", "127.0.0.1"] {
            let mut l = Vec::new();
            push_ip(&mut l, ip.parse().unwrap()).unwrap();
            assert_eq!(l, ip.as_bytes());
        }
    }

    #[test]
    fn milliseconds_match_serde_json() {
        let bases = [
            999_000,
            1_000_000,
            999_999_500,
            123_456_789_000,
            999_999_999_999_000,
            1_000_000_000_000_000 - 3_000,
        ];
        for ns in samples(20_000, &bases, 0x2545_f491_4f6c_dd1d, 50_000) {
            let mut l = Vec::new();
            let want = serde_json::to_string(&(ns as f64 / 1e6)).unwrap();
            if push_ns_as_ms_json(&mut l, ns) {
                assert_eq!(String::from_utf8(l).unwrap(), want, "{ns}");
            } else {
                assert!(l.is_empty() && !(1_000..1_000_000_000_000_000).contains(&ns));
            }
        }
    }

    #[test]
    fn lines_match_the_serde_and_format_reference() {
        let clock = Clock::new();
        let socket = Socket {
            state: TcpState::Established,
            since_ns: 0,
            family: crate::model::event::Family::V4,
            tuple: Tuple {
                laddr: Ipv4Addr::LOCALHOST.into(),
                lport: 1,
                raddr: Ipv4Addr::LOCALHOST.into(),
                rport: 2,
            },
            inode: 0,
            opened: None,
        };
        let owner = |pid, comm: &str, source| {
            Some(Owner {
                pid,
                comm: Comm::new(comm.as_bytes()),
                source,
            })
        };
        let owners = [
            None,
            owner(4_000_000, "wrk \"x\"", OwnerSource::Holder),
            owner(1, "nginx", OwnerSource::Listener),
            owner(7, "é日本\u{1}", OwnerSource::Holder),
        ];
        let dwells = [
            None,
            Some(0),
            Some(1),
            Some(1_500),
            Some(2_500),
            Some(123_456_789),
            Some(99_999_999_999_999),
            Some(1 << 53),
            Some(u64::MAX),
        ];
        for (json, wall_clock) in [(true, false), (false, false), (false, true)] {
            let mut sink = WatchSink::new(Vec::new(), json, wall_clock, false);
            let mut want = String::new();
            for (k, ev) in events(crate::host::clock::monotonic_ns())
                .iter()
                .enumerate()
            {
                let t = Transition {
                    ev,
                    dwell_ns: dwells[k % dwells.len()],
                    socket: &socket,
                    owner: owners[k % owners.len()],
                };
                sink.transition(&t, &clock).unwrap();
                want += &reference(&t, &clock, json, wall_clock);
            }
            sink.flush().unwrap();
            let got = String::from_utf8(sink.out).unwrap();
            let got = if json {
                got.as_str()
            } else {
                // The header comes first, then the lines.
                got.split_once('\n').unwrap().1
            };
            assert_eq!(got, want, "json={json} wall_clock={wall_clock}");
        }
    }
}
