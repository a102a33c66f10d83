//! A small hand-made `NETLINK_SOCK_DIAG` client for TCP sockets (what `ss -t` does).
//!
//! At start tcptrace seeds its socket table from a dump of the TCP sockets that
//! already exist (so sockets stuck in CLOSE_WAIT are reported at once), and it
//! joins a 4-tuple to a socket inode when the kernel side had none.
//!
//! The age of an existing CLOSE_WAIT socket is unknown. [`TcpInfoLite`] carries
//! `tcpi_last_ack_recv` / `tcpi_last_data_recv` (milliseconds since the last
//! ACK / data segment was received): the peer's FIN carried the last ACK the
//! socket saw, so these are lower bounds for how long the FIN has been there.
//!
//! Wire layouts (all netlink header fields are host-endian; ports and addresses
//! are network order):
//! * `nlmsghdr` = {len u32, type u16, flags u16, seq u32, pid u32} (16 bytes)
//! * `inet_diag_req_v2` = {family u8, protocol u8, ext u8, pad u8, states u32, id} (56 bytes)
//! * `inet_diag_sockid` = {sport be16, dport be16, src [be32; 4], dst [be32; 4],
//!   if u32, cookie [u32; 2]} (48 bytes)
//! * `inet_diag_msg` = {family u8, state u8, timer u8, retrans u8, id, expires u32,
//!   rqueue u32, wqueue u32, uid u32, inode u32} (72 bytes), then `rtattr`s.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail};

use crate::host::sys;
#[cfg(test)]
use tcptrace_common::TcpState;

/// One TCP socket from an `inet_diag` reply.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DiagSocket {
    /// `libc::AF_INET` or `libc::AF_INET6`.
    pub family: u16,
    /// Kernel TCP state number (1 ESTABLISHED .. 12 NEW_SYN_RECV). Note that the
    /// kernel reports request sockets (`NEW_SYN_RECV`) as 3 (`SYN_RECV`) and
    /// time-wait mini sockets with their sub-state (6 `TIME_WAIT` or 5 `FIN_WAIT2`).
    pub state: u8,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    /// `idiag_inode`: 0 for sockets without a file (TIME_WAIT, request sockets,
    /// not-yet-accepted children, orphans after close()).
    pub inode: u64,
    pub uid: u32,
    /// `idiag_cookie` (`cookie[0] | cookie[1] << 32`), the same value as
    /// `bpf_get_socket_cookie()` / `SO_COOKIE`.
    pub cookie: u64,
    /// From the `INET_DIAG_INFO` attribute. `None` when the kernel sent none
    /// (TIME_WAIT and request sockets never carry one), it was too short, or
    /// the socket was read from `/proc/PID/net/tcp`.
    pub info: Option<TcpInfoLite>,
    /// Its network namespace's inode; 0 until the caller sets it (a dump
    /// sees the namespace of the thread that makes it).
    pub netns: u64,
}

impl DiagSocket {
    /// What every source lists of a socket (sock_diag and `/proc/net/tcp`
    /// alike); the cookie, `tcp_info` and namespace are the caller's to add.
    pub fn listed(
        family: u16,
        state: u8,
        (saddr, sport): (IpAddr, u16),
        (daddr, dport): (IpAddr, u16),
        inode: u64,
        uid: u32,
    ) -> Self {
        Self {
            family,
            state,
            saddr,
            sport,
            daddr,
            dport,
            inode,
            uid,
            cookie: 0,
            info: None,
            netns: 0,
        }
    }
}

/// The few `struct tcp_info` fields tcptrace needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct TcpInfoLite {
    /// `tcpi_last_data_sent`: ms since data was last sent.
    pub last_data_sent_ms: u32,
    /// `tcpi_last_ack_recv`: ms since an ACK was last received.
    pub last_ack_recv_ms: u32,
    /// `tcpi_last_data_recv`: ms since data was last received.
    pub last_data_recv_ms: u32,
    /// `tcpi_rtt`: smoothed RTT in µs.
    pub rtt_us: u32,
}

/// Whether a buffer finished the reply ([`ParseStatus::Done`]) or more
/// datagrams must be read ([`ParseStatus::More`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseStatus {
    More,
    Done,
}

/// An `NLMSG_ERROR` (or an error in `NLMSG_DONE`) sent by the kernel.
/// Reachable with `anyhow::Error::downcast_ref::<NetlinkError>()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetlinkError {
    /// Positive errno (e.g. `libc::ENOENT`).
    pub errno: i32,
}

impl std::fmt::Display for NetlinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sock_diag netlink error: {}",
            io::Error::from_raw_os_error(self.errno)
        )
    }
}

impl std::error::Error for NetlinkError {}

