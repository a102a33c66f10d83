//! The one pipeline every subcommand runs: kernel -> events -> socket table
//! -> a view's sink, with signals, warnings and closed pipes handled once.

pub mod tracer;
