//! Checking a qcow2 crash state: `qemu-img check`, the guest's bytes read
//! back through the driver or `qemu-img dd`, and a dirty bitmap's state.

use std::os::unix::fs::FileExt;
use std::path::Path;

use costack_nbd::block::qcow2::bitmap;
use costack_nbd::block::qcow2::{Options, Qcow2};
use costack_nbd::block::BlockDevice;

use super::crash::MemFile;
use super::crash_workload::Expect;
use super::tools::{ok, run};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Reads the windows of the qcow2 image in `bytes` (named `img`, whose
/// backing file it finds) through the driver.
pub fn read_back(img: &Path, bytes: &[u8], expect: &Expect, what: &str) {
    let dev = Qcow2::open_file_with(Box::new(MemFile(bytes.to_vec())), img, &Options::default())
        .unwrap_or_else(|e| panic!("{what}: the driver cannot open it: {e}"));
    expect.compare(what, |at, buf| {
        dev.read_at(buf, at)
            .unwrap_or_else(|e| panic!("{what}: read at {at}: {e}"))
    });
}

/// Reads the windows of the qcow2 file at `path` with `qemu-img dd`.
pub fn read_back_with_qemu(path: &Path, expect: &Expect, what: &str) {
    let raw = path.with_extension("raw");
    let end = expect.view.end();
    if end <= 64 << 20 {
        // dd reads in large requests: much faster than convert on a
        // fragmented image of small clusters.
        let count = format!("count={}", end.div_ceil(1 << 20));
        let (input, output) = (format!("if={}", s(path)), format!("of={}", s(&raw)));
        let args = [
            "dd", "-f", "qcow2", "-O", "raw", "bs=1M", &count, &input, &output,
        ];
        ok("qemu-img", &args);
    } else {
        // Reads only what is allocated, writes a sparse file.
        let args = ["convert", "-f", "qcow2", "-O", "raw", s(path), s(&raw)];
        ok("qemu-img", &args);
    }
    let f = std::fs::File::open(&raw).unwrap();
    expect.compare(&format!("{what} (qemu-img dd)"), |at, buf| {
        f.read_exact_at(buf, at).unwrap()
    });
    std::fs::remove_file(&raw).unwrap();
}

/// `qemu-img check` of the file at `path`: no corruption.
pub fn qemu_img_check(path: &Path, what: &str) {
    let out = run("qemu-img", &["check", "-f", "qcow2", s(path)]);
    let code = out.status.code();
    assert!(
        matches!(code, Some(0 | 3)),
        "{what}: qemu-img check exit {code:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Bitmap `b0` of an image: whether in use, where its table is, its dirty
/// ranges (read through the driver).
pub struct BitmapView {
    pub in_use: bool,
    pub table_offset: u64,
    pub ranges: Vec<std::ops::Range<u64>>,
}

impl BitmapView {
    pub fn of(img: &Path, bytes: &[u8]) -> BitmapView {
        let dev =
            Qcow2::open_file_with(Box::new(MemFile(bytes.to_vec())), img, &Options::default())
                .unwrap();
        let b0 = dev
            .bitmaps()
            .unwrap()
            .into_iter()
            .find(|b| b.name == "b0")
            .expect("bitmap b0");
        let file = MemFile(bytes.to_vec());
        let bits = bitmap::read_bits(&file, &b0, dev.size(), 1 << dev.header().cluster_bits);
        BitmapView {
            in_use: b0.in_use(),
            table_offset: b0.table_offset,
            ranges: bits.map(|b| b.dirty_ranges()).unwrap_or_default(),
        }
    }
}

/// A crash state's bitmap `b0`: in use (qemu knows it is stale), or
/// complete: the one before the run (its old table), if the cut came
/// before the open had marked it in use (`early`), or the one saved at
/// close (the new table). Returns whether it is the old one.
pub fn check_bitmap(
    img: &Path,
    bytes: &[u8],
    (before, after): &(BitmapView, BitmapView),
    early: bool,
    what: &str,
) -> bool {
    let now = BitmapView::of(img, bytes);
    if now.in_use {
        return false;
    }
    let want = if early { before } else { after };
    assert_eq!(
        now.table_offset, want.table_offset,
        "{what}: b0 is not in use but its table is neither the old nor the new one"
    );
    assert_eq!(
        now.ranges, want.ranges,
        "{what}: b0 is not in use but stale"
    );
    early
}
