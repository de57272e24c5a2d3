//! Peer: dhat 0.3's heap profiler running (a backtrace on every allocation). Its report goes to a
//! file in the temporary directory, removed at exit. See `workloads/mod.rs`.
mod workloads;

#[global_allocator]
static GLOBAL: dhat::Alloc = dhat::Alloc;

fn main() {
    let file = std::env::temp_dir().join(format!("heapsight-wl-dhat-{}.json", std::process::id()));
    let profiler = dhat::Profiler::builder().file_name(&file).build();
    workloads::main();
    drop(profiler);
    let _ = std::fs::remove_file(&file);
}
