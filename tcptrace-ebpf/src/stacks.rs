//! The user stack of the thread that opens each socket (inside `connect()`
//! and at the return of `accept()`), one per connection, not per
//! transition: its `STACKS` id is kept per socket in `SOCKET_STACKS`,
//! freed at CLOSE, and sent with the socket's transition into CLOSE_WAIT,
//! where a leak starts.
//!
//! The kernel walks user stacks by frame pointers. A system call's library
//! wrapper (glibc's: built without them) makes no frame, so the walk skips
//! its caller, the very function that opened the socket. That return
//! address is on top of the user stack at the system call: the first few
//! words there are searched for one that follows a call instruction
//! ([`caller`]), which userspace puts back in its place.

use aya_ebpf::{
    EbpfContext,
    bindings::BPF_F_USER_STACK,
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_kernel, bpf_probe_read_user,
        generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
    },
    programs::tracing::StackIdContext,
};
use tcptrace_common::{
    CALLER_SCAN_WORDS, Config, KernelLayout, STACKS_CALLER, STACKS_LOST_SLOT, STACKS_ON, SockStack,
};

use crate::{SOCKET_STACKS, STACKS, bump, load};

/// Whether stacks are taken.
#[inline(always)]
pub fn on(cfg: &Config) -> bool {
    load(&cfg.stacks) & STACKS_ON != 0
}

/// Takes the current thread's user stack for socket `sk`.
#[inline(always)]
pub fn capture<C: StackIdContext + EbpfContext>(ctx: &C, sk: u64, cfg: &Config) {
    let stack_id = match ctx.get_stackid(&STACKS, u64::from(BPF_F_USER_STACK)) {
        Ok(id) => id as i32,
        // A bucket taken by another stack (never overwritten: the sockets
        // that point at it would name the wrong code), or a fault.
        Err(_) => {
            bump(STACKS_LOST_SLOT);
            return;
        }
    };
    // The rodata flag is a constant to the verifier: on kernels without
    // bpf_task_pt_regs (before 5.15) this branch is never visited.
    let caller = if load(&cfg.stacks) & STACKS_CALLER != 0 {
        caller(&cfg.layout)
    } else {
        0
    };
    let value = SockStack {
        stack_id,
        pid: (bpf_get_current_pid_tgid() >> 32) as u32,
        caller,
    };
    if SOCKET_STACKS.insert(&sk, &value, 0).is_err() {
        bump(STACKS_LOST_SLOT);
    }
}

/// The stack that opened `sk`, if one was taken.
#[inline(always)]
pub fn of(sk: u64) -> Option<SockStack> {
    // SAFETY: a plain value copied out at once.
    unsafe { SOCKET_STACKS.get(&sk) }.copied()
}

/// The socket closed: its stack goes with it.
#[inline(always)]
pub fn forget(sk: u64) {
    let _ = SOCKET_STACKS.remove(&sk);
}

/// The first word on top of the user stack that follows a call instruction
/// in the process's memory; 0 if none of the first [`CALLER_SCAN_WORDS`] does.
#[inline(always)]
fn caller(layout: &KernelLayout) -> u64 {
    let sp_at = load(&layout.pt_regs_sp);
    if sp_at == KernelLayout::UNKNOWN {
        return 0;
    }
    // SAFETY: the current task's saved user registers; read, not dereferenced.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
    // SAFETY: bpf_probe_read_kernel checks the address.
    let Ok(sp) = (unsafe { bpf_probe_read_kernel((regs + u64::from(sp_at)) as *const u64) }) else {
        return 0;
    };
    // SAFETY: bpf_probe_read_user checks the address; a fault is an error.
    let Ok(words) = (unsafe { bpf_probe_read_user(sp as *const [u64; CALLER_SCAN_WORDS]) }) else {
        return 0;
    };
    for w in words {
        if follows_call(w) {
            return w;
        }
    }
    0
}

/// Whether the bytes before `addr` end with an x86-64 call: `e8 rel32`,
/// `ff 15 disp32` (through the GOT), `ff d0+r` or `41 ff d0+r` (register).
#[inline(always)]
fn follows_call(addr: u64) -> bool {
    if addr < 4096 || addr >= 0x8000_0000_0000 {
        return false;
    }
    // SAFETY: bpf_probe_read_user checks the address; a fault is an error.
    let Ok(b) = (unsafe { bpf_probe_read_user((addr - 8) as *const [u8; 8]) }) else {
        return false;
    };
    b[3] == 0xe8 || (b[2] == 0xff && b[3] == 0x15) || (b[6] == 0xff && b[7] & 0xf8 == 0xd0)
}
