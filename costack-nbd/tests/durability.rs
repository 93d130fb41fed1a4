//! FLUSH and FUA reach the disk, on every event-loop backend.
//!
//! A `kill -9` cannot show it (the page cache outlives the process), so
//! this test looks at the page cache itself: it maps the image, finds the
//! physical pages behind the mapping (`/proc/self/pagemap`) and reads
//! their dirty bit (`/proc/kpageflags`). A plain write leaves the pages
//! dirty; once the server has answered a FLUSH, or a write with FUA, they
//! must be clean — written back by the `fdatasync` the server asked for,
//! whether it went through io_uring (`IORING_OP_FSYNC`) or a syscall.
//!
//! A qcow2 image is checked whole: after a FLUSH no page of the file is
//! dirty (data, refcounts, L2 and L1 entries).
//!
//! Physical page numbers need root (CAP_SYS_ADMIN). Without it the test is
//! skipped, except under `COSTACK_REQUIRE_CLIENTS=1` (CI), where it fails.

#![cfg(target_os = "linux")]

mod support;

use std::fs::File;
use std::path::Path;
use std::process::Command;

use support::pagecache::{dirty_pages, PAGE};
use support::{Client, Opts, Server, FLAG_FUA};

/// Writes `len` bytes at `offset` without FUA until the page cache shows
/// them dirty (background writeback may clean them first, rarely), so
/// that a clean result later means the server made them clean.
fn write_dirty(client: &mut Client, image: &Path, offset: u64, len: usize) {
    for attempt in 0..5u8 {
        client.write(offset, &vec![0xa0 + attempt; len], 0).unwrap();
        if dirty_pages(image, offset, len).unwrap() > 0 {
            return;
        }
    }
    panic!("writes without FUA never left dirty pages: the check cannot see them");
}

#[test]
fn flush_and_fua_write_back_on_every_backend() {
    let image = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("durability-{}.img", std::process::id()));
    std::fs::write(&image, vec![0u8; 4 << 20]).unwrap();
    File::open(&image).unwrap().sync_all().unwrap();
    let Some(0) = dirty_pages(&image, 0, 4 << 20) else {
        let e = "physical pages are hidden (not root): cannot check write-back";
        assert!(
            std::env::var("COSTACK_REQUIRE_CLIENTS").as_deref() != Ok("1"),
            "{e}"
        );
        eprintln!("skipping: {e}");
        return;
    };
    for backend in ["io_uring", "epoll", "poll"] {
        let server =
            Server::start_with_env(&[image.to_str().unwrap()], &[("COSTACK_AIO", backend)]);
        let mut client = Client::connect(server.addr, Opts::SIMPLE).unwrap();

        // FLUSH: what was written before it is on the disk when it returns.
        write_dirty(&mut client, &image, 0, 64 << 10);
        client.flush().unwrap();
        assert_eq!(
            dirty_pages(&image, 0, 64 << 10),
            Some(0),
            "{backend}: pages still dirty after FLUSH"
        );

        // FUA: the write itself is on the disk when it returns; the same
        // write without FUA, just before, left its pages dirty.
        write_dirty(&mut client, &image, 1 << 20, 64 << 10);
        client.write(2 << 20, &[0x5a; 64 << 10], FLAG_FUA).unwrap();
        assert_eq!(
            dirty_pages(&image, 2 << 20, 64 << 10),
            Some(0),
            "{backend}: pages of a FUA write still dirty"
        );
        client.flush().unwrap();
        client.disconnect().unwrap();
    }
    let _ = std::fs::remove_file(&image);
}

/// The same for a qcow2 image: after a FLUSH nothing of the file is dirty
/// (data clusters, refcounts, L2 and L1 entries all written back).
#[test]
fn flush_writes_back_a_qcow2_image() {
    if !support::tools::have(&["qemu-img"]) {
        return;
    }
    let image = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("durability-{}.qcow2", std::process::id()));
    let _ = std::fs::remove_file(&image);
    let ok = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-o", "cluster_size=4k"])
        .arg(&image)
        .arg("4M")
        .status()
        .unwrap();
    assert!(ok.success());
    let server = Server::start(&[image.to_str().unwrap()]);
    let mut client = Client::connect(server.addr, Opts::SIMPLE).unwrap();
    let whole = |image: &Path| {
        let len = std::fs::metadata(image).unwrap().len() as usize;
        dirty_pages(image, 0, len.next_multiple_of(PAGE))
    };
    let mut dirty = Some(0);
    for attempt in 0..5u8 {
        client
            .write(u64::from(attempt) << 16, &[0xc0 + attempt; 65536], 0)
            .unwrap();
        dirty = whole(&image);
        if dirty != Some(0) {
            break;
        }
    }
    let Some(n) = dirty else {
        return; // physical pages hidden: the raw test says so
    };
    assert!(n > 0, "allocating writes never left dirty pages");
    client.flush().unwrap();
    assert_eq!(
        whole(&image),
        Some(0),
        "qcow2 pages still dirty after FLUSH"
    );
    client.disconnect().unwrap();
    let _ = std::fs::remove_file(&image);
}
