//! HeapSight over System (glibc), sampling off (rate 0): counters only;
//! `#[global_allocator]` declared in this binary crate.
#[global_allocator]
static A: heapsight::HeapSight = heapsight::HeapSight::system();
fn main() {
    heapsight_entry_bench::run_rate0()
}
