//! The loopback server: one accept loop that reads request heads, worker threads that answer
//! complete requests, all inside the profiler guard; HTTP/1.1 framing.
//!
//! Why an event loop in front of the workers: a worker blocked reading a connection that sends
//! nothing (an idle keep-alive from a browser, a half-open socket, a port scanner) is a worker
//! lost for the read timeout, and [`WORKERS`] such clients would starve every real request. So
//! one thread accepts, keeps every connection non-blocking in a `poll(2)` set until its request
//! head is complete (or it times out, or it is the oldest of too many), and only then hands it to
//! a worker. Idle connections cost a slot in that set, never a worker.
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::*};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::{printable, respond, Response, IO_TIMEOUT, MAX_REQUEST_BYTES, WORKERS};
use crate::guard::profiler_scope;
use crate::owned::Owned;

/// Connections waiting for their request head at once; past it the oldest is closed.
const MAX_PENDING: usize = 256;
/// Time a connection gets to send its whole request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Complete requests queued for the workers; past it a request is answered 503 at once.
const QUEUE: usize = 64;
/// How often the accept loop wakes with nothing to do, to expire stale connections.
const TICK_MS: i32 = 200;

/// A running server: its address, and a way to stop it.
pub struct Handle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

/// State the threads share with their handle.
struct Shared {
    stop: AtomicBool,
    /// Threads that have entered the profiler guard and are ready.
    ready: AtomicUsize,
}

impl Handle {
    /// The address the server listens on (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the server once the requests in progress are answered, and joins its threads.
    pub fn shutdown(self) {
        self.shared.stop.store(true, Relaxed);
        // Wake the accept loop at once rather than at its next tick.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// The default address: loopback only. Exposing heap profiles beyond the machine is a choice
/// to make explicitly (`HEAPSIGHT_HTTP_ADDR=:6060` or `0.0.0.0:6060`).
pub const DEFAULT_ADDR: &str = "127.0.0.1:6060";

/// A request head read in full, waiting for a worker.
struct Job {
    stream: TcpStream,
    method: String,
    target: String,
    /// Bytes read past the head (the start of a `POST` body), and the body's `Content-Length`.
    early: Vec<u8>,
    body_len: Option<usize>,
}

/// Serves the endpoints on `addr`: one thread accepts connections and reads request heads,
/// [`WORKERS`] threads answer them; starts the history recorder ([`crate::history::start`] with its
/// defaults) if nothing started it. Everything they do runs inside the profiler guard: none of
/// the server's allocations is counted as the program's. Dropping the [`Handle`] leaves the
/// server running for the life of the process.
///
/// Connections that send nothing, or send their request head slowly, never hold a worker: they
/// wait in the accept loop (at most 256 at once, 5 s each for the head).
///
/// Returns once every thread is ready: what std allocates while starting a thread (before its
/// code runs, so outside the guard) is then behind the caller, not in the middle of whatever the
/// program measures next.
pub fn serve(addr: impl ToSocketAddrs) -> io::Result<Handle> {
    let listener = TcpListener::bind(addr)?;
    let addr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        ready: AtomicUsize::new(0),
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
                        worker(&rx);
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
                        accept_loop(&listener, &shared.stop, tx);
                        drop(listener);
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
        shared,
        threads,
    })
}

/// Serves on `HEAPSIGHT_HTTP_ADDR` if it is set, else returns `None`: drop-in use without code
/// changes beyond this one call.
///
/// Accepts `HOST:PORT` and Go's `:PORT`, which listens on every interface (IPv4), as in Go; that
/// form prints one line saying so, since the default elsewhere is loopback. A value that is not
/// an address, or one that cannot be bound, prints one line on stderr and returns `None`: the
/// program goes on without the server.
pub fn serve_from_env() -> Option<Handle> {
    let raw = std::env::var_os("HEAPSIGHT_HTTP_ADDR")?;
    let value = raw.to_string_lossy();
    if value.trim().is_empty() {
        return None;
    }
    let shown = format!("HEAPSIGHT_HTTP_ADDR={value:?}");
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
    match serve(addr.bind.as_str()) {
        Ok(h) => {
            if addr.all_interfaces {
                eprintln!(
                    "heapsight: {shown}: serving on every IPv4 interface ({}), not only loopback",
                    h.local_addr()
                );
            }
            Some(h)
        }
        Err(e) => {
            eprintln!("heapsight: {shown}: cannot listen there: {e}; not serving");
            None
        }
    }
}

