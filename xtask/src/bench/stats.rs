//! tcptrace's own statistics for one run, as `tcptrace --stats-json FILE`
//! writes them when it exits: one JSON object with `events`, `lost`,
//! `evicted`, `undecodable`, `missed` and `dropped`. The bench reads these
//! instead of the human summary tcptrace prints on stderr, whose wording is
//! free to change.
use std::ffi::OsString;
use std::fs;
#[cfg(test)]
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context as _, Result};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Records read from the ring buffer.
    pub events: u64,
    /// Records the kernel could not queue (ring buffer full).
    pub lost: u64,
    /// Sockets evicted from a full table (the kernel's or tcptrace's).
    pub evicted: u64,
    pub undecodable: u64,
    /// Runs the kernel skipped while another BPF program ran on the CPU.
    pub missed: u64,
    /// Histogram updates the kernel dropped (its grouping map was full).
    pub dropped: u64,
    /// The object as tcptrace wrote it, with any counts the bench does not
    /// know yet, for the report.
    pub text: String,
}

impl RunStats {
    pub fn parse(text: &str) -> Result<Self> {
        let v: serde_json::Value = serde_json::from_str(text.trim()).context("not JSON")?;
        let field = |key: &str| {
            v.get(key)
                .and_then(serde_json::Value::as_u64)
                .with_context(|| format!("no count \"{key}\" in {}", text.trim()))
        };
        Ok(Self {
            events: field("events")?,
            lost: field("lost")?,
            evicted: field("evicted")?,
            undecodable: field("undecodable")?,
            missed: field("missed")?,
            dropped: field("dropped")?,
            text: text.trim().to_owned(),
        })
    }

    /// Transitions the tracer could not account for: records the ring
    /// buffer could not queue, and (`hist`, `serve`) histogram updates the
    /// kernel dropped.
    pub fn lost_or_dropped(&self) -> u64 {
        self.lost + self.dropped
    }
}

/// Where one tracer run writes its statistics: a file of its own in the
/// temporary directory, removed on drop.
pub struct StatsFile(PathBuf);

impl StatsFile {
    pub fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("tcptrace-stats-{}-{n}.json", std::process::id()));
        // A file left by an earlier xtask with the same pid would pass for this run's.
        let _ = fs::remove_file(&path);
        Self(path)
    }

    /// The global option, to put before the subcommand.
    pub fn args(&self) -> [OsString; 2] {
        ["--stats-json".into(), self.0.clone().into_os_string()]
    }

    #[cfg(test)]
    fn path(&self) -> &Path {
        &self.0
    }

    /// What the tracer wrote at exit; an error when it wrote nothing (it
    /// was killed, or failed) or something else.
    pub fn read(&self) -> Result<RunStats> {
        let text = fs::read_to_string(&self.0)
            .with_context(|| format!("no statistics in {}", self.0.display()))?;
        RunStats::parse(&text).with_context(|| format!("reading {}", self.0.display()))
    }
}

impl Drop for StatsFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_tcptrace_writes() {
        // Counts added later (`stacks_lost`) are kept in the text, not refused.
        let text = "{\"events\":390,\"lost\":2,\"evicted\":1,\"undecodable\":0,\"missed\":3,\"dropped\":4,\"stacks_lost\":0}\n";
        let s = RunStats::parse(text).unwrap();
        assert_eq!(
            s,
            RunStats {
                events: 390,
                lost: 2,
                evicted: 1,
                undecodable: 0,
                missed: 3,
                dropped: 4,
                text: text.trim().to_owned(),
            }
        );
        assert_eq!(s.lost_or_dropped(), 6);
        assert!(RunStats::parse("{\"events\":1}").is_err());
        assert!(RunStats::parse("tcptrace: 1 events").is_err());
    }

    #[test]
    fn files_are_distinct_and_removed() {
        let a = StatsFile::new();
        let b = StatsFile::new();
        assert_ne!(a.path(), b.path());
        assert!(a.read().is_err());
        fs::write(
            a.path(),
            "{\"events\":1,\"lost\":0,\"evicted\":0,\"undecodable\":0,\"missed\":0,\"dropped\":0}",
        )
        .unwrap();
        assert_eq!(a.read().unwrap().events, 1);
        let path = a.path().to_owned();
        drop(a);
        assert!(!path.exists());
    }
}
