//! Coroutine file I/O, through io_uring and through the thread pool.

// The event loop, sockets and files are Linux-only (see the crate docs).
#![cfg(target_os = "linux")]

use std::cell::Cell;
use std::io::ErrorKind;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use costack::aio::{self, EventLoop};
use costack::fs::{File, OpenOptions};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("costack-fs-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Every operation, round-tripped; run on the loop `lp`.
fn round_trips(lp: &EventLoop, name: &str) {
    let dir = temp_dir(name);
    let path = dir.join("data");
    lp.block_on(move || {
        let f = File::create(&path).unwrap();
        assert_eq!(f.len().unwrap(), 0);
        let data: Vec<u8> = (0..1 << 20).map(|i| (i * 7 % 256) as u8).collect();
        f.write_all_at(&data, 4096).unwrap();
        assert_eq!(f.len().unwrap(), 4096 + (1 << 20));
        let mut back = vec![0; data.len()];
        f.read_exact_at(&mut back, 4096).unwrap();
        assert_eq!(back, data);
        // The gap reads as zeroes; short read at the end.
        let mut head = [1u8; 4096];
        f.read_exact_at(&mut head, 0).unwrap();
        assert!(head.iter().all(|&b| b == 0));
        let mut tail = [0u8; 100];
        assert_eq!(f.read_at(&mut tail, 4096 + (1 << 20) - 10).unwrap(), 10);
        assert_eq!(f.read_at(&mut tail, 1 << 30).unwrap(), 0);
        let e = f
            .read_exact_at(&mut tail, 4096 + (1 << 20) - 10)
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UnexpectedEof);
        f.sync_data().unwrap();
        f.sync_all().unwrap();
        // Resize.
        f.set_len(8192).unwrap();
        assert_eq!(f.len().unwrap(), 8192);
        f.set_len(1 << 21).unwrap();
        assert_eq!(f.len().unwrap(), 1 << 21);
        // Holes: punch one in written data, keep the size.
        f.write_all_at(&vec![0xAB; 1 << 20], 0).unwrap();
        f.sync_data().unwrap();
        match f.punch_hole(0, 1 << 16) {
            Ok(()) => {
                assert_eq!(f.len().unwrap(), 1 << 21);
                let mut b = vec![1u8; 1 << 16];
                f.read_exact_at(&mut b, 0).unwrap();
                assert!(b.iter().all(|&x| x == 0));
                let mut b = [0u8; 1];
                f.read_exact_at(&mut b, 1 << 16).unwrap();
                assert_eq!(b[0], 0xAB);
                // Extents: data starts after the hole (if the fs reports
                // holes at this granularity).
                let d = f.seek_data(0).unwrap().unwrap();
                assert!(d == 0 || d == 1 << 16, "{d}");
                let h = f.seek_hole(1 << 16).unwrap();
                assert!(h >= 1 << 20, "{h}");
                assert!(h <= 1 << 21);
            }
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc_eopnotsupp()), "{e}"),
        }
        match f.zero_range(1 << 17, 4096) {
            Ok(()) => {
                let mut b = vec![1u8; 4096];
                f.read_exact_at(&mut b, 1 << 17).unwrap();
                assert!(b.iter().all(|&x| x == 0));
                assert_eq!(f.len().unwrap(), 1 << 21);
            }
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc_eopnotsupp()), "{e}"),
        }
        // Past the end there is no data.
        assert_eq!(f.seek_data(1 << 22).unwrap_or(None), None);
        drop(f);
        let ro = File::open(&path).unwrap();
        assert!(ro.write_at(b"x", 0).is_err());
        assert_eq!(
            File::open(path.with_extension("missing"))
                .unwrap_err()
                .kind(),
            ErrorKind::NotFound
        );
        std::fs::remove_file(&path).unwrap();
    });
    std::fs::remove_dir_all(dir).unwrap();
}

fn libc_eopnotsupp() -> i32 {
    95 // EOPNOTSUPP on Linux
}

#[test]
fn round_trips_default_backend() {
    let lp = EventLoop::new().unwrap();
    round_trips(&lp, "default");
}

#[test]
fn round_trips_thread_pool_fallback() {
    let lp = EventLoop::without_io_uring().unwrap();
    assert!(!lp.uses_io_uring());
    round_trips(&lp, "pool");
}

#[test]
fn io_uring_is_used_when_the_kernel_allows() {
    let lp = EventLoop::new().unwrap();
    let allowed = std::env::var_os("COSTACK_NO_IO_URING").is_none_or(|v| v == "0")
        && std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
            .map_or(true, |s| s.trim() != "2");
    // COSTACK_AIO (the CI runs every backend) decides first.
    let forced = std::env::var("COSTACK_AIO").ok().filter(|v| !v.is_empty());
    let expected = match forced.as_deref() {
        Some("io_uring") => true,
        Some(_) => false,
        None => allowed && io_uring::IoUring::new(2).is_ok(),
    };
    assert_eq!(lp.uses_io_uring(), expected);
}

