//! Network namespaces. Every pod and container has its own, with its own
//! sockets, which a sock_diag dump in tcptrace's namespace does not list.
//! Each distinct namespace (found in `/proc/*/ns/net` by the holder index's
//! scan) is read once, through one of its processes, by one of two routes:
//!
//! - [`Route::Inside`], with CAP_SYS_ADMIN: a sock_diag dump from inside
//!   it (a thread of ours enters it with setns), as `ip netns exec NS ss`
//!   does: with `tcp_info`, so the age of a CLOSE_WAIT socket older than
//!   tcptrace can be estimated;
//! - [`Route::ProcNet`], with only what reading `/proc` needs:
//!   `/proc/PID/net/tcp` and `tcp6`: the same sockets, states and inodes,
//!   but text and no `tcp_info`, so those ages are unknown.

use std::{
    fs::File,
    io::{self, BufRead, BufReader},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use anyhow::{Context as _, Result};
use tcptrace_common::{AF_INET, AF_INET6, TcpState};

use crate::host::{
    sockdiag::{self, DiagSocket},
    sys,
};

/// A network namespace, and processes in it to read it through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    /// Its inode number, as `ls -i /proc/PID/ns/net` or `lsns` show it.
    pub inode: u64,
    /// A few of its processes (the first one still alive is used).
    pub pids: Vec<u32>,
}

/// How the other namespaces' sockets are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// sock_diag inside each namespace (setns; CAP_SYS_ADMIN): with ages.
    Inside,
    /// `/proc/PID/net/tcp{,6}`: no CAP_SYS_ADMIN, no ages.
    ProcNet,
}

impl Route {
    /// The best this process may take.
    pub fn available() -> Self {
        if sys::has_capability(sys::CAP_SYS_ADMIN) {
            Self::Inside
        } else {
            Self::ProcNet
        }
    }
}

/// The inode of tcptrace's own network namespace.
pub fn own() -> io::Result<u64> {
    netns_of_link(&std::fs::read_link("/proc/thread-self/ns/net")?)
}

/// `net:[4026531840]` -> 4026531840.
pub fn netns_of_link(target: &Path) -> io::Result<u64> {
    let text = target.to_string_lossy();
    text.strip_prefix("net:[")
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| io::Error::other(format!("{text} is not a network namespace")))
}

/// The TCP sockets of every namespace.
#[derive(Debug, Default)]
pub struct HostSockets {
    /// Each socket carries its namespace ([`DiagSocket::netns`]).
    pub sockets: Vec<DiagSocket>,
    /// Namespaces read, tcptrace's own included.
    pub namespaces: usize,
    /// Namespaces that could not be read, and why (gone meanwhile is not
    /// among them: a namespace that disappears is no error).
    pub unreadable: Vec<(u64, String)>,
}

/// Dumps the TCP sockets in `states` ([`TcpState::mask`], widened) of
/// tcptrace's own namespace and of every other one in `namespaces`.
pub fn dump_all(
    namespaces: &[Namespace],
    states: u32,
    family: Option<u16>,
    route: Route,
) -> Result<HostSockets> {
    let own = own().context("reading /proc/thread-self/ns/net")?;
    let mut out = HostSockets::default();
    let mut route = route;
    let mut mine = match sockdiag::dump_tcp(states, family) {
        Ok(mine) => mine,
        // The kernel-wide handler is missing: every namespace lacks it.
        Err(e) if sockdiag::is_unavailable(&e) => {
            warn_sock_diag_missing(&e);
            route = Route::ProcNet;
            proc_net("thread-self", states, family)
                .context("reading /proc/thread-self/net/tcp instead of sock_diag")?
        }
        Err(e) => return Err(e),
    };
    mine.iter_mut().for_each(|s| s.netns = own);
    out.sockets = mine;
    out.namespaces = 1;
    let others: Vec<&Namespace> = namespaces.iter().filter(|n| n.inode != own).collect();
    if others.is_empty() {
        return Ok(out);
    }
    let results = match route {
        Route::ProcNet => others
            .iter()
            .map(|ns| {
                (
                    ns.inode,
                    through_pids(ns, |pid| proc_net(&pid.to_string(), states, family)),
                )
            })
            .collect(),
        // A thread of our own enters each namespace in turn: the tracer's
        // threads never leave theirs.
        Route::Inside => std::thread::scope(|s| {
            s.spawn(|| {
                others
                    .iter()
                    .map(|ns| {
                        (
                            ns.inode,
                            through_pids(ns, |pid| inside(pid, states, family)),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .join()
            .unwrap_or_default()
        }),
    };
    for (inode, result) in results {
        match result {
            Ok(Some(mut sockets)) => {
                sockets.iter_mut().for_each(|s| s.netns = inode);
                out.sockets.append(&mut sockets);
                out.namespaces += 1;
            }
            // Every process of it exited: the namespace is gone with them.
            Ok(None) => {}
            Err(e) => out.unreadable.push((inode, format!("{e:#}"))),
        }
    }
    Ok(out)
}

/// `read` through the first of the namespace's processes still alive;
/// `None` when all are gone.
fn through_pids(
    ns: &Namespace,
    mut read: impl FnMut(u32) -> io::Result<Vec<DiagSocket>>,
) -> Result<Option<Vec<DiagSocket>>> {
    let mut last = None;
    for &pid in &ns.pids {
        match read(pid) {
            Ok(s) => return Ok(Some(s)),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ESRCH)) => {}
            Err(e) => last = Some(e),
        }
    }
    match last {
        Some(e) => Err(e).with_context(|| format!("network namespace {}", ns.inode)),
        None => Ok(None),
    }
}

/// sock_diag from inside `pid`'s namespace; the calling thread stays there.
fn inside(pid: u32, states: u32, family: Option<u16>) -> io::Result<Vec<DiagSocket>> {
    let ns = File::open(format!("/proc/{pid}/ns/net"))?;
    sys::enter_netns(&ns)?;
    sockdiag::dump_tcp(states, family).map_err(io::Error::other)
}

/// Says once per run that sockets come from `/proc/net/tcp`, without ages:
/// what is missing and how to get it back.
fn warn_sock_diag_missing(why: &anyhow::Error) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        eprintln!(
            "tcptrace: warning: the kernel lists no TCP sockets through sock_diag ({why:#}): the tcp_diag module is not loaded and could not be loaded (modprobe tcp_diag, on the host); reading /proc/net/tcp instead, where the ages of sockets older than tcptrace are unknown"
        );
    });
}

