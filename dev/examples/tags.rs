//! A per-request tag in a small async service: which route allocates, and which holds memory.
//!
//!     cargo run --release -p heapsight-dev --example tags
//!
//! A fake request stream is served by a multi-threaded tokio runtime; each request's future is
//! wrapped in `.tagged(route)`, so everything it allocates, on whichever worker polls it and
//! across its `.await` points, counts for its route.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use heapsight::{Tag, TagFutureExt};

#[global_allocator]
static GLOBAL: heapsight::HeapSight = heapsight::HeapSight::system();

/// Shared state: uploads are kept (the memory that stays), searches only read.
type Store = Arc<Mutex<HashMap<u64, Vec<u8>>>>;

async fn search(store: Store, q: u64) -> usize {
    // Builds a result list, then a response body; all of it is freed when the request ends.
    let hits: Vec<u64> = {
        let s = store.lock().unwrap();
        s.keys().filter(|k| *k % 7 == q % 7).copied().collect()
    };
    tokio::task::yield_now().await;
    let body = hits
        .iter()
        .map(|h| format!("{{\"id\":{h}}}"))
        .collect::<Vec<_>>()
        .join(",");
    body.len()
}

async fn upload(store: Store, id: u64) -> usize {
    let blob = vec![(id % 251) as u8; 16 * 1024];
    tokio::task::yield_now().await;
    let n = blob.len();
    store.lock().unwrap().insert(id, blob); // kept: this route holds memory
    n
}

async fn health() -> usize {
    "ok".to_string().len()
}

fn main() {
    // Sample more often than the 512 KiB default, so a short run has enough samples for the
    // in-use estimates.
    heapsight::set_sample_rate(64 * 1024);
    let routes = [
        Tag::new("request:/search"),
        Tag::new("request:/upload"),
        Tag::new("request:/health"),
    ];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let store: Store = Arc::default();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..3000u64 {
            let store = store.clone();
            // One tag per route (not per request id: the tag table is bounded).
            let task = match i % 3 {
                0 => tokio::spawn(search(store, i).tagged_with(routes[0])),
                1 => tokio::spawn(upload(store, i).tagged_with(routes[1])),
                _ => tokio::spawn(health().tagged_with(routes[2])),
            };
            tasks.push(task);
        }
        for t in tasks {
            t.await.unwrap();
        }
    });

    println!(
        "{:<18} {:>10} {:>14} {:>12} {:>14} {:>8}",
        "tag", "allocs", "alloc bytes", "~live objs", "~live bytes", "samples"
    );
    for t in heapsight::tag_stats() {
        if t.alloc_objects == 0 {
            continue;
        }
        println!(
            "{:<18} {:>10} {:>14} {:>12} {:>14} {:>8}",
            t.name, t.alloc_objects, t.alloc_bytes, t.inuse_objects, t.inuse_bytes, t.live_samples
        );
    }
    let truth: usize = store.lock().unwrap().values().map(|v| v.len()).sum();
    println!("(bytes actually held by uploads: {truth})");

    println!("\ntop tagged sites by live bytes:");
    let p = heapsight::profile();
    for s in p
        .sites_by_tag()
        .iter()
        .filter(|s| s.tag().is_some())
        .take(3)
    {
        // The innermost frame of this program (the async fn, inlined into the poll that runs it).
        let mut symbols = s.frames().iter().flat_map(|f| f.symbols.iter());
        let ours = symbols.find(|s| s.function.starts_with("tags::"));
        let name = ours.map_or("?", |s| s.function.as_str());
        println!(
            "{:>10} B live  {:>9} B allocated  [{}]  {}",
            s.inuse_bytes,
            s.alloc_bytes,
            s.tag().unwrap(),
            name
        );
    }
    // The same profile for pprof: each sample carries its tag as the label `tag`.
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "tags.pb.gz".into());
    let written = std::fs::File::create(&path).and_then(|file| p.write_pprof(file));
    if let Err(e) = written {
        eprintln!("tags: cannot write {path}: {e}");
        std::process::exit(1);
    }
    println!("\nwrote {path}: go tool pprof -tags {path}");
}
