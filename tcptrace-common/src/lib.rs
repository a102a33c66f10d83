//! The contract between the kernel program and the loader: every type that
//! crosses the ring buffer, a map or the read-only global `CONFIG` lives here,
//! once, and so does the one TCP state numbering both sides use.
//!
//! Layouts are `#[repr(C)]`, have no implicit padding and no `bool`, and their
//! sizes are asserted at compile time so a field added on one side cannot
//! silently shift the other.
#![no_std]

mod measure;
mod state;

pub use measure::{
    HS_ACCEPT, HS_ACTIVE_CLOSE, HS_CONNECT, HS_NONE, HS_PASSIVE_APP, HS_PASSIVE_CLOSE,
    HS_PASSIVE_LAST_ACK, LOG2_BUCKETS, Measured, log2_bucket, measure, starts_lifecycle,
};
pub use state::{ParseStateError, TcpState};

/// Length of a task's `comm`, NUL padded (the kernel's `TASK_COMM_LEN`).
pub const TASK_COMM_LEN: usize = 16;

/// `AF_INET` / `AF_INET6` as the tracepoint reports them.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
/// The tracepoint also fires for SCTP and MPTCP; only TCP is traced.
pub const IPPROTO_TCP: u16 = 6;

/// How the kernel program knows who owns a socket ([`StateEvent::owner_source`]).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OwnerSource {
    /// Nobody known to hold it: the task on the CPU is never taken instead.
    Unknown = 0,
    /// A process that holds the socket: seen making one of its system calls
    /// on it (connect, accept, listen, close, shutdown), or holding its file
    /// descriptor in `/proc` when tracing started.
    Holder = 1,
    /// Not accepted yet, so held by no process: the owner of the listening
    /// socket it was created from.
    Listener = 2,
}

impl OwnerSource {
    /// `holder`, `listener` or `unknown`, as the views print it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Holder => "holder",
            Self::Listener => "listener",
        }
    }

    pub const fn from_kernel(n: u8) -> Self {
        match n & OWNER_SOURCE_MASK {
            1 => Self::Holder,
            2 => Self::Listener,
            _ => Self::Unknown,
        }
    }
}

/// [`SockEntry::owner_source`] bits holding the [`OwnerSource`].
pub const OWNER_SOURCE_MASK: u8 = 0x7f;
/// [`SockEntry::owner_source`] bit: the socket's inode was looked up in
/// `INODE_OWNERS` already (in vain), so it is not read again on each event.
pub const OWNER_INODE_CHECKED: u8 = 0x80;

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
    /// The socket's inode number (its `socket:[N]` in `/proc/PID/fd`), for
    /// transitions into the states of [`Filter::inode_states`]; 0 otherwise,
    /// while no file is attached (a server socket not accepted yet) or when
    /// the kernel's BTF is missing.
    pub inode: u64,
    /// With a stack ([`StateEvent::stack_id`]): the return address found on
    /// top of the user stack when it was taken (see [`SockStack::caller`]); 0 if none.
    pub caller: u64,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// The owning process (tgid), 0 when [`StateEvent::owner_source`] is
    /// [`OwnerSource::Unknown`] or owners are not tracked.
    pub owner: u32,
    /// Transitions into CLOSE_WAIT, with stacks on: the `STACKS` id of the
    /// user stack that opened the socket (connect or accept); -1 if none.
    pub stack_id: i32,
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    pub oldstate: u8,
    pub newstate: u8,
    /// An [`OwnerSource`].
    pub owner_source: u8,
    pub _pad: [u8; 3],
    /// With a stack: the process it was taken in (its address space).
    pub stack_pid: u32,
    /// The owner's process name (its thread-group leader's `comm`) when this
    /// transition was made by the owner itself, in process context; all zero
    /// otherwise (userspace remembers names).
    pub comm: [u8; TASK_COMM_LEN],
}

pub const STATE_EVENT_SIZE: usize = 104;
const _: () = assert!(size_of::<StateEvent>() == STATE_EVENT_SIZE);

/// Maximum number of values each in-kernel filter list can hold.
pub const MAX_FILTER_PIDS: usize = 8;
pub const MAX_FILTER_PORTS: usize = 16;

