//! The value parsers: each rejects bad input with one line that says what was wrong.

use std::time::Duration;

use tcptrace_common::{MAX_FILTER_PORTS, TcpState};

use super::PortList;

pub fn parse_pid(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(0) => Err("pid 0 is not a process".into()),
        Ok(p) if p <= 4_194_304 => Ok(p),
        _ => Err(format!("'{s}' is not a process id")),
    }
}

pub fn parse_ports(s: &str) -> Result<PortList, String> {
    let mut ports = Vec::new();
    for part in s.split(',') {
        let part = part.trim();
        let port: u16 = part
            .parse()
            .map_err(|_| format!("'{part}' is not a port number (1-65535)"))?;
        if port == 0 {
            return Err("port 0 cannot be traced".into());
        }
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    if ports.len() > MAX_FILTER_PORTS {
        return Err(format!("at most {MAX_FILTER_PORTS} ports in one list"));
    }
    Ok(PortList(ports))
}

pub fn parse_state(s: &str) -> Result<TcpState, String> {
    TcpState::parse(s).map_err(|e| e.to_string())
}

/// A `hist` INTERVAL: a duration of at least [`crate::views::hist::MIN_INTERVAL`].
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    crate::views::hist::check_interval(parse_duration(s)?)
}

/// Seconds as a number (`2.5`) or with a unit (`10s`, `5m`, `1h30m`); must be > 0.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration_or_zero(s)?;
    if d.is_zero() {
        return Err("a duration must be greater than zero".into());
    }
    Ok(d)
}

pub fn parse_duration_or_zero(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if let Ok(secs) = t.parse::<f64>() {
        if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
            return Err(format!("'{s}' is not a duration"));
        }
        return Ok(Duration::from_secs_f64(secs));
    }
    humantime::parse_duration(t)
        .map_err(|_| format!("'{s}' is not a duration (e.g. 10, 2.5, 10s, 5m)"))
}

pub fn parse_ring_size(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a size in bytes"))?;
    if n < 4096 || !n.is_power_of_two() {
        return Err(format!(
            "ring size {n} must be a power of two of at least 4096 bytes"
        ));
    }
    Ok(n)
}

pub fn parse_max_sockets(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("'{s}' is not a positive number of sockets")),
    }
}

/// The metrics port when none is given. 9100-9999, the range of the
/// Prometheus wiki's "Default port allocations", is full; 10180 is clear of
/// Webmin (10000), Zabbix (10050-10051), Amanda (10080-10083) and the kubelet
/// and control plane (10248-10259), which matters under `hostNetwork`.
pub const DEFAULT_SERVE_PORT: u16 = 10180;

pub fn default_listen() -> std::net::SocketAddr {
    (std::net::Ipv4Addr::LOCALHOST, DEFAULT_SERVE_PORT).into()
}

/// `127.0.0.1:10180`, `[::1]:10180`, `0.0.0.0` (default port), `10180`
/// (loopback), `localhost[:PORT]`. An address is required: `:PORT` would
/// silently mean every interface.
pub fn parse_listen(s: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    let t = s.trim();
    let port = |p: &str| {
        p.parse::<u16>()
            .map_err(|_| format!("'{p}' in '{s}' is not a port (0-65535)"))
    };
    if t.is_empty() {
        return Err("an empty --listen address".into());
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        return Ok((Ipv4Addr::LOCALHOST, port(t)?).into());
    }
    if t.starts_with(':') && !t.starts_with("::") {
        return Err(format!(
            "'{s}' has no address: use 127.0.0.1{t} for this host or 0.0.0.0{t} for every interface"
        ));
    }
    if let Ok(addr) = t.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(ip) = t.parse::<IpAddr>() {
        return Ok((ip, DEFAULT_SERVE_PORT).into());
    }
    if let Some(ip) = t
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|r| r.parse::<Ipv6Addr>().ok())
    {
        return Ok((ip, DEFAULT_SERVE_PORT).into());
    }
    let (host, p) = match t.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') || h.starts_with('[') => (h, Some(p)),
        _ => (t, None),
    };
    let p = p.map(port).transpose()?.unwrap_or(DEFAULT_SERVE_PORT);
    if host.eq_ignore_ascii_case("localhost") {
        return Ok((Ipv4Addr::LOCALHOST, p).into());
    }
    Err(format!(
        "'{host}' is not an IP address (e.g. 127.0.0.1:{DEFAULT_SERVE_PORT}, 0.0.0.0:{DEFAULT_SERVE_PORT}, [::1]:{DEFAULT_SERVE_PORT})"
    ))
}

