//! NBD over TLS (`NBD_OPT_STARTTLS`), with OpenSSL, on costack's coroutine
//! I/O.
//!
//! [`TlsConfig::load`] reads the credentials as qemu-nbd and nbdkit lay
//! them out: a directory with `server-cert.pem` and `server-key.pem` (and
//! `ca-cert.pem` to check client certificates), or a PSK file of
//! `identity:hexkey` lines as `psktool` writes it. TLS 1.2 and 1.3 are
//! accepted.
//!
//! [`TlsStream`] runs the TLS session of one connection. OpenSSL never
//! waits here: the socket is read and written without blocking, and when
//! OpenSSL wants more input (or room to send) the calling coroutine waits
//! for the socket outside of OpenSSL, with [`aio::wait_readable`] or
//! [`aio::wait_writable`], and calls OpenSSL again. Running OpenSSL over a
//! stream that yields *inside* its callbacks would let a second coroutine
//! enter the same `SSL` object while the first is suspended in the middle
//! of a call; here every OpenSSL call runs to its end without a yield.
//! Reads and writes are each serialized by a [`CoMutex`], so a reader and
//! a writer may use one stream at once, as the server's reply path needs.

use std::cell::RefCell;
use std::fs;
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::path::{Path, PathBuf};

use costack::aio;
use costack::sync::CoMutex;
use openssl::error::ErrorStack;
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::ssl::{
    ErrorCode, Ssl, SslAcceptor, SslMethod, SslOptions, SslStream, SslVerifyMode, SslVersion,
};
use openssl::x509::{X509NameRef, X509};

/// Most bytes copied into one `SSL_write` by a vectored write: a reply's
/// header and data go out in shared records instead of a record each.
const GATHER_MAX: usize = 256 << 10;

/// Longest PSK accepted (OpenSSL's own limit is 256 bytes).
const MAX_PSK_LEN: usize = 256;

/// The server's TLS credentials and settings, shared by every connection.
#[derive(Clone)]
pub struct TlsConfig {
    acceptor: SslAcceptor,
    kind: &'static str,
    /// The one client certificate distinguished name served, if limited
    /// (`--tls-authz`).
    authz: Option<String>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("kind", &self.kind)
            .field("authz", &self.authz)
            .finish()
    }
}

/// Where the credentials come from (`--tls-certificates`, `--tls-psk`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// X.509: a directory holding `server-cert.pem`, `server-key.pem` and,
    /// when clients are verified, `ca-cert.pem`.
    Certificates {
        /// The directory.
        dir: PathBuf,
        /// Require a client certificate signed by `ca-cert.pem`.
        verify_peer: bool,
    },
    /// Pre-shared keys: a file of `identity:hexkey` lines.
    Psk(PathBuf),
}

