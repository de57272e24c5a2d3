//! The server: one poll loop that owns every connection's I/O, worker threads that only compute
//! answers, all inside the profiler guard; HTTP/1.1 framing, deadlines, caps and the fd budget.
//!
//! Why the poll loop does all the reading and writing: a worker blocked on a connection (an idle
//! keep-alive, a body sent one byte at a time, a reply read 8 KiB at a time) is a worker lost,
//! and [`WORKERS`] such peers would stop the server. So one thread accepts, keeps every
//! connection non-blocking in a `poll(2)` set while it sends its request head and body (each
//! with a deadline), hands the complete request to a worker, takes the answer back, and writes it
//! from the same set (with a deadline too). A worker holds a connection only while computing,
//! plus the N seconds of a `?seconds=N` delta, during which it polls the socket and gives up as
//! soon as the client goes away.
//!
//! Every descriptor the server holds (listener, wake-up pair, connections) is counted against
//! one budget ([`ServeOptions::max_fds`]); at the budget the loop stops accepting (the kernel's
//! backlog holds new connections, not our descriptor table) or closes the oldest connection still
//! sending its request.
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::*};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::{printable, Response, MAX_REQUEST_BYTES, WORKERS};
use crate::guard::profiler_scope;
use crate::owned::Owned;

/// Time a connection gets, from its accept, to send its whole request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a request gets, from its complete head, to send its whole body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a reply gets, from the moment it is ready, to be read in full by the client.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest life of a connection, not counting the N seconds a `?seconds=N` delta waits.
pub const TOTAL_TIMEOUT: Duration = Duration::from_secs(60);
/// After a reply, how long the loop reads and discards what the client still sends (so that a
/// refused request's unread bytes do not turn the reply into a connection reset).
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 256 * 1024;
/// Complete requests queued for the workers; past it a request is answered 503 at once.
const QUEUE: usize = 64;
/// How often the loop wakes with nothing to do, to expire deadlines.
const TICK_MS: i32 = 200;
/// Default [`ServeOptions::max_fds`].
pub const DEFAULT_MAX_FDS: usize = 64;
/// Smallest accepted fd budget: the listener, the wake-up pair and a few connections.
pub const MIN_MAX_FDS: usize = 8;
/// Descriptors the server holds besides connections: the listener and the wake-up pair.
const FIXED_FDS: usize = 3;
/// Most request headers accepted (real clients behind proxies send dozens).
pub const MAX_HEADERS: usize = 100;
/// Largest `POST` body read (a symbol request for 10,000 locations is about 150 KB).
const MAX_BODY_BYTES: usize = 4 << 20;

/// What a request costs, for the per-route caps: requests of a class in the queue or being
/// served at once, past which the request is answered 503 with `Retry-After`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// `?seconds=N` deltas: each holds a worker for N seconds.
    Delta,
    /// `/debug/pprof/symbol`: up to 100,000 addresses resolved.
    Symbol,
    /// Profiles and the page: a snapshot and an encoding.
    Profile,
    /// `/metrics`, the index, refusals.
    Light,
}

/// Per class: the cap, and the `Retry-After` seconds of its 503.
const CAPS: [(usize, u32); 4] = [(2, 10), (2, 1), (8, 1), (32, 1)];

impl Class {
    fn index(self) -> usize {
        self as usize
    }
    fn of(method: &str, target: &str) -> Class {
        if method == "POST" || super::takes_post(target) {
            return Class::Symbol;
        }
        match super::parse(target) {
            Ok(super::Route::Heap {
                seconds: Some(_), ..
            }) => Class::Delta,
            Ok(super::Route::Heap { .. } | super::Route::Since { .. } | super::Route::Page) => {
                Class::Profile
            }
            _ => Class::Light,
        }
    }
}

/// How the server is run: who may ask, and how many descriptors it may hold.
#[derive(Clone, PartialEq, Eq)]
pub struct ServeOptions {
    token: Option<String>,
    max_fds: usize,
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("token", &self.token.as_ref().map(|_| "(set)"))
            .field("max_fds", &self.max_fds)
            .finish()
    }
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            token: None,
            max_fds: DEFAULT_MAX_FDS,
        }
    }
}

impl ServeOptions {
    /// No token, [`DEFAULT_MAX_FDS`]; the environment is not read.
    pub fn new() -> Self {
        Self::default()
    }

