//! Real workloads under jemalloc (tikv-jemallocator, built with its profiler compiled in). Run
//! with `_RJEM_MALLOC_CONF=prof:true,lg_prof_sample:19` it is jemalloc with its own heap profiler
//! at 512 KiB (what `jemalloc_pprof` reads); without, jemalloc alone. See `workloads/mod.rs`.
mod workloads;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    workloads::main();
}
