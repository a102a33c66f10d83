//! The in-repo connection storm: a loopback server that accepts, writes two
//! bytes and closes, and client threads that connect, read to EOF and close,
//! as fast as they can. Like nginx's `return 200` under
//! `wrk -H "Connection: close"`: the server closes first, so each connection
//! makes the same ten state transitions (five per end) and the TIME_WAIT
//! sockets are the server's, which leaves the clients' ephemeral ports free.
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

pub struct Storm {
    addr: SocketAddr,
    clients: usize,
    stop: Arc<AtomicBool>,
    acceptors: Vec<JoinHandle<()>>,
}

/// What one storm run did.
pub struct StormRun {
    pub conns_per_sec: f64,
    pub errors: u64,
    /// Connections completed within the window.
    pub completed: u64,
    pub elapsed: Duration,
}

impl Storm {
    /// A server with `acceptors` threads; each run uses `clients` threads.
    pub fn start(clients: usize, acceptors: usize) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").context("storm: binding a listener")?;
        Self::serve(listener, clients, acceptors)
    }

    /// [`Storm::start`] on a listener the caller made.
    pub fn serve(listener: TcpListener, clients: usize, acceptors: usize) -> Result<Self> {
        let addr = listener.local_addr()?;
        let listener = Arc::new(listener);
        let stop = Arc::new(AtomicBool::new(false));
        let acceptors = (0..acceptors.max(1))
            .map(|_| {
                let listener = Arc::clone(&listener);
                let stop = Arc::clone(&stop);
                thread::spawn(move || serve(&listener, &stop))
            })
            .collect();
        Ok(Self {
            addr,
            clients: clients.max(1),
            stop,
            acceptors,
        })
    }

    /// Clients only, `clients` threads per run, for a storm server in
    /// another process: each end of a connection then has its own owner.
    pub fn to(addr: SocketAddr, clients: usize) -> Self {
        Self {
            addr,
            clients: clients.max(1),
            stop: Arc::new(AtomicBool::new(false)),
            acceptors: Vec::new(),
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "in-repo storm: {} client threads connect, read to EOF and close; {} acceptor thread(s) accept, write 2 bytes and close ({})",
            self.clients,
            self.acceptors.len(),
            self.addr
        )
    }

    /// Runs the clients for `secs`; completed connections per second.
    pub fn run(&self, secs: Duration) -> StormRun {
        self.run_observed(
            secs,
            None,
            &Arc::new(AtomicU64::new(0)),
            &AtomicBool::new(false),
        )
    }

    /// [`Storm::run`], with the clients together held to at most `pace`
    /// connections per second when given, `done` counting completed
    /// connections as they complete (for a watcher), and `abort` ending the
    /// run early.
    pub fn run_observed(
        &self,
        secs: Duration,
        pace: Option<f64>,
        done: &Arc<AtomicU64>,
        abort: &AtomicBool,
    ) -> StormRun {
        let errors = Arc::new(AtomicU64::new(0));
        let until = Arc::new(AtomicBool::new(false));
        let start = Instant::now();
        let base = done.load(Ordering::Relaxed);
        // Each client's share of the pace: one connection per `interval`.
        let interval = pace
            .filter(|p| *p > 0.0)
            .map(|p| Duration::from_secs_f64(self.clients as f64 / p));
        let clients: Vec<_> = (0..self.clients)
            .map(|_| {
                let (done, errors, until) =
                    (Arc::clone(done), Arc::clone(&errors), Arc::clone(&until));
                let addr = self.addr;
                thread::spawn(move || client(addr, interval, &until, &done, &errors))
            })
            .collect();
        while start.elapsed() < secs && !super::sys::interrupted() && !abort.load(Ordering::Relaxed)
        {
            thread::sleep(Duration::from_millis(10));
        }
        // Count what finished within the window only.
        let completed = done.load(Ordering::Relaxed) - base;
        let elapsed = start.elapsed();
        until.store(true, Ordering::Relaxed);
        for c in clients {
            let _ = c.join();
        }
        StormRun {
            conns_per_sec: completed as f64 / elapsed.as_secs_f64(),
            errors: errors.load(Ordering::Relaxed),
            completed,
            elapsed,
        }
    }
}

impl Drop for Storm {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake every acceptor blocked in accept().
        for _ in &self.acceptors {
            let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        }
        for a in self.acceptors.drain(..) {
            let _ = a.join();
        }
    }
}

fn serve(listener: &TcpListener, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut conn, _)) => {
                // The client sends nothing, so closing sends a FIN, not a RST.
                let _ = conn.write_all(b"ok");
            }
            Err(_) => thread::sleep(Duration::from_millis(1)),
        }
    }
}

fn client(
    addr: SocketAddr,
    interval: Option<Duration>,
    until: &AtomicBool,
    done: &AtomicU64,
    errors: &AtomicU64,
) {
    let mut buf = [0u8; 64];
    let mut next = Instant::now();
    while !until.load(Ordering::Relaxed) {
        if let Some(interval) = interval {
            // Paced: no bursts to catch up after a stall, at most one
            // interval's worth of lag is kept.
            let now = Instant::now();
            if next > now {
                thread::sleep((next - now).min(Duration::from_millis(100)));
                continue;
            }
            next = (next + interval).max(now.checked_sub(interval).unwrap_or(now));
        }
        let mut conn = match TcpStream::connect(addr) {
            Ok(c) => c,
            Err(_) => {
                errors.fetch_add(1, Ordering::Relaxed);
                thread::sleep(Duration::from_millis(1));
                continue;
            }
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        let ok = loop {
            match conn.read(&mut buf) {
                Ok(0) => break true,
                Ok(_) => continue,
                Err(_) => break false,
            }
        };
        drop(conn);
        if ok {
            done.fetch_add(1, Ordering::Relaxed);
        } else {
            errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storm_completes_connections() {
        let storm = Storm::start(2, 1).unwrap();
        let run = storm.run(Duration::from_millis(300));
        assert!(run.conns_per_sec > 100.0, "{}", run.conns_per_sec);
        assert!(run.completed > 30);
    }

    #[test]
    fn clients_for_a_server_elsewhere() {
        let server = Storm::start(1, 1).unwrap();
        let run = Storm::to(server.addr, 2).run(Duration::from_millis(500));
        assert!(run.completed > 0, "{}", run.completed);
        assert_eq!(run.errors, 0);
    }

    #[test]
    fn paced_storm_keeps_to_its_pace() {
        let storm = Storm::start(2, 1).unwrap();
        let done = Arc::new(AtomicU64::new(0));
        let run = storm.run_observed(
            Duration::from_millis(500),
            Some(200.0),
            &done,
            &AtomicBool::new(false),
        );
        // 100 connections in 0.5 s, give or take the first interval.
        assert!(run.completed <= 110, "{}", run.completed);
        assert!(run.completed >= 50, "{}", run.completed);
        // `done` also counts what finished after the window closed.
        assert!(done.load(Ordering::Relaxed) >= run.completed);
    }
}
