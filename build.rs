//! Tells the crate whether it is being compiled with frame pointers, so that `Unwinder::Auto`
//! picks the frame-pointer walk only when the program's own frames can be walked.
fn main() {
    println!("cargo:rustc-check-cfg=cfg(heapsight_frame_pointers)");
    // `--cfg heapsight_portable` compiles the code paths of targets other than Linux on Linux,
    // so that they are built and tested here (see "Platforms" in the crate docs).
    println!("cargo:rustc-check-cfg=cfg(heapsight_portable)");
    println!("cargo:rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let on = flags.split('\x1f').collect::<Vec<_>>().windows(2).any(|w| {
        (w[0] == "-C" && w[1] == "force-frame-pointers=yes") || w[1] == "-Cforce-frame-pointers=yes"
    }) || flags
        .split('\x1f')
        .any(|f| f == "-Cforce-frame-pointers=yes" || f == "-Cforce-frame-pointers");
    if on {
        println!("cargo:rustc-cfg=heapsight_frame_pointers");
    }
}
