//! The contract between the kernel program and the loader: every type that
//! crosses the ring buffer, a map or a read-only global lives here, once.
//!
//! Layouts are `#[repr(C)]`, have no implicit padding and no `bool`, and their
//! sizes are asserted at compile time so a field added on one side cannot
//! silently shift the other.
#![no_std]

/// Length of a task's `comm`, NUL padded (the kernel's `TASK_COMM_LEN`).
pub const TASK_COMM_LEN: usize = 16;

/// `AF_INET` / `AF_INET6` as the tracepoint reports them.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
/// The tracepoint also fires for SCTP and MPTCP; only TCP is traced.
pub const IPPROTO_TCP: u16 = 6;

/// One TCP state transition, as written into the ring buffer.
///
/// IPv4 addresses occupy the first four bytes of `saddr`/`daddr`; the rest is zero.
/// Ports are in host byte order (the tracepoint converts them).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateEvent {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC, nanoseconds.
    pub ts_ns: u64,
    /// Kernel address of the `struct sock`; identifies the socket until CLOSE.
    pub skaddr: u64,
    /// cgroup v2 id of the task on the CPU.
    pub cgroup_id: u64,
    /// `sk->sk_socket->file->f_inode->i_ino`, 0 while no file is attached
    /// (e.g. a server socket not accepted yet) or when offsets are unknown.
    pub inode: u64,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// The task on the CPU. In softirq this is whoever was interrupted.
    pub tgid: u32,
    pub tid: u32,
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    pub oldstate: u8,
    pub newstate: u8,
    pub comm: [u8; TASK_COMM_LEN],
}

pub const STATE_EVENT_SIZE: usize = 96;
const _: () = assert!(core::mem::size_of::<StateEvent>() == STATE_EVENT_SIZE);

/// Maximum number of values each in-kernel filter list can hold.
pub const MAX_FILTER_PIDS: usize = 8;
pub const MAX_FILTER_PORTS: usize = 16;

/// In-kernel filters, set once before load as the read-only global `FILTER`.
/// A count of zero means "no filter on this field".
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Filter {
    pub pids: [u32; MAX_FILTER_PIDS],
    pub lports: [u16; MAX_FILTER_PORTS],
    pub rports: [u16; MAX_FILTER_PORTS],
    pub n_pids: u16,
    pub n_lports: u16,
    pub n_rports: u16,
    /// 0 for any, else [`AF_INET`] or [`AF_INET6`].
    pub family: u16,
    /// Stream mode: only transitions out of or into these states (bit n =
    /// state n); 0 for all. Applied after the owner bookkeeping of `-p`.
    pub states: u16,
    /// Stream mode: find the socket's inode only for transitions into these
    /// states (bit n = state n); 0 for all. Two kernel reads per event that
    /// views needing it only for CLOSE_WAIT (leaks, serve) need not pay.
    pub inode_states: u16,
}

const _: () = assert!(core::mem::size_of::<Filter>() == 108);

impl Filter {
    pub const NONE: Self = Self {
        pids: [0; MAX_FILTER_PIDS],
        lports: [0; MAX_FILTER_PORTS],
        rports: [0; MAX_FILTER_PORTS],
        n_pids: 0,
        n_lports: 0,
        n_rports: 0,
        family: 0,
        states: 0,
        inode_states: 0,
    };
}

/// Byte offsets of the fields followed from a `struct sock` to its socket
/// inode number, read from the running kernel's BTF by the loader. An offset
/// of [`Offsets::UNKNOWN`] disables the walk (the event then carries inode 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offsets {
    /// `struct sock.sk_socket`
    pub sock_sk_socket: u32,
    /// `struct socket_alloc.vfs_inode`: a socket and its inode are allocated
    /// together, so `SOCK_INODE(sock)` is a fixed offset away.
    pub socket_alloc_vfs_inode: u32,
    /// `struct inode.i_ino`
    pub inode_i_ino: u32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<Offsets>() == 16);

