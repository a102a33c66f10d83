//! The kernel half of tcptrace: one tracepoint program that copies every TCP
//! state change into a ring buffer. Everything else happens in userspace.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext as _, Global,
    bindings::{BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        generated::{bpf_get_current_cgroup_id, bpf_get_current_comm},
    },
    macros::{map, tracepoint},
    maps::{LruHashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use aya_log_ebpf::warn;
use tcptrace_common::{
    AF_INET, AF_INET6, DEFAULT_RING_BYTES, DROPS_SLOT, Filter, IPPROTO_TCP, InetSockSetStateArgs,
    MAX_FILTER_PIDS, MAX_FILTER_PORTS, Offsets, StateEvent, TASK_COMM_LEN,
};

// TCP states, as numbered by the kernel (include/net/tcp_states.h).
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_FIN_WAIT1: i32 = 4;
const TCP_CLOSE: i32 = 7;
const TCP_LAST_ACK: i32 = 9;
const TCP_LISTEN: i32 = 10;

#[unsafe(no_mangle)]
static FILTER: Global<Filter> = Global::new(Filter::NONE);
#[unsafe(no_mangle)]
static OFFSETS: Global<Offsets> = Global::new(Offsets::NONE);
/// Wake the reader only once this many bytes are pending; it also polls on a
/// timer. Waking per record would cap throughput (field notes: ringbuf bench).
#[unsafe(no_mangle)]
static WAKEUP_BYTES: Global<u64> = Global::new(0);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

/// Records that did not fit in the ring buffer, per CPU.
#[map]
static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Only used with a pid filter: socket -> owning tgid, learnt in process
/// context, so the socket's softirq transitions still pass the filter.
#[map]
static OWNERS: LruHashMap<u64, u32> = LruHashMap::with_max_entries(65536, 0);
/// Only used with a pid filter: listening port -> owning tgid, so that
/// sockets a listener creates in softirq inherit its owner.
#[map]
static LISTENERS: LruHashMap<u16, u32> = LruHashMap::with_max_entries(4096, 0);

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    // One copy of the whole record: the verifier refuses loads through a
    // derived context pointer, which the address arrays would need.
    // SAFETY: the layout is the tracepoint's format (checked by a userspace test).
    let Ok(args) = (unsafe { bpf_probe_read_kernel(ctx.as_ptr() as *const InetSockSetStateArgs) })
    else {
        return 0;
    };
    if args.protocol != IPPROTO_TCP {
        return 0;
    }
    let filter = filter();
    if !family_passes(&ctx, args.family, load(&filter.family))
        || !port_passes(args.sport, &filter.lports, load(&filter.n_lports))
        || !port_passes(args.dport, &filter.rports, load(&filter.n_rports))
    {
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if load(&filter.n_pids) != 0 && !owner_passes(&ctx, &args, tgid, filter) {
        return 0;
    }
    emit(&args, pid_tgid);
    0
}

/// The read-only filter, read field by field: copying it whole would not fit
/// the 512-byte BPF stack next to the record.
fn filter() -> &'static Filter {
    // SAFETY: Global<T> is a transparent wrapper around an initialised T.
    unsafe { &*(core::ptr::addr_of!(FILTER) as *const Filter) }
}

/// Volatile, so the compiler cannot fold the value the loader overrides.
fn load<T: Copy>(field: &T) -> T {
    // SAFETY: a valid reference.
    unsafe { core::ptr::read_volatile(field) }
}

