//! heapsight's heavy integration tests and benchmarks live in this package (see `tests/`), so
//! that the root package's dev-dependencies stay small. Nothing here is published.
