//! Reads of kernel memory that the tracepoint records do not carry, by
//! `bpf_probe_read_kernel` through member offsets from the running kernel's
//! BTF ([`KernelLayout`]). Each read is a helper call (~100 ns on this VM),
//! so callers use them only where the answer is needed; a fault or an
//! unknown offset yields 0, never a guess.

use aya_ebpf::helpers::{bpf_probe_read_kernel, generated};
use tcptrace_common::{KernelLayout, TASK_COMM_LEN};

use crate::load;

/// The u64 at `base + offset`; 0 for a null base, an unknown offset or a fault.
#[inline(always)]
fn read(base: u64, offset: u32) -> u64 {
    if base == 0 || offset == KernelLayout::UNKNOWN {
        return 0;
    }
    // SAFETY: bpf_probe_read_kernel checks the address; a fault yields 0.
    unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const u64) }.unwrap_or(0)
}

/// The two u64 at `base + offset`; zeros for a null base, an unknown
/// offset or a fault.
#[inline(always)]
fn read_pair(base: u64, offset: u32) -> [u64; 2] {
    if base == 0 || offset == KernelLayout::UNKNOWN {
        return [0; 2];
    }
    // Not zeroed first: a 16-byte fill is a call to a byte-loop memset,
    // and the helper writes all of it (zeros on a fault).
    let mut buf = core::mem::MaybeUninit::<[u64; 2]>::uninit();
    // SAFETY: 16 writable bytes; the helper checks the source address.
    unsafe {
        generated::bpf_probe_read_kernel(
            buf.as_mut_ptr().cast(),
            16,
            (base + u64::from(offset)) as *const core::ffi::c_void,
        );
        buf.assume_init()
    }
}

/// `i_ino` of the socket's inode, 0 while it has no file. The kernel
/// allocates a socket and its inode together (`struct socket_alloc`), so the
/// inode is at a fixed offset from the socket: two reads, not the four of
/// `sk->sk_socket->file->f_inode->i_ino`.
#[inline(always)]
pub fn socket_inode(sk: u64, l: &KernelLayout) -> u64 {
    let inode_at = load(&l.socket_alloc_vfs_inode);
    let ino = load(&l.inode_i_ino);
    if inode_at == KernelLayout::UNKNOWN || ino == KernelLayout::UNKNOWN {
        return 0;
    }
    read(read(sk, load(&l.sock_sk_socket)), inode_at + ino)
}

/// The inode number of the socket's network namespace; 0 when unknown.
#[inline(always)]
pub fn socket_netns(sk: u64, l: &KernelLayout) -> u32 {
    read(read(sk, load(&l.sock_net)), load(&l.net_inum)) as u32
}

/// A process name, its 16 bytes held as two words, passed by value.
#[derive(Clone, Copy)]
pub struct CommBuf([u64; 2]);

impl CommBuf {
    pub const EMPTY: Self = Self([0; 2]);

    pub fn bytes(&self) -> &[u8; TASK_COMM_LEN] {
        // SAFETY: 16 bytes, any bit pattern valid, u8 alignment is weaker.
        unsafe { &*self.0.as_ptr().cast::<[u8; TASK_COMM_LEN]>() }
    }

    /// As the four 32-bit words of its bytes (native endian).
    pub fn words(&self) -> [u32; 4] {
        let [a, b] = self.0;
        [a as u32, (a >> 32) as u32, b as u32, (b >> 32) as u32]
    }
}

/// The current process's name: its thread-group leader's `comm` (a thread's
/// own is its thread name, e.g. "ActiveMQ Task-1" in a JVM); the thread's
/// name when the layout is unknown. `leader`: the current thread is the
/// leader (its pid is the tgid), whose name is then one helper call away,
/// not three (the task, its leader, the leader's name).
///
/// The buffer is not zeroed first: a 16-byte fill of memory whose address
/// goes to a helper is a call to a byte-loop `memset` on BPF (a BPF-to-BPF
/// call and 16 iterations, in every process-context transition of
/// `watch`). Both helpers write all of it, zeros on failure.
#[inline(always)]
pub fn process_comm(l: &KernelLayout, leader: bool) -> CommBuf {
    let mut buf = core::mem::MaybeUninit::<[u64; 2]>::uninit();
    let dst = buf.as_mut_ptr().cast::<core::ffi::c_void>();
    let comm_at = load(&l.task_comm);
    let from_leader = !leader && comm_at != KernelLayout::UNKNOWN && {
        // SAFETY: takes no arguments.
        let task = unsafe { generated::bpf_get_current_task() };
        let leader = read(task, load(&l.task_group_leader));
        leader != 0
            // SAFETY: 16 writable bytes; the helper checks the source address.
            && unsafe {
                generated::bpf_probe_read_kernel(
                    dst,
                    TASK_COMM_LEN as u32,
                    (leader + u64::from(comm_at)) as *const core::ffi::c_void,
                )
            } == 0
    };
    if !from_leader {
        // SAFETY: 16 writable bytes.
        unsafe { generated::bpf_get_current_comm(dst, TASK_COMM_LEN as u32) };
    }
    // SAFETY: either helper wrote all 16 bytes (zeros where it failed).
    CommBuf(unsafe { buf.assume_init() })
}

/// Whether a `bpf_get_current_pid_tgid` value is its thread group's leader.
#[inline(always)]
pub fn is_leader(pid_tgid: u64) -> bool {
    pid_tgid as u32 == (pid_tgid >> 32) as u32
}

/// The `struct sock` behind the current process's file descriptor `fd`, if
/// it is an IPv4 or IPv6 socket: `current->files->fdt->fd[fd]->private_data->sk`.
#[inline(always)]
pub fn fd_sock(fd: u64, l: &KernelLayout) -> Option<u64> {
    // SAFETY: takes no arguments.
    let task = unsafe { generated::bpf_get_current_task() };
    let fdt = read(read(task, load(&l.task_files)), load(&l.files_fdt));
    let (max_at, fds_at) = (load(&l.fdtable_max_fds), load(&l.fdtable_fd));
    // `max_fds` and the `fd` array's pointer are neighbours in every
    // kernel's `struct fdtable`: one read of both, not two (each read is a
    // helper call, and this walk is most of the accept exit's cost).
    let [max_fds, fds] = if fds_at == max_at.wrapping_add(8) {
        read_pair(fdt, max_at)
    } else {
        [read(fdt, max_at), read(fdt, fds_at)]
    };
    if fd >= u64::from(max_fds as u32) {
        return None;
    }
    let file = read(fds, (fd * 8) as u32);
    let sk = read(read(file, load(&l.file_private_data)), load(&l.socket_sk));
    let family = read(sk, load(&l.sock_family)) as u16;
    (sk != 0 && (family == tcptrace_common::AF_INET || family == tcptrace_common::AF_INET6))
        .then_some(sk)
}
