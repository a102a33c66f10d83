//! The system calls tcptrace makes that std does not wrap, each behind a
//! safe function: the one place in the crate where `libc` is called.

use std::{
    ffi::CStr,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Returns once every CPU has passed through an RCU grace period:
/// `membarrier(MEMBARRIER_CMD_GLOBAL)` is `synchronize_rcu()` (refused with
/// nohz_full CPUs).
pub fn synchronize_rcu() -> io::Result<()> {
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: takes no pointers.
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    check(rc as libc::c_int).map(drop)
}

/// `mount -t tracefs nodev <at>`.
pub fn mount_tracefs(at: &str) -> io::Result<()> {
    let target = std::ffi::CString::new(at).map_err(io::Error::other)?;
    // SAFETY: NUL-terminated strings that outlive the call; no data argument.
    check(unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    })
    .map(drop)
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK: lift it.
pub fn raise_memlock_rlimit() -> io::Result<()> {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid pointer to an initialised rlimit.
    check(unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) }).map(drop)
}

// Capability numbers from linux/capability.h.
pub const CAP_DAC_READ_SEARCH: u32 = 2;
pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// This process's effective capabilities (`CapEff` of /proc/self/status).
pub fn effective_capabilities() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0)
}

/// Whether this process has capability `cap` in effect.
pub fn has_capability(cap: u32) -> bool {
    effective_capabilities() & (1 << cap) != 0
}

pub fn effective_uid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

pub fn page_size() -> u32 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u32::try_from(n).unwrap_or(4096)
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// (hours, minutes, seconds) of a Unix time in the local time zone.
pub fn local_time(unix_secs: u64) -> (i32, i32, i32) {
    let secs = unix_secs as libc::time_t;
    // SAFETY: a zeroed tm is a valid out-parameter for localtime_r.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers to a time and a tm, both live.
    unsafe { libc::localtime_r(&secs, &mut tm) };
    (tm.tm_hour, tm.tm_min, tm.tm_sec)
}

/// Moves the calling thread into the network namespace of `ns` (an open
/// `/proc/PID/ns/net`). Needs CAP_SYS_ADMIN.
pub fn enter_netns(ns: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: a plain system call on an fd we hold.
    check(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) }).map(drop)
}

/// `AT_FDCWD`: paths relative to the working directory.
pub const AT_FDCWD: RawFd = libc::AT_FDCWD;

/// How [`open_at`] opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Open {
    /// A directory as a handle to look things up under (`O_PATH`).
    Path,
    /// A file, to read.
    Read,
    /// A directory, to list.
    List,
}

/// `openat(dir, name, ...)`, close-on-exec.
pub fn open_at(dir: RawFd, name: &CStr, how: Open) -> io::Result<OwnedFd> {
    let flags = match how {
        Open::Path => libc::O_PATH | libc::O_DIRECTORY,
        Open::Read => libc::O_RDONLY,
        Open::List => libc::O_RDONLY | libc::O_DIRECTORY,
    };
    // SAFETY: `name` is NUL-terminated; a returned fd is ours alone.
    let fd = check(unsafe { libc::openat(dir, name.as_ptr(), flags | libc::O_CLOEXEC) })?;
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `readlinkat(dir, name)` into `buf`: the target, or `None` on an error.
/// A target that fills `buf` may have been cut.
pub fn readlink_at<'b>(dir: RawFd, name: &CStr, buf: &'b mut [u8]) -> Option<&'b [u8]> {
    // SAFETY: `name` is NUL-terminated and `buf` is writable for its length.
    let n = unsafe { libc::readlinkat(dir, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    let n = usize::try_from(n).ok()?;
    Some(&buf[..n])
}

/// The soft `RLIMIT_NOFILE` of process `pid` (`prlimit`), `Ok(None)` when
/// unlimited. Needs CAP_SYS_RESOURCE or the process's own credentials.
pub fn nofile_limit(pid: u32) -> io::Result<Option<u64>> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: an all-zero `rlimit` is a valid value to be overwritten.
    let mut old: libc::rlimit64 = unsafe { std::mem::zeroed() };
    // SAFETY: no new limit is set (null); `old` is a live out-pointer.
    check(unsafe { libc::prlimit64(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) })?;
    Ok((old.rlim_cur != libc::RLIM64_INFINITY).then_some(old.rlim_cur))
}

