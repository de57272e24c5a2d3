//! Benchmark: the dump cost of `examples/dump_cost.rs` on a real workload, an axum service.
//!
//!     cargo run --release -p heapsight-dev --example dump_cost_axum [-- --symbolizer S]
//!
//! An axum router on a multi-threaded tokio runtime answers 2,000 requests that each build a
//! JSON-like body from a shared map and keep the newest 500 bodies; then the ten dumps are
//! measured as in `examples/dump_cost.rs` (see `examples/support/dump_measure.rs`). The binary carries axum, hyper
//! and tokio's debug info, which is what made the first dump expensive.
use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::routing::get;
use axum::Router;

#[path = "../../examples/support/dump_measure.rs"]
mod dump_measure;

#[global_allocator]
static GLOBAL: heapsight::HeapSight = heapsight::HeapSight::system();

#[derive(Default)]
struct App {
    items: BTreeMap<u64, String>,
    recent: VecDeque<String>,
}

async fn item(Path(id): Path<u64>, State(app): State<Arc<Mutex<App>>>) -> String {
    let mut app = app.lock().unwrap();
    let name = app
        .items
        .entry(id % 1000)
        .or_insert_with(|| format!("item-{id}"))
        .clone();
    let body = format!(
        "{{\"id\":{id},\"name\":\"{name}\",\"tags\":[{}]}}",
        (0..id % 16)
            .map(|t| format!("\"t{t}\""))
            .collect::<Vec<_>>()
            .join(",")
    );
    app.recent.push_back(body.clone());
    if app.recent.len() > 500 {
        app.recent.pop_front();
    }
    body
}

fn main() -> std::io::Result<()> {
    if dump_measure::helper_main() {
        return Ok(());
    }
    let how = dump_measure::Symbolizer::from_args();
    let server = heapsight::http::serve("127.0.0.1:0")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let app_addr = listener.local_addr()?;
    let app = Router::new()
        .route("/item/{id}", get(item))
        .with_state(Arc::new(Mutex::new(App::default())));
    rt.spawn(async move { axum::serve(listener, app).await });
    for i in 0..2000u64 {
        let mut s = std::net::TcpStream::connect(app_addr)?;
        write!(
            s,
            "GET /item/{i} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )?;
        let mut body = Vec::new();
        s.read_to_end(&mut body)?;
        assert!(body.starts_with(b"HTTP/1.1 200"));
    }
    dump_measure::write_offsets_if_asked();
    dump_measure::measure("axum", server.local_addr(), how);
    server.shutdown();
    drop(rt);
    Ok(())
}
