//! NBD over TLS against real clients: qemu-img/qemu-io (GnuTLS, X.509 and
//! PSK, TLS 1.3 and 1.2), nbdinfo/nbdcopy and libnbd's Python binding.
//! Credentials are made as qemu's and nbdkit's own tests make them
//! (`support::tls_creds`).
//!
//! A missing tool skips a test, except under `COSTACK_REQUIRE_CLIENTS=1`
//! (set by CI), where it is a failure.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod support;

use support::tls_creds::*;
use support::tools::{fails, have, ok, run};

const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const OPT_STARTTLS: u32 = 5;
const OPT_LIST: u32 = 3;
const OPT_GO: u32 = 7;
const OPT_EXPORT_NAME: u32 = 1;
const REP_ACK: u32 = 1;
const REP_ERR_TLS_REQD: u32 = (1 << 31) | 5;

#[test]
fn x509_with_qemu_on_tls13_and_tls12() {
    if !tools() {
        return;
    }
    let c = creds();
    let server = TlsServer::start(&[
        "--tls",
        "require",
        "--tls-certificates",
        c.server.to_str().unwrap(),
    ]);
    assert!(server.url.starts_with("nbds://"), "{}", server.url);
    for (i, priority) in [None, Some("NORMAL:-VERS-TLS1.3")].into_iter().enumerate() {
        let object = x509_object(&c.client, priority);
        let pattern = format!("0x{:x}", 0x31 + i);
        let w = format!("write -P {pattern} 1M 3M");
        let r = format!("read -P {pattern} 1M 3M");
        assert_io_ok(&qemu_io_tls(&server, &object, &[&w, &r, "flush"]));
        // Written over one session, read over another.
        assert_io_ok(&qemu_io_tls(&server, &object, &[&r, "read -P 0 0 1M"]));
    }
    let log = server.log();
    assert!(log.contains("TLSv1.3") && log.contains("TLSv1.2"), "{log}");
    let info = ok(
        "qemu-img",
        &[
            "info",
            "--object",
            &x509_object(&c.client, None),
            "--image-opts",
            &nbd_opts(&server),
        ],
    );
    assert!(info.contains("1 GiB"), "{info}");
}

#[test]
fn psk_with_qemu_and_python_libnbd() {
    if !tools() {
        return;
    }
    let c = creds();
    let keys = c.psk_dir.join("keys.psk");
    let server = TlsServer::start(&["--tls", "require", "--tls-psk", keys.to_str().unwrap()]);
    for priority in [None, Some("NORMAL:-VERS-TLS1.3")] {
        let object = psk_object(&c.psk_dir, priority);
        assert_io_ok(&qemu_io_tls(
            &server,
            &object,
            &["write -P 0x5a 0 64k", "read -P 0x5a 0 64k"],
        ));
    }
    // libnbd's Python binding with the same key file; and a wrong key.
    let Some(python) = python_with_libnbd() else {
        return;
    };
    let script = format!(
        r#"
import nbd, sys
def connect(keys):
    h = nbd.NBD()
    h.set_tls(nbd.TLS_REQUIRE)
    h.set_tls_psk_file(keys)
    h.set_tls_username("alice")
    h.connect_tcp("127.0.0.1", "{port}")
    return h
h = connect("{good}")
assert h.get_tls_negotiated()
assert h.pread(4, 0) == b"\x5a" * 4
h.pwrite(b"python", 4096)
assert h.pread(6, 4096) == b"python"
h.shutdown()
try:
    connect("{bad}")
    sys.exit("connected with the wrong key")
except nbd.Error as e:
    print("refused:", e)
"#,
        port = server.port(),
        good = keys.display(),
        bad = c.wrong_psk_dir.join("keys.psk").display(),
    );
    let out = ok(&python, &["-c", &script]);
    assert!(out.contains("refused"), "{out}");
    // The wrong key cost that client only.
    assert_io_ok(&qemu_io_tls(
        &server,
        &psk_object(&c.psk_dir, None),
        &["read -P 0x5a 0 4k"],
    ));
}

