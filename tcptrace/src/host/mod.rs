//! Facts of the host that no tracepoint carries: who holds which socket
//! (`/proc/*/fd`), the sockets that exist now (sock_diag), containers
//! (cgroups).

pub mod cgroup;
pub mod holders;
pub mod sockdiag;
