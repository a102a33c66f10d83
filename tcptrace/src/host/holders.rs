//! Which processes hold a socket, from its inode: what `ss -tanp` shows,
//! read from `/proc/*/fd`.
//!
//! The kernel program reports the inode of a socket's file, but the task on
//! the CPU is often not its user (softirq). The fd tables are the truth, and
//! they name every holder: a child that inherited the fd across fork() and a
//! process that received it with SCM_RIGHTS alike.
//!
//! Every process is read through a directory fd of `/proc/PID` opened first:
//! once that process dies, lookups under the stale fd fail even if the pid
//! has been reused, so a process's fds and its start time always belong to
//! the same process, and `(pid, start_time)` names it unambiguously.

use std::{
    collections::{HashMap, hash_map::Entry},
    ffi::{CStr, CString},
    io,
    os::fd::{AsRawFd, OwnedFd, RawFd},
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::host::{
    procfs::{
        LINK_BUF, open_dir_path, parse_limits_nofile_strict, parse_socket_link_bytes, parse_stat,
        parse_u32, read_at, readlink_at,
    },
    sys,
};

/// One process holding a socket through one of its fds.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Holder {
    pub pid: u32,
    pub fd: u32,
    /// Its network namespace's inode, when readable.
    pub netns: Option<u64>,
    pub comm: String,
    /// Field 22 of /proc/PID/stat: clock ticks since boot.
    pub start_time: u64,
}

/// What the tests read of a process.
#[cfg(test)]
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ProcessInfo {
    pub pid: u32,
    pub comm: String,
    pub start_time: u64,
    pub open_fds: u64,
    /// Soft RLIMIT_NOFILE; `None` = unlimited.
    pub fd_limit: Option<u64>,
}

const DEFAULT_MIN_FULL_RESCAN: Duration = Duration::from_secs(1);
/// Processes remembered per network namespace, to read it through one
/// that is still alive.
const PIDS_PER_NAMESPACE: usize = 4;

/// What a report says of a process besides its sockets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessFacts {
    pub open_fds: u64,
    /// Soft RLIMIT_NOFILE; `None` = unlimited or unreadable.
    pub fd_limit: Option<u64>,
    /// Its cgroup v2 path.
    pub cgroup: Option<String>,
}

/// What one process holds, as of its last scan.
struct ProcEntry {
    comm: String,
    start_time: u64,
    /// Entries of its fd table.
    open_fds: u64,
    netns: Option<u64>,
    /// Thread whose fd dir was read, when the leader's own is unusable (see
    /// [`visit_fd_table`]); validation must look in the same place.
    via_tid: Option<u32>,
    /// `(fd, inode)` of each socket fd.
    sockets: Vec<(u32, u64)>,
}

/// Socket inode -> holders, built from /proc and refreshed on misses.
pub struct HolderIndex {
    proc_root: PathBuf,
    root_fd: Option<OwnedFd>,
    /// `(pid, fd)` lists kept sorted, the order callers get.
    by_inode: HashMap<u64, Vec<(u32, u32)>>,
    procs: HashMap<u32, ProcEntry>,
    /// Network namespace inode -> some of its processes, as of the last full scan.
    namespaces: HashMap<u64, Vec<u32>>,
    /// Processes the last full scan was not allowed to read, and the
    /// first few of their pids (to name them).
    unreadable: usize,
    unreadable_pids: Vec<u32>,
    min_full_rescan: Duration,
    last_full_scan: Option<Instant>,
    /// Pids rescanned since the last full scan: a hint already rescanned
    /// recently is not rescanned again on every hit.
    recent_pid_scans: HashMap<u32, Instant>,
    full_scans: u64,
    pid_rescans: u64,
    stat_buf: Vec<u8>,
    sockets_buf: Vec<(u32, u64)>,
}

impl Default for HolderIndex {
    fn default() -> Self {
        Self::new()
    }
}

/// How many of the processes /proc refused are named in the warning.
const UNREADABLE_PIDS_NAMED: usize = 3;

enum Scan {
    Gone,
    /// Not ours to read (no CAP_SYS_PTRACE for another user's process).
    Denied,
    /// Alive without sockets, in this network namespace.
    NoSockets(Option<u64>),
    Found(ProcEntry),
}

impl HolderIndex {
    pub fn new() -> Self {
        Self::with_root(PathBuf::from("/proc"))
    }

    pub fn with_root(proc_root: PathBuf) -> Self {
        Self {
            proc_root,
            root_fd: None,
            by_inode: HashMap::new(),
            procs: HashMap::new(),
            namespaces: HashMap::new(),
            unreadable: 0,
            unreadable_pids: Vec::new(),
            min_full_rescan: DEFAULT_MIN_FULL_RESCAN,
            last_full_scan: None,
            recent_pid_scans: HashMap::new(),
            full_scans: 0,
            pid_rescans: 0,
            stat_buf: Vec::with_capacity(512),
            sockets_buf: Vec::new(),
        }
    }

    pub fn set_min_full_rescan(&mut self, d: Duration) {
        self.min_full_rescan = d;
    }

    /// (full scans done, pid rescans done).
    /// Processes the last full scan was not allowed to read: their sockets
    /// and namespaces are missing from it.
    pub fn unreadable(&self) -> usize {
        self.unreadable
    }

    /// The first few of those processes' pids.
    pub fn unreadable_pids(&self) -> &[u32] {
        &self.unreadable_pids
    }

    /// Every network namespace a process was in at the last full scan.
    pub fn namespaces(&self) -> Vec<crate::host::netns::Namespace> {
        let mut v: Vec<_> = self
            .namespaces
            .iter()
            .map(|(inode, pids)| crate::host::netns::Namespace {
                inode: *inode,
                pids: pids.clone(),
            })
            .collect();
        v.sort_by_key(|n| n.inode);
        v
    }

    #[cfg(test)]
    pub fn stats(&self) -> (u64, u64) {
        (self.full_scans, self.pid_rescans)
    }

    fn root(&mut self) -> io::Result<RawFd> {
        if self.root_fd.is_none() {
            self.root_fd = Some(open_dir_path(&self.proc_root)?);
        }
        Ok(self.root_fd.as_ref().map_or(-1, AsRawFd::as_raw_fd))
    }

