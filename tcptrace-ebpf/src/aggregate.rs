//! Aggregate mode: measure each transition against the socket's entry in
//! `SOCKETS` and count it in `TOTALS` (or `HIST` when grouping). Nothing goes
//! to the ring buffer but the states userspace asks to see
//! ([`tcptrace_common::AggregateConfig::stream_states`]).

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_ktime_get_ns};
use tcptrace_common::{
    AF_INET, Config, GROUP_LPORT, GROUP_NONE, GROUP_PROCESS, GROUP_RADDR, GROUP_RPORT,
    HIST_FULL_SLOT, HistKey, LOG2_BUCKETS, SLOT_MAX, SockEntry, TcpState, TotalHist, log2_bucket,
    measure, starts_lifecycle, total_index, transition_index,
};

use crate::{
    HIST, TOTALS, TRANSITIONS, bump, load,
    owner::{self, Owner},
    record::Transition,
    stream,
};

const CLOSE: u8 = TcpState::Close as u8;

/// What a map update with BPF_NOEXIST returns when the key exists.
const EEXIST: i32 = -17;

#[inline(always)]
pub fn transition(t: &Transition, cfg: &Config, passes: bool) {
    let agg = &cfg.aggregate;
    let streams = passes && load(&agg.stream_states) & u32::from(t.state_bits()) != 0;
    let learnt = owner::learn(t, cfg, streams);
    // Transitions the filters drop count nothing; they only teach owners
    // and free entries (at CLOSE), and only when owners are tracked.
    if !passes && !learnt.seen && t.new != CLOSE {
        return;
    }
    // SAFETY: takes no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let Some((entry, found)) = owner::entry(t.skaddr, load(&cfg.socket_sets)) else {
        return;
    };
    // SAFETY: an array value; copied out at once (32 bytes), even when not
    // used: an `Option<SockEntry>` is undefined while `None`, and LLVM then
    // reloads stack it never wrote, which verifiers before 6.3 refuse
    // ("invalid read from stack", 5.10 in the matrix).
    let copy = unsafe { *entry };
    let prev = (found && !starts_lifecycle(t.old, t.new)).then_some(&copy);
    let who = if owner::tracked(cfg) {
        owner::resolve(t, cfg, &learnt, prev, passes)
    } else {
        Owner::unknown_passing()
    };
    let measured = measure(prev, t.old, t.new, now);
    if passes && who.passes {
        if let Some(n) = TRANSITIONS.get_ptr_mut(transition_index(t.old, t.new)) {
            // SAFETY: this CPU's slot; the kernel never nests runs on one CPU.
            unsafe { *n += 1 };
        }
        let mut key = group_key(t, who.tgid, cfg, now);
        let grouped = load(&agg.group_by) != GROUP_NONE;
        for (kind, ns) in measured.values() {
            count(&mut key, kind, ns, grouped);
        }
    }
    if streams {
        stream::emit(t, cfg, &who, &learnt, now);
    }
    // SAFETY (both arms): `entry` came from owner::entry; TCP serialises a
    // socket's transitions, and another socket taking the entry meanwhile
    // (a full set, on another CPU) loses a measurement, no more.
    if t.new == CLOSE {
        if found {
            unsafe { owner::free(entry) };
        }
        return;
    }
    unsafe {
        if !found {
            owner::make_room(entry);
        }
        *entry = SockEntry {
            skaddr: t.skaddr,
            entered_ns: now,
            handshake_ns: measured.handshake_ns,
            owner: who.tgid,
            state: t.new,
            handshake: measured.handshake,
            owner_source: who.source,
            owner_passes: u8::from(who.passes),
        };
    }
}

