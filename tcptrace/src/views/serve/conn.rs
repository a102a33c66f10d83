//! One metrics connection: the TLS handshake (under the same short timeout
//! as a request's head), then HTTP/1.1 requests, each checked against the
//! web configuration before it is answered. It ends when the client goes,
//! when it is too slow, or when it is closed to make room for another.

use std::{convert::Infallible, io, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::Incoming,
    header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE},
    rt::{Read, Write},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use tokio_rustls::TlsAcceptor;

use super::{
    http::{self, Server},
    limits::{Admitted, Slot},
};

/// Time for a TLS handshake, and for each request's head (also between
/// requests on a kept-alive connection): a client slower than this is not
/// a scraper.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(3);
/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;
/// What Go's servers answer to plain HTTP on a TLS port.
const PLAIN_TO_TLS: &[u8] = b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";

pub async fn serve(server: Arc<Server>, stream: TcpStream, peer: SocketAddr, admitted: Admitted) {
    let Admitted { slot, shed, .. } = admitted;
    let slot = Arc::new(slot);
    let policy = server.web.current();
    let work = async {
        match &policy.tls {
            None => http(&server, TokioIo::new(stream), peer, &slot).await,
            Some(config) => {
                let handshake = handshake(&server, stream, peer, config.clone());
                match tokio::time::timeout(HEADER_TIMEOUT, handshake).await {
                    Ok(Some(tls)) => http(&server, TokioIo::new(tls), peer, &slot).await,
                    Ok(None) => {}
                    Err(_) => server.refusals.closed(
                        peer,
                        format_args!("no TLS handshake within {}s", HEADER_TIMEOUT.as_secs()),
                    ),
                }
            }
        }
    };
    tokio::select! {
        () = work => {}
        // Closed to make room: the accept loop has said so.
        _ = shed => {}
    }
}

/// The TLS session, or `None` once the client is refused (and logged).
async fn handshake(
    server: &Server,
    mut stream: TcpStream,
    peer: SocketAddr,
    config: Arc<rustls::ServerConfig>,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let mut first = [0u8; 1];
    match stream.peek(&mut first).await {
        // Connected and went: nothing was asked, nothing to log.
        Ok(0) | Err(_) => return None,
        Ok(_) if first[0] == TLS_HANDSHAKE => {}
        Ok(_) => {
            if first[0].is_ascii_uppercase() {
                server
                    .refusals
                    .refused(peer, "plain HTTP to the TLS port (use https://)");
                let _ = stream.write_all(PLAIN_TO_TLS).await;
                let _ = stream.shutdown().await;
                // Closing with its request unread would reset the connection
                // and could lose the answer: read it first, a little while.
                let drain = async {
                    let mut sink = [0u8; 4096];
                    for _ in 0..16 {
                        if !matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {
                            break;
                        }
                    }
                };
                let _ = tokio::time::timeout(Duration::from_millis(500), drain).await;
            } else {
                server.refusals.refused(peer, "not a TLS handshake");
            }
            return None;
        }
    }
    match TlsAcceptor::from(config).accept(stream).await {
        Ok(tls) => Some(tls),
        Err(e) => {
            server
                .refusals
                .refused(peer, format_args!("TLS handshake: {}", why(&e)));
            None
        }
    }
}

/// rustls's own words for a failed handshake (an expired or unknown client
/// certificate...); a client that refuses ours is told apart, since the fix
/// is then on its side.
fn why(e: &io::Error) -> String {
    use rustls::{AlertDescription as A, Error};
    match e.get_ref().and_then(|i| i.downcast_ref::<Error>()) {
        Some(Error::AlertReceived(
            alert @ (A::UnknownCA | A::BadCertificate | A::CertificateUnknown),
        )) => format!(
            "the client refused this server's certificate ({alert:?}): does its CA file hold the CA that signed cert_file?"
        ),
        Some(inner) => inner.to_string(),
        None => e.to_string(),
    }
}

async fn http<I>(server: &Arc<Server>, io: I, peer: SocketAddr, slot: &Arc<Slot>)
where
    I: Read + Write + Unpin + Send + 'static,
{
    let (s, sl) = (server.clone(), slot.clone());
    let service = service_fn(move |req: Request<Incoming>| {
        let (server, slot) = (s.clone(), sl.clone());
        async move {
            slot.busy();
            // Owned, so the future does not borrow the request across bcrypt.
            let (method, path) = (req.method().clone(), req.uri().path().to_owned());
            let auth = req.headers().get(AUTHORIZATION).cloned();
            drop(req);
            let response = answer(&server, &method, &path, auth, peer).await;
            slot.idle();
            Ok::<_, Infallible>(response)
        }
    });
    let result = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(64 * 1024)
        .serve_connection(io, service)
        .await;
    match result {
        Ok(()) => {}
        // Between requests this is a kept-alive connection closing, as meant.
        Err(e) if e.is_timeout() && !slot.served() => server.refusals.closed(
            peer,
            format_args!("no request within {}s", HEADER_TIMEOUT.as_secs()),
        ),
        Err(e) if e.is_parse() || e.is_parse_too_large() => {
            server
                .refusals
                .refused(peer, format_args!("not an HTTP/1 request ({e})"));
        }
        Err(e) => log::debug!("metrics connection from {peer}: {e}"),
    }
}

/// The response to one request: 401 unless its credentials pass, then the
/// route; the configured headers on either.
async fn answer(
    server: &Server,
    method: &Method,
    path: &str,
    auth: Option<HeaderValue>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let policy = server.web.current();
    let checked = match &policy.users {
        Some(users) if policy.guards(path) => users.check(auth.as_ref()).await,
        _ => Ok(()),
    };
    let mut response = match checked {
        Ok(()) => http::respond(&server.exposition, method, path),
        Err(refusal) => {
            server.refusals.refused(peer, &refusal);
            unauthorized()
        }
    };
    for (name, value) in &policy.headers {
        response.headers_mut().insert(name, value.clone());
    }
    response
}

fn unauthorized() -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(b"Unauthorized\n")));
    *r.status_mut() = StatusCode::UNAUTHORIZED;
    let h = r.headers_mut();
    h.insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"tcptrace\", charset=\"UTF-8\""),
    );
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
