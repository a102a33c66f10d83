//! Owner truth in the scenario issue 11 was found with: Debian's ActiveMQ
//! 5.17 broker on 127.0.0.1:61616 and a JVM client using the real client
//! library (`activemq-client.jar`) holding 130 connections; `tcptrace watch
//! --json -D 61616` starts, the broker is stopped, and the library closes
//! each socket as soon as it reads EOF. On loopback the FIN's softirq runs
//! on the broker's time, so the task on the CPU at the client's
//! ESTABLISHED -> CLOSE_WAIT is the broker.
//!
//! The packages are installed by the bench itself when missing (nothing
//! that `cargo xtask test` runs needs them).
use std::collections::HashSet;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::BufReader;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use super::owners::{self, Classified, Side, Tally, Truth};
use super::stats::{RunStats, StatsFile};
use super::sys::{self, Helper, Proc};
use super::tracers::{self, Poker, Tools};

pub const PACKAGES: [&str; 2] = ["activemq", "openjdk-17-jdk-headless"];
pub const PORT: u16 = 61616;
pub const CONNECTIONS: usize = 130;
/// Debian's broker instance (openwire on 127.0.0.1:61616).
const INSTANCE: &str = "/etc/activemq/instances-available/main";
const BROKER_JAR: &str = "/usr/share/activemq/bin/activemq.jar";
const LIB: &str = "/usr/share/activemq/lib";
/// The client library and what it needs at run time.
const CLIENT_JARS: [&str; 5] = [
    "activemq-client.jar",
    "geronimo-jms_1.1_spec.jar",
    "geronimo-j2ee-management-1.1-spec.jar",
    "hawtbuf.jar",
    "slf4j-api.jar",
];
const CLIENT_CLASS: &str = "OwnerTruthClient";
const CLIENT_SOURCE: &str = include_str!("activemq/OwnerTruthClient.java");

pub struct Broker {
    pub connections: usize,
    pub truth: Truth,
    pub versions: String,
    /// The client's ESTABLISHED -> CLOSE_WAIT: the figure.
    pub close_wait: Tally,
    /// Every transition on the client's side.
    pub client: Tally,
    /// Client sockets that went CLOSE_WAIT -> LAST_ACK: closed by the library.
    pub closed: u64,
    pub classified: Classified,
    pub stats: Result<RunStats, String>,
    /// From the broker's SIGTERM to its exit.
    pub broker_stop: Duration,
}

/// Installs the broker and a JDK (for the client, run from its source)
/// when missing. Says so first: it downloads a few hundred MB once.
pub fn ensure_installed() -> Result<()> {
    let missing = crate::setup::missing_packages(&PACKAGES);
    if missing.is_empty() && Path::new(BROKER_JAR).is_file() {
        return Ok(());
    }
    eprintln!(
        "bench: activemq: installing {} with apt-get (once; the broker scenario of issue 11 needs them, nothing in `cargo xtask test` does; `--no-activemq` skips the scenario)",
        missing.join(" ")
    );
    crate::setup::apt_install(&missing)
}