/// What passes, applied in the kernel. A count of zero means "no filter on
/// this field". Pid and command name select the socket's *owner*, not the
/// task on the CPU.
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
    /// Stream mode: only transitions out of or into these states
    /// ([`TcpState::mask`]); 0 for all.
    pub states: u16,
    /// Stream mode: find the socket's inode only for transitions into these
    /// states; 0 for none. Two kernel reads per event that views needing it
    /// only for CLOSE_WAIT (leaks, serve) need not pay.
    pub inode_states: u16,
    /// Non-zero to keep only owners whose process name is [`Filter::comm`].
    pub has_comm: u16,
    pub _pad: u16,
    /// A process name, NUL padded, as the kernel's `comm`.
    pub comm: [u8; TASK_COMM_LEN],
}

const _: () = assert!(size_of::<Filter>() == 128);

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
        has_comm: 0,
        _pad: 0,
        comm: [0; TASK_COMM_LEN],
    };

    /// Whether pid or command name select owners (which needs owners tracked).
    pub const fn by_owner(&self) -> bool {
        self.n_pids != 0 || self.has_comm != 0
    }
}

/// Where things are in the running kernel: byte offsets of the struct
/// members the program follows, read from `/sys/kernel/btf/vmlinux` at
/// start (they move between versions and configurations). A member at
/// [`KernelLayout::UNKNOWN`] disables what needs it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelLayout {
    /// `struct sock.sk_socket`
    pub sock_sk_socket: u32,
    /// `struct socket_alloc.vfs_inode`: a socket and its inode are allocated
    /// together, so `SOCK_INODE(sock)` is a fixed offset away.
    pub socket_alloc_vfs_inode: u32,
    /// `struct inode.i_ino`
    pub inode_i_ino: u32,
    /// `struct sock.__sk_common.skc_net` (a `possible_net_t`, whose only
    /// member is the `struct net *`).
    pub sock_net: u32,
    /// `struct net.ns.inum`: the network namespace's inode number.
    pub net_inum: u32,
    /// `struct sock.__sk_common.skc_family`
    pub sock_family: u32,
    /// `struct task_struct.group_leader`
    pub task_group_leader: u32,
    /// `struct task_struct.comm`
    pub task_comm: u32,
    /// `struct task_struct.files`
    pub task_files: u32,
    /// `struct files_struct.fdt`
    pub files_fdt: u32,
    /// `struct fdtable.fd`
    pub fdtable_fd: u32,
    /// `struct fdtable.max_fds`
    pub fdtable_max_fds: u32,
    /// `struct file.private_data` (a socket file's `struct socket`)
    pub file_private_data: u32,
    /// `struct socket.sk`
    pub socket_sk: u32,
    /// `struct pt_regs.sp`: the user stack pointer saved at the system call.
    pub pt_regs_sp: u32,
    pub _pad: u32,
}

const _: () = assert!(size_of::<KernelLayout>() == 64);

impl KernelLayout {
    pub const UNKNOWN: u32 = u32::MAX;
    pub const NONE: Self = Self {
        sock_sk_socket: Self::UNKNOWN,
        socket_alloc_vfs_inode: Self::UNKNOWN,
        inode_i_ino: Self::UNKNOWN,
        sock_net: Self::UNKNOWN,
        net_inum: Self::UNKNOWN,
        sock_family: Self::UNKNOWN,
        task_group_leader: Self::UNKNOWN,
        task_comm: Self::UNKNOWN,
        task_files: Self::UNKNOWN,
        files_fdt: Self::UNKNOWN,
        fdtable_fd: Self::UNKNOWN,
        fdtable_max_fds: Self::UNKNOWN,
        file_private_data: Self::UNKNOWN,
        socket_sk: Self::UNKNOWN,
        pt_regs_sp: Self::UNKNOWN,
        _pad: 0,
    };
}

/// The record of `sock:inet_sock_set_state` as the kernel program reads it,
/// at these offsets. `/sys/kernel/tracing/events/sock/inet_sock_set_state/format`
/// gives the running kernel's layout; the loader checks it against this one
/// and refuses to load on a mismatch (the protocol field was a `__u8` before
/// Linux 5.6, which shifts what follows; the BPF ring buffer needs 5.8).
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

const _: () = assert!(size_of::<InetSockSetStateArgs>() == 72);

