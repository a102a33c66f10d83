//! Log2 histograms of microseconds, as bcc prints them: bucket `i` holds
//! `[2^i, 2^(i+1) - 1]`, bucket 0 holds 0 and 1 (bcc's first row, "0 -> 1").
//! The bucket function is the kernel program's own ([`log2_bucket`]), so the
//! tests here check the code that runs in the kernel.

use std::io::{self, Write};

use tcptrace_common::LOG2_BUCKETS;
pub use tcptrace_common::log2_bucket;

pub const BUCKETS: usize = LOG2_BUCKETS as usize;
/// Width of the distribution column, in stars (bcc's `stars_max`).
pub const STARS: usize = 40;

/// The values bucket `i` holds, inclusive.
pub const fn bounds(i: usize) -> (u64, u64) {
    if i == 0 {
        return (0, 1);
    }
    let low = 1u64 << i;
    (low, low + (low - 1))
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Log2Hist {
    pub buckets: [u64; BUCKETS],
    /// The largest value seen, in nanoseconds (the buckets are microseconds).
    pub max_ns: u64,
}

impl Default for Log2Hist {
    fn default() -> Self {
        Self {
            buckets: [0; BUCKETS],
            max_ns: 0,
        }
    }
}

impl Log2Hist {
    /// One value, as the kernel counts it.
    pub fn observe_ns(&mut self, ns: u64) {
        self.buckets[usize::from(log2_bucket(ns / 1000))] += 1;
        self.max_ns = self.max_ns.max(ns);
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    pub fn max_us(&self) -> u64 {
        self.max_ns / 1000
    }

    /// The `q` quantile in microseconds: the largest value for the top rank,
    /// else interpolated linearly inside its bucket (the midpoint of the
    /// rank's share), where the bucket that holds the maximum ends at the
    /// maximum. `None` when empty.
    pub fn percentile(&self, q: f64) -> Option<u64> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let rank = ((q * count as f64).ceil() as u64).clamp(1, count);
        let mut below = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            if n == 0 {
                continue;
            }
            if below + n >= rank {
                let (low, high) = bounds(i);
                // A maximum below `low` lost a race with an interval's end:
                // the bucket is the better bound then.
                let top = high.min(self.max_us().max(low));
                if rank == count {
                    return Some(top);
                }
                let width = (top - low + 1) as f64;
                let within = ((rank - below) as f64 - 0.5) / n as f64;
                let v = (low as f64 + width * within).floor() as u64;
                return Some(v.clamp(low, top));
            }
            below += n;
        }
        None
    }

    /// Non-empty buckets as `(low, high, count)`.
    pub fn rows(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        self.buckets
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(i, n)| {
                let (low, high) = bounds(i);
                (low, high, *n)
            })
    }

    /// bcc's `print_log2_hist` with leading empty rows stripped: a header,
    /// then one row per bucket from the first non-empty to the last.
    pub fn write_text(&self, out: &mut impl Write, unit: &str) -> io::Result<()> {
        let Some(first) = self.buckets.iter().position(|n| *n > 0) else {
            return Ok(());
        };
        let last = self.buckets.iter().rposition(|n| *n > 0).unwrap_or(first);
        let peak = self.buckets.iter().copied().max().unwrap_or(0);
        // bcc widens the columns once values pass 32 bits.
        let wide = bounds(last).1 > u64::from(u32::MAX);
        if wide {
            writeln!(out, "               {unit:<29} : count     distribution")?;
        } else {
            writeln!(out, "     {unit:<19} : count     distribution")?;
        }
        for i in first..=last {
            let (low, high) = bounds(i);
            let n = self.buckets[i];
            let bar = stars(n, peak, STARS);
            if wide {
                writeln!(out, "{low:>20} -> {high:<20} : {n:<8} |{bar:<STARS$}|")?;
            } else {
                writeln!(out, "{low:>10} -> {high:<10} : {n:<8} |{bar:<STARS$}|")?;
            }
        }
        Ok(())
    }
}

