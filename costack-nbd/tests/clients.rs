//! End-to-end tests: the real `costack-nbd` binary served to real NBD
//! clients (qemu-img, qemu-io, nbdinfo, nbdcopy, nbdsh).
//!
//! A missing client skips its test with a note, unless
//! `COSTACK_REQUIRE_CLIENTS=1` (set by CI), where it is a failure.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod support;

use support::Listen;

struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let (child, url) = support::launch(Listen::Tcp, args, &[], Stdio::inherit());
        assert!(url.starts_with("nbd://"), "unexpected first line: {url:?}");
        Server { child, url }
    }

    fn start_unix(socket: &Path, args: &[&str]) -> Server {
        let (child, url) = support::launch(Listen::Unix(socket), args, &[], Stdio::inherit());
        assert!(url.starts_with("nbd+unix:///"), "{url:?}");
        Server { child, url }
    }

    fn addr(&self) -> String {
        let rest = self.url.trim_start_matches("nbd://");
        rest.split('/').next().unwrap().to_owned()
    }

    fn stop(mut self) -> std::process::ExitStatus {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `tool` exists; without it the test is skipped, or fails in CI.
fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        assert!(
            std::env::var("COSTACK_REQUIRE_CLIENTS").as_deref() != Ok("1"),
            "required NBD client `{tool}` is not installed"
        );
        eprintln!("skipping: `{tool}` is not installed");
    }
    found
}

