//! TLS test support: a `costack-nbd` started with its log kept, and
//! credentials made as qemu's and nbdkit's own tests make them, with
//! `certtool` and `psktool` (gnutls-bin).

use std::path::{Path, PathBuf};
use std::process::{Child, Output};
use std::sync::OnceLock;

use super::tools::{have, run};

pub struct TlsServer {
    child: Child,
    pub url: String,
    log: PathBuf,
}

impl TlsServer {
    /// Starts `costack-nbd -p 0 ARGS`, its log (`-vv`) kept in a file.
    pub fn start(args: &[&str]) -> TlsServer {
        let log = scratch("server.log");
        let verbose: Vec<&str> = ["-vvv"].iter().chain(args).copied().collect();
        let stderr = std::fs::File::create(&log).unwrap().into();
        let (child, url) = super::launch(super::Listen::Tcp, &verbose, &[], stderr);
        assert!(
            url.starts_with("nbd://") || url.starts_with("nbds://"),
            "unexpected first line {url:?}: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        TlsServer { child, url, log }
    }

    pub fn port(&self) -> String {
        let rest = self.url.split("://").nth(1).unwrap();
        let hostport = rest.split('/').next().unwrap();
        hostport.rsplit(':').next().unwrap().to_owned()
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the server process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn scratch(name: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("tls-{}-{n}-{name}", std::process::id()))
}

/// Credentials, made once per test run.
pub struct Creds {
    /// ca-cert.pem, server-cert.pem, server-key.pem.
    pub server: PathBuf,
    /// ca-cert.pem, client-cert.pem, client-key.pem (signed by the CA).
    pub client: PathBuf,
    /// ca-cert.pem only: no client certificate.
    pub anonymous: PathBuf,
    /// A client whose certificate and CA are another CA's.
    pub stranger: PathBuf,
    /// keys.psk with identity "alice" (a directory, as qemu wants it).
    pub psk_dir: PathBuf,
    /// keys.psk with the same identity and another key.
    pub wrong_psk_dir: PathBuf,
}

pub fn certtool(args: &[&str], out: &Path) {
    let o = run("certtool", args);
    assert!(
        o.status.success(),
        "certtool {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    if !args.contains(&"--outfile") {
        std::fs::write(out, &o.stdout).unwrap();
    }
}

/// A CA in `dir` (ca-cert.pem, ca-key.pem).
pub fn make_ca(dir: &Path, cn: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let info = dir.join("ca.info");
    std::fs::write(&info, format!("cn = {cn}\nca\ncert_signing_key\n")).unwrap();
    let key = dir.join("ca-key.pem");
    certtool(&["--generate-privkey"], &key);
    certtool(
        &[
            "--generate-self-signed",
            "--load-privkey",
            key.to_str().unwrap(),
            "--template",
            info.to_str().unwrap(),
            "--outfile",
            dir.join("ca-cert.pem").to_str().unwrap(),
        ],
        &key,
    );
}

/// `role`-cert.pem and `role`-key.pem in `out`, signed by the CA in `ca`,
/// with `ca-cert.pem` beside them.
pub fn make_cert(ca: &Path, out: &Path, role: &str, template: &str) {
    std::fs::create_dir_all(out).unwrap();
    let info = out.join(format!("{role}.info"));
    std::fs::write(&info, template).unwrap();
    let key = out.join(format!("{role}-key.pem"));
    certtool(&["--generate-privkey"], &key);
    certtool(
        &[
            "--generate-certificate",
            "--load-ca-certificate",
            ca.join("ca-cert.pem").to_str().unwrap(),
            "--load-ca-privkey",
            ca.join("ca-key.pem").to_str().unwrap(),
            "--load-privkey",
            key.to_str().unwrap(),
            "--template",
            info.to_str().unwrap(),
            "--outfile",
            out.join(format!("{role}-cert.pem")).to_str().unwrap(),
        ],
        &key,
    );
    std::fs::copy(ca.join("ca-cert.pem"), out.join("ca-cert.pem")).unwrap();
    std::fs::remove_file(info).unwrap();
}

pub const SERVER_INFO: &str = "organization = costack\ncn = localhost\ndns_name = localhost\n\
    ip_address = 127.0.0.1\ntls_www_server\nencryption_key\nsigning_key\n";
pub const CLIENT_INFO: &str = "organization = costack\ncn = client\ntls_www_client\n\
    encryption_key\nsigning_key\n";

pub fn creds() -> &'static Creds {
    static CREDS: OnceLock<Creds> = OnceLock::new();
    CREDS.get_or_init(|| {
        let root = scratch("creds");
        let ca = root.join("ca");
        make_ca(&ca, "costack test CA");
        let server = root.join("server");
        make_cert(&ca, &server, "server", SERVER_INFO);
        let client = root.join("client");
        make_cert(&ca, &client, "client", CLIENT_INFO);
        let anonymous = root.join("anonymous");
        std::fs::create_dir_all(&anonymous).unwrap();
        std::fs::copy(ca.join("ca-cert.pem"), anonymous.join("ca-cert.pem")).unwrap();
        let other_ca = root.join("other-ca");
        make_ca(&other_ca, "another CA");
        let stranger = root.join("stranger");
        make_cert(&other_ca, &stranger, "client", CLIENT_INFO);

        let psk_dir = root.join("psk");
        let wrong_psk_dir = root.join("wrong-psk");
        for dir in [&psk_dir, &wrong_psk_dir] {
            std::fs::create_dir_all(dir).unwrap();
            let file = dir.join("keys.psk");
            let o = run("psktool", &["-u", "alice", "-p", file.to_str().unwrap()]);
            assert!(
                o.status.success(),
                "psktool: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        Creds {
            server,
            client,
            anonymous,
            stranger,
            psk_dir,
            wrong_psk_dir,
        }
    })
}

pub fn tools() -> bool {
    have(&[
        "certtool", "psktool", "qemu-img", "qemu-io", "nbdinfo", "nbdcopy",
    ])
}

/// `--object` for qemu's X.509 client credentials in `dir`; `priority`
/// restricts GnuTLS (for example to TLS 1.2).
pub fn x509_object(dir: &Path, priority: Option<&str>) -> String {
    let mut o = format!(
        "tls-creds-x509,id=tls0,endpoint=client,dir={}",
        dir.display()
    );
    if let Some(p) = priority {
        o += &format!(",priority={p}");
    }
    o
}

pub fn psk_object(dir: &Path, priority: Option<&str>) -> String {
    let mut o = format!(
        "tls-creds-psk,id=tls0,endpoint=client,username=alice,dir={}",
        dir.display()
    );
    if let Some(p) = priority {
        o += &format!(",priority={p}");
    }
    o
}

pub fn nbd_opts(server: &TlsServer) -> String {
    format!(
        "driver=nbd,host=127.0.0.1,port={},tls-creds=tls0",
        server.port()
    )
}

/// qemu-io over TLS with `object`; `cmds` run in order.
pub fn qemu_io_tls(server: &TlsServer, object: &str, cmds: &[&str]) -> Output {
    let opts = nbd_opts(server);
    let mut args = vec!["--object", object, "--image-opts"];
    for c in cmds {
        args.extend(["-c", c]);
    }
    args.push(&opts);
    run("qemu-io", &args)
}

pub fn assert_io_ok(out: &Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "qemu-io failed: {text}");
    assert!(
        !text.contains("Pattern verification failed") && !text.contains("failed:"),
        "{text}"
    );
    text
}