    /// The defaults with `HEAPSIGHT_HTTP_TOKEN` (a bearer token every request must carry) and
    /// `HEAPSIGHT_HTTP_MAX_FDS` (the descriptor budget, 8 to 65536) applied; a bad value prints
    /// one line on stderr and keeps the default. [`serve`] uses these.
    pub fn from_env() -> Self {
        let mut o = Self::default();
        if let Some(t) = std::env::var_os("HEAPSIGHT_HTTP_TOKEN") {
            match t.to_str().map(str::trim) {
                Some(t) if valid_token(t) => o.token = Some(t.to_string()),
                _ => eprintln!(
                    "heapsight: ignoring HEAPSIGHT_HTTP_TOKEN: expected 1 to 256 visible ASCII \
                     characters; every request will be refused until it is fixed"
                ),
            }
            if o.token.is_none() {
                // A token was meant to be required: refusing everything is the safe reading.
                o.token = Some(String::new());
            }
        }
        if let Some(v) = std::env::var_os("HEAPSIGHT_HTTP_MAX_FDS") {
            let bytes = v.as_encoded_bytes();
            match crate::config::parse_count(bytes, MIN_MAX_FDS as u64, 65_536) {
                Ok(n) => o.max_fds = n as usize,
                Err(e) => crate::config::complain(
                    "HEAPSIGHT_HTTP_MAX_FDS",
                    bytes,
                    e,
                    "a whole number of descriptors from 8 to 65536",
                    &DEFAULT_MAX_FDS,
                ),
            }
        }
        o
    }

    /// Requires `Authorization: Bearer <token>` on every route (401 otherwise; compared in
    /// constant time). `token` must be 1 to 256 visible ASCII characters, else every request is
    /// refused (a mistyped token never opens the server).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        let t = token.into();
        self.token = Some(if valid_token(&t) { t } else { String::new() });
        self
    }

    /// No token required (the default unless `HEAPSIGHT_HTTP_TOKEN` is set).
    pub fn no_token(mut self) -> Self {
        self.token = None;
        self
    }

    /// Most descriptors the server holds at once, listener and connections included (at least
    /// [`MIN_MAX_FDS`]; default [`DEFAULT_MAX_FDS`]).
    pub fn max_fds(mut self, n: usize) -> Self {
        self.max_fds = n.max(MIN_MAX_FDS);
        self
    }
}

fn valid_token(t: &str) -> bool {
    (1..=256).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_graphic())
}

/// Whether `a` and `b` are equal, in time that depends on their lengths only.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u64;
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= (x ^ y) as u64;
    }
    // Keep the compiler from turning the loop into an early exit.
    std::hint::black_box(diff) == 0
}

/// A running server: its address, and a way to stop it.
pub struct Handle {
    addr: SocketAddr,
    unix: Option<PathBuf>,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

/// State the threads share with their handle.
struct Shared {
    stop: AtomicBool,
    /// Threads that have entered the profiler guard and are ready.
    ready: AtomicUsize,
    /// Connections open (accepted, not yet closed), wherever they are.
    open: AtomicUsize,
    /// Requests of each [`Class`] queued or being served.
    busy: [AtomicUsize; 4],
    /// Answers the workers hand back to the loop for writing.
    done: Mutex<Vec<Done>>,
    /// Written by a worker (or `shutdown`) to wake the loop.
    wake_tx: UnixStream,
}

impl Shared {
    fn wake(&self) {
        let _ = (&self.wake_tx).write(&[1]);
    }
}

impl Handle {
    /// The address the server listens on (useful after binding port 0). For a Unix-socket
    /// server ([`serve_unix`]) this is `0.0.0.0:0`; see [`Handle::unix_path`].
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The socket's path, for a server started by [`serve_unix`].
    pub fn unix_path(&self) -> Option<&Path> {
        self.unix.as_deref()
    }

    /// Stops the server once the requests in progress are answered (a `?seconds=` delta is cut
    /// short), joins its threads, and removes a Unix socket's file.
    pub fn shutdown(self) {
        self.shared.stop.store(true, Relaxed);
        self.shared.wake();
        for t in self.threads {
            let _ = t.join();
        }
        if let Some(p) = &self.unix {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The default address: loopback only. Exposing heap profiles beyond the machine is a choice
/// to make explicitly (`HEAPSIGHT_HTTP_ADDR=:6060` or `0.0.0.0:6060`, which say so on stderr).
pub const DEFAULT_ADDR: &str = "127.0.0.1:6060";

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Tcp(l) => l.accept().map(|(s, _)| Stream::Tcp(s)),
            Listener::Unix(l) => l.accept().map(|(s, _)| Stream::Unix(s)),
        }
    }
    fn fd(&self) -> RawFd {
        match self {
            Listener::Tcp(l) => l.as_raw_fd(),
            Listener::Unix(l) => l.as_raw_fd(),
        }
    }
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn fd(&self) -> RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
        }
    }
    fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_nonblocking(true),
            Stream::Unix(s) => s.set_nonblocking(true),
        }
    }
    fn shutdown_write(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Write),
            Stream::Unix(s) => s.shutdown(Shutdown::Write),
        };
    }
}