/// The fields of [`InetSockSetStateArgs`] as the `format` file names them:
/// (name, offset, size).
pub const INET_SOCK_SET_STATE_FIELDS: [(&str, usize, usize); 11] = [
    (
        "skaddr",
        core::mem::offset_of!(InetSockSetStateArgs, skaddr),
        8,
    ),
    (
        "oldstate",
        core::mem::offset_of!(InetSockSetStateArgs, oldstate),
        4,
    ),
    (
        "newstate",
        core::mem::offset_of!(InetSockSetStateArgs, newstate),
        4,
    ),
    (
        "sport",
        core::mem::offset_of!(InetSockSetStateArgs, sport),
        2,
    ),
    (
        "dport",
        core::mem::offset_of!(InetSockSetStateArgs, dport),
        2,
    ),
    (
        "family",
        core::mem::offset_of!(InetSockSetStateArgs, family),
        2,
    ),
    (
        "protocol",
        core::mem::offset_of!(InetSockSetStateArgs, protocol),
        2,
    ),
    (
        "saddr",
        core::mem::offset_of!(InetSockSetStateArgs, saddr),
        4,
    ),
    (
        "daddr",
        core::mem::offset_of!(InetSockSetStateArgs, daddr),
        4,
    ),
    (
        "saddr_v6",
        core::mem::offset_of!(InetSockSetStateArgs, saddr_v6),
        16,
    ),
    (
        "daddr_v6",
        core::mem::offset_of!(InetSockSetStateArgs, daddr_v6),
        16,
    ),
];

/// Offset of `ret` (a `long`) in the records of `syscalls:sys_exit_*`.
pub const SYS_EXIT_RET_OFFSET: usize = 16;

/// Where the running kernel's tracepoint records hold what the program reads
/// ([`Config::record`]). The programs read the compiled offsets
/// ([`InetSockSetStateArgs`], [`SYS_EXIT_RET_OFFSET`]) with plain context
/// loads, the only form the verifier takes; when the kernel's `format` files
/// put a field elsewhere (with its size), the loader sets the offsets found
/// there and loads the `*_moved` programs instead, which copy the first
/// [`RecordLayout::COPIED`] bytes of each record to read them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordLayout {
    /// The offset of each of [`INET_SOCK_SET_STATE_FIELDS`], in its order
    /// (indexed by the `RecordLayout::` field constants).
    pub state_change: [u16; 11],
    /// The offset of `ret` in `syscalls:sys_exit_accept{,4}`.
    pub sys_exit_ret: u16,
}

const _: () = assert!(size_of::<RecordLayout>() == 24);

impl RecordLayout {
    /// Bytes of a record the moved path copies: every field must end within.
    pub const COPIED: usize = 128;
    pub const SKADDR: usize = 0;
    pub const OLDSTATE: usize = 1;
    pub const NEWSTATE: usize = 2;
    pub const SPORT: usize = 3;
    pub const DPORT: usize = 4;
    pub const FAMILY: usize = 5;
    pub const PROTOCOL: usize = 6;
    pub const SADDR: usize = 7;
    pub const DADDR: usize = 8;
    pub const SADDR_V6: usize = 9;
    pub const DADDR_V6: usize = 10;

    /// The compiled layout.
    pub const COMPILED: Self = {
        let mut state_change = [0; 11];
        let mut i = 0;
        while i < INET_SOCK_SET_STATE_FIELDS.len() {
            state_change[i] = INET_SOCK_SET_STATE_FIELDS[i].1 as u16;
            i += 1;
        }
        Self {
            state_change,
            sys_exit_ret: SYS_EXIT_RET_OFFSET as u16,
        }
    };
}

/// Index of the per-CPU `DROPS` slot counting records the ring buffer had no room for.
pub const DROPS_SLOT: u32 = 0;
/// Index of the per-CPU `DROPS` slot counting histogram updates `HIST` had no room for.
pub const HIST_FULL_SLOT: u32 = 1;
/// Index of the per-CPU `DROPS` slot counting sockets whose entry was
/// evicted from `SOCKETS` to make room for another.
pub const EVICTED_SLOT: u32 = 2;
/// Index of the per-CPU `DROPS` slot counting user stacks that could not be
/// kept (a `STACKS` bucket taken by another stack, a fault).
pub const STACKS_LOST_SLOT: u32 = 3;
/// Number of slots in `DROPS`.
pub const DROPS_SLOTS: u32 = 4;

/// Default ring-buffer size in bytes (a power of two, multiple of the page size).
pub const DEFAULT_RING_BYTES: u32 = 1 << 22;

/// Ring buffers the kernel program writes to: CPU n writes to ring
/// `n % RINGS`, so CPUs do not contend for one ring's lock and positions
/// (the bench's `floor-ring-per-cpu` against `floor-ring`, 2-vCPU Intel
/// host: 39 ns, 20%, less per record in the full run at 01fc7a2; 27 ns, 13%,
/// at 8ee6013). Beyond `RINGS` CPUs, rings are shared.
pub const RINGS: u32 = 8;

