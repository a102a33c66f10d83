//! Stream mode: each transition that passes the filters goes into the ring
//! buffer with its owner.

use aya_ebpf::{
    bindings::{BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns},
};
use tcptrace_common::{Config, DROPS_SLOT, OwnerSource, RINGS, SockEntry, StateEvent, TcpState};

use crate::{
    bump, kernel, load,
    owner::{self, Learnt, Owner},
    record::{Transition, state_bit},
};

const CLOSE: u8 = TcpState::Close as u8;
const SYN_RECV: u8 = TcpState::SynRecv as u8;
const CLOSE_WAIT: u8 = TcpState::CloseWait as u8;

/// A record's footprint in the ring: the event and the kernel's 8-byte header.
const RECORD_BYTES: u64 = size_of::<StateEvent>() as u64 + 8;

#[inline(always)]
pub fn transition(t: &Transition, cfg: &Config, passes: bool) {
    let states = load(&cfg.filter.states);
    let emits = passes && (states == 0 || states & t.state_bits() != 0);
    let learnt = owner::learn(t, cfg, emits);
    if !owner::tracked(cfg) {
        if emits {
            // SAFETY: takes no arguments.
            let now = unsafe { bpf_ktime_get_ns() };
            emit(t, cfg, &Owner::unknown_passing(), &learnt, now);
        }
        return;
    }
    // Owners tracked: the socket's entry keeps what was learnt. Transitions
    // that neither emit nor teach touch it only to free it.
    if !emits && !learnt.seen && t.new != CLOSE {
        return;
    }
    let Some((entry, found)) = owner::entry(t.skaddr, load(&cfg.socket_sets)) else {
        return;
    };
    // SAFETY: an array value; copied out at once (32 bytes), always: see
    // aggregate::transition.
    let copy = unsafe { *entry };
    let prev = (found && !tcptrace_common::starts_lifecycle(t.old, t.new)).then_some(&copy);
    let who = owner::resolve(t, cfg, &learnt, prev, emits);
    let sends = emits && who.passes;
    let writes = t.new != CLOSE
        && prev.is_none_or(|p| {
            p.owner != who.tgid
                || p.owner_source != who.source
                || (p.owner_passes != 0) != who.passes
        });
    // One clock read serves the record and the entry (two were made on a
    // socket's first transition), and none for a transition that needs
    // neither. With the record stamped by the caller's read, serve's
    // program went from 211 to 203 ns/event (bench, AMD host, same rounds).
    let now = if sends || writes {
        // SAFETY: takes no arguments.
        unsafe { bpf_ktime_get_ns() }
    } else {
        0
    };
    // SAFETY (both arms): `entry` came from owner::entry; TCP serialises a
    // socket's transitions, and another socket taking the entry meanwhile
    // (a full set, on another CPU) costs one owner, no more.
    if t.new == CLOSE {
        if found {
            unsafe { owner::free(entry) };
        }
    } else if writes {
        unsafe {
            if !found {
                owner::make_room(entry);
            }
            *entry = SockEntry {
                skaddr: t.skaddr,
                entered_ns: now,
                owner: who.tgid,
                owner_source: who.source,
                owner_passes: u8::from(who.passes),
                ..SockEntry::FREE
            };
        }
    }
    if sends {
        emit(t, cfg, &who, &learnt, now);
    }
}

const _: () = assert!(RINGS == 8, "on_ring! has one arm per ring");

/// `$call` with `$r` bound to ring `$n` of the `EVENTS_*` rings: one arm
/// per ring, as each helper call must name its map for the verifier.
macro_rules! on_ring {
    ($n:expr, |$r:ident| $call:expr) => {
        match $n {
            0 => {
                let $r = &crate::EVENTS_0;
                $call
            }
            1 => {
                let $r = &crate::EVENTS_1;
                $call
            }
            2 => {
                let $r = &crate::EVENTS_2;
                $call
            }
            3 => {
                let $r = &crate::EVENTS_3;
                $call
            }
            4 => {
                let $r = &crate::EVENTS_4;
                $call
            }
            5 => {
                let $r = &crate::EVENTS_5;
                $call
            }
            6 => {
                let $r = &crate::EVENTS_6;
                $call
            }
            _ => {
                let $r = &crate::EVENTS_7;
                $call
            }
        }
    };
}

