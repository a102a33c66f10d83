//! Process names by pid, for owners the kernel names by pid only.

use std::{collections::HashMap, time::Duration};

use crate::{host::sys::monotonic_ns, model::owner::Comm};

/// How long a name read from /proc is trusted before it is read again: a
/// pid can be reused by another program.
const NAME_TTL: Duration = Duration::from_secs(10);
/// Bound on the names remembered.
const MAX_NAMES: usize = 1 << 16;

/// Process names by pid: taken from the kernel's events (read in process
/// context, so right even for a process that exited since) and from
/// `/proc/PID/comm` for owners learnt without one. Times are CLOCK_MONOTONIC
/// ns, the events' own clock: the hot path reads no clock (clock_gettime
/// per event was 5% of `watch --json`'s CPU).
pub struct Names {
    proc_root: std::path::PathBuf,
    names: HashMap<u32, (Comm, u64), foldhash::fast::FixedState>,
}

impl Default for Names {
    fn default() -> Self {
        Self::with_root("/proc".into())
    }
}

impl Names {
    pub fn with_root(proc_root: std::path::PathBuf) -> Self {
        Self {
            proc_root,
            names: HashMap::with_hasher(foldhash::fast::FixedState::default()),
        }
    }

    /// `pid` runs as `comm` now.
    pub fn learn(&mut self, pid: u32, comm: Comm) {
        self.learn_at(pid, comm, monotonic_ns());
    }

    /// `pid` ran as `comm` at `now_ns` (CLOCK_MONOTONIC).
    pub fn learn_at(&mut self, pid: u32, comm: Comm, now_ns: u64) {
        if comm.is_empty() {
            return;
        }
        if self.names.len() >= MAX_NAMES && !self.names.contains_key(&pid) {
            self.names.clear();
        }
        self.names.insert(pid, (comm, now_ns));
    }

    /// `pid`'s name: as last learnt, else from /proc; empty when unknown.
    pub fn get(&mut self, pid: u32) -> Comm {
        self.get_at(pid, monotonic_ns())
    }

    /// [`Names::get`] at `now_ns` (CLOCK_MONOTONIC).
    pub fn get_at(&mut self, pid: u32, now_ns: u64) -> Comm {
        let ttl = NAME_TTL.as_nanos() as u64;
        match self.names.get(&pid) {
            Some((c, at)) if now_ns.saturating_sub(*at) < ttl => *c,
            cached => {
                let stale = cached.map(|(c, _)| *c);
                match self.read(pid) {
                    Some(c) => {
                        self.learn_at(pid, c, now_ns);
                        c
                    }
                    // Gone: the last name known is still the best.
                    None => stale.unwrap_or_default(),
                }
            }
        }
    }

    fn read(&self, pid: u32) -> Option<Comm> {
        let raw = std::fs::read(self.proc_root.join(pid.to_string()).join("comm")).ok()?;
        // Only the kernel's newline goes: a comm may end in spaces of its own.
        Some(Comm::new(raw.strip_suffix(b"\n").unwrap_or(&raw)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_events_then_proc_and_unknown_when_neither() {
        let mut n = Names::default();
        n.learn(4_000_000, Comm::new(b"gone"));
        assert_eq!(n.get(4_000_000).text(), "gone");
        let me = std::process::id();
        let want = std::fs::read_to_string("/proc/self/comm").unwrap();
        assert_eq!(n.get(me).text(), want.trim_end_matches('\n'));
        assert!(n.get(u32::MAX).is_empty());
    }
}
