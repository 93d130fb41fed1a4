//! `COSTACK_NO_IO_URING=1` forces the thread-pool fallback (a separate
//! test binary, since it sets the environment of its process).

// The event loop, sockets and files are Linux-only (see the crate docs).
#![cfg(target_os = "linux")]

use costack::aio::EventLoop;
use costack::fs::File;

#[test]
fn env_var_forces_thread_pool() {
    // The only test of this binary: nothing else reads the environment.
    std::env::set_var("COSTACK_NO_IO_URING", "1");
    if std::env::var("COSTACK_AIO").as_deref() == Ok("io_uring") {
        // Asked for io_uring and denied it: an error, never a silent
        // fallback to the thread pool.
        let err = EventLoop::new().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::Unsupported, "{err}");
        return;
    }
    let lp = EventLoop::new().unwrap();
    assert!(!lp.uses_io_uring());
    let dir = std::env::temp_dir().join(format!("costack-fs-nouring-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("data");
    let on = lp.block_on(move || {
        let f = File::create(&path).unwrap();
        f.write_all_at(b"fallback", 3).unwrap();
        let mut b = [0; 8];
        f.read_exact_at(&mut b, 3).unwrap();
        assert_eq!(&b, b"fallback");
        f.sync_data().unwrap();
        assert_eq!(f.len().unwrap(), 11);
        std::thread::current().id()
    });
    assert_eq!(on, std::thread::current().id());
    std::fs::remove_dir_all(dir).unwrap();
}
