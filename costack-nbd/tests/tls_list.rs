//! `-L` over TLS (qemu-nbd's `--list --tls-creds`, `--tls-hostname`) and
//! `--tls-authz`: against costack-nbd servers, with qemu as the other
//! client, on credentials made as qemu's own tests make them.
//!
//! A missing tool skips a test, except under `COSTACK_REQUIRE_CLIENTS=1`
//! (set by CI), where it is a failure.

use std::path::Path;
use std::process::Output;

mod support;

use support::tls_creds::*;
use support::tools::{have, run};

/// `costack-nbd -L` against `server` (by `host`) with `args` added.
fn list(server: &TlsServer, host: &str, args: &[&str]) -> Output {
    let port = server.port();
    let mut all = vec!["-L", "-b", host, "-p", &port];
    all.extend_from_slice(args);
    run(env!("CARGO_BIN_EXE_costack-nbd"), &all)
}

fn x509_client(dir: &Path) -> String {
    format!(
        "tls-creds-x509,id=tls0,endpoint=client,dir={}",
        dir.display()
    )
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Succeeded, listing the one export.
fn listed(o: &Output) -> bool {
    o.status.success() && String::from_utf8_lossy(&o.stdout).contains("exports available: 1")
}

#[test]
fn listing_over_tls_checks_the_server_as_qemu_does() {
    if !have(&["certtool", "psktool"]) {
        return;
    }
    let c = creds();
    let server = TlsServer::start(&[
        "--object",
        &format!(
            "tls-creds-x509,id=s0,endpoint=server,verify-peer=off,dir={}",
            c.server.display()
        ),
        "--tls-creds",
        "s0",
    ]);
    let anonymous = x509_client(&c.anonymous);
    let tls = ["--object", anonymous.as_str(), "--tls-creds", "tls0"];
    // By address and by name: the certificate names both.
    for host in ["127.0.0.1", "localhost"] {
        let o = list(&server, host, &tls);
        assert!(listed(&o), "{host}: {}", stderr(&o));
    }
    // A name the certificate does not carry, then one it does.
    let mut other = tls.to_vec();
    other.extend(["--tls-hostname", "elsewhere.example"]);
    let o = list(&server, "127.0.0.1", &other);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("Certificate does not match the hostname elsewhere.example"),
        "{}",
        stderr(&o)
    );
    let mut named = tls.to_vec();
    named.extend(["--tls-hostname", "localhost"]);
    assert!(listed(&list(&server, "127.0.0.1", &named)));
    // A server whose CA this client does not know.
    let stranger = x509_client(&c.stranger);
    let o = list(
        &server,
        "127.0.0.1",
        &["--object", &stranger, "--tls-creds", "tls0"],
    );
    assert!(
        stderr(&o).contains("The certificate hasn't got a known issuer"),
        "{}",
        stderr(&o)
    );
    // Plain against TLS, in qemu-nbd's words.
    let o = list(&server, "127.0.0.1", &[]);
    assert!(
        stderr(&o).contains("TLS negotiation required before option 3 (list)"),
        "{}",
        stderr(&o)
    );
    // And qemu-nbd's own -L agrees with ours on this server.
    if have(&["qemu-nbd"]) {
        let port = server.port();
        let q = run(
            "qemu-nbd",
            &[
                "-L",
                "-b",
                "127.0.0.1",
                "-p",
                &port,
                "--object",
                &anonymous,
                "--tls-creds",
                "tls0",
            ],
        );
        let ours = list(&server, "127.0.0.1", &tls);
        assert_eq!(
            String::from_utf8_lossy(&q.stdout),
            String::from_utf8_lossy(&ours.stdout)
        );
    }
}

#[test]
fn listing_over_tls_with_a_psk_and_against_a_plain_server() {
    if !have(&["certtool", "psktool"]) {
        return;
    }
    let c = creds();
    let server = TlsServer::start(&[
        "--object",
        &format!(
            "tls-creds-psk,id=s0,endpoint=server,dir={}",
            c.psk_dir.display()
        ),
        "--tls-creds",
        "s0",
    ]);
    let psk = |dir: &Path| {
        format!(
            "tls-creds-psk,id=tls0,endpoint=client,username=alice,dir={}",
            dir.display()
        )
    };
    let good = psk(&c.psk_dir);
    let o = list(
        &server,
        "127.0.0.1",
        &["--object", &good, "--tls-creds", "tls0"],
    );
    assert!(listed(&o), "{}", stderr(&o));
    let wrong = psk(&c.wrong_psk_dir);
    let o = list(
        &server,
        "127.0.0.1",
        &["--object", &wrong, "--tls-creds", "tls0"],
    );
    assert!(!o.status.success());
    // TLS asked of a server without it.
    let plain = TlsServer::start(&[]);
    let o = list(
        &plain,
        "127.0.0.1",
        &["--object", &good, "--tls-creds", "tls0"],
    );
    let e = stderr(&o);
    assert!(
        e.contains("Denied by server for option 5 (starttls)")
            && e.contains("server reported: TLS not configured"),
        "{e}"
    );
}

/// The subject of `cert` as GnuTLS prints it (what qemu compares).
fn subject(cert: &Path) -> String {
    let o = run("certtool", &["-i", "--infile", cert.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Subject: "))
        .unwrap_or_else(|| panic!("no Subject in {text}"))
        .to_owned()
}

#[test]
fn tls_authz_serves_only_the_named_client() {
    if !have(&["certtool", "psktool", "qemu-img"]) {
        return;
    }
    let c = creds();
    let serve = |identity: &str| {
        TlsServer::start(&[
            "--object",
            &format!(
                "tls-creds-x509,id=s0,endpoint=server,dir={}",
                c.server.display()
            ),
            "--object",
            &format!(
                "authz-simple,id=a0,identity={}",
                identity.replace(',', ",,")
            ),
            "--tls-creds",
            "s0",
            "--tls-authz",
            "a0",
        ])
    };
    let info = |server: &TlsServer| {
        let opts = format!(
            "driver=nbd,host=127.0.0.1,port={},tls-creds=tls0",
            server.port()
        );
        run(
            "qemu-img",
            &[
                "info",
                "--object",
                &x509_client(&c.client),
                "--image-opts",
                &opts,
            ],
        )
    };
    // The client's name as GnuTLS writes it is the one allowed.
    let name = subject(&c.client.join("client-cert.pem"));
    let allowed = serve(&name);
    let o = info(&allowed);
    assert!(o.status.success(), "{}: {}", name, stderr(&o));
    let tls = x509_client(&c.client);
    assert!(listed(&list(
        &allowed,
        "127.0.0.1",
        &["--object", &tls, "--tls-creds", "tls0"]
    )));
    // Anyone else is refused after the handshake, and the server says who.
    let denied = serve("CN=somebody else,O=costack");
    assert!(!info(&denied).status.success());
    let log = denied.log();
    assert!(
        log.contains(&format!("TLS x509 authz check for {name} is denied")),
        "{log}"
    );
    // No certificate asked of the client: nothing to authorize, refused.
    let o = run(
        env!("CARGO_BIN_EXE_costack-nbd"),
        &[
            "--object",
            &format!(
                "tls-creds-x509,id=s0,endpoint=server,verify-peer=off,dir={}",
                c.server.display()
            ),
            "--object",
            "authz-simple,id=a0,identity=CN=x",
            "--tls-creds",
            "s0",
            "--tls-authz",
            "a0",
        ],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("verify-peer=on"), "{}", stderr(&o));
}