/// The size `fstatat(dir, name)` reports, `None` on an error.
pub fn size_at(dir: RawFd, name: &CStr) -> Option<u64> {
    // SAFETY: an all-zero `stat` is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: the path is NUL-terminated and `st` is a live out-pointer.
    check(unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, 0) }).ok()?;
    u64::try_from(st.st_size).ok()
}

/// A directory stream handing out entry names without allocating: std's
/// `read_dir` copies every name into a fresh `CString`, once per entry
/// (once per fd of every process, for a /proc scan). Read with `getdents64`
/// into a buffer of its own: glibc's `fdopendir` first checks the fd with
/// `fstat` and `fcntl`, two system calls per directory (per process, in a
/// /proc scan: 6,000 of them for 2,000 processes).
pub struct Dir {
    fd: OwnedFd,
    buf: Box<[u8; DIR_BUF]>,
    /// Bytes of `buf` filled by the last `getdents64`, and the next entry's offset.
    len: usize,
    at: usize,
    done: bool,
}

/// A /proc/PID/fd of a few hundred entries in one call.
const DIR_BUF: usize = 16 * 1024;

impl Dir {
    pub fn open_at(base: RawFd, path: &CStr) -> io::Result<Self> {
        Ok(Self {
            fd: open_at(base, path, Open::List)?,
            buf: Box::new([0; DIR_BUF]),
            len: 0,
            at: 0,
            done: false,
        })
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The next name other than `.` and `..`; `None` at the end.
    pub fn next_name(&mut self) -> Option<io::Result<&CStr>> {
        // `struct linux_dirent64`: d_ino (8), d_off (8), d_reclen (2),
        // d_type (1), then the NUL-terminated name.
        const NAME_AT: usize = 19;
        loop {
            if self.at >= self.len {
                if self.done {
                    return None;
                }
                // SAFETY: the buffer is writable for its whole length.
                let n = unsafe {
                    libc::syscall(
                        libc::SYS_getdents64,
                        self.fd.as_raw_fd(),
                        self.buf.as_mut_ptr(),
                        DIR_BUF,
                    )
                };
                if n < 0 {
                    self.done = true;
                    return Some(Err(io::Error::last_os_error()));
                }
                if n == 0 {
                    self.done = true;
                    return None;
                }
                self.len = usize::try_from(n).unwrap_or(0);
                self.at = 0;
            }
            let entry = &self.buf[self.at..self.len];
            let reclen = entry
                .get(16..18)
                .map_or(0, |b| usize::from(u16::from_ne_bytes([b[0], b[1]])));
            if reclen <= NAME_AT || reclen > entry.len() {
                // Malformed: never from the kernel; stop rather than loop.
                self.done = true;
                self.len = 0;
                return Some(Err(io::Error::other("malformed getdents64 record")));
            }
            let start = self.at + NAME_AT;
            self.at += reclen;
            let name = &self.buf[start..self.at];
            let len = name.iter().position(|b| *b == 0).unwrap_or(name.len());
            if len > 0 && &name[..len] != b"." && &name[..len] != b".." {
                return CStr::from_bytes_with_nul(&self.buf[start..=start + len])
                    .ok()
                    .map(Ok);
            }
        }
    }
}

/// An `AF_NETLINK` datagram socket of `protocol` (e.g. `NETLINK_SOCK_DIAG`),
/// in the calling thread's network namespace, whose receives give up after
/// `timeout_secs`.
pub fn netlink_socket(protocol: libc::c_int, timeout_secs: libc::time_t) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is checked before use.
    let fd = check(unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            protocol,
        )
    })?;
    // SAFETY: fd is a freshly created descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let tv = libc::timeval {
        tv_sec: timeout_secs,
        tv_usec: 0,
    };
    // SAFETY: valid fd, pointer/length of a live timeval.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    })?;
    Ok(fd)
}

/// Sends one datagram to the kernel over a netlink socket; returns the bytes sent.
pub fn send_to_kernel(fd: &OwnedFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: all-zero is a valid sockaddr_nl.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: valid fd; buf and kernel outlive the call.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            0,
            (&raw const kernel).cast(),
            size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// Receives one datagram into `buf`: its length, and whether it was cut
/// (longer than `buf`).
pub fn recv_datagram(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<(usize, bool)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: all-zero is a valid msghdr; the iovec is set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    // SAFETY: valid fd; msg points at iov which points at buf, all live.
    let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &raw mut msg, 0) };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    Ok((n, msg.msg_flags & libc::MSG_TRUNC != 0))
}
