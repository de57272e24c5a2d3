//! Peer: tracking-allocator 0.4 over System with a no-op tracker (see `tracking/mod.rs`).
//! See `kernels/mod.rs`.
mod kernels;
mod tracking;

fn main() {
    tracking::enable();
    let mut c = kernels::criterion();
    kernels::run_all(
        &mut c,
        &[kernels::Variant::plain("tracking")],
        kernels::Scale::Full,
    );
    c.final_summary();
}
