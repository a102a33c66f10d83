//! Facts of the host that no tracepoint carries: who holds which socket
//! (`/proc/*/fd`), the sockets that exist now in every network namespace
//! (sock_diag, `/proc/PID/net/tcp`), process names, containers (cgroups),
//! the clocks, and the few system calls std does not wrap (`sys`, the one
//! place `libc` is called).

pub mod cgroup;
pub mod clock;
pub mod holders;
pub mod names;
pub mod netns;
pub mod procfs;
pub mod sockdiag;
pub mod symbols;
pub mod sys;
