//! The ten lines a user pastes: install heapsight, run some code, look at the heap.
//!
//!     cargo run --release --example quickstart
use std::collections::HashMap;

#[global_allocator]
static GLOBAL: heapsight::HeapSight = heapsight::HeapSight::system();

fn build_index(n: usize) -> HashMap<String, Vec<String>> {
    let mut m: HashMap<String, Vec<String>> = HashMap::new();
    for i in 0..n {
        m.entry(format!("k{}", i % 10_000)).or_default().push(format!("value-{i}"));
    }
    m
}

fn main() {
    let index = build_index(500_000);
    let s = heapsight::stats();
    println!("{} live objects, {} live bytes, peak {} bytes", s.inuse_objects, s.inuse_bytes, s.peak_inuse_bytes);
    for site in heapsight::profile().sites().iter().take(5) {
        let f = site.frames();
        let name = |i: usize| f.get(i).and_then(|f| f.function()).unwrap_or("?");
        println!("{:>12} B live {:>12} B allocated  {} <- {} <- {}", site.inuse_bytes, site.alloc_bytes, name(0), name(1), name(2));
    }
    drop(index);
}