impl Read for Stream {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(b),
            Stream::Unix(s) => s.read(b),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(b),
            Stream::Unix(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A connection, counted in [`Shared::open`] until dropped (closed).
struct Conn {
    stream: Stream,
    accepted: Instant,
    shared: Arc<Shared>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.shared.open.fetch_sub(1, Relaxed);
    }
}

/// A complete request, for a worker.
struct Job {
    conn: Conn,
    method: String,
    target: String,
    body: Vec<u8>,
    class: Class,
}

/// A worker's answer, for the loop to write; `None`: the client went away, just close.
struct Done {
    conn: Conn,
    reply: Option<Vec<u8>>,
    /// Extra time the request spent waiting by design (`?seconds=N`), added to its total.
    waited: Duration,
}

/// Serves the endpoints on `addr` with [`ServeOptions::from_env`] (so `HEAPSIGHT_HTTP_TOKEN`
/// and `HEAPSIGHT_HTTP_MAX_FDS` apply); see [`serve_with`].
pub fn serve(addr: impl ToSocketAddrs) -> io::Result<Handle> {
    serve_with(addr, ServeOptions::from_env())
}

/// Serves the endpoints on `addr`: one thread owns every connection's I/O, [`WORKERS`] threads
/// compute the answers; starts the history recorder ([`crate::history::start`] with its
/// defaults) if nothing started it. Everything they do runs inside the profiler guard: none of
/// the server's allocations is counted as the program's. Dropping the [`Handle`] leaves the
/// server running for the life of the process.
///
/// No peer can hold a worker: the head must arrive within [`HEAD_TIMEOUT`], a body within
/// [`BODY_TIMEOUT`], the reply be read within [`WRITE_TIMEOUT`], and a connection lives at most
/// [`TOTAL_TIMEOUT`] (plus a delta's N seconds); a `?seconds=N` delta is cancelled when its
/// client goes away. Too many requests of one kind at once are answered 503 with
/// `Retry-After`. A bind to anything but loopback prints one line on stderr.
///
/// Returns once every thread is ready: what std allocates while starting a thread (before its
/// code runs, so outside the guard) is then behind the caller, not in the middle of whatever the
/// program measures next.
pub fn serve_with(addr: impl ToSocketAddrs, opts: ServeOptions) -> io::Result<Handle> {
    let listener = TcpListener::bind(addr)?;
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    if !addr.ip().is_loopback() {
        eprintln!(
            "heapsight: serving heap profiles on {addr}, reachable beyond this machine{}",
            if opts.token.is_some() {
                " (a bearer token is required)"
            } else {
                "; anyone who can reach it can read them (set HEAPSIGHT_HTTP_TOKEN to require a token)"
            }
        );
    }
    start(Listener::Tcp(listener), addr, None, opts)
}

/// Serves the endpoints on a Unix socket at `path` (mode 0600; who may connect is decided by
/// the file's and its directory's permissions). A stale socket left by an earlier run (nobody
/// accepting) is replaced; any other file at `path` is an error. [`Handle::shutdown`] removes
/// the file. `HEAPSIGHT_HTTP_ADDR=unix:/path` does the same from [`serve_from_env`].
pub fn serve_unix(path: impl AsRef<Path>, opts: ServeOptions) -> io::Result<Handle> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let path = path.as_ref();
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if !m.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{}: a server is already listening there", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
    start(
        Listener::Unix(listener),
        unspecified,
        Some(path.to_path_buf()),
        opts,
    )
}

