//! The debug server against peers that try to turn it against the service: slow bodies, slow
//! readers, abandoned `?seconds=` requests, per-route caps, a descriptor budget under
//! `ulimit -n`, a bearer token, a Unix socket, and the HTTP details real clients rely on. Every
//! check speaks to the real server over real sockets.
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use heapsight::http::{serve_with, ServeOptions};
use heapsight::HeapSight;

#[global_allocator]
static GLOBAL: HeapSight = HeapSight::system();

mod support;

/// Sends `raw` and reads the whole reply: (status, head, body).
fn exchange(s: &mut impl ReadWrite, raw: &[u8]) -> (u16, String, Vec<u8>) {
    s.write_all(raw).expect("send");
    let mut got = Vec::new();
    s.read_to_end(&mut got).expect("read the reply");
    split(&got)
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn split(got: &[u8]) -> (u16, String, Vec<u8>) {
    let end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(got)));
    let head = String::from_utf8_lossy(&got[..end]).into_owned();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head, got[end + 4..].to_vec())
}

fn connect(a: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(a).expect("connect");
    // A hang detector, not a timing assertion.
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    s
}

fn get(a: SocketAddr, target: &str) -> (u16, String, Vec<u8>) {
    get_with(a, target, "")
}

fn get_with(a: SocketAddr, target: &str, headers: &str) -> (u16, String, Vec<u8>) {
    let req = format!("GET {target} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n");
    exchange(&mut connect(a), req.as_bytes())
}

fn server() -> heapsight::http::Handle {
    serve_with("127.0.0.1:0", ServeOptions::new()).expect("bind loopback")
}