impl TlsConfig {
    /// Loads `credentials` and builds the server's TLS settings.
    ///
    /// # Errors
    /// `NotFound`/`PermissionDenied` naming the file that could not be
    /// read, or `InvalidData` naming the file OpenSSL or the PSK parser
    /// refused and why.
    pub fn load(credentials: &Credentials) -> io::Result<TlsConfig> {
        let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())
            .map_err(|e| openssl_error("cannot set up TLS", e))?;
        b.set_min_proto_version(Some(SslVersion::TLS1_2))
            .map_err(|e| openssl_error("cannot set up TLS", e))?;
        // A client-started renegotiation is a second handshake inside the
        // data stream; NBD clients have no use for it.
        b.set_options(SslOptions::NO_RENEGOTIATION);
        let kind = match credentials {
            Credentials::Certificates { dir, verify_peer } => {
                let cert = readable(dir, "server-cert.pem")?;
                let key = readable(dir, "server-key.pem")?;
                let bad_cert = |why: String| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("bad certificate {}: {why}", cert.display()),
                    )
                };
                let chain =
                    X509::stack_from_pem(&fs::read(&cert)?).map_err(|e| bad_cert(e.to_string()))?;
                let Some((leaf, rest)) = chain.split_first() else {
                    return Err(bad_cert("no PEM certificate in it".into()));
                };
                let pkey = PKey::private_key_from_pem(&fs::read(&key)?)
                    .map_err(|e| openssl_error(&format!("bad private key {}", key.display()), e))?;
                let leaf_key = leaf.public_key().map_err(|e| bad_cert(e.to_string()))?;
                if !leaf_key.public_eq(&pkey) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{} does not match {}", key.display(), cert.display()),
                    ));
                }
                let setup = |e| openssl_error("cannot set up TLS", e);
                b.set_certificate(leaf).map_err(setup)?;
                for extra in rest {
                    b.add_extra_chain_cert(extra.clone()).map_err(setup)?;
                }
                b.set_private_key(&pkey).map_err(setup)?;
                if *verify_peer {
                    let ca = readable(dir, "ca-cert.pem")?;
                    b.set_ca_file(&ca)
                        .map_err(|e| openssl_error(&format!("bad CA file {}", ca.display()), e))?;
                    b.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
                }
                "x509"
            }
            Credentials::Psk(path) => {
                let keys = read_psk_file(path)?;
                // TLS 1.2 needs PSK cipher suites (the defaults have none);
                // TLS 1.3 takes the PSK through the same callback.
                b.set_cipher_list("ECDHEPSK:DHEPSK:PSK:!eNULL:!NULL:!3DES:!RC4")
                    .map_err(|e| openssl_error("cannot enable PSK cipher suites", e))?;
                b.set_psk_server_callback(move |_ssl, identity, out| {
                    let key = identity.and_then(|id| {
                        keys.iter()
                            .find(|(name, _)| name.as_slice() == id)
                            .map(|(_, k)| k)
                    });
                    match key {
                        Some(k) if k.len() <= out.len() => {
                            out[..k.len()].copy_from_slice(k);
                            Ok(k.len())
                        }
                        // Unknown identity: zero length refuses it.
                        _ => Ok(0),
                    }
                });
                "psk"
            }
        };
        Ok(TlsConfig {
            acceptor: b.build(),
            kind,
            authz: None,
        })
    }

    /// Serves only the client whose certificate's distinguished name is
    /// `identity`, written as GnuTLS and qemu write it (RFC 4514:
    /// `CN=name,O=org,C=country`, most specific first); see
    /// [`distinguished_name`]. Needs verified client certificates.
    pub fn authorize_only(self, identity: String) -> TlsConfig {
        TlsConfig {
            authz: Some(identity),
            ..self
        }
    }

    /// `"x509"` or `"psk"`, for logs.
    pub fn kind(&self) -> &'static str {
        self.kind
    }
}

/// `dir/name`, checked readable now so that a bad directory fails at start.
fn readable(dir: &Path, name: &str) -> io::Result<PathBuf> {
    let path = dir.join(name);
    fs::File::open(&path)
        .map(|_| path.clone())
        .map_err(|e| io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display())))
}

fn openssl_error(what: &str, e: ErrorStack) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {e}"))
}

/// Parses a `psktool` key file: `identity:hexkey` per line.
fn read_psk_file(path: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let text = fs::read_to_string(path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot read {}: {e}", path.display())))?;
    let bad = |line: usize, why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} line {line}: {why}", path.display()),
        )
    };
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        let Some((identity, hex)) = line.rsplit_once(':') else {
            return Err(bad(i + 1, "expected identity:hexkey"));
        };
        if identity.is_empty() {
            return Err(bad(i + 1, "empty identity"));
        }
        let key = decode_hex(hex).ok_or_else(|| bad(i + 1, "the key is not hexadecimal"))?;
        if key.is_empty() || key.len() > MAX_PSK_LEN {
            return Err(bad(i + 1, "the key must be 1 to 256 bytes"));
        }
        keys.push((identity.as_bytes().to_vec(), key));
    }
    if keys.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} holds no keys", path.display()),
        ));
    }
    Ok(keys)
}

