//! `go tool pprof -top` on an axum service, as an on-call engineer reads it: a handler builds a
//! `HashMap<String, Vec<String>>` index (the seed workload, 500,000 appends over 100 requests) on
//! a multi-threaded tokio runtime, at the default sampling rate. The first row of `-top` is the
//! program's function with at least 80% flat, and `-top -cum` has it among its first five rows:
//! the growth machinery leaf-ward and the tokio scheduler, hyper and axum frames root-ward of the
//! handler are not in the program view (docs/profiles.md). `go` missing: `SKIPPED` (a failure
//! under CI).
use std::collections::HashMap;
use std::process::Command;
use std::sync::Mutex;

use axum::extract::Path;
use axum::routing::get;
use axum::Router;

#[path = "../../tests/support/mod.rs"]
mod support;

#[global_allocator]
static GLOBAL: heapsight::HeapSight = heapsight::HeapSight::system();

const REQUESTS: usize = 100;
const PER_REQUEST: usize = 5_000;

static INDEX: Mutex<Option<HashMap<String, Vec<String>>>> = Mutex::new(None);

/// The program's own function: one batch of appends into the shared index.
#[inline(never)]
fn ingest(batch: usize) {
    let mut guard = INDEX.lock().unwrap();
    let m = guard.get_or_insert_with(HashMap::new);
    for i in batch * PER_REQUEST..(batch + 1) * PER_REQUEST {
        m.entry(format!("k{}", i % 10_000))
            .or_default()
            .push(format!("value-{i}"));
    }
}

async fn handle(Path(batch): Path<usize>) -> &'static str {
    ingest(batch);
    "ok"
}

/// (flat%, cum%, function) of each row of `go tool pprof ARGS`.
fn rows(args: &[&str]) -> (String, Vec<(f64, f64, String)>) {
    let out = Command::new("go")
        .args(["tool", "pprof"])
        .args(args)
        .output()
        .expect("go tool pprof");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let rows = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("flat"))
        .skip(1)
        .filter_map(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            let pct = |s: &str| s.trim_end_matches('%').parse::<f64>().ok();
            Some((pct(c.get(1)?)?, pct(c.get(4)?)?, c.get(5..)?.join(" ")))
        })
        .collect();
    (text, rows)
}

fn top_names_the_handler_s_function() {
    heapsight::set_sampling_seed(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(3)
        .enable_all()
        .build()
        .unwrap();
    let app = Router::new().route("/ingest/{batch}", get(handle));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(async move { axum::serve(listener, app).await });
    for b in 0..REQUESTS {
        assert_eq!(support::get_status(addr, &format!("/ingest/{b}")), 200);
    }
    let dir = support::TempDir::new("pprof-top-axum");
    let file = dir.join("heap.pb.gz");
    heapsight::profile()
        .write_pprof(std::fs::File::create(&file).unwrap())
        .unwrap();
    let file = file.to_str().unwrap();
    let (text, top) = rows(&["-top", file]);
    println!("go tool pprof -top\n{text}");
    let (flat, _, name) = top.first().expect("rows");
    assert!(
        name.ends_with("::ingest") && *flat >= 80.0,
        "first row of -top: {name} {flat}%\n{text}"
    );
    let (text, cum) = rows(&["-top", "-cum", file]);
    println!("go tool pprof -top -cum\n{text}");
    let pos = cum.iter().position(|r| r.2.ends_with("::ingest"));
    assert!(
        pos.is_some_and(|p| p < 5),
        "ingest at {pos:?} in -top -cum\n{text}"
    );
    drop(rt);
}

fn main() {
    if !support::have_tool("go") {
        return;
    }
    support::run(&[(
        "top_names_the_handler_s_function",
        top_names_the_handler_s_function,
    )]);
}