fn worker(rx: &Mutex<Receiver<Job>>) {
    loop {
        // The lock is held only while waiting for the next job, never while serving one.
        let job = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(mut job) = job else {
            return; // the accept loop is gone: shutting down
        };
        let head_only = job.method == "HEAD";
        let response = if job.method == "GET" || head_only {
            respond(&job.target)
        } else if job.method == "POST" && super::takes_post(&job.target) {
            match read_body(&mut job.stream, &job.early, job.body_len) {
                Ok(body) => super::respond_post(&job.target, &body),
                Err(refusal) => refusal,
            }
        } else if job.method == "POST" {
            super::respond_post(&job.target, &[])
        } else {
            Response::text(
                405,
                format!("method {} not allowed: use GET", printable(&job.method)),
            )
        };
        let _ = write_response(&mut job.stream, &response, !head_only);
    }
}

/// A connection still sending its request head.
struct Pending {
    stream: TcpStream,
    buf: Vec<u8>,
    since: Instant,
}

/// What the bytes received so far amount to.
enum Head {
    Partial,
    Complete {
        method: String,
        target: String,
        early: Vec<u8>,
        body_len: Option<usize>,
    },
    Reject(Response),
}

fn parse_head(buf: &[u8]) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => Head::Complete {
            method: req.method.unwrap_or("").to_string(),
            target: req.path.unwrap_or("").to_string(),
            early: buf[n..].to_vec(),
            body_len: content_length(req.headers),
        },
        Ok(httparse::Status::Partial) if buf.len() < MAX_REQUEST_BYTES => Head::Partial,
        Ok(httparse::Status::Partial) => {
            Head::Reject(Response::text(431, "request header too large".into()))
        }
        Err(e) => Head::Reject(Response::text(400, format!("malformed request: {e}"))),
    }
}