/// Whether `err` (from [`dump_tcp`]) means this kernel cannot list TCP
/// sockets through sock_diag at all: no TCP handler (ENOENT: `tcp_diag` is a
/// module, not loaded, and the kernel could not load it, as in a locked-down
/// container) or no sock_diag netlink family (EPROTONOSUPPORT).
pub fn is_unavailable(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<NetlinkError>()
            .is_some_and(|e| e.errno == libc::ENOENT)
            || cause
                .downcast_ref::<io::Error>()
                .and_then(io::Error::raw_os_error)
                .is_some_and(|errno| errno == libc::EPROTONOSUPPORT)
    })
}

// Netlink constants (linux/netlink.h, linux/sock_diag.h, linux/inet_diag.h).
const NLMSG_HDRLEN: usize = 16;
const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_OVERRUN: u16 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_MULTI: u16 = 0x2;
const NLM_F_DUMP_INTR: u16 = 0x10;
const NLM_F_DUMP: u16 = 0x100 | 0x200; // NLM_F_ROOT | NLM_F_MATCH
const NLA_TYPE_MASK: u16 = 0x3fff; // without NLA_F_NESTED / NLA_F_NET_BYTEORDER
const INET_DIAG_INFO: u16 = 2;
const INET_DIAG_REQ_V2_LEN: usize = 56;
const INET_DIAG_MSG_LEN: usize = 72;
const REQUEST_LEN: usize = NLMSG_HDRLEN + INET_DIAG_REQ_V2_LEN;

// Byte offsets in struct tcp_info (linux/tcp.h): 8 u8 fields, then u32s
// rto@8 ato@12 snd_mss@16 rcv_mss@20 unacked@24 sacked@28 lost@32 retrans@36
// fackets@40 last_data_sent@44 last_ack_sent@48 last_data_recv@52
// last_ack_recv@56 pmtu@60 rcv_ssthresh@64 rtt@68.
const TCPI_LAST_DATA_SENT: usize = 44;
const TCPI_LAST_DATA_RECV: usize = 52;
const TCPI_LAST_ACK_RECV: usize = 56;
const TCPI_RTT: usize = 68;
/// Shortest `INET_DIAG_INFO` payload holding every field we read.
const TCP_INFO_MIN_LEN: usize = TCPI_RTT + 4;

/// Receive buffer. The kernel sizes dump datagrams from our recv length but
/// caps them at 32 KiB (+ headers); 64 KiB is always enough, and a truncated
/// datagram is detected (MSG_TRUNC) anyway.
const RECV_BUF_LEN: usize = 64 * 1024;
/// Safety net: a sock_diag reply should never take this long.
const RECV_TIMEOUT_SECS: libc::time_t = 10;

static NEXT_SEQ: AtomicU32 = AtomicU32::new(1);

/// Dump TCP sockets in the given `states` (a [`TcpState::mask`], widened) for one family (`Some(AF_INET)` /
/// `Some(AF_INET6)`) or both (`None`), requesting `INET_DIAG_INFO` so that
/// `info` is filled (except for TIME_WAIT / request sockets, which have none).
///
/// Only sockets of the caller's network namespace are seen. Works unprivileged.
pub fn dump_tcp(states: u32, family: Option<u16>) -> Result<Vec<DiagSocket>> {
    let families: &[u16] = match family {
        None => &[libc::AF_INET as u16, libc::AF_INET6 as u16],
        Some(f) if f == libc::AF_INET as u16 => &[libc::AF_INET as u16],
        Some(f) if f == libc::AF_INET6 as u16 => &[libc::AF_INET6 as u16],
        Some(f) => bail!("dump_tcp: unsupported address family {f}"),
    };
    let sock = DiagSocketFd::open()?;
    let mut out = Vec::new();
    for &fam in families {
        let seq = NEXT_SEQ.fetch_add(1, Ordering::Relaxed);
        let req = encode_request(
            seq,
            NLM_F_REQUEST | NLM_F_DUMP,
            fam as u8,
            states,
            &SockId::default(),
        );
        sock.transact(&req, seq, &mut out)
            .with_context(|| format!("sock_diag dump of TCP sockets (family {fam})"))?;
    }
    Ok(out)
}

/// Parse one netlink datagram of `SOCK_DIAG_BY_FAMILY` replies, appending the
/// sockets to `out`.
///
/// Returns [`ParseStatus::Done`] at `NLMSG_DONE` (later bytes are ignored) or
/// after a reply that is not part of a multi-part dump, [`ParseStatus::More`]
/// otherwise. `NLMSG_ERROR` (and `NLMSG_DONE` carrying a negative code) becomes
/// an error wrapping [`NetlinkError`]. Malformed input is an error, never a panic;
/// sockets parsed before the error stay in `out`.
#[cfg(test)]
pub fn parse_messages(buf: &[u8], out: &mut Vec<DiagSocket>) -> Result<ParseStatus> {
    parse_datagram(buf, None, out)
}