    /// Rebuild inode -> holders from every /proc/*/fd; returns how many
    /// socket fds were seen.
    pub fn full_scan(&mut self) -> usize {
        self.full_scans += 1;
        self.last_full_scan = Some(Instant::now());
        self.recent_pid_scans.clear();
        let root_fd = match self.root() {
            Ok(fd) => fd,
            Err(e) => {
                log::warn!("holders: cannot open {}: {e}", self.proc_root.display());
                return 0;
            }
        };
        let mut root = match sys::Dir::open_at(root_fd, c".") {
            Ok(d) => d,
            Err(e) => {
                log::warn!("holders: cannot list {}: {e}", self.proc_root.display());
                return 0;
            }
        };
        // Only thread-group leaders are listed here, and threads share
        // their leader's table, so /proc/PID/task/* is never read.
        let mut pids = Vec::new();
        loop {
            match root.next_name() {
                None => break,
                Some(Ok(name)) => pids.extend(parse_u32(name.to_bytes())),
                Some(Err(e)) => {
                    log::warn!(
                        "holders: listing {} stopped early: {e}",
                        self.proc_root.display()
                    );
                    break;
                }
            }
        }
        drop(root);
        let scans = parallel_map(&pids, |&pid, scratch| {
            let name = CString::new(pid.to_string()).ok()?;
            Some(scan_process(
                root_fd,
                &name,
                &mut scratch.buf,
                &mut scratch.sockets,
            ))
        });
        let mut by_inode: HashMap<u64, Vec<(u32, u32)>> =
            HashMap::with_capacity(self.by_inode.len());
        let mut procs = HashMap::with_capacity(self.procs.len());
        let mut namespaces = HashMap::with_capacity(self.namespaces.len());
        let mut seen = 0;
        let mut unreadable = 0;
        self.unreadable_pids.clear();
        for (pid, scan) in pids.into_iter().zip(scans) {
            let Some(scan) = scan else {
                continue;
            };
            let netns = match &scan {
                Scan::Gone => None,
                Scan::Denied => {
                    unreadable += 1;
                    if self.unreadable_pids.len() < UNREADABLE_PIDS_NAMED {
                        self.unreadable_pids.push(pid);
                    }
                    None
                }
                Scan::NoSockets(netns) => *netns,
                Scan::Found(entry) => entry.netns,
            };
            if let Some(pids) = netns.map(|n| namespaces.entry(n).or_insert_with(Vec::new))
                && pids.len() < PIDS_PER_NAMESPACE
            {
                pids.push(pid);
            }
            if let Scan::Found(entry) = scan {
                for &(fd, inode) in &entry.sockets {
                    by_inode.entry(inode).or_default().push((pid, fd));
                }
                seen += entry.sockets.len();
                procs.insert(pid, entry);
            }
        }
        for list in by_inode.values_mut() {
            list.sort_unstable();
        }
        self.by_inode = by_inode;
        self.procs = procs;
        self.namespaces = namespaces;
        self.unreadable = unreadable;
        seen
    }

    /// Re-read one process's fds (its stale entries dropped first). Returns
    /// false if it is gone. A thread id is taken as its thread group.
    pub fn rescan_pid(&mut self, pid: u32) -> bool {
        self.pid_rescans += 1;
        let now = Instant::now();
        self.recent_pid_scans.insert(pid, now);
        self.forget_pid(pid);
        let Ok(root_fd) = self.root() else {
            return false;
        };
        let tgid = tgid_of(root_fd, pid, &mut self.stat_buf).unwrap_or(pid);
        if tgid != pid {
            self.recent_pid_scans.insert(tgid, now);
            self.forget_pid(tgid);
        }
        let Ok(name) = CString::new(tgid.to_string()) else {
            return false;
        };
        match scan_process(root_fd, &name, &mut self.stat_buf, &mut self.sockets_buf) {
            Scan::Gone | Scan::Denied => false,
            Scan::NoSockets(_) => true,
            Scan::Found(entry) => {
                self.insert_proc(tgid, entry);
                true
            }
        }
    }

    /// Holders of a socket inode, sorted by pid then fd.
    ///
    /// Cached holders are checked first (the fd still links to this inode,
    /// the pid still has the same start time); a stale one gets its process
    /// rescanned. On a miss: rescan `hint_pid` if given, then at most one
    /// full rescan per `min_full_rescan`, then give up (empty). On a hit, a
    /// hint that is not among the holders (it may have inherited the fd after
    /// the last scan) is rescanned too, at most once per `min_full_rescan`.
    pub fn holders(&mut self, inode: u64, hint_pid: Option<u32>) -> Vec<Holder> {
        // Inode 0 is what a socket without a file reports.
        if inode == 0 {
            return Vec::new();
        }
        let rescanned = self.stale_pids(inode);
        for &pid in &rescanned {
            self.rescan_pid(pid);
        }
        if let Some(pid) = hint_pid {
            let list = self.by_inode.get(&inode);
            let known = list.is_some_and(|l| l.iter().any(|&(p, _)| p == pid));
            let recent = self
                .recent_pid_scans
                .get(&pid)
                .is_some_and(|t| t.elapsed() < self.min_full_rescan);
            if !known && !rescanned.contains(&pid) && (list.is_none() || !recent) {
                self.rescan_pid(pid);
            }
        }
        if !self.by_inode.contains_key(&inode) && self.full_scan_allowed() {
            self.full_scan();
        }
        self.collect(inode)
    }

