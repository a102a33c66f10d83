//! The exporter's HTTP/1.1 server: `/metrics`, `/healthz` and `/`.
//!
//! The server has a thread of its own: in a connection storm the tracer's
//! loop can stay busy draining the ring buffer for seconds, and a scrape or
//! a liveness probe must not time out then (measured: 10 s without it).

use std::{
    convert::Infallible,
    io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::anyhow;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::Incoming,
    header::{ALLOW, CONTENT_TYPE, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};

use super::metrics::{self, Exposition};

/// Scrapers hold one connection each; more than this is not a scraper.
const MAX_CONNECTIONS: usize = 64;
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const TEXT: &str = "text/plain; charset=utf-8";
const ROOT_TEXT: &str = "tcptrace exporter: metrics at /metrics, health at /healthz\n";

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
/// returns the address actually bound (port 0 picks a free one).
pub fn spawn_http(
    listener: std::net::TcpListener,
    exposition: Exposition,
) -> io::Result<SocketAddr> {
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("tcptrace-http".into())
        .spawn(move || {
            runtime.block_on(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => accept_loop(listener, Arc::new(exposition)).await,
                    Err(e) => eprintln!("tcptrace: warning: serving metrics: {e}"),
                }
            });
        })?;
    Ok(addr)
}

async fn accept_loop(listener: tokio::net::TcpListener, exposition: Arc<Exposition>) {
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // E.g. EMFILE: back off instead of spinning.
                log::warn!("accepting a metrics connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if open.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
            log::debug!("more than {MAX_CONNECTIONS} metrics connections: closing a new one");
            continue;
        }
        let guard = Open::new(&open);
        let exposition = exposition.clone();
        tokio::spawn(async move {
            let _guard = guard;
            let service = service_fn(move |req: Request<Incoming>| {
                let response = respond(&exposition, req.method(), req.uri().path());
                async move { Ok::<_, Infallible>(response) }
            });
            let result = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(64 * 1024)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = result {
                log::debug!("metrics connection: {e}");
            }
        });
    }
}

/// Counts a connection while it lives.
struct Open(Arc<AtomicUsize>);

impl Open {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
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
