//! The nested-map workload of the first reference article, in Rust: `HashMap<String, Vec<String>>`
//! filled with `n` appends spread over `keys` keys, no pre-allocation. Shared by the benchmarks
//! (`benches/kernels/mod.rs`) and the demo (`examples/nested_maps.rs`, via `#[path]`), so both
//! measure the same code.
use std::collections::HashMap;

/// Appends `n` values over `keys` keys into a map built without any capacity hint, the way the
/// Go article's `make(map[string][]string)` + `append` does. Every append formats its key (a
/// temporary `String` that is dropped when the key already exists) and its value.
#[inline(never)]
pub fn build_unsized(n: usize, keys: usize) -> HashMap<String, Vec<String>> {
    let mut m: HashMap<String, Vec<String>> = HashMap::new();
    for i in 0..n {
        m.entry(format!("k{}", i % keys))
            .or_default()
            .push(format!("v{i}"));
    }
    m
}
