//! Sending a file's bytes from its mapping (`FileMap`, `send_slices`) and
//! receiving into it (`slice_mut`, `recv_slice`): what arrives, large
//! transfers that wait for the peer, a file truncated under the mapping,
//! and the page-cache query.

// Files are Linux-only (see the crate docs).
#![cfg(target_os = "linux")]

use std::io::{ErrorKind, Read, Write};
use std::path::PathBuf;

use costack::aio::{self, Backend, EventLoop};
use costack::fs::FileMap;
use costack::net::{RecvSlice, SendSlice, TcpListener, TcpStream, UnixStream};

fn temp_file(name: &str, data: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("costack-map-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, data).unwrap();
    path
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

/// Sends every byte of `bufs`, advancing past short sends.
fn send_all(s: &TcpStream, bufs: &mut [SendSlice<'_>]) {
    let mut rest = bufs;
    while !rest.is_empty() {
        let n = s.send_slices(rest).unwrap();
        assert!(n > 0);
        SendSlice::advance_slices(&mut rest, n);
    }
}

#[test]
fn memory_and_mapped_slices_arrive_in_order() {
    let data = pattern(100_000);
    let path = temp_file("order", &data);
    let file = std::fs::File::open(&path).unwrap();
    let map = FileMap::new(&file).unwrap();
    assert_eq!(map.len(), data.len() as u64);
    let (a, mut b) = UnixStream::pair().unwrap();
    let head = b"head";
    let bufs = [
        SendSlice::new(head),
        map.slice(10, 1000).unwrap(),
        SendSlice::new(b""),
        map.slice(99_000, 1000).unwrap(),
    ];
    assert!(bufs[1].is_mapped() && bufs[1].as_bytes().is_none());
    assert_eq!(a.send_slices(&bufs).unwrap(), 2004);
    let mut got = vec![0; 2004];
    b.read_exact(&mut got).unwrap();
    assert_eq!(&got[..4], head);
    assert_eq!(&got[4..1004], &data[10..1010]);
    assert_eq!(&got[1004..], &data[99_000..]);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn slices_outside_the_mapping_are_refused() {
    let path = temp_file("bounds", &[7; 8192]);
    let map = FileMap::new(&std::fs::File::open(&path).unwrap()).unwrap();
    assert!(map.slice(0, 8192).is_some());
    assert!(map.slice(8192, 0).is_some());
    assert!(map.slice(8000, 193).is_none());
    assert!(map.slice(u64::MAX, 2).is_none());
    assert_eq!(
        map.is_cached(8000, 193).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    // Just written: in the page cache.
    assert!(map.is_cached(0, 8192).unwrap());
    assert!(map.is_cached(4095, 2).unwrap());

    let empty = temp_file("empty", b"");
    let map = FileMap::new(&std::fs::File::open(&empty).unwrap()).unwrap();
    assert!(map.is_empty());
    assert!(map.slice(0, 0).is_some());
    assert!(map.slice(0, 1).is_none());
    let dir = std::fs::File::open(std::env::temp_dir()).unwrap();
    assert_eq!(
        FileMap::new(&dir).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    std::fs::remove_file(&path).unwrap();
    std::fs::remove_file(&empty).unwrap();
}

#[test]
fn pages_never_read_are_not_cached() {
    // A sparse file: its hole has no page in the page cache until read.
    let path = temp_file("sparse", b"");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    file.set_len(64 << 20).unwrap();
    let map = FileMap::new(&file).unwrap();
    assert!(!map.is_cached(32 << 20, 1 << 20).unwrap());
    std::fs::remove_file(&path).unwrap();
}

/// Megabytes through a loopback socket whose buffer fills: the sender
/// waits for the loop, the reader drains in another coroutine.
fn large_send_waits_for_the_reader(lp: &EventLoop, name: &str) {
    let data = pattern(8 << 20);
    let path = temp_file(name, &data);
    let got = lp.block_on(move || {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let reader = aio::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            got
        });
        let file = std::fs::File::open(&path).unwrap();
        let map = FileMap::new(&file).unwrap();
        let c = TcpStream::connect(addr).unwrap();
        let mut bufs = [
            map.slice(0, 4 << 20).unwrap(),
            SendSlice::new(b"--"),
            map.slice(4 << 20, 4 << 20).unwrap(),
        ];
        send_all(&c, &mut bufs);
        drop(c);
        std::fs::remove_file(&path).unwrap();
        reader.join().unwrap()
    });
    assert_eq!(got.len(), data.len() + 2);
    assert_eq!(&got[..4 << 20], &data[..4 << 20]);
    assert_eq!(&got[4 << 20..(4 << 20) + 2], b"--");
    assert_eq!(&got[(4 << 20) + 2..], &data[4 << 20..]);
}

#[test]
fn large_send_waits_for_the_reader_default_loop() {
    large_send_waits_for_the_reader(&EventLoop::new().unwrap(), "large-default");
}

#[test]
fn large_send_waits_for_the_reader_socket_ring() {
    // Sockets on the ring where the kernel has one (the same path as
    // `COSTACK_AIO=io_uring`); readiness otherwise.
    let lp =
        EventLoop::with_backend(Backend::IoUring).unwrap_or_else(|_| EventLoop::new().unwrap());
    large_send_waits_for_the_reader(&lp, "large-ring");
}

#[test]
fn a_file_truncated_under_the_mapping_fails_the_send_without_a_signal() {
    let path = temp_file("truncated", &pattern(1 << 20));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let map = FileMap::new(&file).unwrap();
    // Another process's truncation, as far as the mapping can tell.
    file.set_len(4096).unwrap();
    let (a, mut b) = UnixStream::pair().unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        let _ = b.read_to_end(&mut got);
        got
    });
    // The first page is still there; the rest faults in the kernel.
    let first = a.send_slices(&[map.slice(0, 4096).unwrap()]).unwrap();
    assert_eq!(first, 4096);
    let err = a
        .send_slices(&[map.slice(8192, 8192).unwrap()])
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EFAULT));
    drop(a);
    assert_eq!(reader.join().unwrap().len(), 4096);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn advance_slices_steps_over_whole_and_partial_slices() {
    let (x, y, z) = (b"abc".as_slice(), b"de".as_slice(), b"fghi".as_slice());
    let mut bufs = [SendSlice::new(x), SendSlice::new(y), SendSlice::new(z)];
    let mut rest = &mut bufs[..];
    SendSlice::advance_slices(&mut rest, 4);
    assert_eq!(rest.len(), 2);
    assert_eq!(rest[0].as_bytes(), Some(&b"e"[..]));
    SendSlice::advance_slices(&mut rest, 1);
    assert_eq!(rest[0].as_bytes(), Some(z));
    SendSlice::advance_slices(&mut rest, 4);
    assert!(rest.is_empty());
    SendSlice::advance_slices(&mut rest, 0);
}

#[test]
#[should_panic(expected = "past their end")]
fn advancing_past_the_end_panics() {
    let mut bufs = [SendSlice::new(b"ab")];
    let mut rest = &mut bufs[..];
    SendSlice::advance_slices(&mut rest, 3);
}

#[test]
#[should_panic(expected = "out of bounds")]
fn a_range_past_the_end_panics() {
    SendSlice::new(b"abc").slice(1..4);
}

#[test]
#[should_panic(expected = "past its end")]
fn advancing_one_slice_past_its_end_panics() {
    SendSlice::new(b"ab").advance(3);
}

#[test]
fn more_buffers_than_fit_on_the_stack_all_arrive() {
    let pieces: Vec<[u8; 1]> = (0..200u8).map(|i| [i]).collect();
    let bufs: Vec<SendSlice<'_>> = pieces.iter().map(|p| SendSlice::new(p)).collect();
    let (a, mut b) = UnixStream::pair().unwrap();
    assert_eq!(a.send_slices(&bufs).unwrap(), 200);
    let mut got = [0u8; 200];
    b.read_exact(&mut got).unwrap();
    assert!(got.iter().enumerate().all(|(i, &v)| v as usize == i));
}

fn open_rw(path: &std::path::Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap()
}

fn on_tmpfs(path: &std::path::Path) -> bool {
    std::process::Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(path)
        .output()
        .is_ok_and(|o| matches!(String::from_utf8_lossy(&o.stdout).trim(), "tmpfs" | "ramfs"))
}

/// Receives into all of `into`, advancing past short receives.
fn recv_all(s: &TcpStream, into: &mut RecvSlice<'_>) {
    while !into.is_empty() {
        let n = s.recv_slice(into).unwrap();
        assert!(n > 0, "the stream ended early");
        into.advance(n);
    }
}

/// Megabytes received into a file's mapping, the sender waiting on a full
/// socket buffer: every byte lands at its offset, nothing else changes.
fn large_receive_lands_in_the_file(lp: &EventLoop, name: &str) {
    let data = pattern(8 << 20);
    let path = temp_file(name, &vec![0u8; (8 << 20) + 8192]);
    let sent = data.clone();
    let file_path = path.clone();
    let head = lp.block_on(move || {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let writer = aio::spawn(move || TcpStream::connect(addr).unwrap().write_all(&sent));
        let (s, _) = listener.accept().unwrap();
        let file = open_rw(&file_path);
        let map = FileMap::new_writable(&file).unwrap();
        let mut head = vec![0u8; 1000];
        recv_all(&s, &mut RecvSlice::new(&mut head));
        let mut into = map.slice_mut(4096, (8 << 20) - 1000).unwrap();
        assert!(into.is_mapped());
        recv_all(&s, &mut into);
        writer.join().unwrap().unwrap();
        head
    });
    assert_eq!(head, &data[..1000]);
    let file = std::fs::read(&path).unwrap();
    assert!(file[..4096].iter().all(|&b| b == 0));
    assert_eq!(&file[4096..4096 + (8 << 20) - 1000], &data[1000..]);
    assert!(file[4096 + (8 << 20) - 1000..].iter().all(|&b| b == 0));
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn large_receive_lands_in_the_file_default_loop() {
    large_receive_lands_in_the_file(&EventLoop::new().unwrap(), "recv-default");
}

#[test]
fn large_receive_lands_in_the_file_socket_ring() {
    let lp =
        EventLoop::with_backend(Backend::IoUring).unwrap_or_else(|_| EventLoop::new().unwrap());
    large_receive_lands_in_the_file(&lp, "recv-ring");
}

#[test]
fn receives_need_a_writable_mapping_and_a_range_inside_it() {
    let path = temp_file("recv-refused", &[0; 8192]);
    let read_only = std::fs::File::open(&path).unwrap();
    let err = FileMap::new_writable(&read_only).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EACCES));
    let map = FileMap::new(&read_only).unwrap();
    assert!(!map.is_writable());
    assert!(map.slice_mut(0, 1).is_none());
    let map = FileMap::new_writable(&open_rw(&path)).unwrap();
    assert!(map.is_writable());
    assert_eq!(map.slice_mut(0, 8192).unwrap().len(), 8192);
    assert!(map.slice_mut(1, 8192).is_none());
    assert!(map.slice_mut(u64::MAX, 1).is_none());
    assert!(map.slice(0, 8192).is_some(), "a writable map sends too");
    // Whatever the temporary directory is, the answer is statfs's (as
    // `stat -f` reports it); and /dev/shm is usually a tmpfs.
    assert_eq!(map.is_in_memory(), on_tmpfs(&path));
    let shm = std::path::Path::new("/dev/shm");
    if on_tmpfs(shm) {
        let p = shm.join(format!("costack-map-{}-mem", std::process::id()));
        std::fs::write(&p, [0u8; 4096]).unwrap();
        assert!(FileMap::new_writable(&open_rw(&p)).unwrap().is_in_memory());
        std::fs::remove_file(&p).unwrap();
    }
    // An empty file maps nothing, but still not for writing read-only.
    let empty = temp_file("recv-empty", b"");
    let err = FileMap::new_writable(&std::fs::File::open(&empty).unwrap()).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EACCES));
    std::fs::remove_file(&path).unwrap();
    std::fs::remove_file(&empty).unwrap();
}

