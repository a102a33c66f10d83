//! Who owns a socket. The task on the CPU is right only in process context
//! (connect, listen, close, shutdown); receive-path transitions run in softirq,
//! where it is `swapper`, `ksoftirqd` or, on loopback, the peer. So:
//! 1. in process context, the current task, remembered per socket;
//! 2. a socket whose file we can see (inode): every process holding it in
//!    `/proc/*/fd` — right after fork() or SCM_RIGHTS too;
//! 3. a remembered owner from 1;
//! 4. a server socket not accepted yet: its listener's owner;
//! 5. otherwise the task on the CPU, marked as a guess.

use std::collections::HashMap;

use serde::Serialize;

use crate::{
    host::holders::{Holder, HolderIndex},
    kernel::decode::Event,
    model::socket_table::Socket,
    model::state::TcpState,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OwnerSource {
    /// The task that made the transition in process context.
    Task,
    /// A holder of the socket's file descriptor, from /proc/*/fd.
    Fd,
    /// The owner of the listening socket this one was created from.
    Listener,
    /// Whoever was on the CPU in softirq: possibly not the owner.
    OnCpu,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Owner {
    pub pid: u32,
    pub comm: String,
    pub source: OwnerSource,
}

impl Owner {
    pub fn task(pid: u32, comm: &str) -> Self {
        Self {
            pid,
            comm: comm.to_owned(),
            source: OwnerSource::Task,
        }
    }

    pub fn from_holder(h: &Holder) -> Self {
        Self {
            pid: h.pid,
            comm: h.comm.clone(),
            source: OwnerSource::Fd,
        }
    }
}

/// Transitions that only a system call on the socket makes, so the current
/// task is the socket's user. The kernel program names the task (comm) only
/// for these.
pub fn in_process_context(ev: &Event) -> bool {
    ev.tgid != 0 && tcptrace_common::in_process_context(ev.newstate as u8)
}

/// Bound on the names remembered for on-CPU guesses.
const MAX_GUESS_NAMES: usize = 1024;

pub struct Attributor {
    listeners: HashMap<u16, Owner>,
    holders: Option<HolderIndex>,
    /// pid -> comm for on-CPU guesses, whose events carry no comm.
    guess_names: HashMap<u32, String>,
}

impl Attributor {
    /// `holders`: the /proc index, or `None` to never read /proc (cheapest).
    pub fn new(holders: Option<HolderIndex>) -> Self {
        Self {
            listeners: HashMap::new(),
            holders,
            guess_names: HashMap::new(),
        }
    }

    /// A listener that existed before tracing started.
    pub fn add_listener(&mut self, lport: u16, owner: Owner) {
        self.listeners.insert(lport, owner);
    }

    pub fn holders_mut(&mut self) -> Option<&mut HolderIndex> {
        self.holders.as_mut()
    }

    /// The owner(s) of the socket at this transition, first one primary.
    pub fn attribute(&mut self, ev: &Event, sock: &Socket) -> Vec<Owner> {
        let owners = self.resolve(ev, sock);
        if let Some(first) = owners.first() {
            match (ev.oldstate, ev.newstate) {
                (_, TcpState::Listen) => {
                    self.listeners.insert(sock.tuple.lport, first.clone());
                }
                (TcpState::Listen, TcpState::Close) => {
                    self.listeners.remove(&sock.tuple.lport);
                }
                _ => {}
            }
        }
        owners
    }

    fn resolve(&mut self, ev: &Event, sock: &Socket) -> Vec<Owner> {
        if in_process_context(ev) {
            return vec![Owner::task(ev.tgid, &ev.comm)];
        }
        // The fd table is the truth once the socket has a file, but reading it
        // costs a readlink per fd of the process: only when nothing else is
        // known (a socket that existed before we started, or accepted before
        // we saw its listener). `leaks` rescans /proc itself for current holders.
        if sock.inode != 0
            && sock.owner.is_none()
            && let Some(index) = self.holders.as_mut()
        {
            let found = index.holders(sock.inode, None);
            if !found.is_empty() {
                return found.iter().map(Owner::from_holder).collect();
            }
        }
        if let Some(o) = &sock.owner {
            return vec![o.clone()];
        }
        if matches!(ev.oldstate, TcpState::Listen | TcpState::SynRecv)
            && let Some(l) = self.listeners.get(&sock.tuple.lport)
        {
            return vec![Owner {
                source: OwnerSource::Listener,
                ..l.clone()
            }];
        }
        vec![Owner {
            pid: ev.tgid,
            comm: self.guess_name(ev),
            source: OwnerSource::OnCpu,
        }]
    }

    /// The on-CPU task's name. Softirq events do not carry it (naming the
    /// task in the kernel costs every event): a rare fallback reads it from /proc.
    fn guess_name(&mut self, ev: &Event) -> String {
        if !ev.comm.is_empty() {
            return ev.comm.clone();
        }
        if ev.tgid == 0 {
            return "swapper".to_owned();
        }
        if self.guess_names.len() >= MAX_GUESS_NAMES {
            self.guess_names.clear();
        }
        self.guess_names
            .entry(ev.tgid)
            .or_insert_with(|| {
                // Only the kernel's newline goes, as holders' process_info
                // does: a comm may end in spaces of its own.
                std::fs::read_to_string(format!("/proc/{}/comm", ev.tgid)).map_or_else(
                    |_| "?".to_owned(),
                    |c| c.strip_suffix('\n').unwrap_or(&c).to_owned(),
                )
            })
            .clone()
    }
}