impl Offsets {
    pub const UNKNOWN: u32 = u32::MAX;
    pub const NONE: Self = Self {
        sock_sk_socket: Self::UNKNOWN,
        socket_alloc_vfs_inode: Self::UNKNOWN,
        inode_i_ino: Self::UNKNOWN,
        _pad: 0,
    };
}

/// Whether the transition into `newstate` is one only a system call on the
/// socket makes (connect, listen, close, shutdown), so the task on the CPU
/// is the socket's user. The others run in softirq, where the task on the
/// CPU is whoever was interrupted (`swapper`, `ksoftirqd`, on loopback the peer).
pub const fn in_process_context(newstate: u8) -> bool {
    // SYN_SENT, FIN_WAIT1, LAST_ACK, LISTEN (include/net/tcp_states.h).
    matches!(newstate, 2 | 4 | 9 | 10)
}

/// The record of `sock:inet_sock_set_state`, laid out as
/// `/sys/kernel/tracing/events/sock/inet_sock_set_state/format` describes it
/// (stable since 4.16; a userspace test checks it against the running kernel).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct InetSockSetStateArgs {
    pub common: u64,
    pub skaddr: u64,
    pub oldstate: i32,
    pub newstate: i32,
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    pub protocol: u16,
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub saddr_v6: [u8; 16],
    pub daddr_v6: [u8; 16],
}

const _: () = assert!(core::mem::size_of::<InetSockSetStateArgs>() == 72);

/// Index of the per-CPU `DROPS` slot counting records the ring buffer had no room for.
pub const DROPS_SLOT: u32 = 0;
/// Index of the per-CPU `DROPS` slot counting histogram updates `HIST` had no room for.
pub const HIST_FULL_SLOT: u32 = 1;
/// Index of the per-CPU `DROPS` slot counting sockets whose timestamps were
/// evicted from `SOCKETS` to make room for another.
pub const EVICTED_SLOT: u32 = 2;
/// Number of slots in `DROPS`.
pub const DROPS_SLOTS: u32 = 3;

/// Default ring-buffer size in bytes (a power of two, multiple of the page size).
pub const DEFAULT_RING_BYTES: u32 = 1 << 22;

/// What the kernel program does with a transition: the read-only global `MODE`.
/// Streaming copies every transition into the ring buffer (watch, leaks).
pub const MODE_STREAM: u32 = 0;
/// Aggregating measures dwell times in the kernel and counts them in `HIST`;
/// nothing reaches userspace per event (hist).
pub const MODE_AGGREGATE: u32 = 1;

/// How aggregate mode splits its histograms ([`HistKey::group`]).
pub const GROUP_NONE: u32 = 0;
/// By the socket's owning process (tgid).
pub const GROUP_PROCESS: u32 = 1;
pub const GROUP_LPORT: u32 = 2;
pub const GROUP_RPORT: u32 = 3;
pub const GROUP_RADDR: u32 = 4;

/// Aggregate-mode settings, set once before load as the read-only global `AGGREGATE`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AggregateConfig {
    /// CLOCK_MONOTONIC ns at which interval 0 starts.
    pub start_ns: u64,
    /// Interval length in ns; `u64::MAX` keeps everything in interval 0.
    pub interval_ns: u64,
    /// One of the `GROUP_*` values.
    pub group_by: u32,
    /// Non-zero to filter on the owner's command name, [`AggregateConfig::comm`].
    pub has_comm: u32,
    /// Number of sets in `SOCKETS` (a power of two; the loader sizes it).
    pub socket_sets: u32,
    /// Also stream the transitions into or out of these states (bit n =
    /// state n) to the ring buffer, as stream mode would: `serve` aggregates
    /// everything in the kernel and tracks only CLOSE_WAIT's sockets itself.
    pub stream_states: u32,
    /// The owner's command name, NUL padded, as the kernel's `comm`.
    pub comm: [u8; TASK_COMM_LEN],
}

const _: () = assert!(core::mem::size_of::<AggregateConfig>() == 48);