/// Writes the event straight into the ring buffer: no stack copy.
fn emit(args: &InetSockSetStateArgs, pid_tgid: u64) {
    let Some(mut entry) = EVENTS.reserve::<StateEvent>(0) else {
        if let Some(drops) = DROPS.get_ptr_mut(DROPS_SLOT) {
            // SAFETY: per-CPU slot, only this CPU writes it while we run.
            unsafe { *drops += 1 };
        }
        return;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: `e` points at a reserved, writable StateEvent; every field is
    // written below (the verifier rejects uninitialised bytes otherwise).
    unsafe {
        (*e).ts_ns = bpf_ktime_get_ns();
        (*e).skaddr = args.skaddr;
        (*e).cgroup_id = bpf_get_current_cgroup_id();
        (*e).inode = socket_inode(args.skaddr, &OFFSETS.load());
        if args.family == AF_INET {
            (*e).saddr = widen(args.saddr);
            (*e).daddr = widen(args.daddr);
        } else {
            (*e).saddr = args.saddr_v6;
            (*e).daddr = args.daddr_v6;
        }
        (*e).tgid = (pid_tgid >> 32) as u32;
        (*e).tid = pid_tgid as u32;
        (*e).sport = args.sport;
        (*e).dport = args.dport;
        (*e).family = args.family;
        (*e).oldstate = args.oldstate as u8;
        (*e).newstate = args.newstate as u8;
        let comm = core::ptr::addr_of_mut!((*e).comm);
        if bpf_get_current_comm(comm.cast(), TASK_COMM_LEN as u32) != 0 {
            (*e).comm = [0; TASK_COMM_LEN];
        }
    }
    let wakeup = WAKEUP_BYTES.load();
    let flags = if wakeup == 0 || EVENTS.query(0) >= wakeup {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(flags.into());
}

fn widen(v4: [u8; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&v4);
    out
}

/// Follows `sk->sk_socket->file->f_inode->i_ino`; 0 when any link is missing.
fn socket_inode(skaddr: u64, off: &Offsets) -> u64 {
    if off.sock_sk_socket == Offsets::UNKNOWN {
        return 0;
    }
    let read = |base: u64, offset: u32| -> u64 {
        if base == 0 {
            return 0;
        }
        // SAFETY: bpf_probe_read_kernel checks the address; a fault yields 0.
        unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const u64) }.unwrap_or(0)
    };
    let socket = read(skaddr, off.sock_sk_socket);
    let file = read(socket, off.socket_file);
    let inode = read(file, off.file_f_inode);
    read(inode, off.inode_i_ino)
}

fn family_passes(ctx: &TracePointContext, family: u16, wanted: u16) -> bool {
    if family != AF_INET && family != AF_INET6 {
        warn!(ctx, "tcptrace: unexpected address family {}", family);
        return false;
    }
    wanted == 0 || wanted == family
}

fn port_passes(port: u16, list: &[u16; MAX_FILTER_PORTS], n: u16) -> bool {
    if n == 0 {
        return true;
    }
    for (i, p) in list.iter().enumerate() {
        if i >= usize::from(n) {
            break;
        }
        if load(p) == port {
            return true;
        }
    }
    false
}

fn pid_listed(tgid: u32, filter: &Filter) -> bool {
    let n = usize::from(load(&filter.n_pids));
    for (i, p) in filter.pids.iter().enumerate() {
        if i >= n || i >= MAX_FILTER_PIDS {
            break;
        }
        if load(p) == tgid {
            return true;
        }
    }
    false
}

/// The pid filter is about the socket's owner, not the task on the CPU:
/// remember owners seen in process context and let their sockets' softirq
/// transitions through. Userspace applies the exact owner filter afterwards.
fn owner_passes(
    ctx: &TracePointContext,
    args: &InetSockSetStateArgs,
    tgid: u32,
    filter: &Filter,
) -> bool {
    let sk = args.skaddr;
    let in_process_context = matches!(
        args.newstate,
        TCP_SYN_SENT | TCP_LISTEN | TCP_FIN_WAIT1 | TCP_LAST_ACK
    );
    let mut owner = if in_process_context && pid_listed(tgid, filter) {
        remember(ctx, &OWNERS, sk, tgid);
        Some(tgid)
    } else {
        // SAFETY: the value is a plain u32 copied out at once.
        unsafe { OWNERS.get(sk) }.copied()
    };
    if args.newstate == TCP_LISTEN && owner.is_some() {
        remember(ctx, &LISTENERS, args.sport, tgid);
    }
    if args.oldstate == TCP_LISTEN && args.newstate == TCP_SYN_RECV {
        // A child socket, cloned from its listener in softirq.
        // SAFETY: as above.
        if let Some(listener) = unsafe { LISTENERS.get(args.sport) }.copied() {
            remember(ctx, &OWNERS, sk, listener);
            owner = Some(listener);
        }
    }
    if args.newstate == TCP_CLOSE {
        let _ = OWNERS.remove(sk);
        if args.oldstate == TCP_LISTEN {
            let _ = LISTENERS.remove(args.sport);
        }
    }
    owner.is_some_and(|o| pid_listed(o, filter)) || pid_listed(tgid, filter)
}

fn remember<K>(ctx: &TracePointContext, map: &LruHashMap<K, u32>, key: K, tgid: u32) {
    if map.insert(&key, &tgid, 0).is_err() {
        warn!(ctx, "tcptrace: owner map insert failed for tgid {}", tgid);
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// GPL-compatible: bpf_probe_read_kernel is a GPL-only helper.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
