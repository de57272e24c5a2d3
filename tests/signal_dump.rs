//! SIGUSR2 dumps and HEAPSIGHT_DUMP_ON_EXIT, read back with `go tool pprof`.
use std::process::Command;
use std::time::{Duration, Instant};

use heapsight::HeapSight;

#[global_allocator]
static GLOBAL: HeapSight = HeapSight::system();

mod support;

#[inline(never)]
fn signal_test_keeps_blocks() -> Vec<Vec<u8>> {
    (0..1000).map(|i| vec![i as u8; 8192]).collect()
}

fn check_with_go(path: &std::path::Path, needle: &str) {
    if !support::have_tool("go") {
        return;
    }
    let top = support::go_pprof(&["-top", path.to_str().unwrap()]);
    assert!(top.contains(needle), "{top}");
}

fn sigusr2_writes_both_files() {
    let dir = std::env::temp_dir().join(format!("heapsight-sig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Read by the dump thread when the signal arrives; no other thread reads the environment now.
    std::env::set_var("HEAPSIGHT_DUMP_DIR", &dir);
    let keep = signal_test_keeps_blocks();
    heapsight::install_dump_signal(libc::SIGUSR2).unwrap();
    assert!(
        heapsight::install_dump_signal(libc::SIGUSR2).is_err(),
        "second install refused"
    );
    // SAFETY: raise(3) on our own process; the handler only writes to a pipe.
    assert_eq!(unsafe { libc::raise(libc::SIGUSR2) }, 0);
    let pb = dir.join(format!("heapsight-{}-0.pb.gz", std::process::id()));
    let txt = dir.join(format!("heapsight-{}-0.txt", std::process::id()));
    // Wait for the background thread (a hang detector, not a timing assertion).
    let start = Instant::now();
    while !(pb.exists() && txt.exists()) {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no dump after 120 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = std::fs::read_to_string(&txt).unwrap();
    assert!(
        text.starts_with("heap profile: "),
        "{}",
        &text[..text.len().min(200)]
    );
    assert!(text.contains("signal_test_keeps_blocks"));
    check_with_go(&pb, "signal_test_keeps_blocks");
    drop(keep);
    let _ = std::fs::remove_dir_all(dir);
}

fn dump_on_exit() {
    let path = std::env::temp_dir().join(format!("heapsight-exit-{}.pb.gz", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let out = Command::new(std::env::current_exe().unwrap())
        .env("HEAPSIGHT_TEST_CHILD", "exit")
        .env("HEAPSIGHT_DUMP_ON_EXIT", &path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("heapsight: wrote heap profile to"),
        "{stderr}"
    );
    assert!(path.exists(), "no profile at exit");
    check_with_go(&path, "signal_test_keeps_blocks");
    let _ = std::fs::remove_file(path);
}

fn main() {
    if std::env::var_os("HEAPSIGHT_TEST_CHILD").is_some() {
        // Child for `dump_on_exit`: keep blocks live until the end and return normally.
        let keep = signal_test_keeps_blocks();
        std::mem::forget(keep);
        return;
    }
    support::run(&[
        ("sigusr2_writes_both_files", sigusr2_writes_both_files),
        ("dump_on_exit", dump_on_exit),
    ]);
}
