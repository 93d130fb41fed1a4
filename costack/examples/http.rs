//! A keep-alive HTTP/1.1 server, written three times over one parser: as
//! coroutines on costack's event loop, as tasks on tokio's runtime, and
//! (Linux) as coroutines of may, the other stackful runtime, so they can be
//! compared under the same load (`bench/http-vs-peers.sh` runs wrk against
//! all three).
//!
//! Routes: `GET /` answers `hello`; `GET /sleep` answers after 1 ms
//! (`aio::sleep`, `tokio::time::sleep`, `may::coroutine::sleep`).
//!
//! ```text
//! cargo run --release --example http -- costack 127.0.0.1:8080
//! cargo run --release --example http -- tokio 127.0.0.1:8080
//! cargo run --release --example http -- may 127.0.0.1:8080
//! cargo run --release --example http -- epoll 127.0.0.1:8080
//! cargo run --release --example http -- costack 127.0.0.1:8080 --loops 2
//! ```
//!
//! On Linux a fourth server, `epoll`, is the floor the others are measured
//! against: no runtime, a hand-written epoll loop on one thread with the
//! same parser, one `recv` and one `send` per request (it does not serve
//! `/sleep`).
//!
//! `--loops N` runs N event loops on N threads (costack: each with its own
//! listener on the same port, `SO_REUSEPORT`, so the kernel spreads the
//! connections and nothing is shared between the loops; tokio: a
//! multi-thread runtime with N workers; may: N workers). With one loop,
//! tokio runs its current_thread runtime and may one worker.

use std::time::Duration;

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Route {
    Hello,
    Sleep,
    NotFound,
}

/// One parsed request: its route, whether the connection stays open, and
/// how many bytes of the buffer it took.
#[derive(Debug)]
struct Request {
    route: Route,
    keep_alive: bool,
    len: usize,
}

/// Parses the first complete request at the front of `buf`, or `Ok(None)`
/// if more bytes are needed. Bodies (`Content-Length`) are skipped.
fn parse(buf: &[u8]) -> Result<Option<Request>, &'static str> {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > 16 * 1024 {
            Err("header too large")
        } else {
            Ok(None)
        };
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| "header is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let mut start = lines.next().unwrap_or("").split(' ');
    let (method, path, version) = (start.next(), start.next(), start.next());
    let (Some(method), Some(path), Some(version)) = (method, path, version) else {
        return Err("bad request line");
    };
    let mut keep_alive = version == "HTTP/1.1";
    let mut body = 0usize;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err("bad header");
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("connection") {
            keep_alive = !value.eq_ignore_ascii_case("close")
                && (keep_alive || value.eq_ignore_ascii_case("keep-alive"));
        } else if name.eq_ignore_ascii_case("content-length") {
            body = value.parse().map_err(|_| "bad content-length")?;
        }
    }
    let len = head_end + 4 + body;
    if buf.len() < len {
        return Ok(None);
    }
    let route = match (method, path) {
        ("GET", "/") => Route::Hello,
        ("GET", "/sleep") => Route::Sleep,
        _ => Route::NotFound,
    };
    Ok(Some(Request {
        route,
        keep_alive,
        len,
    }))
}

/// Appends the response to `req` to `out`.
fn respond(req: &Request, out: &mut Vec<u8>) {
    let (status, body) = match req.route {
        Route::Hello | Route::Sleep => ("200 OK", "hello"),
        Route::NotFound => ("404 Not Found", "not found"),
    };
    let connection = if req.keep_alive {
        "keep-alive"
    } else {
        "close"
    };
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\
             Connection: {connection}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
}

const SLEEP: Duration = Duration::from_millis(1);

#[cfg(any(unix, windows))]
mod on_costack {
    use std::io::{self, Read, Write};

    use costack::aio::{self, EventLoop};
    use costack::net::{ListenOptions, TcpListener, TcpStream};

    use super::{parse, respond, Route, SLEEP};

    fn serve(mut stream: TcpStream) -> io::Result<()> {
        let _ = stream.set_nodelay(true);
        let mut buf = Vec::with_capacity(4096);
        let mut out = Vec::with_capacity(4096);
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk)?; // yields until data arrives
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
            let mut open = true;
            while let Some(req) = parse(&buf).map_err(io::Error::other)? {
                if req.route == Route::Sleep {
                    aio::sleep(SLEEP);
                }
                respond(&req, &mut out);
                buf.drain(..req.len);
                if !req.keep_alive {
                    open = false;
                    break;
                }
            }
            stream.write_all(&out)?;
            out.clear();
            if !open {
                return Ok(());
            }
        }
    }

    fn accept_loop(listener: TcpListener) -> io::Result<()> {
        loop {
            let (stream, _) = listener.accept()?;
            // A handler's error or panic ends its connection only.
            aio::spawn(move || serve(stream));
        }
    }

    pub fn run(addr: &str, loops: usize) -> io::Result<()> {
        let options = ListenOptions::new().reuse_port(loops > 1);
        let listener = TcpListener::bind_with(addr, &options)?;
        println!(
            "costack: listening on {} with {loops} loop(s)",
            listener.local_addr()?
        );
        let addr = listener.local_addr()?;
        let others: Vec<_> = (1..loops)
            .map(|i| {
                let options = options.clone();
                std::thread::Builder::new()
                    .name(format!("loop-{i}"))
                    .spawn(move || {
                        EventLoop::new()?
                            .block_on(move || accept_loop(TcpListener::bind_with(addr, &options)?))
                    })
            })
            .collect::<io::Result<_>>()?;
        EventLoop::new()?.block_on(move || accept_loop(listener))?;
        for t in others {
            t.join().expect("loop thread")?;
        }
        Ok(())
    }
}