fn start(
    listener: Listener,
    addr: SocketAddr,
    unix: Option<PathBuf>,
    opts: ServeOptions,
) -> io::Result<Handle> {
    let (wake_tx, wake_rx) = UnixStream::pair()?;
    wake_tx.set_nonblocking(true)?;
    wake_rx.set_nonblocking(true)?;
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        ready: AtomicUsize::new(0),
        open: AtomicUsize::new(0),
        busy: Default::default(),
        done: Mutex::new(Vec::new()),
        wake_tx,
    });
    // The queue is the server's memory: allocated here inside the guard, and freed inside it
    // too, by whichever of the threads (or the end of this function) drops it last.
    let (tx, rx) = profiler_scope(|| {
        let (tx, rx) = sync_channel::<Job>(QUEUE);
        (Owned::new(tx), Owned::new(Arc::new(Mutex::new(rx))))
    });
    let mut threads = Vec::with_capacity(WORKERS + 1);
    for i in 0..WORKERS {
        let rx = rx.clone();
        let shared = shared.clone();
        threads.push(
            thread::Builder::new()
                .name(format!("heapsight-http-{i}"))
                .spawn(move || {
                    profiler_scope(|| {
                        shared.ready.fetch_add(1, Release);
                        worker(&rx, &shared);
                    })
                })?,
        );
    }
    {
        let shared = shared.clone();
        threads.push(
            thread::Builder::new()
                .name("heapsight-http-accept".into())
                .spawn(move || {
                    profiler_scope(|| {
                        shared.ready.fetch_add(1, Release);
                        let mut l = Loop {
                            listener,
                            wake_rx,
                            shared: shared.clone(),
                            jobs: tx,
                            conns: Vec::new(),
                            opts,
                        };
                        l.run();
                    })
                })?,
        );
    }
    drop(rx);
    while shared.ready.load(Acquire) < WORKERS + 1 {
        thread::sleep(Duration::from_millis(1));
    }
    // The page's timeline and growing sites, and `?since=`, read the history.
    crate::history::start(
        crate::history::DEFAULT_INTERVAL,
        crate::history::DEFAULT_WINDOW,
    )?;
    Ok(Handle {
        addr,
        unix,
        shared,
        threads,
    })
}

/// Serves on `HEAPSIGHT_HTTP_ADDR` if it is set, else returns `None`: drop-in use without code
/// changes beyond this one call. Prints one line on stderr saying where it serves.
///
/// Accepts `HOST:PORT`, Go's `:PORT` (every IPv4 interface, as in Go) and `unix:/path` (a Unix
/// socket, see [`serve_unix`]); [`ServeOptions::from_env`] applies. A value that is not an
/// address, or one that cannot be bound, prints one line on stderr and returns `None`: the
/// program goes on without the server.
pub fn serve_from_env() -> Option<Handle> {
    let raw = std::env::var_os("HEAPSIGHT_HTTP_ADDR")?;
    let value = raw.to_string_lossy();
    if value.trim().is_empty() {
        return None;
    }
    let shown = format!("HEAPSIGHT_HTTP_ADDR={value:?}");
    let opts = ServeOptions::from_env();
    let auth = if opts.token.is_some() {
        ", bearer token required"
    } else {
        ""
    };
    if let Some(path) = value.trim().strip_prefix("unix:") {
        return match serve_unix(path, opts) {
            Ok(h) => {
                eprintln!("heapsight: serving /debug/pprof on unix:{path}{auth}");
                Some(h)
            }
            Err(e) => {
                eprintln!("heapsight: {shown}: cannot listen there: {e}; not serving");
                None
            }
        };
    }
    let addr = match crate::config::parse_http_addr(&value) {
        Ok(a) => a,
        Err(_) => {
            eprintln!(
                "heapsight: {shown} is not an address: expected {}; not serving",
                crate::config::HTTP_ADDR_VALUES
            );
            return None;
        }
    };
    match serve_with(addr.bind.as_str(), opts) {
        Ok(h) => {
            eprintln!(
                "heapsight: serving /debug/pprof on http://{}{}{auth}",
                h.local_addr(),
                if addr.all_interfaces {
                    " (every IPv4 interface, as Go's :PORT)"
                } else {
                    ""
                }
            );
            Some(h)
        }
        Err(e) => {
            eprintln!("heapsight: {shown}: cannot listen there: {e}; not serving");
            None
        }
    }
}

fn worker(rx: &Mutex<Receiver<Job>>, shared: &Arc<Shared>) {
    loop {
        // The lock is held only while waiting for the next job, never while serving one.
        let job = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else {
            return; // the loop is gone: shutting down
        };
        let Job {
            conn,
            method,
            target,
            body,
            class,
        } = job;
        let head_only = method == "HEAD";
        let mut waited = Duration::ZERO;
        let mut gone = false;
        let response = if method == "GET" || head_only {
            let mut wait = |d: Duration| {
                let t = Instant::now();
                let stayed = wait_while_connected(&conn.stream, d, &shared.stop);
                waited = t.elapsed();
                gone = !stayed;
                stayed
            };
            super::respond_waiting(&target, &mut wait)
        } else if method == "POST" {
            super::respond_post(&target, &body)
        } else {
            Response::text(
                405,
                format!("method {} not allowed: use GET", printable(&method)),
            )
        };
        shared.busy[class.index()].fetch_sub(1, Relaxed);
        let reply = (!gone).then(|| serialize(&response, !head_only));
        if let Ok(mut d) = shared.done.lock() {
            d.push(Done {
                conn,
                reply,
                waited,
            });
        }
        shared.wake();
    }
}