/// A Python that can `import nbd` (Debian's python3-libnbd is for the
/// system interpreter, which need not be the first `python3`).
fn python_with_libnbd() -> Option<String> {
    for python in ["/usr/bin/python3", "python3"] {
        if Command::new(python)
            .args(["-c", "import nbd"])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Some(python.to_owned());
        }
    }
    assert!(
        std::env::var("COSTACK_REQUIRE_CLIENTS").as_deref() != Ok("1"),
        "libnbd's Python binding (python3-libnbd) is not installed"
    );
    eprintln!("skipping: no Python with libnbd");
    None
}

#[test]
fn nbdinfo_and_nbdcopy_with_several_connections() {
    if !tools() {
        return;
    }
    let c = creds();
    let server = TlsServer::start(&[
        "--tls",
        "require",
        "--tls-certificates",
        c.server.to_str().unwrap(),
        "--size",
        "64M",
    ]);
    let uri = format!(
        "nbds://localhost:{}/?tls-certificates={}",
        server.port(),
        c.client.display()
    );
    let info = ok("nbdinfo", &[&uri]);
    assert!(info.contains("with TLS"), "{info}");
    // Random data in, through 4 connections with 16 requests each in
    // flight; then out again, and compared.
    let src = scratch("src.img");
    let mut data = vec![0u8; 64 << 20];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    std::fs::write(&src, &data).unwrap();
    let dst = scratch("dst.img");
    let flags = ["--connections=4", "--requests=16"];
    ok(
        "nbdcopy",
        &[&flags[..], &[src.to_str().unwrap(), &uri]].concat(),
    );
    ok(
        "nbdcopy",
        &[&flags[..], &[&uri, dst.to_str().unwrap()]].concat(),
    );
    assert!(
        std::fs::read(&dst).unwrap() == data,
        "data changed on its way"
    );
    let _ = std::fs::remove_file(src);
    let _ = std::fs::remove_file(dst);
}

#[test]
fn tls_policies_refuse_clearly() {
    if !tools() {
        return;
    }
    let c = creds();
    let certs = c.server.to_str().unwrap();
    // A plain client against `require`: refused, and told why.
    let server = TlsServer::start(&["--tls", "require", "--tls-certificates", certs]);
    let said = fails("qemu-img", &["info", &format!("nbd://{}", server.addr())]);
    assert!(said.contains("TLS"), "{said}");
    // By hand: options get ERR_TLS_REQD, EXPORT_NAME ends the session.
    let mut s = plain_session(&server.addr());
    send_option(&mut s, OPT_LIST, &[]);
    assert_eq!(option_reply(&mut s).1, REP_ERR_TLS_REQD);
    // In qemu-nbd's words, which QEMU's iotest 233 compares.
    send_option(&mut s, OPT_GO, &[0, 0, 0, 0, 0, 0]);
    let (option, ty, text) = option_reply_text(&mut s);
    assert_eq!((option, ty), (OPT_GO, REP_ERR_TLS_REQD));
    assert_eq!(text, "Option 0x7 not permitted before TLS");
    send_option(&mut s, OPT_EXPORT_NAME, b"");
    assert!(closed(&mut s), "EXPORT_NAME in the clear was answered");
    drop(server);

    // `on`: plain and TLS clients both served.
    let server = TlsServer::start(&["--tls", "on", "--tls-certificates", certs]);
    ok(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 7 0 4k",
            &format!("nbd://{}", server.addr()),
        ],
    );
    assert_io_ok(&qemu_io_tls(
        &server,
        &x509_object(&c.client, None),
        &["read -P 7 0 4k"],
    ));
    drop(server);

    // A TLS client against a plain server: a clean refusal.
    let server = TlsServer::start(&[]);
    let out = qemu_io_tls(&server, &x509_object(&c.client, None), &["read 0 4k"]);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "TLS client served in the clear");
    assert!(said.to_lowercase().contains("tls"), "{said}");
    let uri = format!(
        "nbds://localhost:{}/?tls-certificates={}",
        server.port(),
        c.client.display()
    );
    fails("nbdinfo", &[&uri]);
    // The server is fine and serves plain clients.
    ok(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "read 0 4k",
            &format!("nbd://{}", server.addr()),
        ],
    );
}

