//! Kernel timestamps (CLOCK_MONOTONIC, as `bpf_ktime_get_ns` returns) to wall-clock time.

use std::time::{Duration, SystemTime};

#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Wall-clock time at monotonic zero.
    epoch: SystemTime,
    start_ns: u64,
}

pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Clock {
    pub fn new() -> Self {
        let start_ns = monotonic_ns();
        let now = SystemTime::now();
        Self {
            epoch: now - Duration::from_nanos(start_ns),
            start_ns,
        }
    }

    pub fn wall(&self, ts_ns: u64) -> SystemTime {
        self.epoch + Duration::from_nanos(ts_ns)
    }

    /// Seconds since the tracer started (negative for events before it).
    pub fn since_start(&self, ts_ns: u64) -> f64 {
        (ts_ns as f64 - self.start_ns as f64) / 1e9
    }

    /// RFC 3339 in UTC with microseconds, e.g. `2026-11-25T18:14:59.123456Z`.
    pub fn rfc3339(&self, ts_ns: u64) -> String {
        humantime::format_rfc3339_micros(self.wall(ts_ns)).to_string()
    }

    /// Local wall-clock `HH:MM:SS.micros`, like bcc tools' -T.
    pub fn local_hms(&self, ts_ns: u64) -> String {
        let wall = self
            .wall(ts_ns)
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let secs = wall.as_secs() as libc::time_t;
        // SAFETY: zeroed tm is a valid out-parameter for localtime_r.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        unsafe { libc::localtime_r(&secs, &mut tm) };
        format!(
            "{:02}:{:02}:{:02}.{:06}",
            tm.tm_hour,
            tm.tm_min,
            tm.tm_sec,
            wall.subsec_micros()
        )
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_maps_to_now() {
        let c = Clock::new();
        let wall = c.wall(monotonic_ns());
        let skew = SystemTime::now().duration_since(wall).unwrap_or_default();
        assert!(skew < Duration::from_millis(100), "{skew:?}");
        let text = c.rfc3339(monotonic_ns());
        assert!(
            text.ends_with('Z') && text.len() == "2026-11-25T18:14:59.123456Z".len(),
            "{text}"
        );
        assert_eq!(c.local_hms(monotonic_ns()).len(), "18:14:59.123456".len());
    }
}