/// Waits `d` unless the client hangs up (or the server stops) first; false if it did.
/// Readable-with-EOF, `POLLRDHUP` (the peer closed its side), `POLLHUP` and `POLLERR` all mean
/// gone. Bytes the client sends meanwhile (pipelined requests) are left unread; from then on only
/// the hang-up events are watched.
fn wait_while_connected(s: &Stream, d: Duration, stop: &AtomicBool) -> bool {
    let end = Instant::now() + d;
    let mut events = libc::POLLIN | libc::POLLRDHUP;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        if stop.load(Relaxed) {
            return false;
        }
        let mut p = libc::pollfd {
            fd: s.fd(),
            events,
            revents: 0,
        };
        let ms = left.as_millis().min(TICK_MS as u128) as i32;
        // SAFETY: one live pollfd for the call.
        let n = unsafe { libc::poll(&mut p, 1, ms.max(1)) };
        if n <= 0 {
            continue;
        }
        if p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0 {
            return false;
        }
        if p.revents & libc::POLLIN != 0 {
            let mut b = [0u8; 1];
            // SAFETY: peeks at most one byte into a live local buffer.
            let r = unsafe {
                libc::recv(
                    s.fd(),
                    b.as_mut_ptr().cast(),
                    1,
                    libc::MSG_PEEK | libc::MSG_DONTWAIT,
                )
            };
            if r == 0 {
                return false;
            }
            events = libc::POLLRDHUP;
        }
    }
}

/// What a connection is doing.
enum Phase {
    /// Sending its request head.
    Head,
    /// Sending a body of `len` bytes (the head is parsed).
    Body {
        method: String,
        target: String,
        len: usize,
        since: Instant,
    },
    /// Being sent `out[off..]`.
    Write {
        out: Vec<u8>,
        off: usize,
        since: Instant,
    },
    /// Reply sent and our side shut: reading what the client still sends until it closes.
    Linger { since: Instant, read: usize },
}

struct Slot {
    conn: Conn,
    buf: Vec<u8>,
    phase: Phase,
    /// Extra time allowed on top of [`TOTAL_TIMEOUT`] (a delta's wait).
    extra: Duration,
}

impl Slot {
    fn deadline(&self) -> Instant {
        let total = self.conn.accepted + TOTAL_TIMEOUT + self.extra;
        let phase = match &self.phase {
            Phase::Head => self.conn.accepted + HEAD_TIMEOUT,
            Phase::Body { since, .. } => *since + BODY_TIMEOUT,
            Phase::Write { since, .. } => *since + WRITE_TIMEOUT,
            Phase::Linger { since, .. } => *since + LINGER,
        };
        phase.min(total)
    }
    fn reading(&self) -> bool {
        matches!(self.phase, Phase::Head | Phase::Body { .. })
    }
    fn events(&self) -> i16 {
        match self.phase {
            Phase::Write { .. } => libc::POLLOUT,
            _ => libc::POLLIN,
        }
    }
}

/// What to do with a slot after its I/O.
enum Next {
    Keep,
    Close,
    Dispatch(Request),
}

/// A complete request without its connection.
struct Request {
    method: String,
    target: String,
    body: Vec<u8>,
    class: Class,
}

struct Loop {
    listener: Listener,
    wake_rx: UnixStream,
    shared: Arc<Shared>,
    jobs: Owned<SyncSender<Job>>,
    conns: Vec<Slot>,
    opts: ServeOptions,
}

impl Loop {
    fn max_conns(&self) -> usize {
        self.opts.max_fds - FIXED_FDS
    }

    fn run(&mut self) {
        let mut fds: Vec<libc::pollfd> = Vec::new();
        while !self.shared.stop.load(Relaxed) {
            self.take_done();
            let now = Instant::now();
            self.conns.retain(|s| s.deadline() > now);
            // Accept only while under budget, or when an oldest reader can make room.
            let room = self.shared.open.load(Relaxed) < self.max_conns()
                || self.conns.iter().any(Slot::reading);
            fds.clear();
            fds.push(pollfd(self.wake_rx.as_raw_fd(), libc::POLLIN));
            fds.push(pollfd(
                self.listener.fd(),
                if room { libc::POLLIN } else { 0 },
            ));
            fds.extend(
                self.conns
                    .iter()
                    .map(|s| pollfd(s.conn.stream.fd(), s.events())),
            );
            // SAFETY: `fds` is a live, initialised array of `fds.len()` pollfd structs, borrowed
            // mutably for the call only.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, TICK_MS) };
            if n < 0 {
                // EINTR, or out of memory in the kernel: try again after a pause.
                thread::sleep(Duration::from_millis(10));
                continue;
            }
            if fds[0].revents != 0 {
                let mut b = [0u8; 64];
                while matches!((&self.wake_rx).read(&mut b), Ok(n) if n > 0) {}
            }
            // In reverse so that `swap_remove` only moves entries already visited.
            for i in (0..self.conns.len()).rev() {
                if fds[i + 2].revents == 0 {
                    continue;
                }
                match self.step(i) {
                    Next::Keep => {}
                    Next::Close => drop(self.conns.swap_remove(i)),
                    Next::Dispatch(r) => {
                        let slot = self.conns.swap_remove(i);
                        self.dispatch(Job {
                            conn: slot.conn,
                            method: r.method,
                            target: r.target,
                            body: r.body,
                            class: r.class,
                        });
                    }
                }
            }
            if fds[1].revents != 0 {
                self.accept();
            }
        }
    }

