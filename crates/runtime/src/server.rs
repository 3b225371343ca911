//! The HTTP server of every tracefold endpoint (the producer, the UI, the ops endpoints of
//! each service): a router served on hyper's HTTP/1 connections with a deadline for every
//! request head, which `axum::serve` does not set (it gives hyper no timer, so hyper's own
//! 30 s default is off). Without it a client that connects and sends
//! its request line and headers slowly, or not at all, or keeps an idle connection open,
//! holds a socket and a task for ever: enough of them exhaust the file descriptors, and a
//! graceful shutdown waits for them without end.

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The request-head deadline of the endpoints without a setting of their own (the UI, the ops
/// endpoints): hyper's default, 30 s.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `app` on `listener` until `shutdown` completes, then lets the requests in flight
/// finish (idle connections close at once). Each request head (request line and headers),
/// and the wait for the next one on a kept-alive connection, must arrive within
/// `header_timeout`, else the connection is closed.
///
/// # Errors
/// None today (accept errors such as running out of file descriptors are logged and the
/// loop goes on); the signature leaves room for listener errors.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    // Every connection holds a receiver: when all are dropped, every connection ended.
    let (done_tx, done_rx) = watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                // A client that went away before it was accepted: the next one.
                Err(e) if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused
                        | std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::ConnectionReset
                ) => continue,
                Err(e) => {
                    // EMFILE and the like: back off a little instead of spinning.
                    tracing::error!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let svc = TowerToHyperService::new(app.clone());
        let mut stop = stop_rx.clone();
        let done = done_rx.clone();
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(header_timeout);
            let mut conn = std::pin::pin!(builder.serve_connection(TokioIo::new(stream), svc));
            let ended = tokio::select! {
                r = conn.as_mut() => r,
                // (The guard `wait_for` returns is dropped in the block: it is not Send.)
                () = async { drop(stop.wait_for(|s| *s).await) } => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(done);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(done_rx);
    done_tx.closed().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Reads until the server closes the connection; `None` when it did not within a minute
    /// (a guard so that a regression fails instead of hanging, not a timing assertion).
    async fn read_until_closed(s: &mut TcpStream) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut out)).await.ok()?.ok()?;
        Some(out)
    }

    #[tokio::test]
    async fn stalled_and_idle_connections_are_closed_and_do_not_hold_up_shutdown() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/", get(|| async { "ok" }));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, app, Duration::from_millis(200), async {
            let _ = rx.await;
        }));

        // A request that arrives whole is answered, on a kept-alive connection.
        let mut ok = TcpStream::connect(addr).await.unwrap();
        ok.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 256];
        let n = ok.read(&mut buf).await.unwrap();
        let head = String::from_utf8_lossy(&buf[..n]);
        assert!(head.starts_with("HTTP/1.1 200") && head.ends_with("ok"), "{head}");
        // ... then left idle: closed (no request head came within the deadline).
        assert!(read_until_closed(&mut ok).await.is_some(), "an idle kept-alive connection stays open");

        // A head that never ends (slowloris) and a connection that sends nothing are closed.
        let mut partial = TcpStream::connect(addr).await.unwrap();
        partial.write_all(b"POST /api/web/events HTTP/1.1\r\nhost: x\r\nx-a: ").await.unwrap();
        assert!(read_until_closed(&mut partial).await.is_some(), "a stalled request head stays open");
        let mut silent = TcpStream::connect(addr).await.unwrap();
        assert!(read_until_closed(&mut silent).await.is_some(), "a silent connection stays open");

        // A shutdown with a stalled client connected ends.
        let mut stalled = TcpStream::connect(addr).await.unwrap();
        stalled.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        tx.send(()).unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(60), server).await;
        assert!(matches!(ended, Ok(Ok(Ok(())))), "shutdown waits on a stalled client");
    }
}
