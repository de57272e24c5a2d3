//! Guarantee 13: the inner allocator sees one layout per block for its whole life. Sampled blocks
//! are asked of it with a raised alignment (so that a free can recognise them by address; see
//! `filter`): their free and realloc must pass that same layout back, and a realloc that changes
//! whether the block is a sample moves it (allocate, copy, free) with its contents intact.
//!
//! The global allocator is `HeapSight<Strict>` (tests/support/strict.rs): `Strict` forwards to
//! `System` and keeps every live block's layout in a fixed table (no allocation), counting any
//! free or realloc whose layout differs from the one the block was allocated with.

use heapsight::HeapSight;

#[path = "support/layout_churn.rs"]
mod layout_churn;
#[path = "support/strict.rs"]
mod strict;
mod support;
use layout_churn::at_rate;

use strict::Strict;

#[global_allocator]
static GLOBAL: HeapSight<Strict> = HeapSight::new(Strict::system());

fn main() {
    let mut r = support::Runner::new();
    r.check_ok("default_rate_raises_sample_alignment", || {
        at_rate(512 * 1024)
    });
    r.check_ok("rate_64k", || at_rate(64 * 1024));
    r.check_ok("rate_4096", || at_rate(4096));
    r.check_ok("rate_1", || at_rate(1));
    r.check_ok("back_to_default", || at_rate(512 * 1024));
    r.finish();
}