pub(crate) fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The socket under OpenSSL: reads and writes that never block (nor
/// yield), so that OpenSSL sees `WouldBlock` and returns `WANT_*`.
#[derive(Debug)]
struct Nonblocking(RawFd);

impl Read for Nonblocking {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for `buf.len()` writable bytes; the fd is
        // the stream's own socket, open while the `TlsStream` lives (the
        // socket is dropped after the `SslStream` that holds this).
        let n = unsafe {
            libc::recv(
                self.0,
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

impl Write for Nonblocking {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for `buf.len()` readable bytes; the fd is
        // open, as for `read`. MSG_NOSIGNAL: a closed peer is an error, not
        // a SIGPIPE.
        let n = unsafe {
            libc::send(
                self.0,
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One connection's TLS session over socket `S`, read and written from
/// coroutines as blocking code: `&TlsStream` is `Read + Write`.
pub struct TlsStream<S: AsRawFd> {
    /// Dropped before `socket`: the fd it reads stays open until then.
    ssl: RefCell<SslStream<Nonblocking>>,
    socket: S,
    /// One reader at a time: OpenSSL must see a read retried, not a
    /// second read, after `WANT_READ`.
    reading: CoMutex<()>,
    /// One writer at a time, likewise (a write is retried with its data).
    writing: CoMutex<()>,
    /// Scratch for vectored writes (under `writing`).
    gather: RefCell<Vec<u8>>,
}

impl<S: AsRawFd> std::fmt::Debug for TlsStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("fd", &self.socket.as_raw_fd())
            .finish_non_exhaustive()
    }
}

impl<S: AsRawFd> TlsStream<S> {
    /// Runs the server side of the TLS handshake on `socket`. To bound
    /// its time, run it under `costack::aio::timeout`: it unwinds from its
    /// wait for the socket, and the socket is left as it was.
    ///
    /// # Errors
    /// The handshake failed (the message says why: a client that is not
    /// speaking TLS, an unknown PSK identity, a certificate that does not
    /// verify) or the socket failed.
    ///
    /// # Panics
    /// When not in a coroutine on an event loop.
    pub fn accept(socket: S, config: &TlsConfig) -> io::Result<Self> {
        let ssl = Ssl::new(config.acceptor.context())
            .map_err(|e| openssl_error("cannot start a TLS session", e))?;
        let fd = socket.as_raw_fd();
        let ssl = SslStream::new(ssl, Nonblocking(fd))
            .map_err(|e| openssl_error("cannot start a TLS session", e))?;
        let stream = TlsStream {
            ssl: RefCell::new(ssl),
            socket,
            reading: CoMutex::new(()),
            writing: CoMutex::new(()),
            gather: RefCell::new(Vec::new()),
        };
        stream.drive(|s| s.accept())?;
        if let Some(allowed) = &config.authz {
            let ssl = stream.ssl.borrow();
            let dn = ssl
                .ssl()
                .peer_certificate()
                .map(|c| distinguished_name(c.subject_name()));
            if dn.as_deref() != Some(allowed.as_str()) {
                // qemu-nbd's words.
                let dn = dn.unwrap_or_else(|| "(no certificate)".into());
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("TLS x509 authz check for {dn} is denied"),
                ));
            }
        }
        Ok(stream)
    }

    /// The socket under the session.
    pub fn get_ref(&self) -> &S {
        &self.socket
    }

    /// The negotiated protocol version, as OpenSSL names it ("TLSv1.3").
    pub fn version(&self) -> &'static str {
        self.ssl.borrow().ssl().version_str()
    }

    /// Calls `op` until it stops asking for the socket, waiting for the
    /// socket between calls. `op` runs without a yield,
    /// and the `RefCell` is borrowed only while it does.
    fn drive<T>(
        &self,
        mut op: impl FnMut(&mut SslStream<Nonblocking>) -> Result<T, openssl::ssl::Error>,
    ) -> io::Result<T> {
        loop {
            let r = op(&mut self.ssl.borrow_mut());
            let e = match r {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            // SAFETY: the fd is `self.socket`'s, open for as long as `self`.
            let fd = unsafe { BorrowedFd::borrow_raw(self.socket.as_raw_fd()) };
            match e.code() {
                ErrorCode::WANT_READ => aio::wait_readable(fd)?,
                ErrorCode::WANT_WRITE => aio::wait_writable(fd)?,
                _ => return Err(into_io(e)),
            }
        }
    }

    /// Writes all of `buf` as TLS records.
    fn write_all_records(&self, buf: &[u8]) -> io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            // Partial writes are on (the `openssl` crate's default): each
            // call may take part of `buf`, whole records at a time.
            done += self.drive(|s| s.ssl_write(&buf[done..]))?;
        }
        Ok(())
    }
}

/// `name` as RFC 4514 writes it, the form GnuTLS gives and qemu's
/// `authz-simple` compares: the most specific attribute first, values with
/// `,+"\\<>;` (and a leading `#` or space, a trailing space) escaped.
pub fn distinguished_name(name: &X509NameRef) -> String {
    let mut out = String::new();
    let entries: Vec<_> = name.entries().collect();
    for (i, entry) in entries.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let nid = entry.object().nid();
        let key = match nid {
            Nid::PKCS9_EMAILADDRESS => "EMAIL".to_owned(),
            _ => nid.short_name().map_or_else(
                |_| entry.object().to_string(),
                std::borrow::ToOwned::to_owned,
            ),
        };
        out.push_str(&key);
        out.push('=');
        let value = entry
            .data()
            .to_string()
            .unwrap_or_else(|_| String::from_utf8_lossy(entry.data().as_slice()).into_owned());
        let last = value.chars().count().saturating_sub(1);
        for (j, c) in value.chars().enumerate() {
            let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
                || (j == 0 && matches!(c, '#' | ' '))
                || (j == last && c == ' ');
            if special {
                out.push('\\');
            }
            out.push(c);
        }
    }
    out
}