/// `/proc/PROC/net/tcp` and `tcp6` (PROC a pid or `thread-self`), as
/// sockets in `states`.
fn proc_net(proc: &str, states: u32, family: Option<u16>) -> io::Result<Vec<DiagSocket>> {
    let mut out = Vec::new();
    for (af, file) in [(AF_INET, "tcp"), (AF_INET6, "tcp6")] {
        if family.is_some_and(|f| f != af) {
            continue;
        }
        let f = match File::open(format!("/proc/{proc}/net/{file}")) {
            Ok(f) => f,
            // A kernel without IPv6 has no tcp6.
            Err(e) if af == AF_INET6 && e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for line in BufReader::new(f).lines().skip(1) {
            if let Some(s) = parse_proc_net_line(&line?, af)
                && states & (1 << s.state) != 0
            {
                out.push(s);
            }
        }
    }
    Ok(out)
}

/// One line of `/proc/net/tcp{,6}`:
/// `  0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000 0 12345 ...`
/// Addresses are the kernel's words printed in host order, ports in hex.
pub fn parse_proc_net_line(line: &str, family: u16) -> Option<DiagSocket> {
    let mut f = line.split_ascii_whitespace();
    f.next()?; // sl
    let source = endpoint(f.next()?, family)?;
    let destination = endpoint(f.next()?, family)?;
    let state = u8::from_str_radix(f.next()?, 16).ok()?;
    TcpState::from_kernel(state)?;
    let mut f = f.skip(3); // tx:rx queues, timer, retransmits
    let uid = f.next()?.parse().ok()?;
    f.next()?; // timeout
    let inode = f.next()?.parse().ok()?;
    Some(DiagSocket::listed(
        family,
        state,
        source,
        destination,
        inode,
        uid,
    ))
}

fn endpoint(text: &str, family: u16) -> Option<(IpAddr, u16)> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = addr.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = match (family, addr.len()) {
        (AF_INET, 8) => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        (AF_INET6, 32) => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some((ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_lines_parse_as_the_kernel_prints_them() {
        let v4 = "   3: 0100007F:1F90 0200007F:A3C2 08 00000000:00000000 00:00000000 00000000  1000        0 123456 1 0000000000000000 20 4 30 10 -1";
        let s = parse_proc_net_line(v4, AF_INET).unwrap();
        assert_eq!(
            (s.saddr.to_string(), s.sport, s.daddr.to_string(), s.dport),
            ("127.0.0.1".into(), 8080, "127.0.0.2".into(), 41922)
        );
        assert_eq!((s.state, s.uid, s.inode), (8, 1000, 123456));
        let v6 = "   0: 0000000000000000FFFF00000100007F:E4D4 0000000000000000FFFF00000100007F:F0D0 01 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 20 4 30 10 -1";
        let s = parse_proc_net_line(v6, AF_INET6).unwrap();
        assert_eq!(s.saddr.to_string(), "::ffff:127.0.0.1");
        assert_eq!((s.sport, s.dport, s.state, s.inode), (58580, 61648, 1, 777));
        let lo6 = "   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5 1";
        assert_eq!(
            parse_proc_net_line(lo6, AF_INET6)
                .unwrap()
                .saddr
                .to_string(),
            "::1"
        );
        for bad in ["", "  sl  local_address rem_address   st", "0: zz:1 0:0 01"] {
            assert!(parse_proc_net_line(bad, AF_INET).is_none(), "{bad}");
        }
    }

    #[test]
    fn namespace_links() {
        assert_eq!(
            netns_of_link(Path::new("net:[4026531840]")).unwrap(),
            4026531840
        );
        assert!(netns_of_link(Path::new("mnt:[1]")).is_err());
        assert!(own().unwrap() > 0);
    }
}