mod on_tokio {
    use std::io;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::{parse, respond, Route, SLEEP};

    async fn serve(mut stream: TcpStream) -> io::Result<()> {
        let _ = stream.set_nodelay(true);
        let mut buf = Vec::with_capacity(4096);
        let mut out = Vec::with_capacity(4096);
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
            let mut open = true;
            while let Some(req) = parse(&buf).map_err(io::Error::other)? {
                if req.route == Route::Sleep {
                    tokio::time::sleep(SLEEP).await;
                }
                respond(&req, &mut out);
                buf.drain(..req.len);
                if !req.keep_alive {
                    open = false;
                    break;
                }
            }
            stream.write_all(&out).await?;
            out.clear();
            if !open {
                return Ok(());
            }
        }
    }

    pub fn run(addr: &str, loops: usize) -> io::Result<()> {
        let rt = if loops > 1 {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(loops)
                .enable_all()
                .build()?
        } else {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
        };
        rt.block_on(async {
            let listener = TcpListener::bind(addr).await?;
            println!("tokio: listening on {}", listener.local_addr()?);
            loop {
                let (stream, _) = listener.accept().await?;
                tokio::spawn(serve(stream));
            }
        })
    }
}

#[cfg(target_os = "linux")]
mod on_may {
    use std::io::{self, Read, Write};

    use may::net::{TcpListener, TcpStream};

    use super::{parse, respond, Route, SLEEP};

    fn serve(mut stream: TcpStream) -> io::Result<()> {
        let _ = stream.set_nodelay(true);
        let mut buf = Vec::with_capacity(4096);
        let mut out = Vec::with_capacity(4096);
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
            let mut open = true;
            while let Some(req) = parse(&buf).map_err(io::Error::other)? {
                if req.route == Route::Sleep {
                    may::coroutine::sleep(SLEEP);
                }
                respond(&req, &mut out);
                buf.drain(..req.len);
                if !req.keep_alive {
                    open = false;
                    break;
                }
            }
            stream.write_all(&out)?;
            out.clear();
            if !open {
                return Ok(());
            }
        }
    }

    pub fn run(addr: &str, loops: usize) -> io::Result<()> {
        may::config().set_workers(loops);
        let listener = TcpListener::bind(addr)?;
        println!(
            "may: listening on {} with {loops} worker(s)",
            listener.local_addr()?
        );
        for stream in listener.incoming() {
            let stream = stream?;
            // may's `go!` is its (unsafe) spawn: the coroutine must not use
            // thread-locals across yields, which `serve` does not.
            may::go!(move || serve(stream));
        }
        Ok(())
    }
}

