//! The lines a user pastes: install heapsight, run some code, look at the heap.
//!
//!     cargo run --release --example quickstart && go tool pprof -top heap.pb.gz
use std::collections::HashMap;

#[global_allocator]
static GLOBAL: heapsight::HeapSight = heapsight::HeapSight::system();

/// 500,000 appends over 10,000 keys: a map of vectors that grow by doubling.
#[inline(never)]
pub fn build() -> HashMap<String, Vec<String>> {
    let mut index: HashMap<String, Vec<String>> = HashMap::new();
    for i in 0..500_000 {
        index
            .entry(format!("k{}", i % 10_000))
            .or_default()
            .push(format!("value-{i}"));
    }
    index
}

pub fn main() {
    if let Err(e) = run() {
        eprintln!("quickstart: {e}");
        std::process::exit(1);
    }
}

fn run() -> std::io::Result<()> {
    let index = build();
    let s = heapsight::stats();
    println!(
        "{} live objects, {} live bytes, peak {} bytes",
        s.inuse_objects, s.inuse_bytes, s.peak_inuse_bytes
    );
    let profile = heapsight::profile();
    println!("{}", profile.top(5, heapsight::SampleType::InuseSpace));
    profile.write_pprof(std::fs::File::create("heap.pb.gz")?)?;
    println!("wrote heap.pb.gz: go tool pprof -top heap.pb.gz");
    drop(index);
    Ok(())
}