/// An OpenSSL error as `io::Error`: the socket's own error when there is
/// one, `UnexpectedEof` for a peer gone without a word, `InvalidData` for
/// a protocol failure.
fn into_io(e: openssl::ssl::Error) -> io::Error {
    if e.code() == ErrorCode::ZERO_RETURN {
        return io::ErrorKind::UnexpectedEof.into();
    }
    match e.into_io_error() {
        Ok(io) => io,
        Err(e) => match e.ssl_error() {
            Some(stack) => io::Error::new(io::ErrorKind::InvalidData, format!("TLS: {stack}")),
            None if e.code() == ErrorCode::SYSCALL => io::ErrorKind::UnexpectedEof.into(),
            None => io::Error::other(format!("TLS: {e}")),
        },
    }
}

impl<S: AsRawFd> Read for &TlsStream<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let _reading = self.reading.lock();
        match self.drive(|s| s.ssl_read(buf)) {
            // close_notify, or the peer hung up: the end of the stream.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
            r => r,
        }
    }
}

/// Replies over TLS are encrypted from memory: never from a file mapping.
impl<S: AsRawFd> crate::server::ReplySink for TlsStream<S> {
    fn takes_mapped(&self) -> bool {
        false
    }
    fn send_slices(&self, bufs: &[costack::net::SendSlice<'_>]) -> io::Result<usize> {
        crate::server::write_memory_slices(self, bufs)
    }
}

impl<S: AsRawFd> crate::server::PayloadSource for TlsStream<S> {
    /// Never: TLS records must be decrypted before their bytes are stored.
    fn recv_slice(&self, _: &mut costack::net::RecvSlice<'_>) -> Option<io::Result<usize>> {
        None
    }
}

impl<S: AsRawFd> Write for &TlsStream<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let _writing = self.writing.lock();
        self.drive(|s| s.ssl_write(buf))
    }

    /// Copies up to 256 KiB of `bufs` into one buffer and
    /// writes all of it: a header and its data share records.
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let _writing = self.writing.lock();
        let mut gather = self.gather.borrow_mut();
        gather.clear();
        for b in bufs {
            let room = GATHER_MAX - gather.len();
            gather.extend_from_slice(&b[..b.len().min(room)]);
            if gather.len() == GATHER_MAX {
                break;
            }
        }
        self.write_all_records(&gather)?;
        let n = gather.len();
        if gather.capacity() > GATHER_MAX {
            *gather = Vec::new();
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<S: AsRawFd> AsRawFd for TlsStream<S> {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

impl<S: AsRawFd> Drop for TlsStream<S> {
    fn drop(&mut self) {
        // Tell the client the session ended on purpose (close_notify), if
        // the socket takes it now; never wait for it here.
        if let Ok(mut ssl) = self.ssl.try_borrow_mut() {
            let _ = ssl.shutdown();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinguished_names_as_gnutls_writes_them() {
        use openssl::x509::X509Name;
        let name = |parts: &[(&str, &str)]| {
            let mut b = X509Name::builder().unwrap();
            for (k, v) in parts {
                b.append_entry_by_text(k, v).unwrap();
            }
            b.build()
        };
        // As QEMU's iotest 233 writes its clients' (C, L, O, CN in the
        // certificate; the most specific first in the string; OpenSSL
        // wants a two-letter country, GnuTLS took "South Pacific").
        let n = name(&[
            ("C", "SP"),
            ("L", "R'lyeh"),
            ("O", "Cthulhu Dark Lord Enterprises client1"),
            ("CN", "localhost"),
        ]);
        assert_eq!(
            distinguished_name(&n),
            "CN=localhost,O=Cthulhu Dark Lord Enterprises client1,L=R'lyeh,C=SP"
        );
        let n = name(&[("O", "Acme, Inc."), ("CN", " padded+ ")]);
        assert_eq!(distinguished_name(&n), "CN=\\ padded\\+\\ ,O=Acme\\, Inc.");
    }

    #[test]
    fn psk_files_as_psktool_writes_them() {
        let dir = std::env::temp_dir().join(format!("costack-nbd-psk-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys.psk");
        fs::write(&path, "alice:0102ff\nbob:00\n").unwrap();
        let keys = read_psk_file(&path).unwrap();
        assert_eq!(keys[0], (b"alice".to_vec(), vec![1, 2, 0xff]));
        assert_eq!(keys[1], (b"bob".to_vec(), vec![0]));
        for (text, why) in [
            ("alice\n", "expected identity:hexkey"),
            (":00\n", "empty identity"),
            ("alice:0g\n", "not hexadecimal"),
            ("alice:012\n", "not hexadecimal"),
            ("alice:\n", "1 to 256 bytes"),
            ("\n", "holds no keys"),
        ] {
            fs::write(&path, text).unwrap();
            let e = read_psk_file(&path).unwrap_err();
            assert!(e.to_string().contains(why), "{text:?}: {e}");
            assert!(e.to_string().contains("keys.psk"), "{e}");
        }
        let e = read_psk_file(&dir.join("missing")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().contains("missing"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_certificates_are_named() {
        let dir = std::env::temp_dir().join(format!("costack-nbd-certs-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let e = TlsConfig::load(&Credentials::Certificates {
            dir: dir.clone(),
            verify_peer: false,
        })
        .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().contains("server-cert.pem"), "{e}");
        fs::write(dir.join("server-cert.pem"), "not a certificate").unwrap();
        fs::write(dir.join("server-key.pem"), "not a key").unwrap();
        let e = TlsConfig::load(&Credentials::Certificates {
            dir: dir.clone(),
            verify_peer: false,
        })
        .unwrap_err();
        assert!(e.to_string().contains("bad certificate"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