/// bcc's `_stars`: `width * n / peak` stars, rounded down.
pub fn stars(n: u64, peak: u64, width: usize) -> String {
    if peak == 0 {
        return String::new();
    }
    let k = (u128::from(n) * width as u128 / u128::from(peak)) as usize;
    "*".repeat(k.min(width))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_at_the_edges() {
        assert_eq!(log2_bucket(0), 0);
        assert_eq!(log2_bucket(1), 0);
        assert_eq!(log2_bucket(2), 1);
        assert_eq!(log2_bucket(3), 1);
        assert_eq!(log2_bucket(4), 2);
        for k in 1..64 {
            let p = 1u64 << k;
            assert_eq!(log2_bucket(p), k as u8, "2^{k}");
            assert_eq!(log2_bucket(p - 1), (k - 1) as u8, "2^{k}-1");
            if k < 63 {
                assert_eq!(log2_bucket(p + 1), k as u8, "2^{k}+1");
            }
        }
        assert_eq!(log2_bucket(u64::MAX), 63);
        assert_eq!(log2_bucket(u64::MAX - 1), 63);
        // The same as floor(log2) everywhere else.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = x >> (x % 64);
            if v > 1 {
                assert_eq!(u32::from(log2_bucket(v)), 63 - v.leading_zeros(), "{v}");
            }
        }
    }

    #[test]
    fn bounds_tile_the_u64_range() {
        assert_eq!(bounds(0), (0, 1));
        assert_eq!(bounds(1), (2, 3));
        assert_eq!(bounds(18), (262_144, 524_287));
        assert_eq!(bounds(63), (1 << 63, u64::MAX));
        for i in 1..BUCKETS {
            assert_eq!(bounds(i).0, bounds(i - 1).1 + 1);
            let (low, high) = bounds(i);
            assert_eq!((log2_bucket(low), log2_bucket(high)), (i as u8, i as u8));
        }
    }

    #[test]
    fn observe_uses_microseconds_and_keeps_the_max() {
        let mut h = Log2Hist::default();
        h.observe_ns(300_000_000); // 300 ms
        h.observe_ns(999); // 0 µs
        h.observe_ns(u64::MAX);
        assert_eq!(h.buckets[18], 1);
        assert_eq!(h.buckets[0], 1);
        assert_eq!(h.buckets[log2_bucket(u64::MAX / 1000) as usize], 1);
        assert_eq!((h.count(), h.max_ns), (3, u64::MAX));
    }

    #[test]
    fn percentiles_interpolate_and_respect_the_max() {
        let mut h = Log2Hist::default();
        assert_eq!(h.percentile(0.5), None);
        // One sample: every percentile is the exact maximum.
        h.observe_ns(300_412_000);
        for q in [0.5, 0.9, 0.99, 1.0] {
            assert_eq!(h.percentile(q), Some(300_412));
        }
        // 100 samples spread over one bucket [1024, 2047] whose maximum is
        // its top: the midpoint rule, and the top rank is the maximum.
        let mut h = Log2Hist::default();
        h.buckets[10] = 100;
        h.max_ns = 2_047_000;
        assert_eq!(
            h.percentile(0.5),
            Some(1024 + (1024.0 * 49.5 / 100.0) as u64)
        );
        assert_eq!(
            h.percentile(0.99),
            Some(1024 + (1024.0 * 98.5 / 100.0) as u64)
        );
        assert_eq!(h.percentile(1.0), Some(2047));
        // The bucket holding the maximum ends at it.
        h.max_ns = 1_124_000;
        assert_eq!(
            h.percentile(0.5),
            Some(1024 + (101.0 * 49.5 / 100.0) as u64)
        );
        assert_eq!(h.percentile(1.0), Some(1124));
        // Four samples, the last alone in a high bucket: p90 and p99 are
        // the top rank, so the exact maximum; p50 sits in its bucket.
        let mut h = Log2Hist::default();
        h.buckets[15] = 1;
        h.buckets[18] = 2;
        h.buckets[20] = 1;
        h.max_ns = 2_000_523_000;
        assert_eq!(h.percentile(0.9), Some(2_000_523));
        assert_eq!(h.percentile(0.99), Some(2_000_523));
        let p50 = h.percentile(0.5).unwrap();
        assert!(bounds(18).0 <= p50 && p50 <= bounds(18).1, "{p50}");
        // Ordered, and the tail lands in the tail's bucket.
        let mut h = Log2Hist::default();
        h.buckets[2] = 90;
        h.buckets[20] = 10;
        h.max_ns = 1_500_000_000;
        let (p50, p90, p99) = (
            h.percentile(0.5).unwrap(),
            h.percentile(0.9).unwrap(),
            h.percentile(0.99).unwrap(),
        );
        assert!(
            (4..=7).contains(&p50) && (4..=7).contains(&p90),
            "{p50} {p90}"
        );
        assert!(bounds(20).0 <= p99 && p99 <= 1_500_000, "{p99}");
        // A max that lost a race never drags a percentile below its bucket.
        h.max_ns = 0;
        assert_eq!(h.percentile(1.0), Some(bounds(20).0));
        assert_eq!(h.percentile(0.99), Some(bounds(20).0));
    }

    #[test]
    fn text_is_bcc_shaped() {
        let mut h = Log2Hist::default();
        h.buckets[1] = 1;
        h.buckets[3] = 4;
        let mut out = Vec::new();
        h.write_text(&mut out, "usecs").unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "     usecs               : count     distribution"
        );
        assert_eq!(
            lines[1],
            "         2 -> 3          : 1        |**********                              |"
        );
        assert_eq!(
            lines[2],
            "         4 -> 7          : 0        |                                        |"
        );
        assert_eq!(
            lines[3],
            "         8 -> 15         : 4        |****************************************|"
        );
        assert_eq!(lines.len(), 4);
        // Past 32 bits the columns widen, as in bcc.
        let mut h = Log2Hist::default();
        h.buckets[40] = 1;
        let mut out = Vec::new();
        h.write_text(&mut out, "usecs").unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.lines()
                .nth(1)
                .unwrap()
                .starts_with("       1099511627776 -> 2199023255551        : 1 "),
            "{text}"
        );
        assert_eq!(stars(1, 1000, 40), "");
        assert_eq!(stars(1000, 1000, 40).len(), 40);
        assert_eq!(stars(u64::MAX, u64::MAX, 40).len(), 40);
    }
}