impl AggregateConfig {
    pub const NONE: Self = Self {
        start_ns: 0,
        interval_ns: u64::MAX,
        group_by: GROUP_NONE,
        has_comm: 0,
        socket_sets: 1,
        stream_states: 0,
        comm: [0; TASK_COMM_LEN],
    };
}

/// Histogram kinds ([`HistKey::kind`]) other than a TCP state number: the
/// handshakes, each measured from its first state to its last.
/// SYN_SENT -> ESTABLISHED (the client's connect).
pub const HS_CONNECT: u8 = 32;
/// SYN_RECV -> ESTABLISHED (the server's side of the connect).
pub const HS_ACCEPT: u8 = 33;
/// FIN_WAIT1 -> CLOSE, through FIN_WAIT2 or CLOSING (TIME_WAIT shows as CLOSE).
pub const HS_ACTIVE_CLOSE: u8 = 34;
/// CLOSE_WAIT -> CLOSE, through LAST_ACK.
pub const HS_PASSIVE_CLOSE: u8 = 35;
/// The CLOSE_WAIT part of a passive close: waiting for the application to close.
pub const HS_PASSIVE_APP: u8 = 36;
/// The LAST_ACK part of a passive close: waiting for the peer's last ACK.
pub const HS_PASSIVE_LAST_ACK: u8 = 37;
/// No handshake in progress ([`SockTimes::handshake`]).
pub const HS_NONE: u8 = 0;

/// Number of log2 buckets: bucket `i` holds values in `[2^i, 2^(i+1) - 1]`,
/// except bucket 0, which holds 0 and 1.
pub const LOG2_BUCKETS: u8 = 64;
/// [`HistKey::slot`] of the largest value, in nanoseconds (a per-CPU maximum).
pub const SLOT_MAX: u8 = 64;

/// One counter of the per-CPU `HIST` map: a bucket (or the maximum) of one
/// histogram, of one group, of one interval.
///
/// Keys are sparse so grouping by a port or an address costs memory only for
/// the values seen. Each interval (`epoch`) has its own keys, which userspace
/// reads and deletes once the interval is over, so no counter is ever reset
/// under the kernel's feet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HistKey {
    /// By [`AggregateConfig::group_by`]: the owner's tgid or a port (native
    /// endian, first bytes), or the remote address (IPv4 in the first 4 bytes);
    /// all zero when not grouping.
    pub group: [u8; 16],
    /// `(now - start_ns) / interval_ns`, truncated.
    pub epoch: u32,
    /// `AF_INET`/`AF_INET6` when grouping by address, else 0.
    pub family: u16,
    /// A TCP state number (time spent in that state) or an `HS_*` handshake.
    pub kind: u8,
    /// A log2 bucket of microseconds (`0..LOG2_BUCKETS`) or [`SLOT_MAX`].
    pub slot: u8,
}

const _: () = assert!(core::mem::size_of::<HistKey>() == 24);

/// Capacity of `HIST`, in keys (counters), preallocated: each costs about
/// 80 bytes plus 8 per CPU. A group with every state in use needs some 60
/// keys per interval.
pub const HIST_MAX_KEYS: u32 = 16384;

/// Aggregate mode without grouping: one histogram per kind, per CPU, in the
/// per-CPU array `TOTALS` at [`total_index`]. An array lookup is a few
/// instructions where `HIST` costs two hash lookups per value; that is most
/// of the program's cost. Each kind has two entries, for even and odd
/// intervals: the kernel resets an entry when it first writes to it in a
/// new interval, and userspace reads an interval's entries during the next.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TotalHist {
    /// The interval the counts are for.
    pub epoch: u64,
    /// The largest value, in nanoseconds.
    pub max_ns: u64,
    /// The sum of the values, in nanoseconds (a Prometheus histogram's `_sum`).
    pub sum_ns: u64,
    /// Log2 buckets of microseconds.
    pub buckets: [u64; LOG2_BUCKETS as usize],
}

const _: () = assert!(core::mem::size_of::<TotalHist>() == 536);

