//! The HTTP listener: accepts TCP (and TLS) connections and serves the router on each
//! with hyper, HTTP/1.1 and HTTP/2 (ALPN on TLS, the preface on clear text).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tracing::{debug, info, warn};

use super::access::Peer;
use super::{HttpContext, HttpError, Listener};

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A bound HTTP listener, ready to [`run`](HttpServer::run).
pub struct HttpServer {
    listener: TcpListener,
    /// How long a client may take to send a request head (slowloris).
    head_timeout: Duration,
    local_addr: SocketAddr,
    tls: Option<TlsAcceptor>,
    router: Router,
}

impl std::fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServer")
            .field("local_addr", &self.local_addr)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl HttpServer {
    /// Binds `[http] listen` and builds the router from `ctx`; `None` when `[http]` is
    /// disabled.
    pub async fn bind(ctx: HttpContext) -> Result<Option<HttpServer>, HttpError> {
        let http = &ctx.config.http;
        if !http.enabled {
            return Ok(None);
        }
        let addr = http.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| HttpError::Bind {
                addr: addr.to_string(),
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| HttpError::Bind {
            addr: addr.to_string(),
            source,
        })?;
        let tls = ctx.tls.clone().map(|mut c| {
            c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            TlsAcceptor::from(Arc::new(c))
        });
        let own = Listener {
            protocol: if tls.is_some() { "https" } else { "http" }.into(),
            address: local_addr.to_string(),
        };
        let head_timeout = http.request_timeout;
        let (router, _) = ctx.into_router(vec![own]);
        Ok(Some(HttpServer {
            listener,
            head_timeout,
            local_addr,
            tls,
            router,
        }))
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Accepts and serves connections until the task is dropped.
    pub async fn run(self) {
        info!(listen = %self.local_addr, tls = self.tls.is_some(), "HTTP server listening");
        loop {
            let (socket, peer) = match self.listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = socket.set_nodelay(true);
            let router = self.router.clone();
            let tls = self.tls.clone();
            tokio::spawn(serve(socket, peer, tls, router, self.head_timeout));
        }
    }
}

/// Serves one connection.
async fn serve(
    socket: TcpStream,
    addr: SocketAddr,
    tls: Option<TlsAcceptor>,
    router: Router,
    head_timeout: Duration,
) {
    let peer = Peer {
        addr,
        tls: tls.is_some(),
    };
    let service = router.map_request(move |mut req: axum::http::Request<_>| {
        req.extensions_mut().insert(peer);
        req
    });
    let service = TowerToHyperService::new(service);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(head_timeout);
    let result = match tls {
        None => {
            builder
                .serve_connection_with_upgrades(TokioIo::new(socket), service)
                .await
        }
        Some(acceptor) => {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await {
                Ok(Ok(stream)) => {
                    builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await
                }
                Ok(Err(e)) => {
                    debug!(%addr, error = %e, "HTTPS handshake failed");
                    return;
                }
                Err(_) => {
                    debug!(%addr, "HTTPS handshake timed out");
                    return;
                }
            }
        }
    };
    if let Err(e) = result {
        debug!(%addr, error = %e, "HTTP connection ended with an error");
    }
}