/// The histogram key of this transition's group and interval.
#[inline(always)]
fn group_key(t: &Transition, owner: u32, cfg: &Config, now: u64) -> HistKey {
    let agg = &cfg.aggregate;
    let mut key = HistKey {
        group: [0; 16],
        epoch: 0,
        family: 0,
        kind: 0,
        slot: 0,
    };
    if let Some(epoch) = now
        .saturating_sub(load(&agg.start_ns))
        .checked_div(load(&agg.interval_ns))
    {
        key.epoch = epoch as u32;
    }
    let words = |w: [u32; 4]| {
        // SAFETY: same size, any bit pattern is valid.
        unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(w) }
    };
    match load(&agg.group_by) {
        GROUP_PROCESS => key.group[..4].copy_from_slice(&owner.to_ne_bytes()),
        GROUP_LPORT => key.group[..2].copy_from_slice(&t.sport.to_ne_bytes()),
        GROUP_RPORT => key.group[..2].copy_from_slice(&t.dport.to_ne_bytes()),
        GROUP_RADDR => {
            key.family = t.family;
            key.group = if t.family == AF_INET {
                words([t.daddr[0], 0, 0, 0])
            } else {
                words(t.daddr)
            };
        }
        _ => {}
    }
    key
}

/// One value into a histogram: its log2 bucket of microseconds, and the maximum.
#[inline(always)]
fn count(key: &mut HistKey, kind: u8, ns: u64, grouped: bool) {
    if !grouped {
        count_total(kind, key.epoch, ns);
        return;
    }
    key.kind = kind;
    key.slot = log2_bucket(ns / 1000);
    add(key, 1, |slot, n| *slot += n);
    key.slot = SLOT_MAX;
    add(key, ns, |slot, v| *slot = (*slot).max(v));
}

/// Not grouping: this CPU's histogram of `kind` for interval `epoch`, reset
/// when the interval is new to it.
#[inline(always)]
fn count_total(kind: u8, epoch: u32, ns: u64) {
    let Some(h) = total_index(kind, epoch).and_then(|i| TOTALS.get_ptr_mut(i)) else {
        return;
    };
    // SAFETY: this CPU's copy; the kernel never nests runs on one CPU.
    let h = unsafe { &mut *h };
    if h.epoch != u64::from(epoch) {
        reset(h, u64::from(epoch));
    }
    // The mask bounds the index for the verifier; buckets are below 64 anyway.
    h.buckets[usize::from(log2_bucket(ns / 1000) & (LOG2_BUCKETS - 1))] += 1;
    h.max_ns = h.max_ns.max(ns);
    h.sum_ns += ns;
}

/// Empties `h` for interval `epoch`, one volatile store per field: a
/// `TotalHist` literal is a 536-byte fill, which LLVM makes a call to a
/// byte-loop `memset`, and the verifier walks all 536 iterations on every
/// path that reaches one of the three inlined copies: hist's program took
/// 200,000 verified instructions (6.18), and 5.10's verifier, under TCG,
/// more than 300 s for serve's.
#[inline(always)]
fn reset(h: &mut TotalHist, epoch: u64) {
    // SAFETY: fields of a valid, exclusive reference.
    unsafe {
        core::ptr::write_volatile(&mut h.max_ns, 0);
        core::ptr::write_volatile(&mut h.sum_ns, 0);
        for b in h.buckets.iter_mut() {
            core::ptr::write_volatile(b, 0);
        }
        core::ptr::write_volatile(&mut h.epoch, epoch);
    }
}

/// Applies `update` to this CPU's counter for `key`, creating it when missing.
fn add(key: &HistKey, value: u64, update: impl Fn(&mut u64, u64)) {
    for _ in 0..2 {
        if let Some(slot) = HIST.get_ptr_mut(key) {
            // SAFETY: this CPU's copy; the kernel never nests runs on one CPU.
            unsafe { update(&mut *slot, value) };
            return;
        }
        match HIST.insert(key, value, u64::from(BPF_NOEXIST)) {
            Ok(()) => return,
            // Another CPU created the key meanwhile: look it up again.
            Err(EEXIST) => {}
            // Full: count the loss.
            Err(_) => break,
        }
    }
    bump(HIST_FULL_SLOT);
}
