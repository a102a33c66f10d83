//! The exporter's HTTP/1.1 server: `/metrics`, `/healthz` and `/`; its
//! accept loop lets connections in within [`limits`](super::limits), and
//! [`conn`](super::conn) serves each.
//!
//! The server has a thread of its own: in a connection storm the tracer's
//! loop can stay busy draining the ring buffer for seconds, and a scrape or
//! a liveness probe must not time out then (measured: 10 s without it).

use std::{
    io,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::anyhow;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Response, StatusCode,
    header::{ALLOW, CONTENT_TYPE, HeaderValue},
};
use tokio::signal::unix::{SignalKind, signal};

use super::{
    conn,
    limits::{Limit, Limits, PER_SOURCE, TOTAL},
    metrics::{self, Exposition},
    refusals::Refusals,
    reload::Web,
};

const TEXT: &str = "text/plain; charset=utf-8";
const ROOT_TEXT: &str = "tcptrace exporter: metrics at /metrics, health at /healthz\n";
/// How often the refusals held back from the log are summed up in it.
const SUMMARY_PERIOD: Duration = Duration::from_secs(10);

/// What every connection shares.
pub struct Server {
    pub exposition: Exposition,
    pub web: Arc<Web>,
    pub refusals: Arc<Refusals>,
    limits: Arc<Limits>,
}

/// Binds the metrics port, with a one-line reason when it cannot.
pub fn bind(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    std::net::TcpListener::bind(addr).map_err(|e| {
        let why = match e.kind() {
            io::ErrorKind::AddrInUse => {
                "the port is in use (another exporter, or tcptrace serve already running?); choose another with --listen".to_owned()
            }
            io::ErrorKind::AddrNotAvailable => "no local interface has this address".to_owned(),
            io::ErrorKind::PermissionDenied => {
                "permission denied (ports below 1024 need CAP_NET_BIND_SERVICE)".to_owned()
            }
            _ => e.to_string(),
        };
        anyhow!("cannot listen on {addr}: {why}")
    })
}

/// Serves the metrics from a thread of its own (with its own small runtime);
/// returns the address actually bound (port 0 picks a free one). With a web
/// configuration file, SIGHUP reloads it from the moment this returns.
pub fn spawn_http(
    listener: std::net::TcpListener,
    exposition: Exposition,
    web: Web,
) -> io::Result<SocketAddr> {
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        // bcrypt runs one at a time off this thread: one such thread is enough.
        .max_blocking_threads(1)
        .build()?;
    let hangups = match web.path() {
        Some(_) => {
            let _in = runtime.enter();
            Some(signal(SignalKind::hangup())?)
        }
        None => None,
    };
    let server = Arc::new(Server {
        exposition,
        web: Arc::new(web),
        refusals: Arc::new(Refusals::default()),
        limits: Limits::new(TOTAL, PER_SOURCE),
    });
    std::thread::Builder::new()
        .name("tcptrace-http".into())
        .spawn(move || {
            runtime.block_on(async move {
                if let Some(hangups) = hangups {
                    tokio::spawn(server.web.clone().reload_on(hangups));
                }
                tokio::spawn(server.refusals.clone().summarise(SUMMARY_PERIOD));
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => accept_loop(listener, server).await,
                    Err(e) => eprintln!("tcptrace: warning: serving metrics: {e}"),
                }
            });
        })?;
    Ok(addr)
}

async fn accept_loop(listener: tokio::net::TcpListener, server: Arc<Server>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // E.g. EMFILE: back off instead of spinning.
                log::warn!("accepting a metrics connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match server.limits.admit(peer, Instant::now()) {
            Ok(admitted) => {
                if let Some((gone, limit)) = admitted.displaced {
                    server.refusals.closed(
                        gone,
                        format_args!("idle, to make room for {peer} ({})", describe(limit)),
                    );
                }
                tokio::spawn(conn::serve(server.clone(), stream, peer, admitted));
            }
            Err(limit) => server.refusals.refused(
                peer,
                format_args!("{}, each answering a request", describe(limit)),
            ),
        }
    }
}

fn describe(limit: Limit) -> String {
    match limit {
        Limit::Source => format!("{PER_SOURCE} connections from its address at most"),
        Limit::Total => format!("{TOTAL} connections at most"),
    }
}

/// GET (or HEAD) `/metrics`, `/healthz` and `/`; 404 elsewhere, 405 for other methods.
pub fn respond(exposition: &Exposition, method: &Method, path: &str) -> Response<Full<Bytes>> {
    if !matches!(path, "/" | "/metrics" | "/healthz") {
        return reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: metrics are at /metrics\n",
        );
    }
    if !matches!(*method, Method::GET | Method::HEAD) {
        let mut r = reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "only GET and HEAD\n");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match path {
        "/metrics" => match exposition.render() {
            Ok(body) => reply(StatusCode::OK, metrics::CONTENT_TYPE, body),
            Err(e) => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                TEXT,
                format!("encoding metrics: {e}\n"),
            ),
        },
        // The tracer runs in this process, which exits when it stops.
        "/healthz" => reply(StatusCode::OK, TEXT, "ok\n"),
        _ => reply(StatusCode::OK, TEXT, ROOT_TEXT),
    }
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;

    use super::{super::metrics::Metrics, *};

    fn body(r: Response<Full<Bytes>>) -> (StatusCode, String, String) {
        let status = r.status();
        let ct = r.headers()[CONTENT_TYPE].to_str().unwrap().to_owned();
        let bytes = futures_body(r.into_body());
        (status, ct, String::from_utf8(bytes.to_vec()).unwrap())
    }

    fn futures_body(b: Full<Bytes>) -> Bytes {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(async { b.collect().await.unwrap().to_bytes() })
    }

    #[test]
    fn routes_methods_and_content_types() {
        let (_m, reg) = Metrics::new();
        let (s, ct, text) = body(respond(&reg, &Method::GET, "/metrics"));
        assert_eq!(s, StatusCode::OK);
        assert_eq!(ct, "text/plain; version=0.0.4; charset=utf-8");
        assert!(text.contains("tcptrace_build_info"), "{text}");
        let (s, _, text) = body(respond(&reg, &Method::GET, "/"));
        assert_eq!((s, text.lines().count()), (StatusCode::OK, 1));
        assert_eq!(body(respond(&reg, &Method::GET, "/healthz")).2, "ok\n");
        assert_eq!(
            respond(&reg, &Method::GET, "/nope").status(),
            StatusCode::NOT_FOUND
        );
        let r = respond(&reg, &Method::POST, "/metrics");
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[ALLOW], "GET, HEAD");
        assert_eq!(
            respond(&reg, &Method::HEAD, "/metrics").status(),
            StatusCode::OK
        );
    }

    #[test]
    fn a_busy_port_is_one_line() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let err = bind(l.local_addr().unwrap()).unwrap_err().to_string();
        assert!(err.contains("in use") && !err.contains('\n'), "{err}");
    }
}
