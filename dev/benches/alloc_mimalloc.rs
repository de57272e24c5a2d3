//! Kernels under mimalloc alone: the second baseline. See `kernels/mod.rs`.
mod kernels;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let mut c = kernels::criterion();
    kernels::run_all(
        &mut c,
        &[kernels::Variant::plain("mimalloc")],
        kernels::Scale::Full,
    );
    c.final_summary();
}
