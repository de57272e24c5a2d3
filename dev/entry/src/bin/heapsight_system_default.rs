//! HeapSight over System (glibc), at the default sample rate (512 KiB);
//! `#[global_allocator]` declared in this binary crate.
#[global_allocator]
static A: heapsight::HeapSight = heapsight::HeapSight::system();
fn main() {
    heapsight_entry_bench::run_default()
}