/// Entries of the per-CPU `TRANSITIONS` counters (aggregate mode): one per
/// (old state, new state), states being below 16.
pub const TRANSITION_SLOTS: u32 = 256;

/// `TRANSITIONS` index of the transition `old` -> `new`.
pub const fn transition_index(old: u8, new: u8) -> u32 {
    (old as u32 & 15) * 16 + (new as u32 & 15)
}

/// Kinds `TOTALS` has room for: the twelve states and six handshakes.
pub const TOTAL_KINDS: u32 = 18;

/// Index of a kind's histogram for `epoch` in `TOTALS`; `None` for an
/// unknown kind.
#[inline(always)]
pub const fn total_index(kind: u8, epoch: u32) -> Option<u32> {
    let k = match kind {
        1..=12 => kind as u32 - 1,
        HS_CONNECT..=HS_PASSIVE_LAST_ACK => (kind - HS_CONNECT) as u32 + 12,
        _ => return None,
    };
    Some(k * 2 + (epoch & 1))
}

/// The kind at `TOTALS` index `index`: the inverse of [`total_index`].
pub const fn total_kind(index: u32) -> u8 {
    let k = (index / 2) as u8;
    if k < 12 { k + 1 } else { k - 12 + HS_CONNECT }
}

/// Per-socket timestamps kept in aggregate mode (the kernel's `SOCKETS` map),
/// and by userspace when it aggregates the stream itself.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockTimes {
    /// The socket this entry is for; 0 for a free entry.
    pub skaddr: u64,
    /// When the socket entered `state`.
    pub entered_ns: u64,
    /// When the handshake in progress began (0 when none).
    pub handshake_ns: u64,
    /// The owner's tgid, when owners are tracked.
    pub owner: u32,
    pub state: u8,
    /// `HS_NONE` or the `HS_*` handshake in progress.
    pub handshake: u8,
    /// Non-zero when the owner passes the pid and comm filters.
    pub owner_passes: u8,
    pub _pad: u8,
}

const _: () = assert!(core::mem::size_of::<SockTimes>() == 32);

impl SockTimes {
    pub const FREE: Self = Self {
        skaddr: 0,
        entered_ns: 0,
        handshake_ns: 0,
        owner: 0,
        state: 0,
        handshake: HS_NONE,
        owner_passes: 0,
        _pad: 0,
    };
}

/// `SOCKETS` is set-associative: a socket's entry is in one of the
/// `SOCKET_WAYS` entries of the set its address hashes to.
pub const SOCKET_WAYS: u32 = 4;

/// The set of `SOCKETS` that holds `skaddr`'s entry; `sets` is a power of two.
/// Slab addresses share their low bits, so a multiplicative hash mixes the
/// high ones down.
#[inline(always)]
pub const fn socket_set(skaddr: u64, sets: u32) -> u32 {
    ((skaddr.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as u32) & sets.wrapping_sub(1)
}

/// A listener's owner, so sockets it creates in softirq inherit it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerOwner {
    pub tgid: u32,
    pub passes: u32,
}

const _: () = assert!(core::mem::size_of::<ListenerOwner>() == 8);

// TCP states, as numbered by the kernel (include/net/tcp_states.h).
pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_SYN_SENT: u8 = 2;
pub const TCP_SYN_RECV: u8 = 3;
pub const TCP_FIN_WAIT1: u8 = 4;
pub const TCP_FIN_WAIT2: u8 = 5;
pub const TCP_CLOSE: u8 = 7;
pub const TCP_CLOSE_WAIT: u8 = 8;
pub const TCP_LAST_ACK: u8 = 9;
pub const TCP_LISTEN: u8 = 10;
pub const TCP_CLOSING: u8 = 11;

/// The log2 bucket of `v`: `floor(log2(v))`, with 0 and 1 sharing bucket 0
/// (bcc's first row, "0 -> 1"). Shifts and compares only, so the BPF target
/// needs no count-leading-zeros instruction.
#[inline(always)]
pub const fn log2_bucket(v: u64) -> u8 {
    let mut v = v;
    let mut bucket = 0;
    let mut shift = 32;
    while shift > 0 {
        if v >> shift != 0 {
            v >>= shift;
            bucket += shift;
        }
        shift /= 2;
    }
    bucket
}

