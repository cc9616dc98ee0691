//! The HTTP side of the metrics: `GET /metrics` answers the exposition, anything else
//! 404. hyper's HTTP/1 server on a current-thread runtime of its own thread: a scrape
//! every few seconds needs no more, and the agent's other threads never wait for it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode, header};

/// What answers a scrape: the exposition, or why there is none.
pub type Render = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot serve metrics on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the metrics server on {addr}: {source}")]
    Serve {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Binds `addr` now, so that a taken port is an error of the caller (the agent records
/// it for `status`) rather than of a thread.
///
/// # Errors
/// When the address cannot be bound (taken, not local).
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, ServerError> {
    let l =
        std::net::TcpListener::bind(addr).map_err(|source| ServerError::Bind { addr, source })?;
    l.set_nonblocking(true)
        .map_err(|source| ServerError::Bind { addr, source })?;
    Ok(l)
}

/// Serves `GET /metrics` on `listener` with what `render` gives, until `keep_on` says no
/// (asked every second). Each connection is served on its own task, so that a scraper
/// that keeps its connection open between scrapes holds no one else up.
///
/// # Errors
/// When the runtime cannot start or the listener fails.
pub fn serve(
    listener: std::net::TcpListener,
    render: Render,
    keep_on: impl Fn() -> bool,
) -> Result<(), ServerError> {
    let addr = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let err = |source| ServerError::Serve { addr, source };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(err)?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::from_std(listener).map_err(err)?;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, _) = match accepted {
                        Ok(a) => a,
                        // A connection reset before it was accepted, or out of fds for
                        // a moment: the next one may do.
                        Err(e) => {
                            tracing::debug!("metrics: accept: {e}");
                            continue;
                        }
                    };
                    let render = render.clone();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req| {
                            let render = render.clone();
                            async move { Ok::<_, Infallible>(answer(&req, &render)) }
                        });
                        if let Err(e) = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                            .await
                        {
                            tracing::debug!("metrics: a connection ended: {e}");
                        }
                    });
                }
                _ = tick.tick() => {
                    if !keep_on() {
                        return Ok(());
                    }
                }
            }
        }
    })
}

/// The answer to one request.
fn answer(req: &Request<Incoming>, render: &Render) -> Response<Full<Bytes>> {
    let respond = |status: StatusCode, kind: &str, body: String| {
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, kind)
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
    };
    const TEXT: &str = "text/plain; charset=utf-8";
    if req.uri().path() != "/metrics" {
        return respond(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: the metrics are at /metrics\n".into(),
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return respond(
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "GET /metrics\n".into(),
        );
    }
    match render() {
        Ok(text) => respond(StatusCode::OK, prometheus::TEXT_FORMAT, text),
        Err(e) => respond(StatusCode::INTERNAL_SERVER_ERROR, TEXT, format!("{e}\n")),
    }
}
