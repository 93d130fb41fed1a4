//! File I/O that cannot wait for a device is done on the loop thread:
//! results as on the other paths, and the loop stays fair.

// The event loop, sockets and files are Linux-only (see the crate docs).
#![cfg(target_os = "linux")]

use std::cell::Cell;
use std::path::PathBuf;
use std::rc::Rc;

use costack::aio::{self, EventLoop};
use costack::fs::File;
use costack::Coroutine;

/// A scratch directory on tmpfs, if the machine has one at /dev/shm.
fn shm_dir(name: &str) -> Option<PathBuf> {
    let dir =
        PathBuf::from("/dev/shm").join(format!("costack-inline-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    Some(dir)
}

fn disk_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("costack-inline-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn tmpfs_io_completes_without_suspending() {
    let Some(dir) = shm_dir("nosuspend") else {
        return;
    };
    let path = dir.join("f");
    std::fs::write(&path, vec![9u8; 8192]).unwrap();
    let lp = EventLoop::new().unwrap();
    let p = path.clone();
    lp.block_on(move || {
        let f = Rc::new(File::options().read(true).write(true).open(&p).unwrap());
        let g = f.clone();
        let co = Coroutine::new(move || {
            let mut b = [0u8; 4096];
            g.read_exact_at(&mut b, 4096).unwrap();
            assert!(b.iter().all(|&x| x == 9));
            g.write_all_at(&[5u8; 100], 10).unwrap();
        });
        co.enter();
        // Neither call went round the loop: the coroutine ran to its end.
        assert!(co.is_finished());
        let mut b = [0u8; 110];
        f.read_exact_at(&mut b, 0).unwrap();
        assert!(b[..10].iter().all(|&x| x == 9));
        assert!(b[10..].iter().all(|&x| x == 5));
    });
    std::fs::remove_dir_all(dir).unwrap();
}

/// A coroutine that only does inline I/O still lets the loop run others.
fn busy_reader_does_not_starve(dir: PathBuf) {
    let path = dir.join("f");
    std::fs::write(&path, vec![1u8; 1 << 16]).unwrap();
    let lp = EventLoop::new().unwrap();
    let f = Rc::new(File::open(&path).unwrap());
    let reads = Rc::new(Cell::new(0u64));
    let (f2, r2) = (f.clone(), reads.clone());
    lp.spawn(move || {
        let mut b = vec![0u8; 4096];
        loop {
            f2.read_exact_at(&mut b, 0).unwrap();
            assert!(b.iter().all(|&x| x == 1));
            r2.set(r2.get() + 1);
        }
    });
    let ticks = Rc::new(Cell::new(0u32));
    let t = ticks.clone();
    lp.spawn(move || loop {
        t.set(t.get() + 1);
        aio::schedule(&costack::current().unwrap());
        costack::yield_now();
    });
    // Each poll returns although the reader never waits for anything.
    for _ in 0..50 {
        lp.poll(false);
    }
    assert!(
        ticks.get() >= 10,
        "other coroutine ran {} times",
        ticks.get()
    );
    assert!(reads.get() > 0);
    drop(lp);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn busy_tmpfs_reader_does_not_starve_the_loop() {
    if let Some(dir) = shm_dir("fair") {
        busy_reader_does_not_starve(dir);
    }
}

#[test]
fn busy_disk_reader_does_not_starve_the_loop() {
    busy_reader_does_not_starve(disk_dir("fair"));
}

#[test]
fn round_trips_on_tmpfs_and_disk() {
    let mut dirs = vec![disk_dir("rt")];
    dirs.extend(shm_dir("rt"));
    for dir in dirs {
        let path = dir.join("f");
        let lp = EventLoop::new().unwrap();
        let p = path.clone();
        lp.block_on(move || {
            let f = File::create(&p).unwrap();
            for i in 0..64u64 {
                f.write_all_at(&vec![i as u8; 4096 + i as usize], i * 8192)
                    .unwrap();
            }
            for i in 0..64u64 {
                let mut b = vec![0u8; 4096 + i as usize];
                f.read_exact_at(&mut b, i * 8192).unwrap();
                assert!(b.iter().all(|&x| x == i as u8), "block {i}");
            }
            // Reading past the end returns 0, as pread does.
            let mut b = [0u8; 16];
            assert_eq!(f.read_at(&mut b, 1 << 30).unwrap(), 0);
        });
        std::fs::remove_dir_all(dir).unwrap();
    }
}
