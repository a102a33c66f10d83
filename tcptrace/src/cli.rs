//! Command line: subcommands, shared filters and the value parsers, each
//! rejecting bad input with one line that says what was wrong.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tcptrace_common::{
    AF_INET, AF_INET6, DEFAULT_RING_BYTES, Filter, MAX_FILTER_PIDS, MAX_FILTER_PORTS,
};

use crate::{socket_table::DEFAULT_MAX_SOCKETS, state::TcpState};

const EXAMPLES: &str = "\
EXAMPLES:
    tcptrace watch                      # every TCP state change, with its owner
    tcptrace watch -T --state CLOSE_WAIT  # only transitions into or out of CLOSE_WAIT
    tcptrace watch -D 61616 --json      # NDJSON for connections to port 61616
    tcptrace watch -p 1234 -4           # IPv4 sockets owned by pid 1234
    tcptrace leaks                      # who holds CLOSE_WAIT sockets, live
    tcptrace leaks --once --json        # one snapshot of existing leaks, as JSON
    tcptrace leaks --check --min-age 5m # exit 3 if a leak is older than 5 minutes

EXIT STATUS:
    0 success, 1 runtime or environment error, 2 bad usage, 3 leaks found (leaks --check)";

#[derive(Parser, Debug)]
#[command(
    name = "tcptrace",
    version,
    about = "Trace TCP state transitions with eBPF and name the process that owns each socket",
    after_help = EXAMPLES
)]
pub struct Cli {
    /// Show diagnostics, including the kernel program's (repeat for more).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Stream every TCP state transition with the time spent in the previous state.
    #[command(after_help = EXAMPLES)]
    Watch(WatchArgs),
    /// Show which processes hold sockets in CLOSE_WAIT, how many, how old, to which peers.
    #[command(after_help = EXAMPLES)]
    Leaks(LeaksArgs),
}

#[derive(Args, Debug, Clone)]
pub struct FilterArgs {
    /// Only sockets owned by this process (repeatable).
    #[arg(short = 'p', long = "pid", value_name = "PID", value_parser = parse_pid)]
    pub pids: Vec<u32>,
    /// Only sockets whose owner's command name is exactly NAME.
    #[arg(short = 'c', long = "comm", value_name = "NAME")]
    pub comm: Option<String>,
    /// Only these local ports (comma list, e.g. 80,443).
    #[arg(short = 'L', long = "lport", value_name = "PORTS", value_parser = parse_ports)]
    pub lports: Option<PortList>,
    /// Only these remote ports (comma list).
    #[arg(short = 'D', long = "rport", value_name = "PORTS", value_parser = parse_ports)]
    pub rports: Option<PortList>,
    /// IPv4 only.
    #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6")]
    pub ipv4: bool,
    /// IPv6 only.
    #[arg(short = '6', long = "ipv6")]
    pub ipv6: bool,
}

#[derive(Args, Debug, Clone)]
pub struct TuningArgs {
    /// Ring buffer size in bytes (a power of two, at least 4096).
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_RING_BYTES, value_parser = parse_ring_size)]
    pub ring_size: u32,
    /// Most sockets tracked at once; the oldest are evicted (and counted) beyond it.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_SOCKETS, value_parser = parse_max_sockets)]
    pub max_sockets: usize,
}

#[derive(Args, Debug)]
pub struct WatchArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Only transitions into or out of STATE (repeatable), e.g. CLOSE_WAIT.
    #[arg(long = "state", value_name = "STATE", value_parser = parse_state)]
    pub states: Vec<TcpState>,
    /// Print wall-clock timestamps (HH:MM:SS.micros) instead of seconds since start.
    #[arg(short = 'T', long = "timestamp")]
    pub timestamp: bool,
    /// Stop after this long (e.g. 10, 2.5, 10s, 5m).
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// One JSON object per line (NDJSON).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub tuning: TuningArgs,
}

#[derive(Args, Debug)]
pub struct LeaksArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Refresh period of the live view.
    #[arg(long, value_name = "SECS", default_value = "2", value_parser = parse_duration)]
    pub interval: Duration,
    /// Print one snapshot of the sockets that exist now and exit.
    #[arg(long)]
    pub once: bool,
    /// One JSON object per process per refresh.
    #[arg(long)]
    pub json: bool,
    /// Exit 3 when a process holds at least --min-count CLOSE_WAIT sockets older than --min-age.
    #[arg(long)]
    pub check: bool,
    /// Age from which a CLOSE_WAIT socket counts as a leak (e.g. 30s, 5m).
    #[arg(long, value_name = "AGE", default_value = "0", value_parser = parse_duration_or_zero)]
    pub min_age: Duration,
    /// With --check: how many old CLOSE_WAIT sockets make a leak.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub min_count: u64,
    /// Stop after this long.
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    #[command(flatten)]
    pub tuning: TuningArgs,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortList(pub Vec<u16>);

impl FilterArgs {
    pub fn family(&self) -> u16 {
        if self.ipv4 {
            AF_INET
        } else if self.ipv6 {
            AF_INET6
        } else {
            0
        }
    }

    /// The part of the filter the kernel applies, so filtered traffic costs almost nothing.
    pub fn kernel_filter(&self) -> anyhow::Result<Filter> {
        let mut f = Filter::NONE;
        if self.pids.len() > MAX_FILTER_PIDS {
            anyhow::bail!("at most {MAX_FILTER_PIDS} --pid values");
        }
        for (slot, pid) in f.pids.iter_mut().zip(&self.pids) {
            *slot = *pid;
        }
        f.n_pids = self.pids.len() as u16;
        if let Some(PortList(ports)) = &self.lports {
            f.lports[..ports.len()].copy_from_slice(ports);
            f.n_lports = ports.len() as u16;
        }
        if let Some(PortList(ports)) = &self.rports {
            f.rports[..ports.len()].copy_from_slice(ports);
            f.n_rports = ports.len() as u16;
        }
        f.family = self.family();
        Ok(f)
    }
}

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
    s.parse()
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
    use super::*;

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
    fn kernel_filter_carries_the_flags() {
        let cli = Cli::try_parse_from([
            "tcptrace", "watch", "-p", "7", "-L", "80,443", "-D", "61616", "-6",
        ])
        .unwrap();
        let Command::Watch(w) = cli.command else {
            panic!("not watch")
        };
        let f = w.filter.kernel_filter().unwrap();
        assert_eq!((f.n_pids, f.pids[0]), (1, 7));
        assert_eq!((f.n_lports, &f.lports[..2]), (2, &[80, 443][..]));
        assert_eq!((f.n_rports, f.rports[0]), (1, 61616));
        assert_eq!(f.family, AF_INET6);
    }
}