fn accept_loop(listener: &TcpListener, stop: &AtomicBool, jobs: Owned<SyncSender<Job>>) {
    let mut pending: Vec<Pending> = Vec::new();
    let mut fds: Vec<libc::pollfd> = Vec::new();
    while !stop.load(Relaxed) {
        fds.clear();
        fds.push(pollfd(listener.as_raw_fd()));
        fds.extend(pending.iter().map(|p| pollfd(p.stream.as_raw_fd())));
        // SAFETY: `fds` is a live, initialised array of `fds.len()` pollfd structs, borrowed
        // mutably for the call only.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, TICK_MS) };
        if n < 0 {
            // EINTR, or out of memory in the kernel: try again after a pause.
            thread::sleep(Duration::from_millis(10));
            continue;
        }
        // Readable connections first, in reverse so that `swap_remove` only moves entries
        // already visited.
        for i in (0..pending.len()).rev() {
            if fds[i + 1].revents == 0 {
                continue;
            }
            match read_more(&mut pending[i]) {
                Ok(true) => match parse_head(&pending[i].buf) {
                    Head::Partial => {}
                    Head::Complete {
                        method,
                        target,
                        early,
                        body_len,
                    } => {
                        let p = pending.swap_remove(i);
                        dispatch(
                            &jobs,
                            Job {
                                stream: p.stream,
                                method,
                                target,
                                early,
                                body_len,
                            },
                        );
                    }
                    Head::Reject(r) => {
                        let mut p = pending.swap_remove(i);
                        reply_now(&mut p.stream, &r);
                    }
                },
                // Closed before a whole head arrived, or failed: drop it.
                Ok(false) | Err(_) => drop(pending.swap_remove(i)),
            }
        }
        let now = Instant::now();
        pending.retain(|p| now.duration_since(p.since) < HEADER_TIMEOUT);
        if fds[0].revents != 0 {
            loop {
                match listener.accept() {
                    Ok((stream, _)) => {
                        if stream.set_nonblocking(true).is_err() {
                            continue;
                        }
                        if pending.len() >= MAX_PENDING {
                            // `retain` and `swap_remove` keep no order; drop the oldest.
                            if let Some(oldest) =
                                (0..pending.len()).min_by_key(|&i| pending[i].since)
                            {
                                drop(pending.swap_remove(oldest));
                            }
                        }
                        pending.push(Pending {
                            stream,
                            buf: Vec::new(),
                            since: Instant::now(),
                        });
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    // Out of descriptors and the like: the next poll retries after a pause.
                    Err(_) => {
                        thread::sleep(Duration::from_millis(50));
                        break;
                    }
                }
            }
        }
    }
}

fn pollfd(fd: i32) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

/// Reads what is available without blocking. `Ok(false)`: the peer closed the connection.
fn read_more(p: &mut Pending) -> io::Result<bool> {
    let mut chunk = [0u8; 2048];
    loop {
        match p.stream.read(&mut chunk) {
            Ok(0) => return Ok(false),
            Ok(n) => {
                p.buf.extend_from_slice(&chunk[..n]);
                if p.buf.len() >= MAX_REQUEST_BYTES {
                    return Ok(true);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Hands a complete request to the workers, or answers 503 if they are all behind.
fn dispatch(jobs: &SyncSender<Job>, job: Job) {
    if job.stream.set_nonblocking(false).is_err()
        || job.stream.set_read_timeout(Some(IO_TIMEOUT)).is_err()
        || job.stream.set_write_timeout(Some(IO_TIMEOUT)).is_err()
    {
        return;
    }
    match jobs.try_send(job) {
        Ok(()) => {}
        Err(TrySendError::Full(mut j)) => {
            reply_now(
                &mut j.stream,
                &Response::text(503, "busy: too many requests queued".into()),
            );
        }
        Err(TrySendError::Disconnected(_)) => {}
    }
}

/// Answers a short error from the accept loop itself, giving up at once on a slow reader.
fn reply_now(stream: &mut TcpStream, r: &Response) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
    let _ = write_response(stream, r, true);
}

/// Largest `POST` body read (a symbol request for 10,000 locations is about 150 KB).
const MAX_BODY_BYTES: usize = 4 << 20;

/// The request's `Content-Length`, if given and numeric.
fn content_length(headers: &[httparse::Header<'_>]) -> Option<usize> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| core::str::from_utf8(h.value).ok()?.trim().parse().ok())
}

/// Reads a `POST` body of `len` bytes, of which `already` came with the head; a refusal to send
/// back instead when the length is missing or too large.
fn read_body(
    stream: &mut TcpStream,
    already: &[u8],
    len: Option<usize>,
) -> Result<Vec<u8>, Response> {
    let Some(len) = len else {
        return Err(Response::text(411, "POST needs a Content-Length".into()));
    };
    if len > MAX_BODY_BYTES {
        return Err(Response::text(
            413,
            format!("body larger than {MAX_BODY_BYTES} bytes"),
        ));
    }
    let mut body = Vec::with_capacity(len);
    body.extend_from_slice(&already[..already.len().min(len)]);
    let mut chunk = [0u8; 4096];
    while body.len() < len {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => {
                return Err(Response::text(
                    400,
                    "body shorter than its Content-Length".into(),
                ))
            }
            Ok(n) => body.extend_from_slice(&chunk[..n.min(len - body.len())]),
        }
    }
    Ok(body)
}

fn write_response(stream: &mut TcpStream, r: &Response, with_body: bool) -> io::Result<()> {
    let reason = match r.status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    };
    let mut head = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nX-Content-Type-Options: nosniff\r\n",
        r.status,
        r.content_type,
        r.body.len()
    );
    for (k, v) in &r.headers {
        let _ = write!(head, "{k}: {v}\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    if with_body {
        stream.write_all(&r.body)?;
    }
    stream.flush()
}