fn parse_datagram(
    buf: &[u8],
    expect_seq: Option<u32>,
    out: &mut Vec<DiagSocket>,
) -> Result<ParseStatus> {
    let mut off = 0usize;
    let mut single_reply = false;
    while off < buf.len() {
        let rest = &buf[off..];
        if rest.len() < NLMSG_HDRLEN {
            bail!(
                "truncated netlink header at offset {off}: {} bytes left",
                rest.len()
            );
        }
        let len = rd_u32(rest, 0)? as usize;
        let ty = rd_u16(rest, 4)?;
        let flags = rd_u16(rest, 6)?;
        let seq = rd_u32(rest, 8)?;
        if len < NLMSG_HDRLEN || len > rest.len() {
            bail!(
                "bad nlmsg_len {len} at offset {off} ({} bytes left)",
                rest.len()
            );
        }
        let payload = &rest[NLMSG_HDRLEN..len];
        off += align4(len).min(rest.len());

        if let Some(want) = expect_seq
            && seq != want
        {
            bail!("netlink reply with sequence {seq}, expected {want}");
        }
        if flags & NLM_F_DUMP_INTR != 0 {
            log::debug!("sock_diag dump was interrupted (NLM_F_DUMP_INTR); it may be inconsistent");
        }
        match ty {
            NLMSG_NOOP => continue,
            NLMSG_DONE => {
                // The kernel puts an int (0, or -errno) after the header.
                if payload.len() >= 4 {
                    let code = rd_i32(payload, 0)?;
                    if code < 0 {
                        return Err(NetlinkError {
                            errno: code.saturating_neg(),
                        }
                        .into());
                    }
                }
                return Ok(ParseStatus::Done);
            }
            NLMSG_ERROR => {
                if payload.len() < 4 {
                    bail!("truncated NLMSG_ERROR ({} bytes)", payload.len());
                }
                let code = rd_i32(payload, 0)?;
                if code == 0 {
                    // An ACK: ends a non-dump request.
                    return Ok(ParseStatus::Done);
                }
                return Err(NetlinkError {
                    errno: code.saturating_abs(),
                }
                .into());
            }
            NLMSG_OVERRUN => bail!("netlink overrun: data lost"),
            SOCK_DIAG_BY_FAMILY => {
                out.push(
                    parse_inet_diag_msg(payload)
                        .with_context(|| format!("inet_diag_msg at offset {off}"))?,
                );
                if flags & NLM_F_MULTI == 0 {
                    single_reply = true;
                }
            }
            other => bail!("unexpected netlink message type {other}"),
        }
    }
    Ok(if single_reply {
        ParseStatus::Done
    } else {
        ParseStatus::More
    })
}

/// One `inet_diag_msg` plus its attributes (the nlmsg payload).
fn parse_inet_diag_msg(p: &[u8]) -> Result<DiagSocket> {
    if p.len() < INET_DIAG_MSG_LEN {
        bail!(
            "inet_diag_msg too short: {} < {INET_DIAG_MSG_LEN} bytes",
            p.len()
        );
    }
    let family = u16::from(p[0]);
    let state = p[1];
    let sport = rd_u16_be(p, 4)?;
    let dport = rd_u16_be(p, 6)?;
    let src: [u8; 16] = rd_array(p, 8)?;
    let dst: [u8; 16] = rd_array(p, 24)?;
    let cookie = u64::from(rd_u32(p, 44)?) | (u64::from(rd_u32(p, 48)?) << 32);
    let uid = rd_u32(p, 64)?;
    let inode = u64::from(rd_u32(p, 68)?);
    let (saddr, daddr) = if family == libc::AF_INET as u16 {
        (ipv4(&src), ipv4(&dst))
    } else if family == libc::AF_INET6 as u16 {
        (
            IpAddr::V6(Ipv6Addr::from(src)),
            IpAddr::V6(Ipv6Addr::from(dst)),
        )
    } else {
        bail!("inet_diag_msg of unexpected family {family}");
    };

    let mut info = None;
    let mut attrs = &p[align4(INET_DIAG_MSG_LEN).min(p.len())..];
    // Trailing bytes too short for an rtattr header are ignored (as RTA_OK does).
    while attrs.len() >= 4 {
        let rta_len = usize::from(rd_u16(attrs, 0)?);
        let rta_type = rd_u16(attrs, 2)? & NLA_TYPE_MASK;
        if rta_len < 4 || rta_len > attrs.len() {
            bail!("bad rta_len {rta_len} ({} bytes left)", attrs.len());
        }
        if rta_type == INET_DIAG_INFO {
            info = parse_tcp_info(&attrs[4..rta_len]);
        }
        attrs = &attrs[align4(rta_len).min(attrs.len())..];
    }

    Ok(DiagSocket {
        cookie,
        info,
        ..DiagSocket::listed(family, state, (saddr, sport), (daddr, dport), inode, uid)
    })
}

