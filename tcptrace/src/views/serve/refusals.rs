//! One stderr line per refused client, within a budget: a flood of bad
//! clients is summed into one line a while later instead of flooding the
//! log (and the journal) with its own volume.

use std::{
    fmt::Display,
    net::SocketAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Lines allowed at once, and the rate they come back at.
const BURST: f64 = 20.0;
const PER_SECOND: f64 = 1.0;

pub struct Refusals {
    state: Mutex<State>,
}

struct State {
    tokens: f64,
    refilled: Instant,
    /// Refusals not written since the last summary.
    unlogged: u64,
}

impl Default for Refusals {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                tokens: BURST,
                refilled: Instant::now(),
                unlogged: 0,
            }),
        }
    }
}

impl Refusals {
    /// `tcptrace: refused PEER: WHY`, if the budget allows.
    pub fn refused(&self, peer: SocketAddr, why: impl Display) {
        self.log("refused", peer, why);
    }

    /// `tcptrace: closed PEER: WHY`: a client let in, then dropped (too
    /// slow, or idle when another needed its place).
    pub fn closed(&self, peer: SocketAddr, why: impl Display) {
        self.log("closed", peer, why);
    }

    fn log(&self, what: &str, peer: SocketAddr, why: impl Display) {
        if let Some(line) = self.line(Instant::now(), || format!("{what} {peer}: {why}")) {
            eprintln!("tcptrace: {line}");
        }
    }

    /// The line to write now, if any; counts the ones held back.
    fn line(&self, now: Instant, text: impl FnOnce() -> String) -> Option<String> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let gained = now.duration_since(s.refilled).as_secs_f64() * PER_SECOND;
        s.tokens = (s.tokens + gained).min(BURST);
        s.refilled = now;
        if s.tokens < 1.0 {
            s.unlogged += 1;
            return None;
        }
        s.tokens -= 1.0;
        Some(text())
    }

    /// The count of refusals held back since the last call, as a line.
    pub fn summary(&self, period: Duration) -> Option<String> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let n = std::mem::take(&mut s.unlogged);
        (n > 0).then(|| {
            format!(
                "{n} more metrics clients refused or closed in the last {}s, not logged one by one",
                period.as_secs()
            )
        })
    }

    /// Writes [`Self::summary`] every `period`, forever.
    pub async fn summarise(self: std::sync::Arc<Self>, period: Duration) {
        let mut ticker = tokio::time::interval(period);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            if let Some(line) = self.summary(period) {
                eprintln!("tcptrace: {line}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_held_back_and_summed() {
        let r = Refusals::default();
        let start = Instant::now();
        let written = (0..1000)
            .filter(|_| r.line(start, String::new).is_some())
            .count();
        assert_eq!(written, BURST as usize);
        assert!(
            r.summary(Duration::from_secs(10))
                .unwrap()
                .starts_with("980 more")
        );
        assert_eq!(r.summary(Duration::from_secs(10)), None);
        // The budget comes back with time.
        assert!(
            r.line(start + Duration::from_secs(2), String::new)
                .is_some()
        );
    }
}
