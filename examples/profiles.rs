//! Every output format from one run: a nested-map workload (the Go reference's seed workload
//! in Rust), then pprof, allocs, legacy text, folded stacks and the `top` table.
//!
//!     cargo run --release --example profiles [OUT_DIR]
//!     go tool pprof -top OUT_DIR/heap.pb.gz
use std::collections::HashMap;
use std::fs::File;

use heapsight::SampleType;

#[global_allocator]
static GLOBAL: heapsight::HeapSight = heapsight::HeapSight::system();

#[inline(never)]
fn build_index(n: usize) -> HashMap<String, Vec<String>> {
    let mut m: HashMap<String, Vec<String>> = HashMap::new();
    for i in 0..n {
        m.entry(format!("k{}", i % 10_000))
            .or_default()
            .push(format!("value-{i}"));
    }
    m
}

fn main() {
    if let Err(e) = run() {
        eprintln!("profiles: {e}");
        std::process::exit(1);
    }
}

fn run() -> std::io::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "heapsight-out".to_string());
    std::fs::create_dir_all(&dir)?;
    heapsight::set_sampling_seed(1);
    let index = build_index(500_000);
    let p = heapsight::profile();
    p.write_pprof(File::create(format!("{dir}/heap.pb.gz"))?)?;
    p.write_pprof_allocs(File::create(format!("{dir}/allocs.pb.gz"))?)?;
    p.write_text(File::create(format!("{dir}/heap.txt"))?)?;
    p.write_folded(
        File::create(format!("{dir}/inuse_space.folded"))?,
        SampleType::InuseSpace,
    )?;
    #[cfg(feature = "flamegraph")]
    p.write_flamegraph(
        File::create(format!("{dir}/inuse_space.svg"))?,
        SampleType::InuseSpace,
    )?;
    println!("{}", p.top(5, SampleType::InuseSpace));
    println!("{}", p.top(5, SampleType::AllocSpace));
    drop(index);
    Ok(())
}
