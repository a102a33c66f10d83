//! What each subcommand shows: its sink for the pipeline and its report.

pub mod hist;
pub mod leaks;
pub mod serve;
pub mod watch;