#[test]
fn peer_verification_and_wrong_cas() {
    if !tools() {
        return;
    }
    let c = creds();
    let mut server = TlsServer::start(&[
        "--tls",
        "require",
        "--tls-certificates",
        c.server.to_str().unwrap(),
        "--tls-verify-peer",
    ]);
    let port = server.port();
    let uri = |dir: &Path| {
        format!(
            "nbds://localhost:{port}/?tls-certificates={}",
            dir.display()
        )
    };
    ok("nbdinfo", &["--size", &uri(&c.client)]);
    // No client certificate, or one from another CA: refused.
    fails("nbdinfo", &["--size", &uri(&c.anonymous)]);
    let out = qemu_io_tls(&server, &x509_object(&c.anonymous, None), &["read 0 4k"]);
    assert!(!out.status.success());
    fails("nbdinfo", &["--size", &uri(&c.stranger)]);
    assert!(server.alive());
    let log = server.log();
    assert!(log.contains("TLS handshake failed"), "{log}");
    // The client does not trust a server whose CA it does not know.
    let plain = TlsServer::start(&[
        "--tls",
        "require",
        "--tls-certificates",
        c.server.to_str().unwrap(),
    ]);
    let stranger_uri = format!(
        "nbds://localhost:{}/?tls-certificates={}",
        plain.port(),
        c.stranger.display()
    );
    fails("nbdinfo", &["--size", &stranger_uri]);
    // Still serving the right client.
    ok("nbdinfo", &["--size", &uri(&c.client)]);
}

/// Greeting read, fixed-newstyle flags sent: ready for options.
fn plain_session(addr: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting[..8], b"NBDMAGIC");
    s.write_all(&3u32.to_be_bytes()).unwrap();
    s
}

fn send_option(s: &mut TcpStream, option: u32, data: &[u8]) {
    let mut m = IHAVEOPT.to_be_bytes().to_vec();
    m.extend(option.to_be_bytes());
    m.extend((data.len() as u32).to_be_bytes());
    m.extend(data);
    s.write_all(&m).unwrap();
}

/// (option, reply type) of the next option reply, its data skipped.
fn option_reply(s: &mut TcpStream) -> (u32, u32) {
    let (option, ty, _) = option_reply_text(s);
    (option, ty)
}

/// (option, reply type, data as text) of the next option reply.
fn option_reply_text(s: &mut TcpStream) -> (u32, u32, String) {
    let mut h = [0u8; 20];
    s.read_exact(&mut h).unwrap();
    let option = u32::from_be_bytes(h[8..12].try_into().unwrap());
    let ty = u32::from_be_bytes(h[12..16].try_into().unwrap());
    let len = u32::from_be_bytes(h[16..20].try_into().unwrap());
    let mut data = vec![0u8; len as usize];
    s.read_exact(&mut data).unwrap();
    (option, ty, String::from_utf8_lossy(&data).into_owned())
}

/// Whether the server closed `s` (rather than leaving it open). Bytes
/// before the end (a TLS alert) are skipped.
fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 512];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn garbage_or_silence_instead_of_a_client_hello() {
    if !tools() {
        return;
    }
    let c = creds();
    let mut server = TlsServer::start(&[
        "--tls",
        "require",
        "--tls-certificates",
        c.server.to_str().unwrap(),
        "--handshake-limit",
        "2",
    ]);
    // STARTTLS acknowledged, then no TLS at all.
    let mut garbage = plain_session(&server.addr());
    send_option(&mut garbage, OPT_STARTTLS, &[]);
    assert_eq!(option_reply(&mut garbage), (OPT_STARTTLS, REP_ACK));
    garbage.write_all(&[0x42; 517]).unwrap();
    let started = Instant::now();
    assert!(closed(&mut garbage), "garbage was taken for a ClientHello");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "dropped only by the deadline"
    );
    // STARTTLS, then silence: the handshake limit covers TLS too.
    let mut silent = plain_session(&server.addr());
    send_option(&mut silent, OPT_STARTTLS, &[]);
    assert_eq!(option_reply(&mut silent), (OPT_STARTTLS, REP_ACK));
    // Others are served meanwhile.
    assert_io_ok(&qemu_io_tls(
        &server,
        &x509_object(&c.client, None),
        &["read 0 4k"],
    ));
    let started = Instant::now();
    assert!(closed(&mut silent), "a silent TLS handshake was kept");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(server.alive());
}