/// What the kernel program does with a transition ([`Config::mode`]).
/// Streaming copies every transition into the ring buffer (watch, leaks).
pub const MODE_STREAM: u32 = 0;
/// Aggregating measures dwell times in the kernel and counts them in
/// `TOTALS` or `HIST`; nothing reaches userspace per event (hist, serve).
pub const MODE_AGGREGATE: u32 = 1;

/// [`Config::owners`]: keep each socket's owner in `SOCKETS`, learnt from
/// the system calls its holders make.
pub const OWNERS_TRACK: u32 = 1;
/// [`Config::owners`]: `INODE_OWNERS` holds the sockets' holders found in
/// `/proc` at start: a socket seen first in softirq is looked up by inode.
pub const OWNERS_BY_INODE: u32 = 2;

/// The `INODE_OWNERS` key userspace writes once every holder found at start
/// is in (no socket has inode 0): until then a miss is not final.
pub const INODE_OWNERS_SEEDED: u64 = 0;

/// [`Config::stacks`]: take the user stack (frame pointers) of the thread
/// that connects or accepts each socket, kept in `STACKS`.
pub const STACKS_ON: u32 = 1;
/// [`Config::stacks`]: also look for the caller of the library's system-call
/// wrapper on top of the user stack (needs `bpf_task_pt_regs`, Linux 5.15).
pub const STACKS_CALLER: u32 = 2;
/// Frames a `STACKS` entry holds (the kernel's `PERF_MAX_STACK_DEPTH`).
pub const STACK_DEPTH: usize = 127;
/// Words of the user stack searched for the caller's return address.
pub const CALLER_SCAN_WORDS: usize = 8;

/// The stack that opened a socket, per socket in `SOCKET_STACKS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockStack {
    /// Its `STACKS` id.
    pub stack_id: i32,
    /// The process it was taken in.
    pub pid: u32,
    /// A return address on top of the user stack, just after a call
    /// instruction: the frame a frame-pointer walk skips when the system
    /// call's library wrapper (glibc's, built without frame pointers) made
    /// none. 0 when not found or not looked for.
    pub caller: u64,
}

const _: () = assert!(size_of::<SockStack>() == 16);

/// How aggregate mode splits its histograms ([`HistKey::group`]).
pub const GROUP_NONE: u32 = 0;
/// By the socket's owning process (tgid; 0 when unknown).
pub const GROUP_PROCESS: u32 = 1;
pub const GROUP_LPORT: u32 = 2;
pub const GROUP_RPORT: u32 = 3;
pub const GROUP_RADDR: u32 = 4;

/// Aggregate-mode settings ([`Config::aggregate`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AggregateConfig {
    /// CLOCK_MONOTONIC ns at which interval 0 starts.
    pub start_ns: u64,
    /// Interval length in ns; 0 keeps everything in interval 0, and spares
    /// the program a 64-bit division per transition.
    pub interval_ns: u64,
    /// One of the `GROUP_*` values.
    pub group_by: u32,
    /// Also stream the transitions into or out of these states
    /// ([`TcpState::mask`]) to the ring buffer, as stream mode would: `serve`
    /// aggregates everything in the kernel and tracks only CLOSE_WAIT's
    /// sockets itself.
    pub stream_states: u32,
}

const _: () = assert!(size_of::<AggregateConfig>() == 24);

impl AggregateConfig {
    pub const NONE: Self = Self {
        start_ns: 0,
        interval_ns: 0,
        group_by: GROUP_NONE,
        stream_states: 0,
    };
}

/// Everything the loader sets before load: the read-only global `CONFIG`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub filter: Filter,
    pub aggregate: AggregateConfig,
    pub layout: KernelLayout,
    pub record: RecordLayout,
    /// Wake the reader only once this many bytes are pending (0: every record).
    pub wakeup_bytes: u64,
    /// [`MODE_STREAM`] or [`MODE_AGGREGATE`].
    pub mode: u32,
    /// `OWNERS_*` flags.
    pub owners: u32,
    /// Number of sets in `SOCKETS` (a power of two; the loader sizes it).
    pub socket_sets: u32,
    /// `STACKS_*` flags: capture the user stack that opens each socket.
    pub stacks: u32,
}