/// `struct tcp_info` payload; `None` if it is too short for our fields.
fn parse_tcp_info(p: &[u8]) -> Option<TcpInfoLite> {
    if p.len() < TCP_INFO_MIN_LEN {
        return None;
    }
    Some(TcpInfoLite {
        last_data_sent_ms: rd_u32(p, TCPI_LAST_DATA_SENT).ok()?,
        last_ack_recv_ms: rd_u32(p, TCPI_LAST_ACK_RECV).ok()?,
        last_data_recv_ms: rd_u32(p, TCPI_LAST_DATA_RECV).ok()?,
        rtt_us: rd_u32(p, TCPI_RTT).ok()?,
    })
}

fn ipv4(a: &[u8; 16]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
}

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

// Bounds-checked readers: never panic, error on short input.
fn rd_array<const N: usize>(b: &[u8], off: usize) -> Result<[u8; N]> {
    off.checked_add(N)
        .and_then(|end| b.get(off..end))
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .with_context(|| format!("read of {N} bytes at {off} past end ({} bytes)", b.len()))
}
fn rd_u16(b: &[u8], off: usize) -> Result<u16> {
    rd_array(b, off).map(u16::from_ne_bytes)
}
fn rd_u16_be(b: &[u8], off: usize) -> Result<u16> {
    rd_array(b, off).map(u16::from_be_bytes)
}
fn rd_u32(b: &[u8], off: usize) -> Result<u32> {
    rd_array(b, off).map(u32::from_ne_bytes)
}
fn rd_i32(b: &[u8], off: usize) -> Result<i32> {
    rd_array(b, off).map(i32::from_ne_bytes)
}

/// `struct inet_diag_sockid`, host representation (addresses as raw network-order bytes).
#[derive(Default)]
struct SockId {
    sport: u16,
    dport: u16,
    src: [u8; 16],
    dst: [u8; 16],
    ifindex: u32,
    cookie: [u32; 2],
}

impl SockId {
    fn encode(&self, v: &mut Vec<u8>) {
        v.extend_from_slice(&self.sport.to_be_bytes());
        v.extend_from_slice(&self.dport.to_be_bytes());
        v.extend_from_slice(&self.src);
        v.extend_from_slice(&self.dst);
        v.extend_from_slice(&self.ifindex.to_ne_bytes());
        v.extend_from_slice(&self.cookie[0].to_ne_bytes());
        v.extend_from_slice(&self.cookie[1].to_ne_bytes());
    }
}

/// nlmsghdr + inet_diag_req_v2 for TCP, asking for INET_DIAG_INFO.
fn encode_request(seq: u32, flags: u16, family: u8, states: u32, id: &SockId) -> Vec<u8> {
    let mut v = Vec::with_capacity(REQUEST_LEN);
    v.extend_from_slice(&(REQUEST_LEN as u32).to_ne_bytes());
    v.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    v.extend_from_slice(&flags.to_ne_bytes());
    v.extend_from_slice(&seq.to_ne_bytes());
    v.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel fills in ours
    v.push(family);
    v.push(libc::IPPROTO_TCP as u8);
    v.push(1 << (INET_DIAG_INFO - 1)); // idiag_ext
    v.push(0); // pad
    v.extend_from_slice(&states.to_ne_bytes());
    id.encode(&mut v);
    debug_assert_eq!(v.len(), REQUEST_LEN);
    v
}

/// An `AF_NETLINK`/`NETLINK_SOCK_DIAG` socket.
struct DiagSocketFd(OwnedFd);

impl DiagSocketFd {
    fn open() -> Result<Self> {
        sys::netlink_socket(libc::NETLINK_SOCK_DIAG, RECV_TIMEOUT_SECS)
            .map(Self)
            .context("socket(AF_NETLINK, NETLINK_SOCK_DIAG)")
    }

    /// Send one request and read replies until it is complete.
    fn transact(&self, req: &[u8], seq: u32, out: &mut Vec<DiagSocket>) -> Result<()> {
        self.send(req)?;
        let mut buf = vec![0u8; RECV_BUF_LEN];
        loop {
            let n = self.recv(&mut buf)?;
            if n == 0 {
                bail!("netlink socket returned end of file before NLMSG_DONE");
            }
            if parse_datagram(&buf[..n], Some(seq), out)? == ParseStatus::Done {
                return Ok(());
            }
        }
    }

