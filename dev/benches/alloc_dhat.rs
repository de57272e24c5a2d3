//! Peer: dhat 0.3 heap profiler, running (a backtrace on every allocation). ~100x slower, so it
//! runs the small nested-map workload only. See `kernels/mod.rs`.
mod kernels;

#[global_allocator]
static GLOBAL: dhat::Alloc = dhat::Alloc;

fn main() {
    let dir = std::env::var("CRITERION_HOME").unwrap_or_else(|_| "target/criterion".into());
    let _ = std::fs::create_dir_all(&dir);
    let profiler = dhat::Profiler::builder()
        .file_name(format!("{dir}/dhat-heap.json"))
        .build();
    let mut c = kernels::criterion();
    kernels::run_all(
        &mut c,
        &[kernels::Variant::plain("dhat")],
        kernels::Scale::Small,
    );
    c.final_summary();
    drop(profiler);
}