const _: () = assert!(size_of::<Config>() == 264);

impl Config {
    pub const NONE: Self = Self {
        filter: Filter::NONE,
        aggregate: AggregateConfig::NONE,
        layout: KernelLayout::NONE,
        record: RecordLayout::COMPILED,
        wakeup_bytes: 0,
        mode: MODE_STREAM,
        owners: 0,
        socket_sets: 1,
        stacks: 0,
    };
}

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

const _: () = assert!(size_of::<HistKey>() == 24);

/// [`HistKey::slot`] of the largest value, in nanoseconds (a per-CPU maximum).
pub const SLOT_MAX: u8 = 64;

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

const _: () = assert!(size_of::<TotalHist>() == 536);

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

/// A socket's entry in the kernel's `SOCKETS` table: its owner (when owners
/// are tracked) and, in aggregate mode, when it entered its state and the
/// handshake in progress. Userspace keeps the same record for `--exact`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockEntry {
    /// The socket this entry is for; 0 for a free entry.
    pub skaddr: u64,
    /// When it entered `state` (aggregate mode), or when the entry was
    /// written (stream mode): a full set evicts the oldest.
    pub entered_ns: u64,
    /// When the handshake in progress began (0 when none).
    pub handshake_ns: u64,
    /// The owner's tgid (0 when unknown).
    pub owner: u32,
    /// The state it entered last (0 when not known, e.g. learnt at accept).
    pub state: u8,
    /// `HS_NONE` or the `HS_*` handshake in progress.
    pub handshake: u8,
    /// An [`OwnerSource`], plus [`OWNER_INODE_CHECKED`].
    pub owner_source: u8,
    /// Non-zero when the owner passes the pid and command-name filters.
    pub owner_passes: u8,
}

const _: () = assert!(size_of::<SockEntry>() == 32);

impl SockEntry {
    pub const FREE: Self = Self {
        skaddr: 0,
        entered_ns: 0,
        handshake_ns: 0,
        owner: 0,
        state: 0,
        handshake: HS_NONE,
        owner_source: 0,
        owner_passes: 0,
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

/// An owner the kernel is told about or remembers: the value of
/// `LISTEN_OWNERS` (listeners' owners) and `INODE_OWNERS` (holders found in
/// `/proc` at start).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnownOwner {
    pub tgid: u32,
    /// Non-zero when it passes the pid and command-name filters.
    pub passes: u32,
}

const _: () = assert!(size_of::<KnownOwner>() == 8);

/// The key of `LISTEN_OWNERS`: a listening port within one network namespace
/// (every pod may listen on 8080).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ListenKey {
    /// The namespace's inode number (`/proc/PID/ns/net`); 0 when unknown.
    pub netns: u32,
    pub port: u16,
    pub _pad: u16,
}

const _: () = assert!(size_of::<ListenKey>() == 8);

impl ListenKey {
    pub const fn new(netns: u32, port: u16) -> Self {
        Self {
            netns,
            port,
            _pad: 0,
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    /// Each: plain `#[repr(C)]` integers and byte arrays with no padding
    /// (sizes asserted above), valid for any bits.
    macro_rules! pod {
        ($($t:ident),+) => {
            $(
                // SAFETY: see above.
                unsafe impl aya::Pod for super::$t {}
            )+
        };
    }
    pod!(
        StateEvent, Config, HistKey, TotalHist, SockEntry, KnownOwner, ListenKey, SockStack
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_layout_indices_name_their_fields() {
        let named = [
            (RecordLayout::SKADDR, "skaddr"),
            (RecordLayout::OLDSTATE, "oldstate"),
            (RecordLayout::NEWSTATE, "newstate"),
            (RecordLayout::SPORT, "sport"),
            (RecordLayout::DPORT, "dport"),
            (RecordLayout::FAMILY, "family"),
            (RecordLayout::PROTOCOL, "protocol"),
            (RecordLayout::SADDR, "saddr"),
            (RecordLayout::DADDR, "daddr"),
            (RecordLayout::SADDR_V6, "saddr_v6"),
            (RecordLayout::DADDR_V6, "daddr_v6"),
        ];
        assert_eq!(named.len(), INET_SOCK_SET_STATE_FIELDS.len());
        for (i, name) in named {
            let (field, offset, _) = INET_SOCK_SET_STATE_FIELDS[i];
            assert_eq!(field, name);
            assert_eq!(usize::from(RecordLayout::COMPILED.state_change[i]), offset);
        }
    }
}