    /// The facts a report shows of each process `(pid, start_time)` (its
    /// open fds as the last scan counted them, its fd limit, its cgroup),
    /// `None` for one that no longer runs; read under one directory fd per
    /// process, with the fd limit from `prlimit` where allowed (no
    /// /proc/PID/limits to format), on several threads for many processes.
    pub fn facts(&mut self, processes: &[(u32, u64)]) -> Vec<Option<ProcessFacts>> {
        let Ok(root_fd) = self.root() else {
            return vec![None; processes.len()];
        };
        let procs = &self.procs;
        parallel_map(processes, |&(pid, start_time), scratch| {
            let buf = &mut scratch.buf;
            // Known from the scan just made, which read its fds and start
            // time through one directory fd: the pid will not have been
            // reused by another process in between (it would take a whole
            // lap of the pid space within one report). Else, checked.
            let open_fds = match procs.get(&pid) {
                Some(p) if p.start_time == start_time => p.open_fds,
                _ => {
                    let name = CString::new(pid.to_string()).ok()?;
                    let pid_dir = sys::open_at(root_fd, &name, sys::Open::Path).ok()?;
                    read_at(pid_dir.as_raw_fd(), c"stat", buf).ok()?;
                    if parse_stat(buf)?.start_time != start_time {
                        return None;
                    }
                    count_fds(pid_dir.as_raw_fd(), buf)
                }
            };
            let file = |name: &str| CString::new(format!("{pid}/{name}")).ok();
            let fd_limit = match sys::nofile_limit(pid) {
                Ok(limit) => limit,
                // Not ours to ask (no CAP_SYS_RESOURCE): /proc says it too.
                Err(_) => file("limits")
                    .and_then(|f| read_at(root_fd, &f, buf).ok())
                    .and_then(|()| parse_limits_nofile_strict(&String::from_utf8_lossy(buf)))
                    .flatten(),
            };
            let cgroup = file("cgroup")
                .and_then(|f| read_at(root_fd, &f, buf).ok())
                .and_then(|()| {
                    crate::host::cgroup::parse_proc_cgroup(&String::from_utf8_lossy(buf))
                });
            Some(ProcessFacts {
                open_fds,
                fd_limit,
                cgroup,
            })
        })
    }

    fn full_scan_allowed(&self) -> bool {
        self.last_full_scan
            .is_none_or(|t| t.elapsed() >= self.min_full_rescan)
    }

    /// Holders as the last scan saw them, without re-checking /proc: right
    /// after a `full_scan`, checking again would double the readlinks.
    pub fn cached(&self, inode: u64) -> Vec<Holder> {
        self.collect(inode)
    }

    fn collect(&self, inode: u64) -> Vec<Holder> {
        let Some(list) = self.by_inode.get(&inode) else {
            return Vec::new();
        };
        list.iter()
            .filter_map(|&(pid, fd)| {
                let p = self.procs.get(&pid)?;
                Some(Holder {
                    pid,
                    fd,
                    comm: p.comm.clone(),
                    start_time: p.start_time,
                    netns: p.netns,
                })
            })
            .collect()
    }

    /// Pids whose cached claim on `inode` no longer holds.
    fn stale_pids(&mut self, inode: u64) -> Vec<u32> {
        let mut stale = Vec::new();
        if !self.by_inode.contains_key(&inode) {
            return stale;
        }
        let Ok(root_fd) = self.root() else {
            return stale;
        };
        let Some(list) = self.by_inode.get(&inode) else {
            return stale;
        };
        for &(pid, fd) in list {
            if stale.contains(&pid) {
                continue;
            }
            let current = self
                .procs
                .get(&pid)
                .is_some_and(|p| holder_is_current(root_fd, pid, fd, inode, p, &mut self.stat_buf));
            if !current {
                stale.push(pid);
            }
        }
        stale
    }

    fn insert_proc(&mut self, pid: u32, entry: ProcEntry) {
        for &(fd, inode) in &entry.sockets {
            let list = self.by_inode.entry(inode).or_default();
            if let Err(at) = list.binary_search(&(pid, fd)) {
                list.insert(at, (pid, fd));
            }
        }
        self.procs.insert(pid, entry);
    }

    fn forget_pid(&mut self, pid: u32) {
        let Some(entry) = self.procs.remove(&pid) else {
            return;
        };
        for (fd, inode) in entry.sockets {
            if let Entry::Occupied(mut o) = self.by_inode.entry(inode) {
                o.get_mut().retain(|&held| held != (pid, fd));
                if o.get().is_empty() {
                    o.remove();
                }
            }
        }
    }
}

/// One worker's reusable buffers.
#[derive(Default)]
struct Scratch {
    buf: Vec<u8>,
    sockets: Vec<(u32, u64)>,
}

/// Items a worker takes at a time.
const CHUNK: usize = 32;
/// Below this many items, one thread: a thread costs more than it saves.
const PARALLEL_MIN: usize = 256;
/// At most this many threads read /proc at once.
const MAX_WORKERS: usize = 4;