    /// Answers handed back by the workers become writes (or closes).
    fn take_done(&mut self) {
        let done = match self.shared.done.lock() {
            Ok(mut d) => std::mem::take(&mut *d),
            Err(_) => return,
        };
        for d in done {
            if let Some(out) = d.reply {
                self.conns.push(Slot {
                    conn: d.conn,
                    buf: Vec::new(),
                    phase: Phase::Write {
                        out,
                        off: 0,
                        since: Instant::now(),
                    },
                    extra: d.waited,
                });
            }
        }
    }

    fn accept(&mut self) {
        loop {
            if self.shared.open.load(Relaxed) >= self.max_conns() {
                // Make room by closing the oldest connection still sending its request; none:
                // leave the rest in the kernel's backlog.
                let oldest = (0..self.conns.len())
                    .filter(|&i| self.conns[i].reading())
                    .min_by_key(|&i| self.conns[i].conn.accepted);
                match oldest {
                    Some(i) => drop(self.conns.swap_remove(i)),
                    None => return,
                }
            }
            match self.listener.accept() {
                Ok(stream) => {
                    self.shared.open.fetch_add(1, Relaxed);
                    let conn = Conn {
                        stream,
                        accepted: Instant::now(),
                        shared: self.shared.clone(),
                    };
                    if conn.stream.set_nonblocking().is_err() {
                        continue;
                    }
                    self.conns.push(Slot {
                        conn,
                        buf: Vec::new(),
                        phase: Phase::Head,
                        extra: Duration::ZERO,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // Out of descriptors (the host's own use) and the like: the next poll retries
                // after a pause.
                Err(_) => {
                    thread::sleep(Duration::from_millis(50));
                    return;
                }
            }
        }
    }

    /// Reads or writes what the connection is ready for.
    fn step(&mut self, i: usize) -> Next {
        let s = &mut self.conns[i];
        match &mut s.phase {
            Phase::Write { out, off, .. } => {
                while *off < out.len() {
                    match s.conn.stream.write(&out[*off..]) {
                        Ok(0) => return Next::Close,
                        Ok(n) => *off += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::Keep,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => return Next::Close,
                    }
                }
                s.conn.stream.shutdown_write();
                s.phase = Phase::Linger {
                    since: Instant::now(),
                    read: 0,
                };
                // Free the reply now, not when the client closes.
                s.buf = Vec::new();
                Next::Keep
            }
            Phase::Linger { read, .. } => {
                let mut chunk = [0u8; 4096];
                loop {
                    match s.conn.stream.read(&mut chunk) {
                        Ok(0) => return Next::Close,
                        Ok(n) => {
                            *read += n;
                            if *read > LINGER_BYTES {
                                return Next::Close;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::Keep,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => return Next::Close,
                    }
                }
            }
            Phase::Head | Phase::Body { .. } => {
                let limit = match &s.phase {
                    Phase::Body { len, .. } => *len,
                    _ => MAX_REQUEST_BYTES,
                };
                match read_more(&mut s.conn.stream, &mut s.buf, limit) {
                    Ok(true) => self.advance(i),
                    // The client closed its side: serve what is whole (a client may shut its
                    // writing side after the request), else drop it.
                    Ok(false) => match self.advance(i) {
                        Next::Keep if self.conns[i].reading() => Next::Close,
                        next => next,
                    },
                    Err(_) => Next::Close,
                }
            }
        }
    }

    /// Moves a reading connection on as far as its bytes allow.
    fn advance(&mut self, i: usize) -> Next {
        let s = &mut self.conns[i];
        if let Phase::Head = s.phase {
            match parse_head(&s.buf) {
                Head::Partial => return Next::Keep,
                Head::Reject(r) => return self.reply(i, r),
                Head::Complete {
                    method,
                    target,
                    used,
                    body_len,
                    authorization,
                } => {
                    if let Some(token) = &self.opts.token {
                        let given = authorization
                            .as_deref()
                            .and_then(|a| a.strip_prefix("Bearer "))
                            .map(str::trim)
                            .unwrap_or("");
                        if token.is_empty() || !constant_time_eq(given.as_bytes(), token.as_bytes())
                        {
                            let mut r = Response::text(
                                401,
                                "a bearer token is required (Authorization: Bearer ...)".into(),
                            );
                            r.headers
                                .push(("WWW-Authenticate", "Bearer realm=\"heapsight\"".into()));
                            return self.reply(i, r);
                        }
                    }
                    let len = if method == "POST" {
                        match body_len {
                            BodyLen::Absent => 0,
                            BodyLen::Len(n) if n > MAX_BODY_BYTES => {
                                return self.reply(
                                    i,
                                    Response::text(
                                        413,
                                        format!("body larger than {MAX_BODY_BYTES} bytes"),
                                    ),
                                )
                            }
                            BodyLen::Len(n) => n,
                            BodyLen::Chunked => {
                                return self.reply(
                                    i,
                                    Response::text(
                                        411,
                                        "send the body with a Content-Length".into(),
                                    ),
                                )
                            }
                        }
                    } else {
                        0
                    };
                    if method == "POST" && super::takes_post(&target) && body_len == BodyLen::Absent
                    {
                        return self
                            .reply(i, Response::text(411, "POST needs a Content-Length".into()));
                    }
                    s.buf.drain(..used);
                    s.phase = Phase::Body {
                        method,
                        target,
                        len,
                        since: Instant::now(),
                    };
                }
            }
        }
        let s = &mut self.conns[i];
        let Phase::Body { len, .. } = &s.phase else {
            return Next::Keep;
        };
        if s.buf.len() < *len {
            return Next::Keep;
        }
        let len = *len;
        let Phase::Body { method, target, .. } = std::mem::replace(&mut s.phase, Phase::Head)
        else {
            unreachable!()
        };
        let mut body = std::mem::take(&mut s.buf);
        body.truncate(len);
        let class = Class::of(&method, &target);
        let (cap, retry) = CAPS[class.index()];
        if self.shared.busy[class.index()].load(Relaxed) >= cap {
            let mut r = Response::text(
                503,
                format!("busy: {cap} requests of this kind are already being served"),
            );
            r.headers.push(("Retry-After", retry.to_string()));
            return self.reply(i, r);
        }
        // The caller removes the slot; its connection goes with the job.
        Next::Dispatch(Request {
            method,
            target,
            body,
            class,
        })
    }

    /// Writes a refusal from the loop (no worker): the slot becomes a write.
    fn reply(&mut self, i: usize, r: Response) -> Next {
        let s = &mut self.conns[i];
        s.buf = Vec::new();
        s.phase = Phase::Write {
            out: serialize(&r, true),
            off: 0,
            since: Instant::now(),
        };
        Next::Keep
    }

    /// Hands a complete request to the workers, or answers 503 if they are all behind.
    fn dispatch(&mut self, job: Job) {
        let class = job.class;
        self.shared.busy[class.index()].fetch_add(1, Relaxed);
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(j) | TrySendError::Disconnected(j)) => {
                self.shared.busy[class.index()].fetch_sub(1, Relaxed);
                let mut r = Response::text(503, "busy: too many requests queued".into());
                r.headers.push(("Retry-After", "1".into()));
                self.conns.push(Slot {
                    conn: j.conn,
                    buf: Vec::new(),
                    phase: Phase::Write {
                        out: serialize(&r, true),
                        off: 0,
                        since: Instant::now(),
                    },
                    extra: Duration::ZERO,
                });
            }
        }
    }
}

fn pollfd(fd: RawFd, events: i16) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// Reads what is available without blocking, until `buf` holds `limit` bytes. `Ok(false)`: the
/// peer closed its side.
fn read_more(stream: &mut Stream, buf: &mut Vec<u8>, limit: usize) -> io::Result<bool> {
    let mut chunk = [0u8; 8192];
    while buf.len() < limit {
        let want = chunk.len().min(limit - buf.len());
        match stream.read(&mut chunk[..want]) {
            Ok(0) => return Ok(false),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// A request's body framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyLen {
    Absent,
    Len(usize),
    /// `Transfer-Encoding` given: not supported (the symbol POST is small; send a length).
    Chunked,
}

/// What the bytes received so far amount to.
#[derive(Debug)]
enum Head {
    Partial,
    Complete {
        method: String,
        target: String,
        /// Bytes of the head; what follows is the body.
        used: usize,
        body_len: BodyLen,
        authorization: Option<String>,
    },
    Reject(Response),
}

fn parse_head(buf: &[u8]) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => {
            let body_len = match body_len(req.headers) {
                Ok(b) => b,
                Err(why) => return Head::Reject(Response::text(400, why)),
            };
            Head::Complete {
                method: req.method.unwrap_or("").to_string(),
                target: req.path.unwrap_or("").to_string(),
                used: n,
                body_len,
                authorization: req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("authorization"))
                    .and_then(|h| core::str::from_utf8(h.value).ok())
                    .map(str::to_string),
            }
        }
        Ok(httparse::Status::Partial) if buf.len() < MAX_REQUEST_BYTES => Head::Partial,
        Ok(httparse::Status::Partial) => Head::Reject(Response::text(
            431,
            format!("request line and headers larger than {MAX_REQUEST_BYTES} bytes"),
        )),
        Err(httparse::Error::TooManyHeaders) => Head::Reject(Response::text(
            431,
            format!("more than {MAX_HEADERS} headers"),
        )),
        Err(e) => Head::Reject(Response::text(400, format!("malformed request: {e}"))),
    }
}

/// The body's framing: every `Content-Length` must be a plain decimal number and all of them
/// the same (RFC 9110 §8.6: anything else is a framing error, answered 400, since a proxy in
/// front might have read another length).
fn body_len(headers: &[httparse::Header<'_>]) -> Result<BodyLen, String> {
    if headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
    {
        return Ok(BodyLen::Chunked);
    }
    let mut len = None;
    for h in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
    {
        let v = core::str::from_utf8(h.value).unwrap_or("").trim();
        let n = if !v.is_empty() && v.len() <= 19 && v.bytes().all(|b| b.is_ascii_digit()) {
            v.parse::<usize>().ok()
        } else {
            None
        };
        let Some(n) = n else {
            return Err(format!("bad Content-Length: {}", printable(v)));
        };
        if len.is_some_and(|l| l != n) {
            return Err("conflicting Content-Length headers".into());
        }
        len = Some(n);
    }
    Ok(len.map_or(BodyLen::Absent, BodyLen::Len))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

/// The bytes of a response: head, and the body unless `with_body` is false (`HEAD`).
fn serialize(r: &Response, with_body: bool) -> Vec<u8> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nX-Content-Type-Options: nosniff\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len()
    );
    for (k, v) in &r.headers {
        let _ = write!(head, "{k}: {v}\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    if with_body {
        out.reserve_exact(r.body.len());
        out.extend_from_slice(&r.body);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_rules() {
        let h = |v: &[(&'static str, &'static [u8])]| {
            let hs: Vec<httparse::Header<'_>> = v
                .iter()
                .map(|(n, v)| httparse::Header { name: n, value: v })
                .collect();
            body_len(&hs)
        };
        assert_eq!(h(&[]), Ok(BodyLen::Absent));
        assert_eq!(h(&[("Content-Length", b"12")]), Ok(BodyLen::Len(12)));
        assert_eq!(
            h(&[("content-length", b"12"), ("Content-Length", b" 12 ")]),
            Ok(BodyLen::Len(12))
        );
        for bad in [
            &[("Content-Length", &b"12"[..]), ("Content-Length", b"13")][..],
            &[("Content-Length", b"-1")],
            &[("Content-Length", b"+5")],
            &[("Content-Length", b"1,1")],
            &[("Content-Length", b"")],
            &[("Content-Length", b"0x10")],
            &[("Content-Length", b"99999999999999999999999")],
        ] {
            assert!(h(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            h(&[("Transfer-Encoding", b"chunked")]),
            Ok(BodyLen::Chunked)
        );
    }

    #[test]
    fn heads() {
        let many: String = (0..MAX_HEADERS)
            .map(|i| format!("X-H{i}: {i}\r\n"))
            .collect();
        let req = format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{many}\r\n");
        assert!(matches!(
            parse_head(req.as_bytes()),
            Head::Reject(Response { status: 431, .. })
        ));
        let sixty_four: String = (0..64).map(|i| format!("X-H{i}: {i}\r\n")).collect();
        let req = format!("GET /metrics HTTP/1.1\r\n{sixty_four}\r\n");
        assert!(matches!(parse_head(req.as_bytes()), Head::Complete { .. }));
        let too_many: String = (0..=MAX_HEADERS)
            .map(|i| format!("X-H{i}: {i}\r\n"))
            .collect();
        let req = format!("GET /metrics HTTP/1.1\r\n{too_many}\r\n");
        assert!(matches!(
            parse_head(req.as_bytes()),
            Head::Reject(Response { status: 431, .. })
        ));
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(MAX_REQUEST_BYTES));
        assert!(matches!(
            parse_head(long.as_bytes()),
            Head::Reject(Response { status: 431, .. })
        ));
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(!valid_token(""));
        assert!(!valid_token("a b"));
        assert!(valid_token("abc-123_="));
    }
}
