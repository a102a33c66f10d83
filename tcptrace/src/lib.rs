//! tcptrace: TCP state transitions from the kernel, with the process that owns
//! each socket. One module per job; `main.rs` only wires them to the CLI.

pub mod btf;
pub mod cgroup;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod decode;
pub mod hist;
pub mod holders;
pub mod leaks;
pub mod loader;
pub mod log2;
pub mod metrics;
pub mod owner;
pub mod serve;
pub mod sockdiag;
pub mod socket_table;
pub mod state;
pub mod trace;
pub mod watch;
