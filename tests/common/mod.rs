//! Shared helpers for the integration tests: a real server on 127.0.0.1.
#![allow(dead_code, unreachable_pub)]

pub mod redis;

use std::future::Future;
use std::net::SocketAddr;

use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Serves `app` on a free port of 127.0.0.1; returns its base URL.
pub async fn serve(app: Router) -> (String, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (format!("http://{addr}"), task)
}

/// Serves `app` with graceful shutdown on `signal`; the task ends when the
/// server has shut down.
pub async fn serve_with_shutdown<F>(app: Router, signal: F) -> (String, JoinHandle<()>)
where
    F: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(signal)
            .await
            .unwrap();
    });
    (format!("http://{addr}"), task)
}