#[test]
fn bad_credentials_fail_at_start() {
    let c = if have(&["certtool", "psktool"]) {
        Some(creds())
    } else {
        None
    };
    let start = |args: &[&str]| -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_costack-nbd"))
            .args(["-p", "0"])
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let missing = scratch("no-such-dir");
    let e = start(&[
        "--tls",
        "on",
        "--tls-certificates",
        missing.to_str().unwrap(),
    ]);
    assert!(
        e.contains("server-cert.pem") && e.contains("No such file"),
        "{e}"
    );
    let e = start(&["--tls", "on"]);
    assert!(
        e.contains("--tls-certificates DIR or --tls-psk FILE"),
        "{e}"
    );
    let e = start(&["--tls-psk", "/dev/null"]);
    assert!(e.contains("--tls is off"), "{e}");
    let e = start(&["--tls", "on", "--tls-psk", "/dev/null"]);
    assert!(e.contains("/dev/null holds no keys"), "{e}");
    let Some(c) = c else { return };
    // A directory without the CA, with --tls-verify-peer.
    let dir = scratch("no-ca");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["server-cert.pem", "server-key.pem"] {
        std::fs::copy(c.server.join(f), dir.join(f)).unwrap();
    }
    let e = start(&[
        "--tls",
        "on",
        "--tls-certificates",
        dir.to_str().unwrap(),
        "--tls-verify-peer",
    ]);
    assert!(e.contains("ca-cert.pem"), "{e}");
    // A key that does not belong to the certificate.
    std::fs::copy(c.client.join("client-key.pem"), dir.join("server-key.pem")).unwrap();
    let e = start(&["--tls", "on", "--tls-certificates", dir.to_str().unwrap()]);
    assert!(e.contains("does not match"), "{e}");
    // A directory that cannot be read: a file where it should be.
    let e = start(&["--tls", "on", "--tls-certificates", "/dev/null"]);
    assert!(e.contains("cannot read /dev/null/server-cert.pem"), "{e}");
}

#[test]
fn tls_over_a_unix_socket() {
    if !tools() {
        return;
    }
    let c = creds();
    let socket = scratch("nbd.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_costack-nbd"))
        .args(["-t", "--print-url", "-k"])
        .arg(&socket)
        .args([
            "--tls",
            "require",
            "--tls-certificates",
            c.server.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("nbds+unix:///"), "{line:?}");
    let uri = format!(
        "nbds+unix:///?socket={}&tls-certificates={}",
        socket.display(),
        c.client.display()
    );
    let info = ok("nbdinfo", &[&uri]);
    let _ = child.kill();
    let _ = child.wait();
    assert!(info.contains("with TLS"), "{info}");
}

#[test]
fn qemu_nbd_style_objects_and_tls_creds() {
    if !tools() {
        return;
    }
    let c = creds();
    let server_x509 = format!(
        "tls-creds-x509,id=tls0,dir={},endpoint=server",
        c.server.display()
    );
    let server = TlsServer::start(&["--object", &server_x509, "--tls-creds", "tls0"]);
    assert!(server.url.starts_with("nbds://"), "{}", server.url);
    // QEMU's default verify-peer=on: a client with a certificate of the
    // CA gets in, one without does not; nor does a plain client.
    let object = x509_object(&c.client, None);
    assert_io_ok(&qemu_io_tls(
        &server,
        &object,
        &["write -P 0x21 0 64k", "read -P 0x21 0 64k"],
    ));
    let anonymous = qemu_io_tls(&server, &x509_object(&c.anonymous, None), &["read 0 4k"]);
    assert!(
        !anonymous.status.success(),
        "a client without a certificate got in"
    );
    let plain = run(
        "qemu-io",
        &[
            "-r",
            "-f",
            "raw",
            "-c",
            "read 0 4k",
            &server.url.replace("nbds://", "nbd://"),
        ],
    );
    assert!(!plain.status.success(), "a plain client got in");
    drop(server);

    let server_psk = format!(
        "tls-creds-psk,id=tls0,dir={},endpoint=server",
        c.psk_dir.display()
    );
    let server = TlsServer::start(&["--object", &server_psk, "--tls-creds=tls0"]);
    let object = psk_object(&c.psk_dir, None);
    assert_io_ok(&qemu_io_tls(
        &server,
        &object,
        &["write -P 0x22 0 64k", "read -P 0x22 0 64k"],
    ));
    let wrong = qemu_io_tls(&server, &psk_object(&c.wrong_psk_dir, None), &["read 0 4k"]);
    assert!(!wrong.status.success(), "a wrong key got in");
}
