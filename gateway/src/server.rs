//! Stage: accept. Listens (plain TCP or rustls TLS), serves HTTP/1.1 and HTTP/2 on each connection
//! with hyper, and on shutdown stops accepting, lets in-flight requests and streams finish within the
//! grace period, then returns.

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

/// Serves `gateway` on `listener` until `shutdown` resolves, then drains. Listener settings (TLS,
/// timeouts) come from the configuration at start; a reload changes routing, keys and plugins.
pub async fn serve(listener: TcpListener, gateway: Arc<Gateway>, shutdown: impl Future<Output = ()>) -> io::Result<()> {
    let app = gateway.current();
    let server = &app.config.server;
    let tls = server.tls.as_ref().map(tls_acceptor).transpose()?;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(server.header_read_timeout).keep_alive(true);
    builder.http2().timer(TokioTimer::new()).keep_alive_interval(Some(Duration::from_secs(30)));
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let handshake_timeout = server.header_read_timeout;

    tracing::info!(
        listen = %listener.local_addr()?,
        tls = tls.is_some(),
        models = app.routes.names().count(),
        "weir is serving"
    );
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
        let _ = tcp.set_nodelay(true);
        let gateway = gateway.clone();
        let builder = builder.clone();
        let tls = tls.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let service = service_fn(move |request| pipeline::handle(gateway.clone(), request));
            let result = match tls {
                None => watcher.watch(builder.serve_connection(TokioIo::new(tcp), service)).await,
                Some(tls) => match tokio::time::timeout(handshake_timeout, tls.accept(tcp)).await {
                    Ok(Ok(stream)) => watcher.watch(builder.serve_connection(TokioIo::new(stream), service)).await,
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
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
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