/// What one transition measured: the time spent in the old state and any
/// handshake it completes (up to three values), and the handshake in
/// progress afterwards with when it began.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Measured {
    kinds: [u8; 3],
    ns: [u64; 3],
    len: usize,
    pub handshake: u8,
    pub handshake_ns: u64,
}

impl Measured {
    /// `(kind, ns)`: a state's dwell time or a handshake's duration. A
    /// constant-bound walk, which the BPF verifier follows (a slice's
    /// end-pointer loop it does not).
    pub fn values(&self) -> impl Iterator<Item = (u8, u64)> + '_ {
        (0..3)
            .filter(|i| *i < self.len)
            .map(|i| (self.kinds[i], self.ns[i]))
    }

    fn push(&mut self, kind: u8, ns: u64) {
        if self.len < 3 {
            self.kinds[self.len] = kind;
            self.ns[self.len] = ns;
            self.len += 1;
        }
    }
}

/// One transition's measurements, shared by the kernel and `--exact` so both
/// measure the same thing. `prev` is what was known of the socket before it
/// (`None` if nothing). Values, not a callback: in the kernel a callback is a
/// BPF-to-BPF call per value.
#[inline(always)]
pub fn measure(prev: Option<&SockTimes>, old: u8, new: u8, now: u64) -> Measured {
    let mut m = Measured {
        kinds: [0; 3],
        ns: [0; 3],
        len: 0,
        handshake: HS_NONE,
        handshake_ns: 0,
    };
    // A listener's child is a new socket; so is anything leaving CLOSE. An
    // entry in another state means we missed a transition: its times are stale.
    let fresh = old == TCP_CLOSE || (old == TCP_LISTEN && new == TCP_SYN_RECV);
    let prev = match prev {
        Some(p) if !fresh && p.state == old => Some(p),
        _ => None,
    };
    if let Some(p) = prev {
        let dwell = now.saturating_sub(p.entered_ns);
        m.push(old, dwell);
        let completes = matches!(
            (p.handshake, new),
            (HS_CONNECT | HS_ACCEPT, TCP_ESTABLISHED)
                | (HS_ACTIVE_CLOSE | HS_PASSIVE_CLOSE, TCP_CLOSE)
        );
        if completes {
            m.push(p.handshake, now.saturating_sub(p.handshake_ns));
        }
        if p.handshake == HS_PASSIVE_CLOSE {
            if old == TCP_CLOSE_WAIT {
                m.push(HS_PASSIVE_APP, dwell);
            } else if old == TCP_LAST_ACK {
                m.push(HS_PASSIVE_LAST_ACK, dwell);
            }
        }
    }
    (m.handshake, m.handshake_ns) = match new {
        TCP_SYN_SENT => (HS_CONNECT, now),
        TCP_SYN_RECV => (HS_ACCEPT, now),
        TCP_FIN_WAIT1 => (HS_ACTIVE_CLOSE, now),
        TCP_CLOSE_WAIT => (HS_PASSIVE_CLOSE, now),
        // The middle of a handshake: it goes on if we saw it begin.
        TCP_FIN_WAIT2 | TCP_CLOSING | TCP_LAST_ACK => match prev {
            Some(p) => (p.handshake, p.handshake_ns),
            None => (HS_NONE, 0),
        },
        _ => (HS_NONE, 0),
    };
    m
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` integers and byte arrays, no padding (asserted above).
    unsafe impl aya::Pod for super::StateEvent {}
    unsafe impl aya::Pod for super::Filter {}
    unsafe impl aya::Pod for super::Offsets {}
    unsafe impl aya::Pod for super::AggregateConfig {}
    unsafe impl aya::Pod for super::HistKey {}
    unsafe impl aya::Pod for super::TotalHist {}
    unsafe impl aya::Pod for super::SockTimes {}
    unsafe impl aya::Pod for super::ListenerOwner {}
}
