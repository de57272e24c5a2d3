//! The loopback server: accept loop, worker threads inside the profiler guard, HTTP/1.1 framing.
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::*};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::{printable, respond, Response, IO_TIMEOUT, MAX_REQUEST_BYTES, WORKERS};
use crate::guard::profiler_scope;

/// A running server: its address, and a way to stop it.
pub struct Handle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

/// State the workers share with their handle.
struct Shared {
    stop: AtomicBool,
    /// Workers that have entered the profiler guard and are ready to accept.
    ready: AtomicUsize,
}

impl Handle {
    /// The address the server listens on (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the workers once their current request is done, and joins them.
    pub fn shutdown(self) {
        self.shared.stop.store(true, Relaxed);
        // Wake every worker blocked in accept() with a connection of our own.
        for _ in 0..self.workers.len() {
            let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        }
        for w in self.workers {
            let _ = w.join();
        }
    }
}

/// The default address: loopback only. Exposing heap profiles beyond the machine is a choice
/// to make explicitly (`HEAPSIGHT_HTTP_ADDR=0.0.0.0:6060`).
pub const DEFAULT_ADDR: &str = "127.0.0.1:6060";

/// Serves the endpoints on `addr` from [`WORKERS`] background threads. Everything they do runs
/// inside the profiler guard: none of the server's allocations is counted as the program's.
/// Dropping the [`Handle`] leaves the server running for the life of the process.
///
/// Returns once every worker is ready: what std allocates while starting a thread (before the
/// worker's code runs, so outside the guard) is then behind the caller, not in the middle of
/// whatever the program measures next.
pub fn serve(addr: impl ToSocketAddrs) -> io::Result<Handle> {
    let listener = TcpListener::bind(addr)?;
    let addr = listener.local_addr()?;
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        ready: AtomicUsize::new(0),
    });
    let mut workers = Vec::with_capacity(WORKERS);
    for i in 0..WORKERS {
        let l = listener.try_clone()?;
        let shared = shared.clone();
        workers.push(
            thread::Builder::new()
                .name(format!("heapsight-http-{i}"))
                .spawn(move || {
                    profiler_scope(|| {
                        shared.ready.fetch_add(1, Release);
                        worker(l, &shared.stop)
                    })
                })?,
        );
    }
    while shared.ready.load(Acquire) < WORKERS {
        thread::sleep(Duration::from_millis(1));
    }
    Ok(Handle {
        addr,
        shared,
        workers,
    })
}

/// Serves on `HEAPSIGHT_HTTP_ADDR` if it is set (`Ok(None)` if not): drop-in use without code
/// changes beyond this one call. An unusable address is an error naming the variable.
pub fn serve_from_env() -> io::Result<Option<Handle>> {
    match std::env::var("HEAPSIGHT_HTTP_ADDR") {
        Ok(a) if !a.trim().is_empty() => serve(a.trim())
            .map(Some)
            .map_err(|e| io::Error::new(e.kind(), format!("HEAPSIGHT_HTTP_ADDR={a:?}: {e}"))),
        _ => Ok(None),
    }
}

fn worker(listener: TcpListener, stop: &AtomicBool) {
    while !stop.load(Relaxed) {
        match listener.accept() {
            Ok((stream, _)) if !stop.load(Relaxed) => {
                let _ = handle_connection(stream);
            }
            Ok(_) => return,
            // Out of descriptors and the like: back off instead of spinning.
            Err(_) => thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn handle_connection(mut stream: TcpStream) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let (method, target, head_len, body_len) = loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                break (
                    req.method.unwrap_or("").to_string(),
                    req.path.unwrap_or("").to_string(),
                    head_len,
                    content_length(req.headers),
                );
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_REQUEST_BYTES => continue,
            Ok(httparse::Status::Partial) => {
                return write_response(
                    &mut stream,
                    &Response::text(431, "request header too large".into()),
                    true,
                )
            }
            Err(e) => {
                return write_response(
                    &mut stream,
                    &Response::text(400, format!("malformed request: {e}")),
                    true,
                )
            }
        }
    };
    let head_only = method == "HEAD";
    let response = if method == "GET" || head_only {
        respond(&target)
    } else if method == "POST" && super::takes_post(&target) {
        match read_body(&mut stream, &buf[head_len..], body_len) {
            Ok(body) => super::respond_post(&target, &body),
            Err(refusal) => refusal,
        }
    } else if method == "POST" {
        super::respond_post(&target, &[])
    } else {
        Response::text(
            405,
            format!("method {} not allowed: use GET", printable(&method)),
        )
    };
    write_response(&mut stream, &response, !head_only)
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
