//! Symbolizing the user stacks the kernel program takes, with blazesym:
//! ELF symbols, DWARF (function, file, line, inlined calls), demangling
//! (C++, Rust), and perf maps (`/tmp/perf-PID.map`) for JIT runtimes. A
//! process's stack is named once, while it runs, and kept: its sockets stay
//! named after it exits. blazesym caches what it parses per binary, keyed
//! by the file's device, inode, size and modification time (so the
//! processes of one binary share it through their `/proc/PID/map_files`
//! paths, and a binary rebuilt in place is parsed anew; it does not read
//! build ids for this); above it, each process's named stacks are kept.

use std::{collections::HashMap, sync::Arc};

use blazesym::{
    Pid,
    symbolize::{
        Input, Symbolized, Symbolizer as Blaze,
        source::{Process, Source},
    },
};

use crate::{
    host::sys,
    model::stack::{Frame, Stack},
};

/// Functions a thread's stack starts from: a stack that reaches one of
/// them is whole.
const ROOTS: &[&str] = &[
    "_start",
    "__libc_start_main",
    "__libc_start_call_main",
    "start_thread",
    "clone",
    "clone3",
    "__clone",
    "__clone3",
    "runtime.goexit",
    "runtime.goexit.abi0",
    "thread_start",
];

/// A source file and line.
type Location = (Option<String>, Option<u32>);

/// Bound on the stacks remembered.
const MAX_CACHED: usize = 4096;

pub struct Symbolizer {
    blaze: Blaze,
    /// `/proc/PID/map_files` needs CAP_SYS_ADMIN; without it the paths of
    /// `/proc/PID/maps` are opened (which a container's own files may not be).
    map_files: bool,
    cache: HashMap<(u32, Vec<u64>), Arc<Stack>>,
}

impl Default for Symbolizer {
    fn default() -> Self {
        Self {
            blaze: Blaze::new(),
            map_files: sys::has_capability(sys::CAP_SYS_ADMIN),
            cache: HashMap::new(),
        }
    }
}

impl Symbolizer {
    /// `ips` as the kernel unwound them in `pid` (innermost first), with the
    /// return address `caller` found on top of the stack put back after the
    /// first frame when the frame-pointer walk skipped it. `None` when the
    /// process is gone.
    pub fn stack(&mut self, pid: u32, ips: &[u64], caller: u64) -> Option<Arc<Stack>> {
        let mut addrs: Vec<u64> = ips.to_vec();
        if caller != 0 && !addrs.is_empty() && addrs.get(1) != Some(&caller) {
            addrs.insert(1, caller);
        }
        let key = (pid, addrs);
        if let Some(s) = self.cache.get(&key) {
            return Some(s.clone());
        }
        let stack = Arc::new(self.symbolize(pid, &key.1)?);
        if self.cache.len() >= MAX_CACHED {
            self.cache.clear();
        }
        self.cache.insert(key, stack.clone());
        Some(stack)
    }

    fn symbolize(&self, pid: u32, addrs: &[u64]) -> Option<Stack> {
        // A return address is just past its call: look up the call itself.
        let lookup: Vec<u64> = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| if i == 0 { *a } else { a.saturating_sub(1) })
            .collect();
        let mut process = Process::new(Pid::from(pid));
        process.map_files = self.map_files;
        let syms = match self
            .blaze
            .symbolize(&Source::Process(process), Input::AbsAddr(&lookup))
        {
            Ok(syms) => syms,
            Err(e) => {
                log::debug!("symbolizing a stack of {pid}: {e}");
                return None;
            }
        };
        let mut frames = Vec::new();
        let mut whole = false;
        for (addr, sym) in addrs.iter().zip(syms) {
            let Symbolized::Sym(sym) = sym else {
                // Outside every mapping: the frame-pointer chain went astray.
                break;
            };
            let module = sym
                .module
                .as_ref()
                .map(|m| m.to_string_lossy().into_owned());
            let code = |c: Option<&blazesym::symbolize::CodeInfo<'_>>| {
                c.map_or((None, None), |c| {
                    (Some(c.to_path().display().to_string()), c.line)
                })
            };
            // Innermost first: the calls inlined at this address, deepest
            // first, then the function they were inlined into; each with its
            // own location (the line in that function).
            let mut names: Vec<(String, Location)> = sym
                .inlined
                .iter()
                .rev()
                .map(|inl| (inl.name.to_string(), code(inl.code_info.as_ref())))
                .collect();
            names.push((sym.name.to_string(), code(sym.code_info.as_deref())));
            let n = names.len();
            for (i, (name, (file, line))) in names.into_iter().enumerate() {
                whole |= ROOTS.contains(&name.as_str());
                frames.push(Frame {
                    function: Some(name),
                    file,
                    line,
                    module: module.clone(),
                    address: *addr,
                    inlined: i + 1 < n,
                });
            }
        }
        let incomplete = (!whole).then(|| {
            let last = frames
                .last()
                .and_then(|f| f.module.as_deref())
                .map(|m| m.rsplit('/').next().unwrap_or(m).to_owned())
                .unwrap_or_else(|| "the process".to_owned());
            format!(
                "incomplete: {} frames; {last} seems built without frame pointers",
                frames.len()
            )
        });
        Some(Stack { frames, incomplete })
    }
}
