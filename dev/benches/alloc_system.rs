//! Kernels under the system allocator alone (glibc malloc): the baseline. See `kernels/mod.rs`.
mod kernels;

#[global_allocator]
static GLOBAL: std::alloc::System = std::alloc::System;

fn main() {
    let mut c = kernels::criterion();
    kernels::run_all(
        &mut c,
        &[kernels::Variant::plain("system")],
        kernels::Scale::Full,
    );
    c.final_summary();
}
