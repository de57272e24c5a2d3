//! jemalloc as the inner allocator (tikv-jemallocator): jemalloc frees with the layout it is given
//! (sized `sdallocx`), so a wrong layout there corrupts the heap instead of going unnoticed. The
//! global allocator is `HeapSight<Strict<Jemalloc>>` (tests/support/strict.rs checks every
//! free's and realloc's layout against the block's); the churn of `rel_layouts` runs at the
//! default rate, 64 KiB, 4 KiB and every allocation.
use heapsight::HeapSight;
use tikv_jemallocator::Jemalloc;

#[path = "support/layout_churn.rs"]
mod layout_churn;
#[path = "support/strict.rs"]
mod strict;
mod support;
use layout_churn::at_rate;
use strict::Strict;

#[global_allocator]
static GLOBAL: HeapSight<Strict<Jemalloc>> = HeapSight::new(Strict::new(Jemalloc));

fn main() {
    let mut r = support::Runner::new();
    r.check_ok("default_rate_over_jemalloc", || at_rate(512 * 1024));
    r.check_ok("rate_64k_over_jemalloc", || at_rate(64 * 1024));
    r.check_ok("rate_4096_over_jemalloc", || at_rate(4096));
    r.check_ok("rate_1_over_jemalloc", || at_rate(1));
    r.finish();
}