pub fn run(tools: &Tools, poker: &Poker, dir: &Path) -> Result<Broker> {
    ensure_installed()?;
    if TcpListener::bind(("127.0.0.1", PORT)).is_err() {
        bail!(
            "127.0.0.1:{PORT} is in use (a broker already running?): the scenario starts its own"
        );
    }
    let versions = versions();
    let base = dir.join("activemq");
    for sub in ["data", "tmp"] {
        fs::create_dir_all(base.join(sub))
            .with_context(|| format!("creating {}", base.display()))?;
    }
    // Started as Debian's /usr/bin/activemq starts an instance (`activemq.jar
    // start xbean:activemq.xml` with the instance on the class path and its
    // options), but in a directory of ours and as our child, so its pid is
    // known and it is stopped whatever happens.
    let mut broker = Proc::spawn(
        "the ActiveMQ broker",
        Command::new("java")
            .current_dir(&base)
            .args(["-Xms512M", "-Xmx512M"])
            .arg("-Dorg.apache.activemq.UseDedicatedTaskRunner=true")
            .arg("-Djava.awt.headless=true")
            .arg("--add-opens=java.base/java.lang=ALL-UNNAMED")
            .arg(format!("-Djava.io.tmpdir={}", base.join("tmp").display()))
            .arg(format!("-Dactivemq.classpath={INSTANCE}"))
            .arg("-Dactivemq.home=/usr/share/activemq")
            .arg(format!("-Dactivemq.base={}", base.display()))
            .arg(format!("-Dactivemq.conf={INSTANCE}"))
            .arg(format!("-Dactivemq.data={}", base.join("data").display()))
            .args(["-jar", BROKER_JAR, "start", "xbean:activemq.xml"])
            .stdout(File::create(base.join("broker.log")).context("creating the broker's log")?),
    )?;
    wait_listening(&mut broker, Duration::from_secs(120))?;

    let source = dir.join(format!("{CLIENT_CLASS}.java"));
    fs::write(&source, CLIENT_SOURCE).context("writing the Java client")?;
    let classpath: Vec<String> = CLIENT_JARS.iter().map(|j| format!("{LIB}/{j}")).collect();
    let mut client = Helper::spawn(
        "the ActiveMQ client",
        Command::new("java")
            .arg("-cp")
            .arg(classpath.join(":"))
            .arg(&source)
            .arg(format!("tcp://127.0.0.1:{PORT}"))
            .arg(CONNECTIONS.to_string()),
    )?;
    client.expect("ready ", Duration::from_secs(180))?;
    let truth = Truth {
        server: broker.pid(),
        client: client.pid(),
    };

    let trace_path = dir.join("activemq.ndjson");
    let stats_file = StatsFile::new();
    let mut watch = Proc::spawn(
        "tcptrace watch --json -D 61616",
        Command::new(&tools.tcptrace)
            .args(stats_file.args())
            .args(["watch", "--json", "-D", &PORT.to_string()])
            .stdout(File::create(&trace_path).context("creating the trace file")?),
    )?;
    if watch
        .wait_line("attached", Duration::from_secs(30))
        .is_none()
    {
        let lines = watch.stop(Duration::from_secs(2));
        bail!("tcptrace watch never attached: {}", tracers::tail(&lines));
    }
    tracers::wait_attached(&mut watch, poker, Duration::from_secs(30))?;
    eprintln!(
        "bench: activemq: the client (pid {}) holds {CONNECTIONS} connections to the broker (pid {}); stopping the broker",
        truth.client, truth.server
    );
    let stopping = Instant::now();
    broker.terminate(Duration::from_secs(60));
    let broker_stop = stopping.elapsed();
    // The library gives up each connection once it has read EOF and closed it.
    if let Err(e) = client.expect("failed ", Duration::from_secs(60)) {
        eprintln!("bench: activemq: {e:#}");
    }
    thread::sleep(Duration::from_millis(500));
    tracers::settle(watch.pid(), Duration::from_secs(10));
    let lines = watch.stop(Duration::from_secs(15));
    let stats = stats_file
        .read()
        .map_err(|e| format!("{e:#} ({})", tracers::tail(&lines)));
    drop(client);
    let trace = File::open(&trace_path).context("opening the trace")?;
    let classified = owners::classify(BufReader::new(trace), PORT, truth, &HashSet::new())?;
    let close_wait = classified
        .by_transition
        .get(&(Side::Client, "ESTABLISHED -> CLOSE_WAIT".to_owned()))
        .copied()
        .unwrap_or_default();
    let closed = classified
        .by_transition
        .get(&(Side::Client, "CLOSE_WAIT -> LAST_ACK".to_owned()))
        .map_or(0, Tally::total);
    Ok(Broker {
        connections: CONNECTIONS,
        truth,
        versions,
        close_wait,
        client: classified.client,
        closed,
        classified,
        stats,
        broker_stop,
    })
}

/// Waits until the broker accepts connections on its port.
fn wait_listening(broker: &mut Proc, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect(("127.0.0.1", PORT)).is_ok() {
            return Ok(());
        }
        if !broker.running() {
            let lines = broker.stop(Duration::ZERO);
            bail!("the broker exited: {}", tracers::tail(&lines));
        }
        sys::bail_if_interrupted()?;
        if Instant::now() > deadline {
            bail!(
                "the broker did not listen on 127.0.0.1:{PORT} within {} s",
                timeout.as_secs()
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
}

fn versions() -> String {
    let version = |package: &str| {
        crate::cmd::stdout(Command::new("dpkg-query").args(["-W", "-f=${Version}", package]))
            .map_or_else(|| "?".to_owned(), |v| v.trim().to_owned())
    };
    let java = Command::new("java")
        .arg("-version")
        .stdout(Stdio::null())
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "?".to_owned());
    format!(
        "Debian's activemq {}, openjdk-17-jdk-headless {} (`{java}`)",
        version("activemq"),
        version("openjdk-17-jdk-headless")
    )
}

/// `## Owner truth`'s broker part.
pub fn render(r: &mut String, b: &Broker) {
    let _ = writeln!(
        r,
        "{}. The broker runs Debian's instance `{INSTANCE}` (openwire on 127.0.0.1:{PORT}; pid {}); a JVM client (pid {}) opens {} connections with `{LIB}/activemq-client.jar`; then `tcptrace watch --json -D {PORT}` starts and the broker is stopped (SIGTERM; it exited after {:.1} s). The library closes each socket from one of the JVM's threads as soon as it reads EOF. The JVM's transitions by address family: {}.\n",
        b.versions,
        b.truth.server,
        b.truth.client,
        b.connections,
        b.broker_stop.as_secs_f64(),
        b.classified
            .families
            .iter()
            .filter(|((side, _), _)| *side == Side::Client)
            .map(|((_, family), n)| format!("{family} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    r.push_str(owners::TALLY_HEAD);
    r.push_str(&owners::tally_row(
        "the JVM's `ESTABLISHED -> CLOSE_WAIT` (the figure)",
        &b.close_wait,
    ));
    r.push_str(&owners::tally_row(
        "every transition of the JVM's sockets",
        &b.client,
    ));
    let _ = writeln!(
        r,
        "\n{} of {} sockets went `CLOSE_WAIT -> LAST_ACK` (closed by the library); {}.",
        b.closed,
        b.connections,
        match &b.stats {
            Ok(s) => format!("tcptrace's statistics: `{}`", s.text),
            Err(e) => format!("no statistics from tcptrace: {e}"),
        }
    );
    if !b.classified.wrong_examples.is_empty() {
        r.push_str("\nWrong owners (the first few):\n\n");
        for e in &b.classified.wrong_examples {
            let _ = writeln!(r, "- {e}");
        }
    }
}
