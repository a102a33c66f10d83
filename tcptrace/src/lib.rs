//! tcptrace: TCP state transitions from the kernel, with the process that owns
//! each socket. The layers, from the kernel up (ARCHITECTURE.md draws them):
//! `model` is the vocabulary, `host` reads the facts of the machine (/proc,
//! sock_diag, namespaces, symbols), `kernel` loads the program and reads what
//! it sends and counts, `pipeline` runs the trace into a sink, `views` are
//! the subcommands' sinks and reports, `commands` wires each subcommand, and
//! `cli` parses the command line. `main.rs` maps the outcome to an exit status.

pub mod cli;
pub mod commands;
pub(crate) mod host;
pub(crate) mod kernel;
pub(crate) mod model;
pub(crate) mod pipeline;
pub(crate) mod views;
