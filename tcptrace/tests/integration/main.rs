//! tcptrace's integration tests, as one harness (aya's integration tests are
//! organised the same way): each module starts the real `tcptrace` binary as
//! root against the real kernel and drives real sockets, on loopback or in
//! network namespaces of its own (`common::Netns`). A test that needs eBPF
//! fails, never skips, when the program cannot load. Every test selects its
//! own traffic (its ports, its processes), since the tracer sees the whole
//! host and the other tests run at the same time.

mod cli;
mod common;
mod crosscheck;
mod hist;
mod leaks;
mod netns;
mod owners;
mod records;
mod reliability;
mod serve;
mod serve_web;
mod stacks;
mod watch;