fn run(cmd: &str, args: &[&str]) -> Output {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn qemu_io(url: &str, cmds: &[&str]) -> String {
    let mut args = vec!["-f", "raw"];
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    args.push(url);
    let out = run("qemu-io", &args);
    let text = stdout(&out);
    assert!(
        !text.contains("Pattern verification failed") && !text.contains("failed:"),
        "{text}"
    );
    text
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("costack-nbd-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn sha(path: &Path) -> String {
    stdout(&run("sha256sum", &[path.to_str().unwrap()]))
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

fn random_file(path: &Path, len: usize, seed: u64) {
    let mut x = seed | 1;
    let mut data = vec![0u8; len];
    for (i, b) in data.iter_mut().enumerate() {
        // Leave some all-zero stretches so sparse handling is exercised.
        if (i / 65536) % 3 == 1 {
            continue;
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(path, data).unwrap();
}

#[test]
fn qemu_img_info_sees_the_memory_disk() {
    if !have("qemu-img") {
        return;
    }
    let server = Server::start(&["--size", "64M"]);
    let out = stdout(&run("qemu-img", &["info", "--output=json", &server.url]));
    assert!(out.contains("\"virtual-size\": 67108864"), "{out}");
    assert!(server.stop().success());
}

#[test]
fn nbdinfo_lists_and_maps() {
    if !have("nbdinfo") {
        return;
    }
    let server = Server::start(&["--size", "16M", "-x", "disk0", "-D", "the test disk"]);
    let info = stdout(&run("nbdinfo", &[&server.url]));
    assert!(info.contains("export-size: 16777216"), "{info}");
    assert!(info.contains("can_flush: true"), "{info}");
    let list = stdout(&run(
        "nbdinfo",
        &["--list", &format!("nbd://{}", server.addr())],
    ));
    assert!(list.contains("disk0"), "{list}");
    assert!(list.contains("the test disk"), "{list}");
    // Write 1 MiB at 4 MiB, then map: data there, holes elsewhere.
    qemu_io(&server.url, &["write -P 0x55 4M 1M"]);
    let map = stdout(&run("nbdinfo", &["--map", &server.url]));
    assert!(map.contains("hole,zero"), "{map}");
    assert!(
        map.lines()
            .any(|l| l.contains("4194304") && l.contains("data")),
        "{map}"
    );
}

#[test]
fn qemu_io_reads_back_what_it_wrote() {
    if !have("qemu-io") {
        return;
    }
    let server = Server::start(&["--size", "64M"]);
    qemu_io(
        &server.url,
        &[
            "write -P 0xab 0 64k",
            "read -P 0xab 0 64k",
            "write -P 0xcd 1M 4k",
            "write -z 64k 64k",
            "read -P 0 64k 64k",
            "read -P 0xcd 1M 4k",
            "discard 1M 64k",
            "write -z -u 2M 1M",
            "read -P 0 2M 1M",
            "flush",
        ],
    );
    // Many writes in flight at once, then verify each.
    let mut cmds: Vec<String> = (0..64)
        .map(|i| format!("aio_write -P {} {} 4k", i + 1, i * 8192))
        .collect();
    cmds.push("aio_flush".into());
    for i in 0..64 {
        cmds.push(format!("read -P {} {} 4k", i + 1, i * 8192));
    }
    let refs: Vec<&str> = cmds.iter().map(String::as_str).collect();
    qemu_io(&server.url, &refs);
    // FUA writes.
    qemu_io(
        &server.url,
        &["write -f -P 0x11 8M 128k", "read -P 0x11 8M 128k"],
    );
}

#[test]
fn qemu_img_convert_and_compare_round_trip() {
    if !have("qemu-img") {
        return;
    }
    let dir = temp_dir("convert");
    let src = dir.join("src.raw");
    random_file(&src, 8 << 20, 7);
    let server = Server::start(&["--size", "8M"]);
    run(
        "qemu-img",
        &[
            "convert",
            "-n",
            "-f",
            "raw",
            "-O",
            "raw",
            src.to_str().unwrap(),
            &server.url,
        ],
    );
    run(
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            src.to_str().unwrap(),
            &server.url,
        ],
    );
    let back = dir.join("back.raw");
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &server.url,
            back.to_str().unwrap(),
        ],
    );
    assert_eq!(sha(&src), sha(&back));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn nbdcopy_both_ways_with_four_connections() {
    if !have("nbdcopy") {
        return;
    }
    let dir = temp_dir("nbdcopy");
    let src = dir.join("src.raw");
    random_file(&src, 32 << 20, 11);
    let server = Server::start(&["--size", "32M", "--threads", "2"]);
    run(
        "nbdcopy",
        &["--connections=4", src.to_str().unwrap(), &server.url],
    );
    let back = dir.join("back.raw");
    run(
        "nbdcopy",
        &["--connections=4", &server.url, back.to_str().unwrap()],
    );
    assert_eq!(sha(&src), sha(&back));
    assert!(server.stop().success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn file_export_serves_and_persists_writes() {
    if !have("qemu-io") {
        return;
    }
    let dir = temp_dir("file");
    let img = dir.join("disk.raw");
    std::fs::write(&img, vec![0u8; 4 << 20]).unwrap();
    let server = Server::start(&[img.to_str().unwrap()]);
    qemu_io(
        &server.url,
        &[
            "write -P 0x5a 0 256k",
            "write -z 1M 512k",
            "discard 2M 1M",
            "read -P 0 2M 1M",
            "flush",
        ],
    );
    // kill -9 after an acknowledged flush: the data is on disk.
    drop(server);
    let data = std::fs::read(&img).unwrap();
    assert!(data[..256 << 10].iter().all(|&b| b == 0x5a));
    assert!(data[1 << 20..(3 << 19)].iter().all(|&b| b == 0));
    let _ = std::fs::remove_dir_all(&dir);
}

/// QEMU 10's clients ask for extended headers: 32-byte requests and
/// replies, 64-bit lengths, `BLOCK_STATUS_EXT`. Everything they do must
/// work over them, past 4 GiB included.
#[test]
fn qemu_clients_negotiate_extended_headers() {
    if !have("qemu-io") || !have("qemu-img") || !have("qemu-nbd") {
        return;
    }
    let dir = temp_dir("extended");
    let img = dir.join("disk.raw");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(8 << 30))
        .unwrap();
    let server = Server::start(&["-f", "raw", img.to_str().unwrap()]);
    let (host, port) = server
        .addr()
        .rsplit_once(':')
        .map(|(h, p)| (h.to_owned(), p.to_owned()))
        .unwrap();
    let list = stdout(&run("qemu-nbd", &["-L", "-b", &host, "-p", &port]));
    assert!(list.contains("transaction size: 64-bit"), "{list}");
    qemu_io(
        &server.url,
        &[
            "write -P 0x5a 0 64k",
            "write -P 0x11 7G 64k",
            "write -z 1G 1G",
            "read -P 0x5a 0 64k",
            "read -P 0x11 7G 64k",
            "read -P 0 6G 64k",
            "flush",
        ],
    );
    // Block status: one hole of about 7 GiB, which only 64-bit extents
    // can describe in a descriptor.
    let map = stdout(&run(
        "qemu-img",
        &["map", "--output=json", "-f", "raw", &server.url],
    ));
    let data: Vec<&str> = map
        .lines()
        .filter(|l| l.contains("\"data\": true"))
        .collect();
    assert_eq!(data.len(), 2, "{map}");
    assert!(data[0].contains("\"start\": 0, \"length\": 65536"), "{map}");
    assert!(
        data[1].contains("\"start\": 7516192768, \"length\": 65536"),
        "{map}"
    );
    // On disk after the flush, where the writes said.
    drop(server);
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(&img).unwrap();
    let mut buf = vec![0u8; 65536];
    file.read_exact_at(&mut buf, 7 << 30).unwrap();
    assert!(buf.iter().all(|&b| b == 0x11));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn file_export_with_cache_none() {
    if !have("qemu-io") {
        return;
    }
    let dir = temp_dir("direct");
    let img = dir.join("disk.raw");
    std::fs::write(&img, vec![0u8; 4 << 20]).unwrap();
    // tmpfs refuses O_DIRECT; use the current directory's filesystem then.
    let probe = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags_direct()
        .open(&img);
    if probe.is_err() {
        eprintln!("skipping: the temp filesystem refuses O_DIRECT");
        return;
    }
    let server = Server::start(&["--cache", "none", img.to_str().unwrap()]);
    qemu_io(
        &server.url,
        &["write -P 0x77 4096 8192", "read -P 0x77 4096 8192", "flush"],
    );
    drop(server);
    let data = std::fs::read(&img).unwrap();
    assert!(data[4096..12288].iter().all(|&b| b == 0x77));
    let _ = std::fs::remove_dir_all(&dir);
}

trait DirectExt {
    fn custom_flags_direct(&mut self) -> &mut Self;
}

impl DirectExt for std::fs::OpenOptions {
    fn custom_flags_direct(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_DIRECT)
    }
}

#[test]
fn read_only_export_refuses_writes() {
    if !have("qemu-io") {
        return;
    }
    let server = Server::start(&["-r", "--size", "1M"]);
    let out = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write 0 4k", &server.url])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("not permitted")
            || text.contains("Permission denied")
            || text.contains("read-only"),
        "{text}"
    );
    run(
        "qemu-io",
        &["-r", "-f", "raw", "-c", "read -P 0 0 4k", &server.url],
    );
}

#[test]
fn unix_socket_export() {
    if !have("qemu-io") {
        return;
    }
    let dir = temp_dir("unix");
    let sock = dir.join("nbd.sock");
    let server = Server::start_unix(&sock, &["--size", "1M"]);
    qemu_io(&server.url, &["write -P 3 0 4k", "read -P 3 0 4k"]);
    assert!(server.stop().success());
    assert!(!sock.exists(), "the socket is removed on exit");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn garbage_and_truncated_clients_do_not_hurt_others() {
    if !have("qemu-io") {
        return;
    }
    let server = Server::start(&["--size", "1M"]);
    // A client that sends garbage instead of the handshake reply.
    let mut bad = TcpStream::connect(server.addr()).unwrap();
    let mut greeting = [0u8; 18];
    bad.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting[..8], b"NBDMAGIC");
    bad.write_all(&[0xff; 64]).unwrap();
    bad.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut rest = Vec::new();
    let _ = bad.read_to_end(&mut rest); // the server closes the connection
                                        // A client that disconnects half-way through an option.
    let mut half = TcpStream::connect(server.addr()).unwrap();
    half.read_exact(&mut greeting).unwrap();
    half.write_all(&[0, 0, 0, 3, b'I', b'H']).unwrap();
    drop(half);
    // A well-behaved client is still served.
    qemu_io(&server.url, &["write -P 9 0 4k", "read -P 9 0 4k"]);
    assert!(server.stop().success());
}

#[test]
fn shared_limit_is_enforced() {
    if !have("qemu-io") {
        return;
    }
    let server = Server::start(&["--size", "1M", "-e", "1"]);
    let mut first = TcpStream::connect(server.addr()).unwrap();
    let mut greeting = [0u8; 18];
    first.read_exact(&mut greeting).unwrap();
    // Only established clients take `-e` slots: `first` finishes its
    // handshake (fixed newstyle, no zeroes, NBD_OPT_EXPORT_NAME "").
    first.write_all(&3u32.to_be_bytes()).unwrap();
    first.write_all(b"IHAVEOPT").unwrap();
    first.write_all(&1u32.to_be_bytes()).unwrap();
    first.write_all(&0u32.to_be_bytes()).unwrap();
    let mut export = [0u8; 10]; // size and transmission flags
    first.read_exact(&mut export).unwrap();
    assert_eq!(u64::from_be_bytes(export[..8].try_into().unwrap()), 1 << 20);
    // While `first` is connected, a second client waits for the slot (as
    // qemu-nbd: it is not accepted yet, so it gets no greeting)...
    let mut second = TcpStream::connect(server.addr()).unwrap();
    let mut buf = [0u8; 18];
    let waited =
        support::read_within(&mut second, &mut buf, Duration::from_millis(500)).unwrap_err();
    assert!(
        matches!(
            waited.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "the second client must wait, not be refused: {waited}"
    );
    // ...and is served once `first` leaves.
    drop(first);
    second
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    second.read_exact(&mut buf).unwrap();
    assert_eq!(&buf[..8], b"NBDMAGIC");
    drop(second);
    qemu_io(&server.url, &["read -P 0 0 4k"]);
}

/// Two clients accepted while the last `-e` slot was free (both
/// negotiating, which takes no slot): the one that finishes second waits
/// for the slot instead of being dropped, and is served once it frees.
#[test]
fn a_client_that_negotiated_beside_the_last_slot_waits_for_it() {
    let server = Server::start(&["--size", "1M", "-e", "1"]);
    // Both are greeted: neither has a slot yet.
    let connect = || {
        let mut s = TcpStream::connect(server.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut greeting = [0u8; 18];
        s.read_exact(&mut greeting).unwrap();
        assert_eq!(&greeting[..8], b"NBDMAGIC");
        s
    };
    let (mut first, mut second) = (connect(), connect());
    // Each ends negotiation: fixed newstyle, no zeroes, EXPORT_NAME "".
    let established = |s: &mut TcpStream| {
        s.write_all(&3u32.to_be_bytes()).unwrap();
        s.write_all(b"IHAVEOPT").unwrap();
        s.write_all(&1u32.to_be_bytes()).unwrap();
        s.write_all(&0u32.to_be_bytes()).unwrap();
        let mut export = [0u8; 10];
        s.read_exact(&mut export).unwrap();
    };
    established(&mut first);
    established(&mut second);
    // A read: NBD_CMD_READ of 512 bytes at 0, handle 7.
    let mut read = 0x2560_9513u32.to_be_bytes().to_vec();
    read.extend([0, 0, 0, 0]);
    read.extend(7u64.to_be_bytes());
    read.extend(0u64.to_be_bytes());
    read.extend(512u32.to_be_bytes());
    second.write_all(&read).unwrap();
    // No answer while `first` holds the slot...
    let mut reply = [0u8; 16 + 512];
    let waited =
        support::read_within(&mut second, &mut reply, Duration::from_millis(300)).unwrap_err();
    assert!(
        matches!(
            waited.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "the second client must wait for the slot: {waited}"
    );
    // ...and the answer once it leaves (NBD_CMD_DISC).
    let mut disc = 0x2560_9513u32.to_be_bytes().to_vec();
    disc.extend([0, 0, 0, 2]);
    disc.extend([0; 20]);
    first.write_all(&disc).unwrap();
    second
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    second.read_exact(&mut reply).unwrap();
    assert_eq!(&reply[..8], &[0x67, 0x44, 0x66, 0x98, 0, 0, 0, 0]);
    assert_eq!(u64::from_be_bytes(reply[8..16].try_into().unwrap()), 7);
}

#[test]
fn nbdsh_script_if_present() {
    if Command::new("sh")
        .args(["-c", "command -v nbdsh"])
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        eprintln!("skipping: nbdsh is not installed (it is optional)");
        return;
    }
    let server = Server::start(&["--size", "1M"]);
    let script = "\
h.pwrite(b'x' * 4096, 8192)
assert h.pread(4096, 8192) == b'x' * 4096
assert h.get_size() == 1048576
assert h.can_flush() and h.can_trim() and h.can_zero()
h.flush()
";
    // nbdsh is a Python script: run it with Debian's Python, which has the
    // nbd module, whatever `python3` comes first on PATH.
    let path = format!("/usr/bin:{}", std::env::var("PATH").unwrap_or_default());
    let out = Command::new("nbdsh")
        .args(["-u", &server.url, "-c", script])
        .env("PATH", path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nbdsh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