/// Repeats `f` until it returns true (a hang detector bounds it, not a timing assertion).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(60), "never: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// 8 clients announce a 4 MB symbol body and send one byte of it: no worker waits for them,
/// `/metrics` is answered while they are all still connected.
fn slow_bodies_hold_no_worker() {
    let h = server();
    let a = h.local_addr();
    let slow: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut s = connect(a);
            s.write_all(
                b"POST /debug/pprof/symbol HTTP/1.1\r\nHost: x\r\nContent-Length: 4000000\r\n\r\n0",
            )
            .unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..3 {
        assert_eq!(get(a, "/metrics").0, 200);
    }
    // They are still open: the server has not answered them (it waits up to BODY_TIMEOUT).
    for mut s in slow {
        s.set_nonblocking(true).unwrap();
        let mut b = [0u8; 1];
        assert!(
            matches!(s.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "a slow body was answered or closed early"
        );
    }
    h.shutdown();
}

#[inline(never)]
fn http_server_test_keeps(n: usize) -> Vec<Vec<u8>> {
    let mut keep = Vec::new();
    // Distinct stacks, so that the text profile is large.
    for bits in 0..n as u64 {
        support::on_distinct_stack(bits, 12, &mut || keep.push(vec![0u8; 64]));
    }
    keep
}

/// 8 clients ask for a multi-megabyte `?debug=1` profile and read none of it: the replies wait
/// in the poll loop, and `/metrics` is answered meanwhile.
fn slow_readers_hold_no_worker() {
    heapsight::set_sample_rate(1);
    let keep = http_server_test_keeps(4096);
    heapsight::set_sample_rate(512 * 1024);
    let h = server();
    let a = h.local_addr();
    let (st, _, body) = get(a, "/debug/pprof/heap?debug=1");
    assert_eq!(st, 200);
    // Larger than what the socket buffers of both sides absorb, so the writer must wait.
    assert!(body.len() > 4 << 20, "reply of {} bytes only", body.len());
    let readers: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut s = connect(a);
            s.write_all(b"GET /debug/pprof/heap?debug=1 HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    for _ in 0..3 {
        assert_eq!(get(a, "/metrics").0, 200);
    }
    drop(readers);
    drop(keep);
    h.shutdown();
}

/// Two `?seconds=300` requests (the cap for deltas) whose clients leave: they are cancelled, and
/// a new delta gets a worker. While both are in progress a third is refused with 503 and
/// `Retry-After`.
fn abandoned_seconds_are_cancelled() {
    let h = server();
    let a = h.local_addr();
    let mut held: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = connect(a);
            s.write_all(b"GET /debug/pprof/heap?seconds=300 HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    for s in &mut held {
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut b = [0u8; 200];
        if let Ok(n) = s.read(&mut b) {
            panic!(
                "a held delta was answered: {:?}",
                String::from_utf8_lossy(&b[..n])
            );
        }
    }
    let mut refused = None;
    eventually("a third delta refused while two run", || {
        let r = get(a, "/debug/pprof/heap?seconds=1");
        let busy = r.0 == 503;
        if busy {
            refused = Some(r);
        }
        busy
    });
    let (_, head, _) = refused.unwrap();
    assert!(head.contains("Retry-After: "), "{head}");
    // Other routes are served meanwhile.
    assert_eq!(get(a, "/metrics").0, 200);
    held.clear();
    // Without cancellation the two would hold the delta slots for 300 s.
    eventually("a delta served after the abandoned ones", || {
        get(a, "/debug/pprof/heap?seconds=1").0 == 200
    });
    h.shutdown();
}

/// The descriptor budget holds under `ulimit -n`: a child with `RLIMIT_NOFILE` = 48 serves with
/// a budget of 16 while this process opens 200 connections to it; the child's own `open()`s
/// never fail and it never holds more than 16 descriptors for the server.
fn fd_budget_under_ulimit() {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env("HEAPSIGHT_TEST_CHILD", "fds")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while out.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    let a: SocketAddr = String::from_utf8(line).unwrap().trim().parse().unwrap();
    let mut conns = Vec::new();
    for _ in 0..200 {
        if let Ok(s) = TcpStream::connect(a) {
            conns.push(s);
        }
    }
    // Requests still get through (the oldest idle connection makes room).
    eventually("/metrics answered with 200 idle connections", || {
        let mut s = connect(a);
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        got.starts_with(b"HTTP/1.1 200")
    });
    drop(conns);
    drop(child.stdin.take());
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert!(child.wait().unwrap().success(), "{rest}");
    let v: Vec<usize> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    let (failed_opens, most_fds, base_fds) = (v[0], v[1], v[2]);
    assert_eq!(failed_opens, 0, "the host's open() failed");
    assert!(
        most_fds <= base_fds + 16,
        "{most_fds} descriptors open, {base_fds} before serving, budget 16"
    );
}

fn count_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

fn fd_child() {
    let lim = libc::rlimit {
        rlim_cur: 48,
        rlim_max: 48,
    };
    // SAFETY: a valid rlimit for this process.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    let base = count_fds();
    let h = serve_with("127.0.0.1:0", ServeOptions::new().max_fds(16)).unwrap();
    println!("{}", h.local_addr());
    // The parent closes stdin when done; meanwhile, open a file as a host would, and count.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s2 = stop.clone();
    std::thread::spawn(move || {
        let _ = std::io::stdin().read(&mut [0u8; 1]);
        s2.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let (mut failed, mut most) = (0, 0);
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        // The stdin thread holds no extra descriptor; count before opening.
        most = most.max(count_fds());
        match std::fs::File::open("/proc/self/stat") {
            Ok(f) => drop(f),
            Err(_) => failed += 1,
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // `count_fds` itself holds one descriptor while it reads the directory.
    println!("{failed} {} {}", most - 1, base - 1);
    h.shutdown();
}

/// With a token every route answers 401 without it (or with a wrong one), 200 with it; without
/// a token the same requests are served.
fn token_on_and_off() {
    let h = serve_with("127.0.0.1:0", ServeOptions::new().token("s3cret-token")).unwrap();
    let a = h.local_addr();
    for target in [
        "/metrics",
        "/debug/pprof/heap",
        "/nope",
        "/debug/pprof/symbol",
    ] {
        let (st, head, _) = get(a, target);
        assert_eq!(st, 401, "{target}");
        assert!(head.contains("WWW-Authenticate: Bearer"), "{head}");
        let (st, _, _) = get_with(a, target, "Authorization: Bearer s3cret-tokem\r\n");
        assert_eq!(st, 401, "{target} with a wrong token");
        let (st, _, _) = get_with(a, target, "Authorization: Bearer s3cret-token-longer\r\n");
        assert_eq!(st, 401, "{target} with a longer token");
    }
    let (st, _, _) = get_with(a, "/metrics", "Authorization: Bearer s3cret-token\r\n");
    assert_eq!(st, 200);
    h.shutdown();
    let h = server();
    assert_eq!(get(h.local_addr(), "/metrics").0, 200);
    h.shutdown();
}

/// A Unix-socket server: mode 0600, answers, refuses a non-socket path, replaces a stale
/// socket, and removes its file on shutdown.
fn unix_socket() {
    use std::os::unix::fs::PermissionsExt;
    let dir = support::TempDir::new("http-unix");
    let path = dir.join("heapsight.sock");
    let h = heapsight::http::serve_unix(&path, ServeOptions::new()).unwrap();
    assert_eq!(h.unix_path(), Some(path.as_path()));
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let mut s = UnixStream::connect(&path).unwrap();
    let (st, _, body) = exchange(&mut s, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(st, 200);
    assert!(String::from_utf8_lossy(&body).contains("heapsight_"));
    // A second server on the live socket is refused.
    assert!(heapsight::http::serve_unix(&path, ServeOptions::new()).is_err());
    h.shutdown();
    assert!(!path.exists(), "socket file left behind");
    // A stale socket (bound, nobody accepting) is replaced.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let h = heapsight::http::serve_unix(&path, ServeOptions::new()).unwrap();
    h.shutdown();
    // A regular file is not replaced.
    std::fs::write(&path, b"mine").unwrap();
    let Err(e) = heapsight::http::serve_unix(&path, ServeOptions::new()) else {
        panic!("served over a regular file");
    };
    assert!(e.to_string().contains("not a socket"), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), b"mine");
}

/// What real clients send: 64 headers are fine, an oversized request line is a readable 431
/// (not a reset), conflicting or bad `Content-Length` is 400.
fn http_details() {
    let h = server();
    let a = h.local_addr();
    let headers: String = (0..64)
        .map(|i| format!("X-Forwarded-{i}: v{i}\r\n"))
        .collect();
    assert_eq!(get_with(a, "/metrics", &headers).0, 200);
    let long = format!("/debug/pprof/heap?x={}", "a".repeat(20_000));
    let (st, _, body) = get(a, &long);
    assert_eq!(st, 431, "{}", String::from_utf8_lossy(&body));
    for cl in [
        "Content-Length: 5\r\nContent-Length: 6\r\n",
        "Content-Length: abc\r\n",
        "Content-Length: -1\r\n",
    ] {
        let req = format!("POST /debug/pprof/symbol HTTP/1.1\r\nHost: x\r\n{cl}\r\n0x1+0x2");
        let (st, _, _) = exchange(&mut connect(a), req.as_bytes());
        assert_eq!(st, 400, "{cl:?}");
    }
    let req = "POST /debug/pprof/symbol HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n\r\n0x1+0x2";
    assert_eq!(exchange(&mut connect(a), req.as_bytes()).0, 200);
    h.shutdown();
}

/// `serve_from_env` says where it serves in one line, and a non-loopback bind says it is
/// reachable beyond the machine.
fn serve_from_env_says_so() {
    for (addr, want) in [
        (
            "127.0.0.1:0",
            "heapsight: serving /debug/pprof on http://127.0.0.1:",
        ),
        ("0.0.0.0:0", "reachable beyond this machine"),
    ] {
        let out = Command::new(std::env::current_exe().unwrap())
            .env("HEAPSIGHT_TEST_CHILD", "env")
            .env("HEAPSIGHT_HTTP_ADDR", addr)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(stderr.contains(want), "{addr}: {stderr}");
        assert!(stderr.lines().count() <= 2, "{stderr}");
    }
}

#[inline(never)]
fn http_delta_kept_throughout() -> Vec<Vec<u8>> {
    (0..4000).map(|i| vec![i as u8; 4096]).collect()
}

/// `?seconds=N` is Go's delta of every sample type: blocks live before and after the window and
/// untouched in between show no in-use change (Go subtracts in-use too).
fn seconds_delta_subtracts_in_use() {
    if !support::have_tool("go") {
        return;
    }
    let keep = http_delta_kept_throughout();
    let h = server();
    let (st, _, body) = get(h.local_addr(), "/debug/pprof/heap?seconds=1");
    assert_eq!(st, 200);
    let dir = support::TempDir::new("http-delta");
    let path = dir.join("delta.pb.gz");
    std::fs::write(&path, &body).unwrap();
    let top = support::go_pprof(&["-top", "-sample_index=inuse_space", path.to_str().unwrap()]);
    assert!(
        !top.contains("http_delta_kept_throughout"),
        "in-use from before the window:\n{top}"
    );
    drop(keep);
    h.shutdown();
}

fn main() {
    match std::env::var("HEAPSIGHT_TEST_CHILD").as_deref() {
        Ok("fds") => return fd_child(),
        Ok("env") => {
            let h = heapsight::http::serve_from_env().expect("serving");
            h.shutdown();
            return;
        }
        _ => {}
    }
    support::watchdog(600, "http_server");
    support::run(&[
        ("slow_bodies_hold_no_worker", slow_bodies_hold_no_worker),
        ("slow_readers_hold_no_worker", slow_readers_hold_no_worker),
        (
            "abandoned_seconds_are_cancelled",
            abandoned_seconds_are_cancelled,
        ),
        ("fd_budget_under_ulimit", fd_budget_under_ulimit),
        ("token_on_and_off", token_on_and_off),
        ("unix_socket", unix_socket),
        ("http_details", http_details),
        ("serve_from_env_says_so", serve_from_env_says_so),
        (
            "seconds_delta_subtracts_in_use",
            seconds_delta_subtracts_in_use,
        ),
    ]);
}
