//! Stage: accept. Listens (plain TCP or rustls TLS), serves HTTP/1.1 and HTTP/2 on each connection
//! with hyper, and on shutdown stops accepting, lets in-flight requests and streams finish within the
//! grace period, then returns. Every connection is in the table of `connections.rs`: one that sends
//! no request within `server.header_read_timeout`, or none more within `server.idle_timeout`, is
//! closed, and at `server.max_connections` the longest-idle one makes room for a new one.

mod connections;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use weir_config::Tls;

use crate::{Gateway, pipeline};
pub use connections::Connections;
use connections::Tracked;

/// File descriptors kept back from the connection limit for everything else the process opens
/// (upstream connections are counted apart: each client connection may hold one).
const RESERVED_FDS: u64 = 256;

/// Raises the soft limit on open files to the hard limit, where the system allows it, so that the
/// connection limit (not the default of 1024 descriptors) decides how many clients may connect.
/// Returns the soft limit in force afterwards.
pub fn raise_fd_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let before = rlimit::getrlimit(rlimit::Resource::NOFILE).ok()?.0;
        match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(now) if now > before => {
                tracing::info!(from = before, to = now, "raised the open-file limit");
                Some(now)
            }
            Ok(now) => Some(now),
            Err(error) => {
                tracing::warn!(limit = before, %error, "cannot raise the open-file limit");
                Some(before)
            }
        }
    }
    #[cfg(not(unix))]
    None
}

/// The connection limit in force: `server.max_connections`, or fewer when the open-file limit
/// cannot hold that many client connections and an upstream connection for each.
fn connection_limit(configured: usize) -> usize {
    #[cfg(unix)]
    if let Ok((soft, _)) = rlimit::getrlimit(rlimit::Resource::NOFILE) {
        let fits = usize::try_from(soft.saturating_sub(RESERVED_FDS) / 2).unwrap_or(usize::MAX).max(1);
        if fits < configured {
            tracing::warn!(
                max_connections = configured,
                open_file_limit = soft,
                limit = fits,
                "the open-file limit cannot hold server.max_connections client connections (and one upstream connection each); connections are capped lower"
            );
            return fits;
        }
    }
    configured
}

/// Serves `gateway` on `listener` until `shutdown` resolves, then drains. Listener settings (TLS,
/// timeouts) come from the configuration at start; a reload changes routing, keys and plugins.
pub async fn serve(listener: TcpListener, gateway: Arc<Gateway>, shutdown: impl Future<Output = ()>) -> io::Result<()> {
    Server::new(listener, gateway)?.run(shutdown).await
}

/// A listener made ready to serve: its TLS acceptor built and its settings copied, so that what can
/// fail at start (an unreadable certificate) fails before anything runs (`weir::embed::Weir::serve` returns
/// it to the caller rather than losing it in a task).
pub struct Server {
    listener: TcpListener,
    gateway: Arc<Gateway>,
    /// Copied out, so that the accept loop does not keep the first app (and its plugin versions,
    /// with their metric series) alive after a reload.
    settings: weir_config::Server,
    tls: Option<TlsAcceptor>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("listener", &self.listener)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Server {
    pub fn new(listener: TcpListener, gateway: Arc<Gateway>) -> io::Result<Self> {
        let settings = gateway.current().config.server.clone();
        let tls = settings.tls.as_ref().map(tls_acceptor).transpose()?;
        Ok(Self { listener, gateway, settings, tls })
    }

    /// The address it listens on (the port chosen when it was bound to port 0).
    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts and serves connections until `shutdown` resolves, then drains them within
    /// `server.shutdown_grace`.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        let Self { listener, gateway, settings, tls } = self;
        serve_on(listener, gateway, &settings, tls, shutdown).await
    }
}

async fn serve_on(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    server: &weir_config::Server,
    tls: Option<TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let app = gateway.current();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(server.header_read_timeout).keep_alive(true);
    builder.http2().timer(TokioTimer::new()).keep_alive_interval(Some(Duration::from_secs(30)));
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let handshake_timeout = server.header_read_timeout;
    let connections = Connections::new(
        connection_limit(server.max_connections),
        server.header_read_timeout,
        server.idle_timeout,
        app.metrics.clone(),
    );

    tracing::info!(
        listen = %listener.local_addr()?,
        tls = tls.is_some(),
        models = app.routes.names().count(),
        "weir is serving"
    );
    drop(app);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors or a connection reset before accept: back off briefly
                    // rather than spin, and keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // At the limit with every connection busy: closed at once, so that the client learns it
        // now rather than after the listen backlog's timeout.
        let Some(registered) = connections.admit() else { continue };
        let _ = tcp.set_nodelay(true);
        let gateway = gateway.clone();
        let builder = builder.clone();
        let tls = tls.clone();
        let watcher = graceful.watcher();
        let table = connections.clone();
        tokio::spawn(async move {
            let conn = registered.conn.clone();
            let service = service_fn(move |request| {
                let in_flight = table.begin(&conn);
                let gateway = gateway.clone();
                async move {
                    let response = pipeline::handle(gateway, request).await?;
                    Ok::<_, Infallible>(response.map(|body| Tracked::new(body, in_flight)))
                }
            });
            let table = registered.table();
            let conn = &registered.conn;
            let result = match tls {
                None => table.watch(conn, watcher.watch(builder.serve_connection(TokioIo::new(tcp), service))).await,
                Some(tls) => match tokio::time::timeout(handshake_timeout, tls.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        table.watch(conn, watcher.watch(builder.serve_connection(TokioIo::new(stream), service))).await
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                },
            };
            match result {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "connection ended with an error"),
                Err(why) => tracing::debug!(%peer, ?why, "connection closed by the gateway"),
            }
        });
    }

    drop(listener);
    gateway.begin_drain();
    let grace = server.shutdown_grace;
    tracing::info!(grace = ?grace, "shutting down: no new connections; draining in-flight requests");
    match tokio::time::timeout(grace, graceful.shutdown()).await {
        Ok(()) => tracing::info!("drained; exiting"),
        Err(_) => tracing::warn!(grace = ?grace, "grace period over with requests still in flight; exiting anyway"),
    }
    Ok(())
}

fn tls_acceptor(tls: &Tls) -> io::Result<TlsAcceptor> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display())))
    };
    let certs = rustls_pemfile::certs(&mut &read(&tls.cert)?[..]).collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut &read(&tls.key)?[..])?.ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, format!("no private key in {}", tls.key.display()))
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(rustls::crypto::aws_lc_rs::default_provider().into())
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("TLS certificate or key rejected: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