/// `f` of each item, in order, on up to [`MAX_WORKERS`] threads taking
/// [`CHUNK`] items at a time. Reading /proc is system calls on one process
/// at a time, independent of each other: 2,000 processes are read in about
/// half the time on two CPUs (`leaks --once` against `ss`, which reads them
/// one by one, in BENCHMARKS.md).
fn parallel_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T, &mut Scratch) -> R + Sync) -> Vec<R> {
    let workers = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(MAX_WORKERS)
        .min(items.len().div_ceil(PARALLEL_MIN).max(1));
    if workers <= 1 {
        let mut scratch = Scratch::default();
        return items.iter().map(|i| f(i, &mut scratch)).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut parts: Vec<(usize, Vec<R>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut scratch = Scratch::default();
                    let mut done = Vec::new();
                    loop {
                        let at = next.fetch_add(CHUNK, std::sync::atomic::Ordering::Relaxed);
                        let Some(chunk) = items.get(at..(at + CHUNK).min(items.len())) else {
                            break;
                        };
                        if chunk.is_empty() {
                            break;
                        }
                        done.push((at, chunk.iter().map(|i| f(i, &mut scratch)).collect()));
                    }
                    done
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    parts.sort_unstable_by_key(|(at, _)| *at);
    parts.into_iter().flat_map(|(_, r)| r).collect()
}

/// Reads one process's socket fds; `name` is its directory under the root.
fn scan_process(
    root_fd: RawFd,
    name: &CStr,
    stat_buf: &mut Vec<u8>,
    sockets: &mut Vec<(u32, u64)>,
) -> Scan {
    sockets.clear();
    let Ok(pid_dir) = sys::open_at(root_fd, name, sys::Open::Path) else {
        return Scan::Gone;
    };
    let pid_fd = pid_dir.as_raw_fd();
    let mut link = [0u8; LINK_BUF];
    let (open_fds, via_tid) = visit_fd_table(pid_fd, stat_buf, &mut |dir, entry| {
        let Some(fd) = parse_u32(entry.to_bytes()) else {
            return;
        };
        if let Some(inode) = readlink_at(dir, entry, &mut link).and_then(parse_socket_link_bytes) {
            sockets.push((fd, inode));
        }
    });
    // The stat read is the cost saved for processes without sockets; read
    // after the fds so a process that died meanwhile is dropped, not kept.
    if sockets.is_empty() {
        return match read_netns(pid_fd) {
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Scan::Denied,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Scan::Gone,
            netns => Scan::NoSockets(netns.ok()),
        };
    }
    if read_at(pid_fd, c"stat", stat_buf).is_err() {
        return Scan::Gone;
    }
    let Some(stat) = parse_stat(stat_buf) else {
        return Scan::Gone;
    };
    Scan::Found(ProcEntry {
        comm: String::from_utf8_lossy(stat.comm).into_owned(),
        start_time: stat.start_time,
        open_fds: open_fds as u64,
        netns: read_netns(pid_fd).ok(),
        via_tid,
        sockets: sockets.as_slice().to_vec(),
    })
}

/// The process's network namespace inode, from its `ns/net` link (whose
/// access check is its fd table's: permission denied means both). Read
/// under the process's directory fd: through `/proc/self/fd/N/ns/net` each
/// read walked a path (3.6% of `leaks --once` over 2,000 processes).
fn read_netns(pid_dir: RawFd) -> io::Result<u64> {
    let mut buf = [0u8; LINK_BUF];
    let target =
        sys::readlink_at(pid_dir, c"ns/net", &mut buf).ok_or_else(io::Error::last_os_error)?;
    crate::host::netns::netns_of_link(Path::new(std::ffi::OsStr::from_bytes(target)))
}

/// Calls `visit(dir_fd, name)` for each entry of the process's fd table;
/// returns the entry count and the thread whose table was read, if not the
/// leader's.
fn visit_fd_table(
    pid_dir: RawFd,
    stat_buf: &mut Vec<u8>,
    visit: &mut dyn FnMut(RawFd, &CStr),
) -> (usize, Option<u32>) {
    let n = visit_fd_dir(pid_dir, c"fd", visit);
    if n > 0 {
        return (n, None);
    }
    // A leader that called pthread_exit() is a zombie whose fd dir lists
    // nothing while its live threads still share the table (`ss -p` misses
    // these). Kernel threads also list nothing; the stat read sorts them out.
    if read_at(pid_dir, c"stat", stat_buf).is_err() {
        return (0, None);
    }
    let zombie_leader = parse_stat(stat_buf).is_some_and(|s| s.state == b'Z' && s.num_threads > 1);
    if !zombie_leader {
        return (0, None);
    }
    let Ok(mut tasks) = sys::Dir::open_at(pid_dir, c"task") else {
        return (0, None);
    };
    let tasks_fd = tasks.fd();
    while let Some(Ok(tid)) = tasks.next_name() {
        let Some(tid_num) = parse_u32(tid.to_bytes()) else {
            continue;
        };
        let Ok(path) = CString::new([tid.to_bytes(), b"/fd"].concat()) else {
            continue;
        };
        let n = visit_fd_dir(tasks_fd, &path, visit);
        if n > 0 {
            return (n, Some(tid_num));
        }
    }
    (0, None)
}

fn visit_fd_dir(base: RawFd, path: &CStr, visit: &mut dyn FnMut(RawFd, &CStr)) -> usize {
    // ENOENT/ESRCH (gone) and EACCES (not ours to read) all mean "nothing".
    let Ok(mut dir) = sys::Dir::open_at(base, path) else {
        return 0;
    };
    let dir_fd = dir.fd();
    let mut n = 0;
    // An error mid-listing means the process died: what was read is moot.
    while let Some(Ok(name)) = dir.next_name() {
        n += 1;
        visit(dir_fd, name);
    }
    n
}

/// Whether `pid` still holds `inode` at `fd` and is the process scanned.
fn holder_is_current(
    root_fd: RawFd,
    pid: u32,
    fd: u32,
    inode: u64,
    entry: &ProcEntry,
    stat_buf: &mut Vec<u8>,
) -> bool {
    let Ok(name) = CString::new(pid.to_string()) else {
        return false;
    };
    let Ok(pid_dir) = sys::open_at(root_fd, &name, sys::Open::Path) else {
        return false;
    };
    let pid_fd = pid_dir.as_raw_fd();
    if read_at(pid_fd, c"stat", stat_buf).is_err()
        || parse_stat(stat_buf).map(|s| s.start_time) != Some(entry.start_time)
    {
        return false;
    }
    let link_path = match entry.via_tid {
        Some(tid) => format!("task/{tid}/fd/{fd}"),
        None => format!("fd/{fd}"),
    };
    let Ok(link_path) = CString::new(link_path) else {
        return false;
    };
    let mut link = [0u8; LINK_BUF];
    readlink_at(pid_fd, &link_path, &mut link).and_then(parse_socket_link_bytes) == Some(inode)
}

/// The thread group of `pid`, from the Tgid line of its status.
fn tgid_of(root_fd: RawFd, pid: u32, buf: &mut Vec<u8>) -> Option<u32> {
    let path = CString::new(format!("{pid}/status")).ok()?;
    read_at(root_fd, &path, buf).ok()?;
    buf.split(|&b| b == b'\n')
        .find_map(|line| line.strip_prefix(b"Tgid:"))
        .and_then(|v| parse_u32(v.trim_ascii()))
}

/// Read one process's facts; `None` if it is gone.
#[cfg(test)]
pub fn process_info(pid: u32) -> Option<ProcessInfo> {
    process_info_at(Path::new("/proc"), pid)
}

/// [`process_info`] under another proc root. comm comes from
/// /proc/PID/comm, open_fds counts the entries of /proc/PID/fd.
#[cfg(test)]
pub fn process_info_at(proc_root: &Path, pid: u32) -> Option<ProcessInfo> {
    let root = open_dir_path(proc_root).ok()?;
    let name = CString::new(pid.to_string()).ok()?;
    let pid_dir = sys::open_at(root.as_raw_fd(), &name, sys::Open::Path).ok()?;
    let pid_fd = pid_dir.as_raw_fd();
    let mut buf = Vec::with_capacity(512);

    read_at(pid_fd, c"stat", &mut buf).ok()?;
    let start_time = parse_stat(&buf)?.start_time;

    read_at(pid_fd, c"comm", &mut buf).ok()?;
    // Only the kernel's newline goes: a comm may end in spaces of its own.
    let comm = buf.strip_suffix(b"\n").unwrap_or(&buf);
    let comm = String::from_utf8_lossy(comm).into_owned();

    let open_fds = count_fds(pid_fd, &mut buf);

    read_at(pid_fd, c"limits", &mut buf).ok()?;
    let limits = String::from_utf8_lossy(&buf);
    let fd_limit = parse_limits_nofile_strict(&limits).unwrap_or_else(|| {
        log::debug!(
            "holders: no \"Max open files\" in {}/{pid}/limits",
            proc_root.display()
        );
        None
    });

    Some(ProcessInfo {
        pid,
        comm,
        start_time,
        open_fds,
        fd_limit,
    })
}

fn count_fds(pid_dir: RawFd, stat_buf: &mut Vec<u8>) -> u64 {
    // Since Linux 6.2 the size of /proc/PID/fd is its number of open fds,
    // which spares listing 10,000 entries; before, it is 0.
    if let Some(n) = sys::size_at(pid_dir, c"fd").filter(|n| *n > 0) {
        return n;
    }
    let (n, _) = visit_fd_table(pid_dir, stat_buf, &mut |_, _| {});
    n as u64
}

#[cfg(test)]
mod tests {
    use crate::host::procfs::{parse_socket_link, parse_stat_start_time};
    use std::{
        fs,
        io::Write as _,
        net::{TcpListener, TcpStream},
        os::{
            fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
            unix::{fs::MetadataExt, net::UnixStream},
        },
        path::PathBuf,
        process::{Child, Command, Stdio},
        sync::atomic::{AtomicU32, Ordering},
        thread,
        time::{Duration, Instant},
    };

    use anyhow::{Context as _, Result, bail, ensure};

    use super::*;

    // ---- parsers ----

    // ---- a fake /proc: deterministic scans ----

    static UNIQUE: AtomicU32 = AtomicU32::new(0);

    fn unique_name(tag: &str) -> String {
        let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
        format!("tcptrace-{tag}-{}-{n}", std::process::id())
    }

    struct FakeProc(PathBuf);

    impl Drop for FakeProc {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    impl FakeProc {
        fn new() -> Result<Self> {
            let root = std::env::temp_dir().join(unique_name("proc"));
            fs::create_dir_all(&root).with_context(|| format!("mkdir {}", root.display()))?;
            Ok(Self(root))
        }

        fn stat_line(pid: u32, comm: &str, state: char, threads: u32, start: u64) -> String {
            format!(
                "{pid} ({comm}) {state} 1 1 1 0 -1 4194304 0 0 0 0 0 0 0 0 20 0 {threads} 0 {start} 1000 200\n"
            )
        }

        /// A process with `links` (fd, target) in its fd dir.
        fn process(&self, pid: u32, comm: &str, start: u64, links: &[(u32, &str)]) -> Result<()> {
            let dir = self.0.join(pid.to_string());
            fs::create_dir_all(dir.join("fd"))?;
            fs::write(dir.join("stat"), Self::stat_line(pid, comm, 'S', 1, start))?;
            fs::write(dir.join("status"), format!("Name:\t{comm}\nTgid:\t{pid}\n"))?;
            for &(fd, target) in links {
                std::os::unix::fs::symlink(target, dir.join("fd").join(fd.to_string()))?;
            }
            Ok(())
        }

        fn path(&self, rel: &str) -> PathBuf {
            self.0.join(rel)
        }
    }

    fn pairs(holders: &[Holder]) -> Vec<(u32, u32)> {
        holders.iter().map(|h| (h.pid, h.fd)).collect()
    }

    #[test]
    fn fake_scan_lists_shared_holders_sorted_and_skips_threads() -> Result<()> {
        let fake = FakeProc::new()?;
        fake.process(
            300,
            "nginx",
            5000,
            &[(9, "socket:[77]"), (5, "socket:[77]"), (3, "pipe:[4]")],
        )?;
        fake.process(
            200,
            "nginx master",
            4000,
            &[(4, "socket:[77]"), (6, "socket:[78]")],
        )?;
        // Thread dirs share the leader's table: must not add duplicates.
        fs::create_dir_all(fake.path("300/task/301/fd"))?;
        std::os::unix::fs::symlink("socket:[77]", fake.path("300/task/301/fd/5"))?;
        std::os::unix::fs::symlink("300", fake.path("self"))?;
        fs::create_dir_all(fake.path("sys/fd"))?;
        std::os::unix::fs::symlink("socket:[79]", fake.path("sys/fd/1"))?;

        let mut index = HolderIndex::with_root(fake.0.clone());
        assert_eq!(index.full_scan(), 4);
        let h = index.holders(77, None);
        assert_eq!(pairs(&h), [(200, 4), (300, 5), (300, 9)]);
        assert_eq!(
            (h[0].comm.as_str(), h[0].start_time),
            ("nginx master", 4000)
        );
        assert_eq!(pairs(&index.holders(78, None)), [(200, 6)]);
        assert!(index.holders(79, None).is_empty());
        assert!(index.holders(0, None).is_empty());
        Ok(())
    }

    #[test]
    fn fake_rescan_drops_stale_entries_and_sees_pid_reuse() -> Result<()> {
        let fake = FakeProc::new()?;
        fake.process(300, "old", 5000, &[(5, "socket:[77]"), (6, "socket:[78]")])?;
        let mut index = HolderIndex::with_root(fake.0.clone());
        index.set_min_full_rescan(Duration::from_secs(3600));
        index.full_scan();
        assert_eq!(index.holders(77, None)[0].comm, "old");

        // Pid 300 dies and is reused by a process holding other sockets.
        fs::remove_dir_all(fake.path("300"))?;
        fake.process(300, "new", 9000, &[(5, "socket:[80]")])?;
        assert!(index.rescan_pid(300));
        assert!(index.holders(77, None).is_empty());
        assert!(index.holders(78, None).is_empty());
        let h = index.holders(80, None);
        assert_eq!(
            (pairs(&h), h[0].comm.as_str(), h[0].start_time),
            (vec![(300, 5)], "new", 9000)
        );

        fs::remove_dir_all(fake.path("300"))?;
        assert!(!index.rescan_pid(300));
        assert!(index.holders(80, None).is_empty());
        Ok(())
    }

    #[test]
    fn fake_hit_is_checked_against_current_fds_and_start_time() -> Result<()> {
        let fake = FakeProc::new()?;
        fake.process(300, "old", 5000, &[(5, "socket:[77]")])?;
        fake.process(400, "peer", 6000, &[(7, "socket:[77]")])?;
        let mut index = HolderIndex::with_root(fake.0.clone());
        index.set_min_full_rescan(Duration::from_secs(3600));
        index.full_scan();
        assert_eq!(pairs(&index.holders(77, None)), [(300, 5), (400, 7)]);
        assert_eq!(index.stats(), (1, 0));

        // Same pid and fd, same socket even, but another process: the
        // start time gives it away and the holder is relabelled.
        fs::write(
            fake.path("300/stat"),
            FakeProc::stat_line(300, "reused", 'S', 1, 8000),
        )?;
        // 400 closed its fd.
        fs::remove_file(fake.path("400/fd/7"))?;
        let h = index.holders(77, None);
        assert_eq!(pairs(&h), [(300, 5)]);
        assert_eq!((h[0].comm.as_str(), h[0].start_time), ("reused", 8000));
        assert_eq!(index.stats(), (1, 2));
        Ok(())
    }

    #[test]
    fn fake_miss_rescans_hint_then_full_scan_once_per_interval() -> Result<()> {
        let fake = FakeProc::new()?;
        fake.process(300, "a", 5000, &[(5, "socket:[77]")])?;
        let mut index = HolderIndex::with_root(fake.0.clone());
        index.set_min_full_rescan(Duration::from_secs(3600));
        // First miss: nothing scanned yet, so a full scan.
        assert_eq!(pairs(&index.holders(77, None)), [(300, 5)]);
        assert_eq!(index.stats(), (1, 0));

        fake.process(500, "b", 7000, &[(3, "socket:[90]")])?;
        fake.process(600, "c", 7100, &[(4, "socket:[91]")])?;
        // Within the interval: no full scan, so not found...
        assert!(index.holders(90, None).is_empty());
        assert_eq!(index.stats(), (1, 0));
        // ...unless the hint is the holder.
        assert_eq!(pairs(&index.holders(90, Some(500))), [(500, 3)]);
        assert!(index.holders(91, Some(500)).is_empty());
        assert_eq!(index.stats(), (1, 2));

        index.set_min_full_rescan(Duration::ZERO);
        assert_eq!(pairs(&index.holders(91, None)), [(600, 4)]);
        assert_eq!(index.stats(), (2, 2));
        Ok(())
    }

    #[test]
    fn fake_hit_rescans_a_hint_that_may_have_inherited_the_fd() -> Result<()> {
        let fake = FakeProc::new()?;
        fake.process(300, "parent", 5000, &[(5, "socket:[77]")])?;
        let mut index = HolderIndex::with_root(fake.0.clone());
        index.set_min_full_rescan(Duration::from_secs(3600));
        index.full_scan();
        fake.process(301, "child", 5001, &[(5, "socket:[77]")])?;
        assert_eq!(pairs(&index.holders(77, Some(301))), [(300, 5), (301, 5)]);
        // Known now: no more rescans for it.
        index.holders(77, Some(301));
        assert_eq!(index.stats(), (1, 1));
        Ok(())
    }

    #[test]
    fn fake_zombie_leader_falls_back_to_a_live_thread() -> Result<()> {
        let fake = FakeProc::new()?;
        fake.process(400, "daemon", 3000, &[])?;
        fs::write(
            fake.path("400/stat"),
            FakeProc::stat_line(400, "daemon", 'Z', 2, 3000),
        )?;
        fs::create_dir_all(fake.path("400/task/400/fd"))?;
        fs::create_dir_all(fake.path("400/task/401/fd"))?;
        std::os::unix::fs::symlink("socket:[88]", fake.path("400/task/401/fd/3"))?;
        let mut index = HolderIndex::with_root(fake.0.clone());
        assert_eq!(pairs(&index.holders(88, None)), [(400, 3)]);
        // The hit is validated where it was found, so no rescan.
        assert_eq!(pairs(&index.holders(88, None)), [(400, 3)]);
        assert_eq!(index.stats(), (1, 0));
        Ok(())
    }

    // ---- the real /proc ----

    fn our_pid() -> u32 {
        std::process::id()
    }

    fn our_comm() -> Result<String> {
        let comm = fs::read_to_string("/proc/self/comm").context("read /proc/self/comm")?;
        Ok(comm.trim_end_matches('\n').to_owned())
    }

    /// Both ways of naming a socket's inode, cross-checked.
    fn socket_inode(fd: RawFd) -> Result<u64> {
        let path = format!("/proc/self/fd/{fd}");
        let by_stat = fs::metadata(&path)
            .with_context(|| format!("stat {path}"))?
            .ino();
        let link = fs::read_link(&path).with_context(|| format!("readlink {path}"))?;
        let by_link = parse_socket_link(link.as_os_str())
            .with_context(|| format!("{path} -> {} is not a socket", link.display()))?;
        ensure!(
            by_stat == by_link,
            "stat says {by_stat}, link says {by_link}"
        );
        Ok(by_link)
    }

    /// Only these pids: a concurrently spawned child of another test holds a
    /// copy of all our fds between its fork and its exec.
    fn holders_among(
        index: &mut HolderIndex,
        inode: u64,
        hint: Option<u32>,
        pids: &[u32],
    ) -> Vec<(u32, u32)> {
        let h = index.holders(inode, hint);
        assert!(
            h.windows(2)
                .all(|w| (w[0].pid, w[0].fd) < (w[1].pid, w[1].fd)),
            "unsorted {h:?}"
        );
        pairs(&h)
            .into_iter()
            .filter(|(p, _)| pids.contains(p))
            .collect()
    }

    struct ChildGuard(Child);

    impl Drop for ChildGuard {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    impl ChildGuard {
        fn pid(&self) -> u32 {
            self.0.id()
        }

        /// Waits until the child runs `comm`: before its exec it is a copy
        /// of us, holding copies of our fds under our name.
        fn wait_for_comm(&self, comm: &str) -> Result<ProcessInfo> {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let info = process_info(self.pid()).context("child vanished")?;
                if info.comm == comm {
                    return Ok(info);
                }
                if Instant::now() > deadline {
                    bail!(
                        "child {} is still {:?}, not {comm:?}",
                        self.pid(),
                        info.comm
                    );
                }
                thread::sleep(Duration::from_millis(10));
            }
        }
    }

    fn spawn_sleep(stdin: Stdio) -> Result<ChildGuard> {
        let mut cmd = Command::new("sleep");
        cmd.arg("30")
            .stdin(stdin)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // `cmd` keeps our copy of a passed fd open until it is dropped here.
        let child = ChildGuard(cmd.spawn().context("spawn sleep")?);
        drop(cmd);
        Ok(child)
    }

    #[test]
    fn real_sockets_are_found_with_our_pid_fd_and_comm() -> Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let client = TcpStream::connect(listener.local_addr()?)?;
        let (server, _) = listener.accept()?;
        let comm = our_comm()?;
        let mut index = HolderIndex::new();
        let seen = index.full_scan();
        assert!(seen >= 3, "only {seen} socket fds on the host");
        for sock in [listener.as_raw_fd(), client.as_raw_fd(), server.as_raw_fd()] {
            let inode = socket_inode(sock)?;
            let h = index.holders(inode, None);
            let ours: Vec<_> = h.iter().filter(|h| h.pid == our_pid()).collect();
            assert_eq!(ours.len(), 1, "{h:?}");
            assert_eq!(
                (ours[0].fd, ours[0].comm.as_str()),
                (sock as u32, comm.as_str())
            );
            let info = process_info(our_pid()).context("ourselves")?;
            assert_eq!(ours[0].start_time, info.start_time);
        }
        Ok(())
    }

    /// fork()+exec() inheritance: the child gets the listener as its stdin
    /// (dup2'ed after fork, in the child only) rather than by clearing
    /// FD_CLOEXEC, which would leak the fd into children that other tests
    /// spawn meanwhile.
    #[test]
    fn fork_child_that_inherited_the_fd_is_a_holder() -> Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let inode = socket_inode(listener.as_raw_fd())?;
        let ours = listener.try_clone()?;
        let child = spawn_sleep(Stdio::from(OwnedFd::from(listener)))?;
        let info = child.wait_for_comm("sleep")?;
        let pids = [our_pid(), child.pid()];

        let mut index = HolderIndex::new();
        let both = holders_among(&mut index, inode, None, &pids);
        let mut expected = vec![(our_pid(), ours.as_raw_fd() as u32), (child.pid(), 0)];
        expected.sort_unstable();
        assert_eq!(both, expected);

        drop(ours);
        assert!(index.rescan_pid(our_pid()));
        let h = index.holders(inode, None);
        let h: Vec<_> = h.iter().filter(|h| pids.contains(&h.pid)).collect();
        let want = Holder {
            pid: child.pid(),
            fd: 0,
            netns: Some(crate::host::netns::own().unwrap()),
            comm: "sleep".into(),
            start_time: info.start_time,
        };
        assert_eq!(h, [&want]);

        // A fresh index finds it from the hint alone, without a full scan.
        let mut fresh = HolderIndex::new();
        assert_eq!(
            holders_among(&mut fresh, inode, Some(child.pid()), &pids),
            [(child.pid(), 0)]
        );
        assert_eq!(fresh.stats(), (0, 1));
        Ok(())
    }

    fn send_fd(sock: &UnixStream, fd: RawFd) -> Result<()> {
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        // u64 storage: the control buffer must be aligned for cmsghdr.
        let mut control = [0u64; 8];
        // SAFETY: plain arithmetic on a constant.
        let space = unsafe { libc::CMSG_SPACE(size_of::<RawFd>() as u32) } as usize;
        assert!(space <= size_of_val(&control));
        // SAFETY: all-zero is a valid msghdr; the pointers set below outlive
        // the sendmsg call.
        unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
            if libc::sendmsg(sock.as_raw_fd(), &msg, 0) != 1 {
                return Err(io::Error::last_os_error()).context("sendmsg SCM_RIGHTS");
            }
        }
        Ok(())
    }

    fn recv_fd(sock: &UnixStream) -> Result<OwnedFd> {
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let mut control = [0u64; 8];
        // SAFETY: as in send_fd; the kernel writes at most msg_controllen.
        unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = size_of_val(&control) as _;
            if libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) != 1 {
                return Err(io::Error::last_os_error()).context("recvmsg SCM_RIGHTS");
            }
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            ensure!(
                !cmsg.is_null()
                    && (*cmsg).cmsg_level == libc::SOL_SOCKET
                    && (*cmsg).cmsg_type == libc::SCM_RIGHTS,
                "no SCM_RIGHTS in the message"
            );
            let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>());
            Ok(OwnedFd::from_raw_fd(fd))
        }
    }

    /// SCM_RIGHTS passes the socket itself, not a copy: the received fd has
    /// the same inode and the index finds the receiver under its new fd
    /// number. While in flight (sent, not yet received) the socket sits in
    /// the unix socket's queue, in no fd table: nobody holds it.
    #[test]
    fn scm_rights_receiver_is_a_holder_and_in_flight_has_none() -> Result<()> {
        let stream = {
            let listener = TcpListener::bind("127.0.0.1:0")?;
            TcpStream::connect(listener.local_addr()?)?
        };
        let inode = socket_inode(stream.as_raw_fd())?;
        let original = stream.as_raw_fd() as u32;
        let (tx, rx) = UnixStream::pair()?;
        let me = [our_pid()];
        let mut index = HolderIndex::new();
        index.set_min_full_rescan(Duration::ZERO);

        send_fd(&tx, stream.as_raw_fd())?;
        assert_eq!(
            holders_among(&mut index, inode, Some(our_pid()), &me),
            [(our_pid(), original)]
        );
        let received = recv_fd(&rx)?;
        let new = received.as_raw_fd() as u32;
        assert_ne!(new, original);
        assert_eq!(socket_inode(received.as_raw_fd())?, inode);
        assert!(index.rescan_pid(our_pid()));
        assert_eq!(
            holders_among(&mut index, inode, None, &me),
            [(our_pid(), original), (our_pid(), new)]
        );

        drop(stream);
        assert_eq!(
            holders_among(&mut index, inode, None, &me),
            [(our_pid(), new)]
        );

        send_fd(&tx, received.as_raw_fd())?;
        drop(received);
        assert!(
            index.holders(inode, Some(our_pid())).is_empty(),
            "in flight"
        );
        let again = recv_fd(&rx)?;
        assert_eq!(
            holders_among(&mut index, inode, Some(our_pid()), &me),
            [(our_pid(), again.as_raw_fd() as u32)]
        );
        Ok(())
    }

    #[test]
    fn process_info_of_ourselves_matches_getrlimit() -> Result<()> {
        let info = process_info(our_pid()).context("ourselves")?;
        assert_eq!(
            (info.pid, info.comm.as_str()),
            (our_pid(), our_comm()?.as_str())
        );
        assert!(info.open_fds > 0);
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `rl` is a valid out-pointer.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) }, 0);
        let expected = (rl.rlim_cur != libc::RLIM_INFINITY).then_some(rl.rlim_cur);
        assert_eq!(info.fd_limit, expected);
        Ok(())
    }

    #[test]
    fn process_info_of_a_child_with_a_lowered_fd_limit() -> Result<()> {
        let mut cmd = Command::new("bash");
        cmd.args(["-c", "ulimit -Sn 64 && exec sleep 30"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = ChildGuard(cmd.spawn().context("spawn bash")?);
        let info = child.wait_for_comm("sleep")?;
        assert_eq!(info.fd_limit, Some(64));
        let listed = fs::read_dir(format!("/proc/{}/fd", child.pid()))?.count() as u64;
        assert_eq!(info.open_fds, listed);
        assert!(process_info(u32::MAX).is_none());
        Ok(())
    }

    #[test]
    fn start_time_is_stable_and_tells_processes_apart() -> Result<()> {
        let a = process_info(our_pid()).context("ourselves")?;
        let b = process_info(our_pid()).context("ourselves")?;
        assert_eq!(a.start_time, b.start_time);
        let stat = fs::read_to_string("/proc/self/stat")?;
        assert_eq!(parse_stat_start_time(&stat), Some(a.start_time));

        let child = spawn_sleep(Stdio::null())?;
        let c = child.wait_for_comm("sleep")?;
        assert_ne!((c.pid, c.start_time), (a.pid, a.start_time));
        assert!(c.start_time >= a.start_time, "child started before us");
        Ok(())
    }

    #[test]
    fn facts_of_a_live_process_and_none_for_another_start() -> Result<()> {
        let me = process_info(our_pid()).context("ourselves")?;
        let mut index = HolderIndex::new();
        index.full_scan();
        let asked = [
            (our_pid(), me.start_time),
            (our_pid(), me.start_time + 1),
            (u32::MAX, 0),
        ];
        let facts = index.facts(&asked);
        let f = facts[0].clone().context("facts")?;
        assert!(f.open_fds >= 3, "{f:?}");
        assert_eq!(f.fd_limit, me.fd_limit);
        let cgroup = fs::read_to_string("/proc/self/cgroup")?;
        assert_eq!(f.cgroup, crate::host::cgroup::parse_proc_cgroup(&cgroup));
        assert_eq!(facts[1..], [None, None]);
        // Many at once (several threads), in order.
        let many: Vec<(u32, u64)> = (0..600).map(|i| asked[i % 3]).collect();
        let got = index.facts(&many);
        for (i, g) in got.iter().enumerate() {
            assert_eq!(g.is_some(), i % 3 == 0, "{i}");
        }
        Ok(())
    }

    /// The zombie-leader case on the real kernel: a thread-group leader that
    /// called pthread_exit() lists no fds of its own.
    #[test]
    fn real_zombie_leader_sockets_are_found_via_a_thread() -> Result<()> {
        let dir = std::env::temp_dir().join(unique_name("zombie"));
        fs::create_dir_all(&dir)?;
        let _cleanup = FakeProc(dir.clone());
        let src = dir.join("z.c");
        fs::File::create(&src)?.write_all(
            b"#include <pthread.h>\n#include <unistd.h>\n#include <sys/socket.h>\n\
              static void *t(void *a) { (void)a; sleep(30); return 0; }\n\
              int main(void) { socket(AF_INET, SOCK_STREAM, 0); pthread_t th;\n\
              pthread_create(&th, 0, t, 0); pthread_exit(0); }\n",
        )?;
        let bin = dir.join("z");
        let cc = Command::new("cc")
            .arg("-pthread")
            .arg(&src)
            .arg("-o")
            .arg(&bin)
            .status();
        let Ok(status) = cc else {
            eprintln!("no C compiler: skipping");
            return Ok(());
        };
        ensure!(status.success(), "cc failed: {status}");
        let child = ChildGuard(
            Command::new(&bin)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
        let pid = child.pid();
        let deadline = Instant::now() + Duration::from_secs(10);
        // The socket's fd as the thread sees it: not always 3, since fds
        // the test inherited without close-on-exec (a harness's) come first.
        let (fd, inode) = loop {
            let task_fds = fs::read_dir(format!("/proc/{pid}/task"))?
                .filter_map(|t| fs::read_dir(t.ok()?.path().join("fd")).ok())
                .flatten()
                .filter_map(|e| {
                    let e = e.ok()?;
                    let fd: u32 = e.file_name().to_str()?.parse().ok()?;
                    Some((
                        fd,
                        parse_socket_link(fs::read_link(e.path()).ok()?.as_os_str())?,
                    ))
                })
                .next();
            let zombie = fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| parse_stat(s.as_bytes()).is_some_and(|s| s.state == b'Z'));
            if let (Some(found), true) = (task_fds, zombie) {
                break found;
            }
            ensure!(
                Instant::now() < deadline,
                "child never became a zombie leader"
            );
            thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(fs::read_dir(format!("/proc/{pid}/fd"))?.count(), 0);
        let mut index = HolderIndex::new();
        let h = index.holders(inode, Some(pid));
        assert_eq!(pairs(&h), [(pid, fd)]);
        assert!(process_info(pid).context("zombie leader")?.open_fds > u64::from(fd));
        Ok(())
    }
}