#[test]
fn concurrent_io_keeps_loop_responsive() {
    for lp in [
        EventLoop::new().unwrap(),
        EventLoop::without_io_uring().unwrap(),
    ] {
        let dir = temp_dir(if lp.uses_io_uring() {
            "conc-uring"
        } else {
            "conc-pool"
        });
        let path = dir.join("data");
        let ticks = Rc::new(Cell::new(0));
        let t = ticks.clone();
        lp.block_on(move || {
            let f = Rc::new(File::create(&path).unwrap());
            aio::spawn(move || loop {
                aio::sleep(Duration::from_millis(1));
                t.set(t.get() + 1);
            });
            let writers: Vec<_> = (0..16u8)
                .map(|i| {
                    let f = f.clone();
                    aio::spawn(move || {
                        for j in 0..32u64 {
                            let block = vec![i; 4096];
                            f.write_all_at(&block, (j * 16 + i as u64) * 4096).unwrap();
                        }
                    })
                })
                .collect();
            while !writers.iter().all(|w| w.is_finished()) {
                aio::sleep(Duration::from_millis(1));
            }
            f.sync_data().unwrap();
            for j in 0..32u64 {
                for i in 0..16u8 {
                    let mut b = vec![0; 4096];
                    f.read_exact_at(&mut b, (j * 16 + i as u64) * 4096).unwrap();
                    assert!(b.iter().all(|&x| x == i));
                }
            }
            std::fs::remove_file(&path).unwrap();
        });
        assert!(ticks.get() > 0);
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn dropping_loop_with_io_in_flight_is_safe() {
    // Coroutines unwound while their reads are in flight: the unwinding
    // waits for the kernel, so the buffers are never written after free.
    for lp in [
        EventLoop::new().unwrap(),
        EventLoop::without_io_uring().unwrap(),
    ] {
        let dir = temp_dir(if lp.uses_io_uring() {
            "drop-uring"
        } else {
            "drop-pool"
        });
        let path = dir.join("data");
        std::fs::write(&path, vec![7u8; 1 << 20]).unwrap();
        let f = Rc::new(File::open(&path).unwrap());
        for _ in 0..8 {
            let f = f.clone();
            lp.spawn(move || {
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    f.read_exact_at(&mut buf, 0).unwrap();
                    assert!(buf.iter().all(|&b| b == 7));
                }
            });
        }
        for _ in 0..5 {
            lp.poll(false);
        }
        drop(lp);
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[test]
fn direct_io_option() {
    let dir = temp_dir("direct");
    let path = dir.join("data");
    let lp = EventLoop::new().unwrap();
    let p = path.clone();
    lp.block_on(move || {
        let f = match OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .direct(true)
            .open(&p)
        {
            Ok(f) => f,
            // tmpfs has no O_DIRECT.
            Err(e) if e.raw_os_error() == Some(22) => return,
            Err(e) => panic!("{e}"),
        };
        // An aligned buffer: 4 KiB inside an 8 KiB allocation.
        let mut raw = vec![0u8; 8192];
        let off = raw.as_ptr().align_offset(4096);
        let buf = &mut raw[off..off + 4096];
        buf.fill(0x5A);
        f.write_all_at(buf, 0).unwrap();
        buf.fill(0);
        f.read_exact_at(buf, 0).unwrap();
        assert!(buf.iter().all(|&b| b == 0x5A));
    });
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn blocking_use_outside_a_loop() {
    let dir = temp_dir("plain");
    let path = dir.join("data");
    let f = File::create(&path).unwrap();
    f.write_all_at(b"plain", 10).unwrap();
    let mut b = [0; 5];
    f.read_exact_at(&mut b, 10).unwrap();
    assert_eq!(&b, b"plain");
    assert_eq!(f.len().unwrap(), 15);
    f.set_len(3).unwrap();
    f.sync_data().unwrap();
    assert_eq!(f.len().unwrap(), 3);
    let std_file = File::from_std(std::fs::File::open(&path).unwrap()).into_std();
    assert_eq!(std_file.metadata().unwrap().len(), 3);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn file_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<File>();
}

#[test]
fn loop_dropped_while_a_coroutine_it_does_not_own_reads() {
    // A coroutine entered by hand (not spawned) is suspended in a read when
    // the loop goes away; dropping it afterwards unwinds it safely.
    for lp in [
        EventLoop::new().unwrap(),
        EventLoop::without_io_uring().unwrap(),
    ] {
        let dir = temp_dir(if lp.uses_io_uring() {
            "foreign-uring"
        } else {
            "foreign-pool"
        });
        let path = dir.join("data");
        std::fs::write(&path, vec![3u8; 1 << 20]).unwrap();
        let f = Rc::new(File::open(&path).unwrap());
        let co = lp.block_on(move || {
            let co = costack::Coroutine::new(move || {
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    f.read_exact_at(&mut buf, 0).unwrap();
                    assert!(buf.iter().all(|&b| b == 3));
                }
            });
            co.enter();
            co
        });
        assert!(!co.is_finished());
        drop(lp);
        drop(co);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
