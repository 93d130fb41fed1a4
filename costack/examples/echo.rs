//! A TCP echo server on one event loop; each connection is a coroutine
//! with plain, synchronous-looking code.
//!
//! `cargo run --example echo -- 127.0.0.1:7000`, then `nc 127.0.0.1 7000`.

#[cfg(any(unix, windows))]
fn main() -> std::io::Result<()> {
    linux::main()
}

// The event loop runs on unix systems and Windows.
#[cfg(not(any(unix, windows)))]
fn main() -> std::io::Result<()> {
    eprintln!("this needs costack's event loop, which runs on unix systems and Windows only");
    Ok(())
}

#[cfg(any(unix, windows))]
mod linux {
    use std::io::{Read, Write};

    use costack::aio::{self, EventLoop};
    use costack::net::{TcpListener, TcpStream};

    fn serve(mut stream: TcpStream) -> std::io::Result<()> {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = stream.read(&mut buf)?; // yields until data arrives
            if n == 0 {
                return Ok(());
            }
            stream.write_all(&buf[..n])?; // yields while the socket is full
        }
    }

    pub fn main() -> std::io::Result<()> {
        let addr = std::env::args()
            .nth(1)
            .unwrap_or_else(|| "127.0.0.1:7000".into());
        let lp = EventLoop::new()?;
        lp.block_on(move || -> std::io::Result<()> {
            let listener = TcpListener::bind(&addr)?;
            println!("echo server on {}", listener.local_addr()?);
            loop {
                let (stream, peer) = listener.accept()?;
                stream.set_nodelay(true)?;
                aio::spawn(move || match serve(stream) {
                    Ok(()) => println!("{peer}: closed"),
                    Err(e) => println!("{peer}: {e}"),
                });
            }
        })
    }
}