/// Writes the event, stamped `now`, straight into the ring buffer of this
/// CPU: no stack copy. Inlined in both callers: a BPF-to-BPF call costs a
/// return thunk here.
///
/// Records of one socket may land in different rings; userspace restores
/// their order from `ts_ns` (TCP serialises a socket's transitions, so the
/// record of one is submitted before the next one's clock read).
#[inline(always)]
pub fn emit(t: &Transition, cfg: &Config, who: &Owner, learnt: &Learnt, now: u64) {
    // SAFETY: takes no arguments.
    let ring = unsafe { bpf_get_smp_processor_id() } % RINGS;
    let Some(mut entry) = on_ring!(ring, |r| r.reserve::<StateEvent>(0)) else {
        bump(DROPS_SLOT);
        return;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: `e` points at a reserved, writable StateEvent; every field is
    // written below, with plain stores (a zeroing loop would be a BPF call).
    unsafe {
        (*e).ts_ns = now;
        (*e).skaddr = t.skaddr;
        // A socket not accepted yet has no file (and SYN_RECV is all it does
        // before accept), so no walk for it; nor where the view does not want it.
        let wanted = load(&cfg.filter.inode_states);
        (*e).inode = if t.new == SYN_RECV || wanted & state_bit(t.new) == 0 {
            0
        } else {
            kernel::socket_inode(t.skaddr, &cfg.layout)
        };
        write_words(core::ptr::addr_of_mut!((*e).saddr), t.saddr);
        write_words(core::ptr::addr_of_mut!((*e).daddr), t.daddr);
        let known = who.source() != OwnerSource::Unknown;
        (*e).owner = if known { who.tgid } else { 0 };
        (*e).owner_source = who.source() as u8;
        // Byte stores: a 3-byte fill is a call to a byte-loop memset.
        let pad = core::ptr::addr_of_mut!((*e)._pad).cast::<u8>();
        for i in 0..3 {
            core::ptr::write_volatile(pad.add(i), 0);
        }
        // Where a leak starts: the stack that opened the socket.
        let stack = if t.new == CLOSE_WAIT && crate::stacks::on(cfg) {
            crate::stacks::of(t.skaddr)
        } else {
            None
        };
        (*e).stack_id = stack.map_or(-1, |s| s.stack_id);
        (*e).caller = stack.map_or(0, |s| s.caller);
        (*e).stack_pid = stack.map_or(0, |s| s.pid);
        (*e).sport = t.sport;
        (*e).dport = t.dport;
        (*e).family = t.family;
        (*e).oldstate = t.old;
        (*e).newstate = t.new;
        let comm = core::ptr::addr_of_mut!((*e).comm);
        if learnt.seen && learnt.named {
            write_words(comm, learnt.comm.words());
        } else {
            write_words(comm, [0; 4]);
        }
    }
    // Wake the reader once, with the record that takes the backlog over the
    // threshold. Waking on every record past it (a reader falling behind)
    // costs an inter-processor interrupt each: on a VM, most of the program's time.
    let wakeup = load(&cfg.wakeup_bytes);
    let pending = on_ring!(ring, |r| r.query(0));
    let flags = if wakeup == 0 || (pending >= wakeup && pending < wakeup + RECORD_BYTES) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(flags.into());
}

/// Four word stores: LLVM turns a 16-byte copy or fill into a call to a
/// byte-loop `memset`/`memcpy`, a BPF-to-BPF call on the hot path.
///
/// # Safety
/// `dst` is valid for 16 bytes of writes and 4-byte aligned.
unsafe fn write_words(dst: *mut [u8; 16], words: [u32; 4]) {
    let dst = dst.cast::<u32>();
    for (i, w) in words.into_iter().enumerate() {
        // SAFETY: within the 16 bytes, per the contract.
        unsafe { core::ptr::write_volatile(dst.add(i), w) };
    }
}