/// The floor: what one thread gets from the kernel's socket path with
/// no runtime in the way. A level-triggered epoll set of blocking sockets
/// (readable means a `recv` returns at once; a response this small never
/// fills the send buffer), each readable one read once and answered.
#[cfg(target_os = "linux")]
mod on_epoll {
    use std::collections::HashMap;
    use std::io::{self, Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::{AsRawFd, RawFd};

    use super::{parse, respond, Route};

    /// A connection and the bytes of its unfinished request.
    struct Conn {
        stream: TcpStream,
        buf: Vec<u8>,
    }

    fn watch(epoll: RawFd, fd: RawFd) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: fd as u64,
        };
        // SAFETY: both descriptors are open; `event` lives for the call.
        if unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, fd, &mut event) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads once from a readable connection and answers every complete
    /// request; `Ok(false)` when the connection is to be closed.
    fn serve(conn: &mut Conn, out: &mut Vec<u8>) -> io::Result<bool> {
        let mut chunk = [0u8; 4096];
        let n = conn.stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(false);
        }
        conn.buf.extend_from_slice(&chunk[..n]);
        let mut open = true;
        while let Some(req) = parse(&conn.buf).map_err(io::Error::other)? {
            if req.route == Route::Sleep {
                return Err(io::Error::other("the epoll floor does not serve /sleep"));
            }
            respond(&req, out);
            conn.buf.drain(..req.len);
            if !req.keep_alive {
                open = false;
                break;
            }
        }
        let sent = conn.stream.write_all(out);
        out.clear();
        sent.map(|()| open)
    }

    pub fn run(addr: &str, loops: usize) -> io::Result<()> {
        if loops != 1 {
            return Err(io::Error::other("the epoll floor runs one loop"));
        }
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        println!("epoll: listening on {}", listener.local_addr()?);
        // SAFETY: no arguments but flags; the result is checked.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epoll < 0 {
            return Err(io::Error::last_os_error());
        }
        watch(epoll, listener.as_raw_fd())?;
        let mut conns: HashMap<RawFd, Conn> = HashMap::new();
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
        let mut out = Vec::with_capacity(4096);
        loop {
            // SAFETY: `events` has room for the `len` entries the kernel
            // may write.
            let n =
                unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), events.len() as i32, -1) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for event in &events[..n as usize] {
                let fd = event.u64 as RawFd;
                if fd == listener.as_raw_fd() {
                    // (Accepted sockets do not inherit O_NONBLOCK.)
                    while let Ok((stream, _)) = listener.accept() {
                        stream.set_nodelay(true)?;
                        watch(epoll, stream.as_raw_fd())?;
                        let buf = Vec::with_capacity(4096);
                        conns.insert(stream.as_raw_fd(), Conn { stream, buf });
                    }
                } else if let Some(conn) = conns.get_mut(&fd) {
                    if !serve(conn, &mut out).unwrap_or(false) {
                        // Closing the socket takes it out of the set.
                        conns.remove(&fd);
                    }
                }
            }
        }
    }
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: http costack|tokio|may|epoll [ADDR] [--loops N]";
    let runtime = args.first().map(String::as_str).unwrap_or("costack");
    let addr = args
        .get(1)
        .filter(|a| !a.starts_with("--"))
        .map(String::as_str)
        .unwrap_or("127.0.0.1:8080");
    let loops = match args.iter().position(|a| a == "--loops") {
        Some(i) => args
            .get(i + 1)
            .and_then(|n| n.parse().ok())
            .filter(|&n: &usize| n > 0)
            .ok_or_else(|| std::io::Error::other(usage))?,
        None => 1,
    };
    match runtime {
        #[cfg(any(unix, windows))]
        "costack" => on_costack::run(addr, loops),
        #[cfg(not(any(unix, windows)))]
        "costack" => Err(std::io::Error::other(format!(
            "costack's event loop runs on unix systems and Windows only (asked for {loops} loop(s))"
        ))),
        "tokio" => on_tokio::run(addr, loops),
        #[cfg(target_os = "linux")]
        "may" => on_may::run(addr, loops),
        #[cfg(target_os = "linux")]
        "epoll" => on_epoll::run(addr, loops),
        _ => Err(std::io::Error::other(usage)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The floor server answers pipelined keep-alive requests in order and
    /// closes a connection that asks to be closed.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_epoll_floor_serves_keep_alive_requests() {
        use std::io::{Read, Write};
        use std::net::{TcpListener, TcpStream};

        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .to_string();
        let server_addr = addr.clone();
        // Serves until the process ends.
        std::thread::spawn(move || on_epoll::run(&server_addr, 1));
        let mut stream = (0..200)
            .find_map(|_| {
                TcpStream::connect(&addr).ok().or_else(|| {
                    std::thread::sleep(Duration::from_millis(10));
                    None
                })
            })
            .expect("the floor server listens");
        stream
            .write_all(b"GET / HTTP/1.1\r\n\r\nGET /nope HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        let first = text.find("200 OK").expect("the first answer");
        let second = text.find("404 Not Found").expect("the second answer");
        assert!(first < second, "{text}");
        assert!(text.ends_with("not found"), "closed after the last: {text}");
    }

    #[test]
    fn parses_pipelined_keep_alive_requests() {
        let buf =
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /sleep HTTP/1.1\r\nConnection: close\r\n\r\nGET";
        let a = parse(buf).unwrap().unwrap();
        assert_eq!((a.route, a.keep_alive), (Route::Hello, true));
        let b = parse(&buf[a.len..]).unwrap().unwrap();
        assert_eq!((b.route, b.keep_alive), (Route::Sleep, false));
        assert!(parse(&buf[a.len + b.len..]).unwrap().is_none());
        let mut out = Vec::new();
        respond(&a, &mut out);
        assert!(out.starts_with(b"HTTP/1.1 200 OK\r\n"));
        assert!(out.ends_with(b"\r\n\r\nhello"));
    }

    #[test]
    fn http_1_0_closes_unless_asked_and_bodies_are_skipped() {
        let r = parse(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!r.keep_alive);
        let r = parse(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(r.keep_alive);
        let req = b"POST /x HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
        assert!(parse(&req[..req.len() - 1]).unwrap().is_none());
        let r = parse(req).unwrap().unwrap();
        assert_eq!((r.route, r.len), (Route::NotFound, req.len()));
        assert!(parse(b"GARBAGE\r\n\r\n").is_err());
    }
}
