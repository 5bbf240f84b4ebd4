//! The router and serving with graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::serve::ListenerExt;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::routes;
use crate::state::AppState;

/// The whole HTTP surface.
pub fn build_router(state: AppState) -> Router {
    routes::router(state)
}

/// Serves until `state.shutdown` is cancelled, then stops accepting, lets
/// WebSockets close with 4100, finishes in-flight requests (bounded by the
/// drain timeout) and shuts the engine down.
pub async fn serve(listener: TcpListener, state: AppState) -> std::io::Result<()> {
    // Process-wide tasks, owned by the tracker: token expiry of live
    // connections, revocations and disconnects from other processes, the
    // cluster-wide driver index and process figures (Redis only), and the
    // re-dispatch after a bus reconnect.
    state
        .tasks
        .spawn(Arc::clone(&state.expiry).run(state.shutdown.clone()));
    state
        .tasks
        .spawn(crate::routes::admin::control_listener(state.clone()));
    state
        .tasks
        .spawn(crate::routes::admin::flush_driver_index(state.clone()));
    state
        .tasks
        .spawn(crate::routes::admin::report_node_stats(state.clone()));
    // No silent tail gap after the bus reconnects.
    state
        .tasks
        .spawn(crate::tail::redispatch_after_resubscribe(state.clone()));
    let router = build_router(state.clone());
    let token = state.shutdown.clone();
    // No Nagle: frames are small and latency-bound; a second frame must not
    // wait for the ACK of the first (up to 40 ms of delayed ACK).
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let server = axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { token.cancelled().await });
    let drain = state.limits.drain_timeout;
    let served = tokio::select! {
        r = server => r,
        () = async {
            state.shutdown.cancelled().await;
            tokio::time::sleep(drain).await;
        } => {
            tracing::warn!(?drain, "drain timeout: closing remaining HTTP connections");
            Ok(())
        }
    };
    state.tasks.close();
    if tokio::time::timeout(drain, state.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("connection tasks still running after the drain timeout");
    }
    state.engine.shutdown().await;
    tracing::info!("server stopped");
    served
}

/// Cancels `token` on SIGTERM or ctrl-c.
pub async fn shutdown_on_signal(token: CancellationToken) {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received: draining");
    token.cancel();
}