#[test]
fn a_receive_into_a_truncated_file_fails_and_leaves_the_bytes_in_the_socket() {
    let path = temp_file("recv-truncated", &[0; 1 << 20]);
    let file = open_rw(&path);
    let map = FileMap::new_writable(&file).unwrap();
    // Another process's truncation, as far as the mapping can tell.
    file.set_len(4096).unwrap();
    let (mut a, mut b) = UnixStream::pair().unwrap();
    let data = pattern(8192);
    a.write_all(&data).unwrap();
    let err = b
        .recv_slice(&mut map.slice_mut(8192, 8192).unwrap())
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EFAULT));
    let mut got = vec![0; 8192];
    b.read_exact(&mut got).unwrap();
    assert_eq!(got, data, "nothing was lost");
    // The page the file still has takes a receive.
    a.write_all(b"kept").unwrap();
    let mut into = map.slice_mut(10, 4).unwrap();
    assert_eq!(b.recv_slice(&mut into).unwrap(), 4);
    assert_eq!(&std::fs::read(&path).unwrap()[10..14], b"kept");
    std::fs::remove_file(&path).unwrap();
}

#[test]
#[should_panic(expected = "past its length")]
fn advancing_a_recv_slice_past_its_end_panics() {
    let mut buf = [0u8; 4];
    RecvSlice::new(&mut buf).advance(5);
}
