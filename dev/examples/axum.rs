//! Mounting heapsight's endpoints in an axum service with `heapsight::http::respond`:
//!
//!     cargo run --release -p heapsight-dev --example axum
//!     go tool pprof -top http://127.0.0.1:3000/debug/pprof/heap
//!
//! `respond` is blocking (profiling, symbolizing, and `?seconds=N` waits), so it runs on the
//! blocking pool. `--seconds N` stops after N seconds.
use axum::extract::OriginalUri;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

#[global_allocator]
static GLOBAL: heapsight::HeapSight = heapsight::HeapSight::system();

async fn heapsight_endpoint(OriginalUri(uri): OriginalUri) -> Response {
    let target = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| uri.path().to_string());
    match tokio::task::spawn_blocking(move || heapsight::http::respond(&target)).await {
        Ok(r) => {
            let mut resp = (
                StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                r.body,
            )
                .into_response();
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, r.content_type.parse().unwrap());
            resp
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("axum example: {e}");
        std::process::exit(1);
    }
}

async fn run() -> std::io::Result<()> {
    let seconds: Option<u64> = std::env::args()
        .skip_while(|a| a != "--seconds")
        .nth(1)
        .and_then(|s| s.parse().ok());
    let app = Router::new()
        .route("/", get(|| async { "hello" }))
        .route("/debug/pprof/{*rest}", get(heapsight_endpoint))
        .route("/debug/heapsight", get(heapsight_endpoint))
        .route("/metrics", get(heapsight_endpoint));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000")
        .await
        .map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot listen on 127.0.0.1:3000: {e}"))
        })?;
    println!(
        "listening on http://{}/debug/pprof/",
        listener.local_addr()?
    );
    let serve = axum::serve(listener, app);
    match seconds {
        Some(s) => {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(s), serve).await;
        }
        None => serve.await?,
    }
    Ok(())
}
