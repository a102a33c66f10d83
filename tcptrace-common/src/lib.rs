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
}

const _: () = assert!(core::mem::size_of::<Filter>() == 104);

impl Filter {
    pub const NONE: Self = Self {
        pids: [0; MAX_FILTER_PIDS],
        lports: [0; MAX_FILTER_PORTS],
        rports: [0; MAX_FILTER_PORTS],
        n_pids: 0,
        n_lports: 0,
        n_rports: 0,
        family: 0,
    };
}

/// Byte offsets of the fields followed from a `struct sock` to its socket
/// inode, read from the running kernel's BTF by the loader. An offset of
/// [`Offsets::UNKNOWN`] disables the walk (the event then carries inode 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offsets {
    /// `struct sock.sk_socket`
    pub sock_sk_socket: u32,
    /// `struct socket.file`
    pub socket_file: u32,
    /// `struct file.f_inode`
    pub file_f_inode: u32,
    /// `struct inode.i_ino`
    pub inode_i_ino: u32,
}

const _: () = assert!(core::mem::size_of::<Offsets>() == 16);

impl Offsets {
    pub const UNKNOWN: u32 = u32::MAX;
    pub const NONE: Self = Self {
        sock_sk_socket: Self::UNKNOWN,
        socket_file: Self::UNKNOWN,
        file_f_inode: Self::UNKNOWN,
        inode_i_ino: Self::UNKNOWN,
    };
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

/// Index of the single slot of the per-CPU `DROPS` counter array.
pub const DROPS_SLOT: u32 = 0;

/// Default ring-buffer size in bytes (a power of two, multiple of the page size).
pub const DEFAULT_RING_BYTES: u32 = 1 << 22;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` integers and byte arrays, no padding (asserted above).
    unsafe impl aya::Pod for super::StateEvent {}
    unsafe impl aya::Pod for super::Filter {}
    unsafe impl aya::Pod for super::Offsets {}
}
