//! Kernel timestamps (CLOCK_MONOTONIC, as `bpf_ktime_get_ns` returns) to wall-clock time.

use std::time::{Duration, SystemTime};

#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Wall-clock time at monotonic zero.
    epoch: SystemTime,
    /// The same, in ns since the Unix epoch, when it is after it: the
    /// per-event conversions are then one addition (SystemTime arithmetic
    /// was 3.6% of `watch --json`'s CPU).
    epoch_unix_ns: Option<u64>,
    start_ns: u64,
}

pub use crate::host::sys::monotonic_ns;

impl Clock {
    pub fn new() -> Self {
        let start_ns = monotonic_ns();
        let now = SystemTime::now();
        let epoch = now - Duration::from_nanos(start_ns);
        Self {
            epoch,
            epoch_unix_ns: epoch
                .duration_since(SystemTime::UNIX_EPOCH)
                .ok()
                .and_then(|d| u64::try_from(d.as_nanos()).ok()),
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

    /// The ns since the tracer started when [`Self::since_start`] is exactly
    /// their count as f64 divided by 1e9: not before the start, and below
    /// 2^53 ns (where u64 -> f64 and the subtraction are exact).
    pub fn since_start_ns(&self, ts_ns: u64) -> Option<u64> {
        ts_ns.checked_sub(self.start_ns).filter(|_| ts_ns < 1 << 53)
    }

    /// RFC 3339 in UTC with microseconds, e.g. `2026-11-25T18:14:59.123456Z`.
    pub fn rfc3339(&self, ts_ns: u64) -> String {
        humantime::format_rfc3339_micros(self.wall(ts_ns)).to_string()
    }

    /// Local wall-clock `HH:MM:SS.micros`, like bcc tools' -T.
    pub fn local_hms(&self, ts_ns: u64) -> String {
        let wall = self.since_unix(ts_ns).unwrap_or_default();
        format!(
            "{}{:06}",
            local_hms_prefix(wall.as_secs()),
            wall.subsec_micros()
        )
    }

    /// [`Self::rfc3339`] appended to `out`; the date and time of day come
    /// from `cache` while the second does not change (a storm's many events
    /// per second would otherwise redo the calendar arithmetic each).
    pub fn write_rfc3339(&self, ts_ns: u64, cache: &mut SecondText, out: &mut Vec<u8>) {
        let Some(wall) = self.since_unix(ts_ns) else {
            // Before 1970: whatever humantime does, uncached.
            out.extend_from_slice(self.rfc3339(ts_ns).as_bytes());
            return;
        };
        let prefix = cache.get(wall.as_secs(), |secs| {
            let mut text = humantime::format_rfc3339_micros(
                SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
            )
            .to_string();
            // Keep `...HH:MM:SS.`, drop `000000Z`.
            text.truncate(text.len() - "000000Z".len());
            text
        });
        out.extend_from_slice(prefix.as_bytes());
        push_micros(out, wall.subsec_micros());
        out.push(b'Z');
    }

    /// [`Self::local_hms`] appended to `out`, cached like [`Self::write_rfc3339`]
    /// (which also saves a `localtime_r` per event).
    pub fn write_local_hms(&self, ts_ns: u64, cache: &mut SecondText, out: &mut Vec<u8>) {
        let wall = self.since_unix(ts_ns).unwrap_or_default();
        out.extend_from_slice(cache.get(wall.as_secs(), local_hms_prefix).as_bytes());
        push_micros(out, wall.subsec_micros());
    }

    fn since_unix(&self, ts_ns: u64) -> Option<Duration> {
        match self.epoch_unix_ns.and_then(|e| e.checked_add(ts_ns)) {
            Some(ns) => Some(Duration::from_nanos(ns)),
            None => self.wall(ts_ns).duration_since(SystemTime::UNIX_EPOCH).ok(),
        }
    }
}

/// `HH:MM:SS.` in local time. Zone offsets change on whole seconds, so this
/// is the same for every instant of the second.
fn local_hms_prefix(unix_secs: u64) -> String {
    let (h, m, s) = crate::host::sys::local_time(unix_secs);
    format!("{h:02}:{m:02}:{s:02}.")
}

/// Six digits, zero-padded.
fn push_micros(out: &mut Vec<u8>, micros: u32) {
    let mut digits = [b'0'; 6];
    let mut n = micros;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&digits);
}

/// The text of the last whole second formatted, for [`Clock::write_rfc3339`]
/// and [`Clock::write_local_hms`] (one cache each).
#[derive(Debug, Default)]
pub struct SecondText {
    secs: Option<u64>,
    text: String,
}

impl SecondText {
    fn get(&mut self, secs: u64, format: impl FnOnce(u64) -> String) -> &str {
        if self.secs != Some(secs) {
            self.text = format(secs);
            self.secs = Some(secs);
        }
        &self.text
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

    #[test]
    fn cached_writers_match_the_plain_ones() {
        let c = Clock::new();
        let (mut utc, mut local) = (SecondText::default(), SecondText::default());
        let now = monotonic_ns();
        // Within a second, across seconds, back again, and every micro digit.
        for ts in [
            now,
            now + 1,
            now + 999,
            now + 1_000,
            now + 123_456_789,
            now + 999_999_999,
            now + 1_000_000_000,
            now,
            now + 86_400_000_000_000,
            now + 1_000_000_000 - (now % 1_000_000_000),
            0,
            1,
        ] {
            let mut out = Vec::new();
            c.write_rfc3339(ts, &mut utc, &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), c.rfc3339(ts), "{ts}");
            let mut out = Vec::new();
            c.write_local_hms(ts, &mut local, &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), c.local_hms(ts), "{ts}");
        }
    }
}
