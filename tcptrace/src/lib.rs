//! tcptrace: TCP state transitions from the kernel, with the process that owns
//! each socket. The layers, from the kernel up (ARCHITECTURE.md draws them):
//! `kernel` loads the program and reads what it sends, `host` reads the
//! facts of the machine (/proc, sock_diag, cgroups), `model` is the
//! vocabulary they feed, `pipeline` runs the trace into a sink, and `views`
//! are the subcommands' sinks and reports. `main.rs` wires them to the CLI.

pub mod cli;
pub mod commands;
pub mod host;
pub mod kernel;
pub mod model;
pub mod pipeline;
pub mod views;
