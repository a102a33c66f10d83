//! The load: nginx answering `return 200` on loopback driven by
//! `wrk -t1 -c32 -H "Connection: close"` (a new connection per request), or
//! the in-repo storm where nginx or wrk is missing.
use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use super::storm::Storm;
use super::sys::Proc;

pub const NGINX: &str = "/usr/sbin/nginx";
pub const WRK_CONNECTIONS: u32 = 32;

/// Which load to use (`--load`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LoadChoice {
    /// nginx + wrk when both are installed, else the storm
    Auto,
    /// nginx + wrk, or fail
    Nginx,
    /// The in-repo loopback storm
    Storm,
}

pub enum Load {
    Wrk { url: String, nginx: Nginx },
    Storm(Storm),
}

/// One load run.
pub struct LoadRun {
    pub conns_per_sec: f64,
    /// Socket errors or non-2xx answers, when there were any.
    pub errors: Option<String>,
}

impl Load {
    /// The load asked for; `fallback` says why the storm was used instead.
    pub fn start(choice: LoadChoice, dir: &Path) -> Result<(Self, Option<String>)> {
        let missing: Vec<&str> = [
            (!Path::new(NGINX).exists()).then_some("nginx"),
            which("wrk").is_none().then_some("wrk"),
        ]
        .into_iter()
        .flatten()
        .collect();
        let storm = || Self::storm();
        match choice {
            LoadChoice::Storm => Ok((storm()?, None)),
            LoadChoice::Nginx if !missing.is_empty() => {
                bail!("--load nginx: {} not installed", missing.join(" and "))
            }
            LoadChoice::Auto if !missing.is_empty() => Ok((
                storm()?,
                Some(format!(
                    "{} not installed: used the in-repo storm",
                    missing.join(" and ")
                )),
            )),
            LoadChoice::Auto | LoadChoice::Nginx => match Nginx::start(dir) {
                Ok(nginx) => {
                    let url = format!("http://127.0.0.1:{}/", nginx.port);
                    Ok((Load::Wrk { url, nginx }, None))
                }
                Err(e) if choice == LoadChoice::Auto => Ok((
                    storm()?,
                    Some(format!(
                        "nginx did not start ({e:#}): used the in-repo storm"
                    )),
                )),
                Err(e) => Err(e),
            },
        }
    }

    /// The in-repo storm with its default threads ([`default_storm`]).
    pub fn storm() -> Result<Self> {
        default_storm().map(Load::Storm)
    }

    pub fn is_storm(&self) -> bool {
        matches!(self, Load::Storm(_))
    }

    pub fn describe(&self) -> String {
        match self {
            Load::Wrk { url, nginx } => format!(
                "{} (`return 200`, worker_processes 1, access_log off) on {url}, driven by `wrk -t1 -c{WRK_CONNECTIONS} -H \"Connection: close\"` ({})",
                nginx.version, nginx.wrk_version
            ),
            Load::Storm(s) => s.describe(),
        }
    }

    pub fn run(&mut self, secs: u64) -> Result<LoadRun> {
        match self {
            Load::Wrk { url, nginx } => {
                if !nginx.proc.running() {
                    bail!("nginx exited: {}", nginx.error_log());
                }
                wrk(url, secs)
            }
            Load::Storm(s) => {
                let run = s.run(Duration::from_secs(secs));
                Ok(LoadRun {
                    conns_per_sec: run.conns_per_sec,
                    errors: (run.errors > 0).then(|| format!("{} failed connections", run.errors)),
                })
            }
        }
    }
}

fn wrk(url: &str, secs: u64) -> Result<LoadRun> {
    let out = Command::new("wrk")
        .args(["-t1", &format!("-c{WRK_CONNECTIONS}")])
        .arg(format!("-d{secs}s"))
        .args(["--timeout", "2s", "-H", "Connection: close", url])
        .output()
        .context("cannot run wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk failed: {}{}",
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let rate = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("no Requests/sec in wrk's output:\n{text}"))?;
    let errors: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("Socket errors:") || l.starts_with("Non-2xx"))
        .collect();
    Ok(LoadRun {
        conns_per_sec: rate,
        errors: (!errors.is_empty()).then(|| errors.join("; ")),
    })
}

/// The in-repo storm: two client threads per core, one acceptor.
pub fn default_storm() -> Result<Storm> {
    Storm::start(storm_clients(), 1)
}

/// The in-repo storm's client threads: two per core.
pub fn storm_clients() -> usize {
    2 * thread::available_parallelism().map_or(2, |n| n.get())
}

pub fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// nginx in the foreground (`daemon off`), its files in a temporary
/// directory; stopped on drop.
pub struct Nginx {
    pub port: u16,
    pub version: String,
    pub wrk_version: String,
    proc: Proc,
    dir: std::path::PathBuf,
}

impl Nginx {
    fn start(parent: &Path) -> Result<Self> {
        let dir = parent.join("nginx");
        fs::create_dir_all(&dir)?;
        let port = free_port()?;
        // One worker: wrk (-t1) takes one core, nginx the other on the
        // two-core machines this was written on; a tracer competes with both.
        let conf = format!(
            "daemon off;
master_process on;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{ return 200 \"ok\"; }}
    }}
}}
",
            d = dir.display()
        );
        let conf_path = dir.join("nginx.conf");
        fs::write(&conf_path, conf)?;
        let version = Command::new(NGINX)
            .arg("-v")
            .output()
            .ok()
            .map(|o| {
                let text = String::from_utf8_lossy(&o.stderr).into_owned();
                text.trim().trim_start_matches("nginx version: ").to_owned()
            })
            .unwrap_or_else(|| "?".to_owned());
        let wrk_version = Command::new("wrk")
            .arg("-v")
            .output()
            .ok()
            .and_then(|o| {
                let text = String::from_utf8_lossy(&o.stdout).into_owned()
                    + &String::from_utf8_lossy(&o.stderr);
                text.lines()
                    .next()
                    .map(|l| l.split(" Copyright").next().unwrap_or(l).trim().to_owned())
            })
            .unwrap_or_else(|| "wrk".to_owned());
        let mut proc = Proc::spawn(
            "nginx",
            Command::new(NGINX)
                .arg("-p")
                .arg(&dir)
                .arg("-c")
                .arg(&conf_path)
                .arg("-e")
                .arg(dir.join("error.log")),
        )?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            if !proc.running() || Instant::now() > deadline {
                let lines = proc.stop(Duration::from_secs(1)).join("; ");
                let log = fs::read_to_string(dir.join("error.log")).unwrap_or_default();
                bail!(
                    "nginx did not listen on port {port}: {lines} {}",
                    log.trim()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(Self {
            port,
            version,
            wrk_version,
            proc,
            dir,
        })
    }

    fn error_log(&self) -> String {
        fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.proc.terminate(Duration::from_secs(5));
    }
}

/// A port nobody listens on now (the kernel's pick; released at once).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
