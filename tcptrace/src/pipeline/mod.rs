//! The one pipeline every subcommand runs: the kernel program (streaming or
//! aggregating) -> decoded events -> the socket table -> a view's sink, with
//! signals, warnings, closed pipes and the run's statistics handled once.

pub mod rings;
pub mod seed;
pub mod sink;
pub mod tracer;
