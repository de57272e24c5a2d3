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

/// This process's open descriptors, from /proc/self/fd (the read_dir's own is the same each time).
fn open_fds() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn dump_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter(|e| {
            let comm = e.as_ref().unwrap().path().join("comm");
            std::fs::read_to_string(comm).is_ok_and(|c| c.trim() == "heapsight-dump")
        })
        .count()
}

/// Runs first: a refused signal leaves no thread, no descriptor and no handler behind, and a
/// later install works.
fn failed_install_leaves_nothing_behind() {
    let fds = open_fds();
    for sig in [libc::SIGKILL, libc::SIGSTOP, 100_000] {
        match heapsight::install_dump_signal(sig) {
            Err(heapsight::DumpSignalError::Signal(e)) => {
                assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{sig}: {e}");
                let io: std::io::Error = heapsight::DumpSignalError::Signal(e).into();
                assert!(io.to_string().contains("signal handler"), "{io}");
            }
            other => panic!("install_dump_signal({sig}): {other:?}"),
        }
        // The thread was joined before the error returned: its task is gone or going. Wait
        // for the kernel to reap it (a hang detector, not a timing assertion).
        let start = Instant::now();
        while dump_threads() != 0 {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "dump thread left"
            );
            std::thread::yield_now();
        }
        assert_eq!(
            open_fds(),
            fds,
            "descriptors left behind by install_dump_signal({sig})"
        );
    }
}

fn sigusr2_writes_both_files() {
    let dir = std::env::temp_dir().join(format!("heapsight-sig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Read by the dump thread when the signal arrives; no other thread reads the environment now.
    std::env::set_var("HEAPSIGHT_DUMP_DIR", &dir);
    let keep = signal_test_keeps_blocks();
    heapsight::install_dump_signal(libc::SIGUSR2).unwrap();
    assert!(
        matches!(
            heapsight::install_dump_signal(libc::SIGUSR2),
            Err(heapsight::DumpSignalError::AlreadyInstalled)
        ),
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
        (
            "failed_install_leaves_nothing_behind",
            failed_install_leaves_nothing_behind,
        ),
        ("sigusr2_writes_both_files", sigusr2_writes_both_files),
        ("dump_on_exit", dump_on_exit),
    ]);
}