    fn send(&self, req: &[u8]) -> Result<()> {
        loop {
            match sys::send_to_kernel(&self.0, req) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("sendto(netlink sock_diag)"),
                Ok(n) if n != req.len() => bail!("short netlink send: {n} of {} bytes", req.len()),
                Ok(_) => return Ok(()),
            }
        }
    }

    /// One datagram; errors if it did not fit in `buf`.
    fn recv(&self, buf: &mut [u8]) -> Result<usize> {
        loop {
            match sys::recv_datagram(&self.0, buf) {
                Err(e) => match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                        bail!("no sock_diag reply within {RECV_TIMEOUT_SECS} s")
                    }
                    _ => return Err(e).context("recvmsg(netlink sock_diag)"),
                },
                Ok((_, true)) => bail!(
                    "netlink datagram truncated (larger than {} bytes)",
                    buf.len()
                ),
                Ok((n, false)) => return Ok(n),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_without_tcp_diag_is_told_from_other_failures() {
        let missing = anyhow::Error::from(NetlinkError {
            errno: libc::ENOENT,
        })
        .context("sock_diag dump of TCP sockets (family 2)");
        assert!(is_unavailable(&missing));
        let no_family = anyhow::Error::from(io::Error::from_raw_os_error(libc::EPROTONOSUPPORT))
            .context("socket(AF_NETLINK, NETLINK_SOCK_DIAG)");
        assert!(is_unavailable(&no_family));
        let refused = anyhow::Error::from(NetlinkError {
            errno: libc::EACCES,
        });
        assert!(!is_unavailable(&refused));
    }
    use std::io::{Read, Write};
    use std::net::SocketAddr;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    use std::time::{Duration, Instant};

    const AF_INET: u16 = libc::AF_INET as u16;
    const AF_INET6: u16 = libc::AF_INET6 as u16;

    fn inode_of(fd: &impl AsRawFd) -> u64 {
        std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .unwrap()
            .ino()
    }

    fn find(socks: &[DiagSocket], local: SocketAddr, remote: SocketAddr) -> Option<&DiagSocket> {
        socks.iter().find(|s| {
            s.sport == local.port()
                && s.dport == remote.port()
                && s.saddr == local.ip()
                && s.daddr == remote.ip()
        })
    }

    /// Poll `dump_tcp` until `pred` finds a socket (up to ~2 s).
    fn poll_for(
        states: u32,
        family: Option<u16>,
        pred: impl Fn(&DiagSocket) -> bool,
    ) -> Option<DiagSocket> {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let socks = dump_tcp(states, family).unwrap();
            if let Some(s) = socks.into_iter().find(&pred) {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn check_loopback_pair(bind: &str, family: u16) {
        let listener = match TcpListener::bind(bind) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("skipping: cannot bind {bind}: {e}");
                return;
            }
        };
        let laddr = listener.local_addr().unwrap();
        let client = TcpStream::connect(laddr).unwrap();
        let caddr = client.local_addr().unwrap();
        let uid = sys::effective_uid();

        // Before accept() the server-side child exists but has no file: inode 0.
        let child = poll_for(u32::from(TcpState::Established.bit()), Some(family), |s| {
            s.sport == laddr.port() && s.dport == caddr.port()
        })
        .expect("server-side child socket not found");
        assert_eq!(child.inode, 0, "{child:?}");

        let (server, peer) = listener.accept().unwrap();
        assert_eq!(peer, caddr);

        let states = u32::from(TcpState::mask(&[TcpState::Established, TcpState::Listen]));
        let socks = dump_tcp(states, None).unwrap();

        let l = socks
            .iter()
            .find(|s| s.state == TcpState::Listen as u8 && s.sport == laddr.port())
            .expect("listener not found");
        assert_eq!(l.family, family);
        assert_eq!(l.saddr, laddr.ip());
        assert_eq!(l.dport, 0);
        assert_eq!(l.inode, inode_of(&listener));
        assert_eq!(l.uid, uid);
        assert!(l.info.is_some());

        let c = find(&socks, caddr, laddr).expect("client not found");
        assert_eq!(c.family, family);
        assert_eq!(c.state, TcpState::Established as u8);
        assert_eq!(c.inode, inode_of(&client));
        assert_eq!(c.uid, uid);
        assert!(c.info.is_some());

        let s = find(&socks, laddr, caddr).expect("server side not found");
        assert_eq!(s.family, family);
        assert_eq!(s.state, TcpState::Established as u8);
        assert_eq!(s.inode, inode_of(&server));
        assert_eq!(s.cookie, child.cookie, "accept() keeps the socket");
        assert!(s.info.is_some());

        assert_ne!(c.cookie, 0);
        assert_ne!(c.cookie, s.cookie);
        assert_ne!(l.cookie, s.cookie);
    }

    #[test]
    fn loopback_ipv4_established_and_listen() {
        check_loopback_pair("127.0.0.1:0", AF_INET);
    }

    #[test]
    fn loopback_ipv6_established_and_listen() {
        check_loopback_pair("[::1]:0", AF_INET6);
    }

    #[test]
    fn close_wait_with_tcp_info_ages() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let laddr = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(laddr).unwrap();
        let caddr = client.local_addr().unwrap();
        let (server, _) = listener.accept().unwrap();
        client.write_all(b"hello").unwrap();
        let mut got = [0u8; 5];
        (&server).read_exact(&mut got).unwrap();
        drop(client); // FIN to the server, which then sits in CLOSE_WAIT

        let cw = poll_for(u32::from(TcpState::CloseWait.bit()), Some(AF_INET), |s| {
            s.sport == laddr.port() && s.dport == caddr.port()
        })
        .expect("server socket never reached CLOSE_WAIT");
        assert_eq!(cw.state, TcpState::CloseWait as u8);
        assert_eq!(cw.inode, inode_of(&server));
        let info = cw.info.expect("tcp_info");
        assert!(info.last_ack_recv_ms < 2000, "{info:?}");
        assert!(info.last_data_recv_ms < 2000, "{info:?}");

        std::thread::sleep(Duration::from_millis(300));
        let later = dump_tcp(u32::from(TcpState::CloseWait.bit()), Some(AF_INET))
            .unwrap()
            .into_iter()
            .find(|s| s.cookie == cw.cookie)
            .expect("CLOSE_WAIT socket gone");
        let info2 = later.info.expect("tcp_info");
        assert!(info2.last_ack_recv_ms >= 250, "{info2:?}");
        assert!(
            info2.last_ack_recv_ms >= info.last_ack_recv_ms + 250,
            "{info:?} {info2:?}"
        );
        assert!(
            info2.last_data_recv_ms >= info2.last_ack_recv_ms,
            "{info2:?}"
        );
        drop(server);
    }

    #[test]
    fn family_filter() {
        let v4 = TcpListener::bind("127.0.0.1:0").unwrap();
        let v6 = TcpListener::bind("[::1]:0").ok();
        let socks = dump_tcp(u32::from(TcpState::mask(&TcpState::ALL)), Some(AF_INET6)).unwrap();
        assert!(
            socks
                .iter()
                .all(|s| s.family == AF_INET6 && s.saddr.is_ipv6() && s.daddr.is_ipv6())
        );
        assert!(
            !socks
                .iter()
                .any(|s| s.sport == v4.local_addr().unwrap().port()
                    && s.saddr == v4.local_addr().unwrap().ip())
        );
        if let Some(v6) = &v6 {
            let port = v6.local_addr().unwrap().port();
            assert!(
                socks
                    .iter()
                    .any(|s| s.sport == port && s.state == TcpState::Listen as u8)
            );
        }

        let socks = dump_tcp(u32::from(TcpState::mask(&TcpState::ALL)), Some(AF_INET)).unwrap();
        assert!(
            socks
                .iter()
                .all(|s| s.family == AF_INET && s.saddr.is_ipv4() && s.daddr.is_ipv4())
        );
        let port = v4.local_addr().unwrap().port();
        assert!(
            socks
                .iter()
                .any(|s| s.sport == port && s.state == TcpState::Listen as u8)
        );

        assert!(
            dump_tcp(
                u32::from(TcpState::mask(&TcpState::ALL)),
                Some(libc::AF_UNIX as u16)
            )
            .is_err()
        );
    }

    // ---- hand-made buffers ----

    fn nlmsg(ty: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((NLMSG_HDRLEN + payload.len()) as u32).to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(&flags.to_ne_bytes());
        v.extend_from_slice(&seq.to_ne_bytes());
        v.extend_from_slice(&4242u32.to_ne_bytes());
        v.extend_from_slice(payload);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    fn rtattr(ty: u16, data: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(data);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    fn tcp_info_bytes(len: usize) -> Vec<u8> {
        let mut t = vec![0u8; len];
        t[0] = TcpState::CloseWait as u8;
        for (off, val) in [
            (TCPI_LAST_DATA_SENT, 1111u32),
            (TCPI_LAST_DATA_RECV, 3333),
            (TCPI_LAST_ACK_RECV, 2222),
            (TCPI_RTT, 44),
        ] {
            if off + 4 <= len {
                t[off..off + 4].copy_from_slice(&val.to_ne_bytes());
            }
        }
        t
    }

    fn diag_msg(family: u8, src: [u8; 16], dst: [u8; 16], attrs: &[Vec<u8>]) -> Vec<u8> {
        let mut p = vec![family, TcpState::CloseWait as u8, 0, 0];
        SockId {
            sport: 8080,
            dport: 54321,
            src,
            dst,
            ifindex: 0,
            cookie: [0x89ab_cdef, 0x0123_4567],
        }
        .encode(&mut p);
        for v in [0u32, 0, 0, 1000, 123_456] {
            // expires, rqueue, wqueue, uid, inode
            p.extend_from_slice(&v.to_ne_bytes());
        }
        assert_eq!(p.len(), INET_DIAG_MSG_LEN);
        for a in attrs {
            p.extend_from_slice(a);
        }
        p
    }

    fn v4_bytes(a: [u8; 4]) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&a);
        b
    }

    fn sample_buffer() -> Vec<u8> {
        let msg = diag_msg(
            libc::AF_INET as u8,
            v4_bytes([10, 0, 0, 1]),
            v4_bytes([192, 168, 1, 2]),
            &[
                rtattr(9, b"cubic\0"), // INET_DIAG_CONG
                rtattr(INET_DIAG_INFO, &tcp_info_bytes(232)),
            ],
        );
        let mut buf = nlmsg(SOCK_DIAG_BY_FAMILY, NLM_F_MULTI, 7, &msg);
        buf.extend(nlmsg(NLMSG_DONE, NLM_F_MULTI, 7, &0i32.to_ne_bytes()));
        buf
    }

    fn sample_expected() -> DiagSocket {
        DiagSocket {
            family: AF_INET,
            state: TcpState::CloseWait as u8,
            saddr: "10.0.0.1".parse().unwrap(),
            sport: 8080,
            daddr: "192.168.1.2".parse().unwrap(),
            dport: 54321,
            inode: 123_456,
            uid: 1000,
            cookie: 0x0123_4567_89ab_cdef,
            netns: 0,
            info: Some(TcpInfoLite {
                last_data_sent_ms: 1111,
                last_ack_recv_ms: 2222,
                last_data_recv_ms: 3333,
                rtt_us: 44,
            }),
        }
    }

    #[test]
    fn parse_well_formed_buffer() {
        let buf = sample_buffer();
        let mut out = Vec::new();
        assert_eq!(parse_messages(&buf, &mut out).unwrap(), ParseStatus::Done);
        assert_eq!(out, vec![sample_expected()]);

        // Without NLMSG_DONE a multi-part reply wants more.
        let first_len = NLMSG_HDRLEN + INET_DIAG_MSG_LEN + 12 + 236;
        let mut out = Vec::new();
        assert_eq!(
            parse_messages(&buf[..first_len], &mut out).unwrap(),
            ParseStatus::More
        );
        assert_eq!(out, vec![sample_expected()]);
        // An empty datagram is nothing yet.
        assert_eq!(parse_messages(&[], &mut out).unwrap(), ParseStatus::More);
    }

    #[test]
    fn parse_ipv6_short_info_and_single_reply() {
        let src: Ipv6Addr = "::ffff:10.1.2.3".parse().unwrap();
        let dst: Ipv6Addr = "2001:db8::1".parse().unwrap();
        // tcp_info too short for tcpi_rtt: info is None.
        let msg = diag_msg(
            libc::AF_INET6 as u8,
            src.octets(),
            dst.octets(),
            &[rtattr(
                INET_DIAG_INFO,
                &tcp_info_bytes(TCP_INFO_MIN_LEN - 4),
            )],
        );
        // Not NLM_F_MULTI: an exact-lookup answer, complete by itself.
        let buf = nlmsg(SOCK_DIAG_BY_FAMILY, 0, 1, &msg);
        let mut out = Vec::new();
        assert_eq!(parse_messages(&buf, &mut out).unwrap(), ParseStatus::Done);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].family, AF_INET6);
        assert_eq!(out[0].saddr, IpAddr::V6(src), "mapped address stays IPv6");
        assert_eq!(out[0].daddr, IpAddr::V6(dst));
        assert_eq!(out[0].info, None);

        // Exactly long enough.
        let msg = diag_msg(
            libc::AF_INET6 as u8,
            src.octets(),
            dst.octets(),
            &[rtattr(INET_DIAG_INFO, &tcp_info_bytes(TCP_INFO_MIN_LEN))],
        );
        let mut out = Vec::new();
        parse_messages(&nlmsg(SOCK_DIAG_BY_FAMILY, 0, 1, &msg), &mut out).unwrap();
        assert_eq!(out[0].info, sample_expected().info);
    }

    #[test]
    fn parse_errors() {
        let mut out = Vec::new();
        // NLMSG_ERROR carries -errno.
        let mut e = (-libc::ENOENT).to_ne_bytes().to_vec();
        e.extend_from_slice(&[0u8; 16]);
        let err = parse_messages(&nlmsg(NLMSG_ERROR, 0, 1, &e), &mut out).unwrap_err();
        assert_eq!(
            err.downcast_ref::<NetlinkError>(),
            Some(&NetlinkError {
                errno: libc::ENOENT
            })
        );
        // NLMSG_DONE with an error code.
        let err = parse_messages(
            &nlmsg(NLMSG_DONE, NLM_F_MULTI, 1, &(-libc::EINVAL).to_ne_bytes()),
            &mut out,
        )
        .unwrap_err();
        assert_eq!(
            err.downcast_ref::<NetlinkError>().map(|e| e.errno),
            Some(libc::EINVAL)
        );
        // NLMSG_ERROR too short for its code; overrun; unknown type.
        assert!(parse_messages(&nlmsg(NLMSG_ERROR, 0, 1, &[1, 2]), &mut out).is_err());
        assert!(parse_messages(&nlmsg(NLMSG_OVERRUN, 0, 1, &[]), &mut out).is_err());
        assert!(parse_messages(&nlmsg(99, 0, 1, &[]), &mut out).is_err());
        // nlmsg_len smaller than the header, or past the buffer.
        let mut buf = sample_buffer();
        buf[..4].copy_from_slice(&8u32.to_ne_bytes());
        assert!(parse_messages(&buf, &mut out).is_err());
        buf[..4].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(parse_messages(&buf, &mut out).is_err());
        // inet_diag_msg too short.
        assert!(parse_messages(&nlmsg(SOCK_DIAG_BY_FAMILY, 0, 1, &[2; 40]), &mut out).is_err());
        // Unknown address family.
        let msg = diag_msg(1, [0; 16], [0; 16], &[]);
        assert!(parse_messages(&nlmsg(SOCK_DIAG_BY_FAMILY, 0, 1, &msg), &mut out).is_err());
        // rta_len past the message / below the header.
        for bad in [500u16, 2] {
            let mut msg = diag_msg(2, [0; 16], [0; 16], &[rtattr(9, b"cubic\0")]);
            msg[INET_DIAG_MSG_LEN..INET_DIAG_MSG_LEN + 2].copy_from_slice(&bad.to_ne_bytes());
            assert!(
                parse_messages(&nlmsg(SOCK_DIAG_BY_FAMILY, 0, 1, &msg), &mut out).is_err(),
                "rta_len {bad}"
            );
        }
        // Garbage.
        assert!(parse_messages(&[0xff; 3], &mut out).is_err());
        assert!(parse_messages(&[0xff; 100], &mut out).is_err());
    }

    #[test]
    fn parse_truncated_and_mutated_never_panics() {
        let buf = sample_buffer();
        let first_len = NLMSG_HDRLEN + INET_DIAG_MSG_LEN + 12 + 236;
        for cut in 1..buf.len() {
            let mut out = Vec::new();
            let r = parse_messages(&buf[..cut], &mut out);
            // Cutting anywhere but at a message boundary must be an error.
            if cut == first_len {
                assert_eq!(r.unwrap(), ParseStatus::More);
            } else {
                assert!(r.is_err(), "prefix of {cut} bytes parsed: {out:?}");
            }
        }
        // Random mutations and random bytes (xorshift; deterministic).
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let mut m = buf.clone();
            for _ in 0..1 + rnd() % 4 {
                let i = (rnd() as usize) % m.len();
                m[i] = rnd() as u8;
            }
            let cut = (rnd() as usize) % (m.len() + 1);
            let _ = parse_messages(&m[..cut], &mut Vec::new());
            let junk: Vec<u8> = (0..rnd() % 300).map(|_| rnd() as u8).collect();
            let _ = parse_messages(&junk, &mut Vec::new());
        }
    }

    #[test]
    fn request_layout() {
        let req = encode_request(
            5,
            NLM_F_REQUEST | NLM_F_DUMP,
            libc::AF_INET as u8,
            u32::from(TcpState::mask(&TcpState::ALL)),
            &SockId::default(),
        );
        assert_eq!(req.len(), 72);
        assert_eq!(rd_u32(&req, 0).unwrap(), 72);
        assert_eq!(rd_u16(&req, 4).unwrap(), 20);
        assert_eq!(rd_u16(&req, 6).unwrap(), 0x301);
        assert_eq!(rd_u32(&req, 8).unwrap(), 5);
        assert_eq!(&req[16..20], &[2, 6, 2, 0]);
        assert_eq!(rd_u32(&req, 20).unwrap(), 0x1ffe);
        assert!(req[24..].iter().all(|&b| b == 0));
    }
}

#[cfg(test)]
mod properties {
    //! Property tests over untrusted input: it must give a value or an
    //! error, never panic.
    use proptest::prelude::*;

    use super::parse_messages;

    proptest::proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..Default::default() })]

    #[test]
    fn netlink_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut out = Vec::new();
        let _ = parse_messages(&bytes, &mut out);
    }
    }
}