pub fn parse_top(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=1000).contains(&n) => Ok(n),
        _ => Err(format!("'{s}' is not a number of processes from 1 to 1000")),
    }
}

/// clap's errors are several lines; users and scripts get one.
pub fn one_line_error(e: &clap::Error) -> String {
    let text = e.to_string();
    let first = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("bad usage");
    first.trim_start_matches("error: ").trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::{super::*, *};

    #[test]
    fn ports() {
        assert_eq!(parse_ports("80,443, 80"), Ok(PortList(vec![80, 443])));
        assert!(parse_ports("0").is_err());
        assert!(parse_ports("65536").is_err());
        assert!(parse_ports("80,,81").is_err());
        assert!(parse_ports("http").is_err());
        assert!(parse_ports("").is_err());
        let many: Vec<String> = (1..=17).map(|p| p.to_string()).collect();
        assert!(parse_ports(&many.join(",")).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2.5"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        for bad in ["0", "-1", "nan", "inf", "abc", "", "1e300"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_duration_or_zero("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn pids_and_sizes() {
        assert_eq!(parse_pid("1234"), Ok(1234));
        assert!(parse_pid("0").is_err());
        assert!(parse_pid("-3").is_err());
        assert!(parse_pid("99999999").is_err());
        assert_eq!(parse_ring_size("65536"), Ok(65536));
        assert!(parse_ring_size("5000").is_err());
        assert!(parse_ring_size("2048").is_err());
        assert!(parse_max_sockets("0").is_err());
    }

    #[test]
    fn cli_errors_are_one_line() {
        for argv in [
            &["tcptrace", "watch", "-4", "-6"][..],
            &["tcptrace", "watch", "--state", "CLOSE_WAT"],
            &["tcptrace", "watch", "-L", "80,x"],
            &["tcptrace", "watch", "--duration", "soon"],
            &["tcptrace", "bogus"],
        ] {
            let err = Cli::try_parse_from(argv).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{argv:?}");
            let line = one_line_error(&err);
            assert!(!line.is_empty() && !line.contains('\n'), "{line}");
        }
    }

    #[test]
    fn listen_addresses() {
        let ok = |s: &str| parse_listen(s).unwrap().to_string();
        assert_eq!(ok("127.0.0.1:9999"), "127.0.0.1:9999");
        assert_eq!(ok("0.0.0.0"), "0.0.0.0:10180");
        assert_eq!(ok("9999"), "127.0.0.1:9999");
        assert_eq!(ok("0"), "127.0.0.1:0");
        assert_eq!(ok("[::1]:9999"), "[::1]:9999");
        assert_eq!(ok("::"), "[::]:10180");
        assert_eq!(ok("[::1]"), "[::1]:10180");
        assert_eq!(ok("localhost"), "127.0.0.1:10180");
        assert_eq!(ok("LOCALHOST:81"), "127.0.0.1:81");
        for bad in [
            "",
            ":9999",
            "300.1.1.1:80",
            "127.0.0.1:99999",
            "127.0.0.1:http",
            "example.com:80",
            "foo",
            "[::1]:x",
            "1.2.3.4:",
        ] {
            let e = parse_listen(bad).unwrap_err();
            assert!(!e.contains('\n'), "{bad}: {e}");
        }
        assert!(parse_listen(":9999").unwrap_err().contains("0.0.0.0:9999"));
        let cli = Cli::try_parse_from(["tcptrace", "serve"]).unwrap();
        let Command::Serve(a) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(a.listen, default_listen());
        assert_eq!((a.top, a.interval), (20, Duration::from_secs(5)));
        assert!(parse_top("0").is_err() && parse_top("1001").is_err());
    }

    #[test]
    fn the_flags_make_one_selection() {
        let cli = Cli::try_parse_from([
            "tcptrace", "watch", "-p", "7", "-L", "80,443", "-D", "61616", "-6", "-c", "java",
        ])
        .unwrap();
        let Command::Watch(w) = cli.command else {
            panic!("not watch")
        };
        let s = w.filter.selection(&w.states);
        assert_eq!(s.pids, [7]);
        assert_eq!(
            (s.lports.as_slice(), s.rports.as_slice()),
            (&[80, 443][..], &[61616][..])
        );
        assert_eq!(s.family, Some(Family::V6));
        assert_eq!(
            s.comm.map(|c| c.text().into_owned()).as_deref(),
            Some("java")
        );
    }

    #[test]
    fn hist_value_enums_take_their_spellings() {
        let by = |v: &str| {
            let Command::Hist(h) = Cli::try_parse_from(["tcptrace", "hist", "--by", v])
                .unwrap()
                .command
            else {
                panic!("not hist")
            };
            h.by
        };
        assert_eq!(by("LPORT"), Some(GroupBy::Lport));
        assert_eq!(by("pid"), Some(GroupBy::Process));
        assert!(Cli::try_parse_from(["tcptrace", "hist", "--by", "port"]).is_err());
        let Command::Hist(h) =
            Cli::try_parse_from(["tcptrace", "hist", "--handshake", "Active-Close"])
                .unwrap()
                .command
        else {
            panic!("not hist")
        };
        assert_eq!(h.handshakes, [Handshake::ActiveClose]);
        assert_eq!(parse_interval("0.1"), Ok(crate::views::hist::MIN_INTERVAL));
        assert!(parse_interval("0.05").unwrap_err().contains("too short"));
        assert!(parse_interval("0").is_err());
    }
}

#[cfg(test)]
mod properties {
    //! Property tests over untrusted input: it must give a value or an
    //! error, never panic.
    use proptest::prelude::*;

    use crate::cli;

    proptest::proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..Default::default() })]

    #[test]
    fn value_parsers_never_panic(s in ".{0,40}") {
        let _ = cli::parse_ports(&s);
        let _ = cli::parse_pid(&s);
        let _ = cli::parse_state(&s);
        let _ = cli::parse_duration(&s);
        let _ = cli::parse_duration_or_zero(&s);
        let _ = cli::parse_ring_size(&s);
        let _ = cli::parse_max_sockets(&s);
    }

    #[test]
    fn port_lists_round_trip(ports in proptest::collection::vec(1u16.., 1..16)) {
        let text: Vec<String> = ports.iter().map(u16::to_string).collect();
        let parsed = cli::parse_ports(&text.join(",")).unwrap().0;
        let mut want = ports.clone();
        let mut seen = std::collections::HashSet::new();
        want.retain(|p| seen.insert(*p));
        prop_assert_eq!(parsed, want);
    }

    #[test]
    fn whole_command_lines_never_panic(args in proptest::collection::vec("[-a-zA-Z0-9_,.:]{0,12}", 0..6)) {
        let mut argv = vec!["tcptrace".to_owned(), "watch".to_owned()];
        argv.extend(args);
        if let Err(e) = <cli::Cli as clap::Parser>::try_parse_from(&argv) {
            let line = cli::one_line_error(&e);
            prop_assert!(!line.contains('\n'));
        }
    }
    }
}
