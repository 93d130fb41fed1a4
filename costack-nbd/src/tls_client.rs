//! The client side of `NBD_OPT_STARTTLS`, for `-L` over TLS: a plain
//! blocking OpenSSL session (the listing is a short synchronous exchange,
//! no event loop), with qemu's credentials ([`ClientCredentials`]) and
//! qemu's words for the failures users meet most (a certificate for
//! another host, or from an unknown CA).

use std::io::{self, Read, Write};

use openssl::ssl::{HandshakeError, SslConnector, SslMethod, SslStream, SslVerifyMode, SslVersion};
use openssl::x509::X509VerifyResult;

use crate::objects::ClientCredentials;

/// Runs the client side of a TLS handshake on `stream`, just after the
/// server acknowledged `NBD_OPT_STARTTLS`. With X.509, the server's
/// certificate must chain to the directory's `ca-cert.pem` and name
/// `hostname`; the client's own certificate is offered if the directory
/// has one. With a PSK, `hostname` is not needed.
///
/// # Errors
/// Unreadable credentials, no `hostname` for X.509, or a failed handshake
/// (in qemu's words where qemu has them).
pub fn connect<S: Read + Write>(
    stream: S,
    creds: &ClientCredentials,
    hostname: Option<&str>,
) -> io::Result<SslStream<S>> {
    let setup = |what: &str, e: openssl::error::ErrorStack| {
        io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {e}"))
    };
    let mut b = SslConnector::builder(SslMethod::tls_client())
        .map_err(|e| setup("cannot set up TLS", e))?;
    b.set_min_proto_version(Some(SslVersion::TLS1_2))
        .map_err(|e| setup("cannot set up TLS", e))?;
    let hostname = match creds {
        ClientCredentials::X509 { dir } => {
            let ca = dir.join("ca-cert.pem");
            b.set_ca_file(&ca)
                .map_err(|e| setup(&format!("bad CA file {}", ca.display()), e))?;
            let (cert, key) = (dir.join("client-cert.pem"), dir.join("client-key.pem"));
            if cert.exists() && key.exists() {
                b.set_certificate_chain_file(&cert)
                    .map_err(|e| setup(&format!("bad certificate {}", cert.display()), e))?;
                b.set_private_key_file(&key, openssl::ssl::SslFiletype::PEM)
                    .map_err(|e| setup(&format!("bad private key {}", key.display()), e))?;
            }
            b.set_verify(SslVerifyMode::PEER);
            // qemu's words.
            Some(hostname.ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "No hostname for certificate validation",
                )
            })?)
        }
        ClientCredentials::Psk { file, username } => {
            let key = psk_of(file, username)?;
            let identity = username.clone().into_bytes();
            b.set_cipher_list("ECDHEPSK:DHEPSK:PSK:!eNULL:!NULL:!3DES:!RC4")
                .map_err(|e| setup("cannot enable PSK cipher suites", e))?;
            b.set_psk_client_callback(move |_ssl, _hint, id_out, key_out| {
                // The identity is a C string.
                if identity.len() >= id_out.len() || key.len() > key_out.len() {
                    return Ok(0);
                }
                id_out[..identity.len()].copy_from_slice(&identity);
                id_out[identity.len()] = 0;
                key_out[..key.len()].copy_from_slice(&key);
                Ok(key.len())
            });
            b.set_verify(SslVerifyMode::NONE);
            None
        }
    };
    let connector = b.build();
    let mut config = connector
        .configure()
        .map_err(|e| setup("cannot start a TLS session", e))?;
    if hostname.is_none() {
        config.set_verify_hostname(false);
        config.set_use_server_name_indication(false);
    }
    config
        .connect(hostname.unwrap_or(""), stream)
        .map_err(|e| handshake_error(e, hostname.unwrap_or("")))
}

/// A failed handshake in words: qemu's for a certificate that names
/// another host or chains to no CA we trust.
fn handshake_error<S>(e: HandshakeError<S>, hostname: &str) -> io::Error {
    let mid = match e {
        HandshakeError::Failure(mid) => mid,
        HandshakeError::SetupFailure(e) => {
            return io::Error::other(format!("TLS handshake failed: {e}"))
        }
        // The socket blocks: a wait cannot be asked for.
        HandshakeError::WouldBlock(mid) => {
            return io::Error::other(format!("TLS handshake failed: {}", mid.error()))
        }
    };
    let verified = mid.ssl().verify_result();
    let msg = match verified.as_raw() {
        62 => format!("Certificate does not match the hostname {hostname}"),
        // Unable to get the (local) issuer, self-signed in the chain,
        // unable to verify the leaf.
        2 | 18 | 19 | 20 | 21 => "The certificate hasn't got a known issuer".into(),
        _ if verified != X509VerifyResult::OK => {
            format!(
                "The certificate is not trusted: {}",
                verified.error_string()
            )
        }
        _ => format!("TLS handshake failed: {}", mid.error()),
    };
    io::Error::new(io::ErrorKind::PermissionDenied, msg)
}

/// The key of `username` in a `keys.psk` file (`identity:hexkey` lines).
fn psk_of(file: &std::path::Path, username: &str) -> io::Result<Vec<u8>> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", file.display())))?;
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(id, _)| *id == username)
        .and_then(|(_, hex)| crate::tls::decode_hex(hex.trim()))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no key for '{username}' in {}", file.display()),
            )
        })
}
