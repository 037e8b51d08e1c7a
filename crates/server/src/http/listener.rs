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

/// A bound HTTP listener, ready to [`spawn`](HttpServer::spawn).
pub struct HttpServer {
    listener: TcpListener,
    /// The configured address (`[http] listen`).
    configured: SocketAddr,
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
            configured: addr,
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

    /// A handle that can move the listener to another address later (a reload).
    pub fn handle(&self) -> HttpHandle {
        HttpHandle {
            router: self.router.clone(),
            tls: self.tls.clone(),
            head_timeout: self.head_timeout,
            state: Arc::new(std::sync::Mutex::new((self.local_addr, None))),
            configured: Arc::new(std::sync::Mutex::new(self.configured)),
        }
    }

    /// Accepts and serves connections until the task is dropped; `handle` (from
    /// [`HttpServer::handle`]) learns the task, to stop it when the listener moves.
    pub fn spawn(self, handle: &HttpHandle) {
        info!(listen = %self.local_addr, tls = self.tls.is_some(), "HTTP server listening");
        let task = tokio::spawn(accept_loop(
            self.listener,
            self.router,
            self.tls,
            self.head_timeout,
        ));
        handle.set_task(task.abort_handle());
    }
}

/// A running HTTP listener's handle: where it is, and a way to move it.
#[derive(Clone)]
pub struct HttpHandle {
    router: Router,
    tls: Option<TlsAcceptor>,
    head_timeout: Duration,
    /// The bound address and the accept loop's task.
    state: Arc<std::sync::Mutex<(SocketAddr, Option<tokio::task::AbortHandle>)>>,
    /// The configured `listen` it was bound for (port 0 binds elsewhere).
    configured: Arc<std::sync::Mutex<SocketAddr>>,
}

impl std::fmt::Debug for HttpHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpHandle")
            .field("local_addr", &self.local_addr())
            .finish()
    }
}

impl HttpHandle {
    fn lock(&self) -> std::sync::MutexGuard<'_, (SocketAddr, Option<tokio::task::AbortHandle>)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_task(&self, task: tokio::task::AbortHandle) {
        if let Some(old) = self.lock().1.replace(task) {
            old.abort();
        }
    }

    /// The listener's address now.
    pub fn local_addr(&self) -> SocketAddr {
        self.lock().0
    }

    /// The `[http] listen` it is bound for.
    pub fn configured(&self) -> SocketAddr {
        *self.configured.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves the listener to `addr`: the new one accepts before the old one stops;
    /// connections already open go on. Must run within the runtime.
    pub fn rebind(&self, addr: SocketAddr) -> Result<SocketAddr, String> {
        let fail = |e: std::io::Error| format!("cannot move the HTTP listener to {addr}: {e}");
        let std = std::net::TcpListener::bind(addr).map_err(fail)?;
        std.set_nonblocking(true).map_err(fail)?;
        let listener = TcpListener::from_std(std).map_err(fail)?;
        let local = listener.local_addr().map_err(fail)?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| format!("cannot move the HTTP listener to {addr}: {e}"))?;
        let task = runtime.spawn(accept_loop(
            listener,
            self.router.clone(),
            self.tls.clone(),
            self.head_timeout,
        ));
        let was = self.local_addr();
        self.set_task(task.abort_handle());
        self.lock().0 = local;
        *self.configured.lock().unwrap_or_else(|e| e.into_inner()) = addr;
        info!(from = %was, listen = %local, "HTTP listener moved");
        Ok(local)
    }
}

/// Accepts and serves connections until the task is dropped.
async fn accept_loop(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    head_timeout: Duration,
) {
    {
        loop {
            let (socket, peer) = match listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = socket.set_nodelay(true);
            let router = router.clone();
            let tls = tls.clone();
            tokio::spawn(serve(socket, peer, tls, router, head_timeout));
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
