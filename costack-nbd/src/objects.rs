//! qemu-nbd's `--object` definitions and `--tls-creds`, turned into this
//! server's TLS options.
//!
//! `--object tls-creds-x509,id=ID,dir=DIR,endpoint=server[,verify-peer=on|off]`
//! and `--object tls-creds-psk,id=ID,dir=DIR,endpoint=server` define
//! credentials; `--tls-creds ID` serves with them and requires TLS, as
//! qemu-nbd does. The files are the ones qemu reads: `ca-cert.pem`,
//! `server-cert.pem`, `server-key.pem`, or `keys.psk`.
//! `--object authz-simple,id=ID,identity=DN` with `--tls-authz ID` serves
//! only the client whose certificate's distinguished name is DN.
//! With `-L`, `--tls-creds` names client credentials (`endpoint=client`:
//! `ca-cert.pem` and, if the server asks, `client-cert.pem` and
//! `client-key.pem`; or `keys.psk` with `username=`), see
//! [`client_credentials`]. `secret` objects are accepted (they only matter
//! to encrypted images, which are not served); anything this server
//! cannot honour (other object types, options it does not know) is
//! refused, never ignored.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::cli::{Cli, Format, TlsMode};

/// One `--object`: its type and `key=value` properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// `tls-creds-x509`, `tls-creds-psk`, `secret`, ...
    pub kind: String,
    /// Its properties, `id` included.
    pub props: HashMap<String, String>,
}

impl Object {
    /// Parses qemu's `TYPE,key=value,...` form (or `qom-type=TYPE,...`).
    /// A `,,` stands for a comma inside a value, as in QEMU.
    ///
    /// ```
    /// use costack_nbd::objects::Object;
    /// let o = Object::parse("tls-creds-psk,id=t0,dir=/a,,b,endpoint=server").unwrap();
    /// assert_eq!((o.kind.as_str(), o.props["dir"].as_str()), ("tls-creds-psk", "/a,b"));
    /// ```
    ///
    /// # Errors
    /// A JSON object, a part without `=` after the type, or no `id`.
    pub fn parse(spec: &str) -> Result<Object, String> {
        if spec.trim_start().starts_with('{') {
            return Err(format!("--object {spec}: the JSON form is not supported"));
        }
        let parts = split_options(spec);
        let mut kind = None;
        let mut props = HashMap::new();
        for (i, part) in parts.into_iter().enumerate() {
            match part.split_once('=') {
                Some(("qom-type", v)) => kind = Some(v.to_owned()),
                Some((k, v)) => {
                    props.insert(k.to_owned(), v.to_owned());
                }
                None if i == 0 => kind = Some(part),
                None => return Err(format!("--object {spec}: {part:?} is not key=value")),
            }
        }
        let kind = kind.ok_or_else(|| format!("--object {spec}: no object type"))?;
        if !props.contains_key("id") {
            return Err(format!("--object {spec}: Parameter 'id' is missing"));
        }
        Ok(Object { kind, props })
    }

    fn id(&self) -> &str {
        &self.props["id"]
    }

    /// The `dir` of TLS credentials meant for `endpoint` (`server` or
    /// `client`; QEMU's default endpoint is `client`).
    fn credentials_dir(&self, endpoint: &str) -> Result<PathBuf, String> {
        if self.props.get("endpoint").map_or("client", String::as_str) != endpoint {
            return Err(format!(
                "Expecting TLS credentials with a {endpoint} endpoint"
            ));
        }
        let dir = self
            .props
            .get("dir")
            .ok_or_else(|| format!("TLS credentials '{}' have no dir", self.id()))?;
        Ok(PathBuf::from(dir))
    }

    /// Fails if the object has a property outside `known`.
    fn only(&self, known: &[&str]) -> Result<(), String> {
        match self.props.keys().find(|k| !known.contains(&k.as_str())) {
            Some(k) => Err(format!(
                "--object {} {}: property {k:?} is not supported",
                self.kind,
                self.id()
            )),
            None => Ok(()),
        }
    }
}

/// Splits QEMU's `a=b,c=d` option syntax at commas (`,,` is a comma).
pub fn split_options(spec: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut chars = spec.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                cur.push(',');
            } else {
                parts.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(c);
        }
    }
    parts.push(cur);
    parts
}

/// `--image-opts`: FILE as QEMU's block options, for the drivers this
/// server has: `driver=raw|qcow2` over `file.driver=file,file.filename=PATH`
/// (or `driver=file,filename=PATH`, a raw file). Returns the path and the
/// format.
///
/// ```
/// use costack_nbd::cli::Format;
/// use costack_nbd::objects::image_opts;
/// let (path, format) = image_opts("driver=qcow2,file.filename=/a,,b.qcow2").unwrap();
/// assert_eq!((path.to_str(), format), (Some("/a,b.qcow2"), Format::Qcow2));
/// ```
///
/// # Errors
/// A driver or an option this server does not have, or no file name.
pub fn image_opts(spec: &str) -> Result<(PathBuf, Format), String> {
    if spec.starts_with("json:") {
        return Err("--image-opts: the json: form is not supported".into());
    }
    let mut opts: HashMap<String, String> = HashMap::new();
    for part in split_options(spec) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("--image-opts: {part:?} is not key=value"))?;
        opts.insert(k.to_owned(), v.to_owned());
    }
    let driver = opts.remove("driver").unwrap_or_default();
    let (format, path) = match driver.as_str() {
        "raw" | "qcow2" => {
            match opts.remove("file.driver").as_deref() {
                None | Some("file") => {}
                Some(other) => {
                    return Err(format!(
                        "--image-opts: file.driver={other} is not supported (only file)"
                    ))
                }
            }
            let format = if driver == "raw" {
                Format::Raw
            } else {
                Format::Qcow2
            };
            (
                format,
                opts.remove("file.filename").or_else(|| opts.remove("file")),
            )
        }
        "file" => (Format::Raw, opts.remove("filename")),
        "" => return Err("--image-opts: no driver=".into()),
        other => return Err(format!("--image-opts: driver={other} is not supported")),
    };
    if let Some(k) = opts.keys().next() {
        return Err(format!("--image-opts: option {k:?} is not supported"));
    }
    let path = path.ok_or("--image-opts: no file name (file.filename=PATH)")?;
    Ok((PathBuf::from(path), format))
}

/// qemu's boolean spellings.
fn boolean(v: &str) -> Result<bool, String> {
    match v {
        "on" | "yes" | "true" => Ok(true),
        "off" | "no" | "false" => Ok(false),
        _ => Err(format!("{v:?} is not on or off")),
    }
}

/// Applies `--object`s and `--tls-creds` to `cli`'s TLS options.
///
/// # Errors
/// The message to show: a malformed or unsupported object, an unknown or
/// duplicate id, credentials that are not a server's, `--tls-creds`
/// together with this server's own TLS options, or `--tls-authz`.
pub fn apply(cli: &mut Cli) -> Result<(), String> {
    if cli.image_opts {
        let spec = cli.file.as_ref().ok_or("--image-opts needs FILE")?;
        let (path, format) = image_opts(&spec.to_string_lossy())?;
        if cli.format.is_some() {
            return Err("--image-opts and -f: the format is in the options".into());
        }
        (cli.file, cli.format) = (Some(path), Some(format));
    }
    let mut objects: HashMap<String, Object> = HashMap::new();
    for spec in &cli.objects {
        let o = Object::parse(spec)?;
        match o.kind.as_str() {
            "tls-creds-x509" => o.only(&["id", "dir", "endpoint", "verify-peer", "loaded"])?,
            // `verify-peer` is every tls-creds object's in QEMU; with a
            // PSK both ends are verified by the key, so it changes nothing.
            "tls-creds-psk" => {
                o.only(&["id", "dir", "endpoint", "username", "verify-peer", "loaded"])?
            }
            "authz-simple" => o.only(&["id", "identity"])?,
            "secret" => {}
            other => {
                return Err(format!(
                    "--object {other}: objects of this type are not supported"
                ))
            }
        }
        if objects.insert(o.id().to_owned(), o.clone()).is_some() {
            return Err(format!("attempt to add duplicate object id '{}'", o.id()));
        }
    }
    if cli.tls_hostname.is_some() {
        // qemu-nbd's words.
        return Err("--tls-hostname is only permitted with --list".into());
    }
    if let Some(id) = &cli.tls_authz {
        let authz = objects
            .get(id)
            .ok_or_else(|| format!("No authorization object with id '{id}'"))?;
        if authz.kind != "authz-simple" {
            return Err(format!(
                "Object '{id}' is {}, not an authorization (authz-simple)",
                authz.kind
            ));
        }
        let identity = authz
            .props
            .get("identity")
            .ok_or_else(|| format!("authz-simple '{id}' has no identity"))?;
        cli.tls_authz_identity = Some(identity.clone());
    }
    let Some(id) = cli.tls_creds.clone() else {
        return Ok(());
    };
    if cli.tls != TlsMode::Off || cli.tls_certificates.is_some() || cli.tls_psk.is_some() {
        return Err(
            "--tls-creds and --tls/--tls-certificates/--tls-psk: give one or the other".into(),
        );
    }
    let creds = objects
        .get(&id)
        .ok_or_else(|| format!("No TLS credentials with id '{id}'"))?;
    let dir = creds.credentials_dir("server")?;
    match creds.kind.as_str() {
        "tls-creds-psk" if cli.tls_authz.is_some() => {
            return Err(
                "--tls-authz: only X.509 client certificates are authorized \
                        (tls-creds-x509)"
                    .into(),
            )
        }
        "tls-creds-x509" => {
            cli.tls_certificates = Some(dir);
            cli.tls_verify_peer = match creds.props.get("verify-peer") {
                Some(v) => boolean(v).map_err(|e| format!("verify-peer: {e}"))?,
                // QEMU's default.
                None => true,
            };
        }
        "tls-creds-psk" => cli.tls_psk = Some(dir.join("keys.psk")),
        other => return Err(format!("Object '{id}' is not TLS credentials but {other}")),
    }
    // qemu-nbd with credentials serves TLS only.
    cli.tls = TlsMode::Require;
    Ok(())
}

/// The credentials `-L` connects with (`--tls-creds` of an
/// `endpoint=client` object).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientCredentials {
    /// X.509: `ca-cert.pem` in the directory checks the server; its
    /// `client-cert.pem` and `client-key.pem`, if there, are sent when
    /// the server asks for a certificate.
    X509 {
        /// The directory.
        dir: PathBuf,
    },
    /// A pre-shared key: the `username` line of `keys.psk`.
    Psk {
        /// The key file.
        file: PathBuf,
        /// The identity whose key is used (qemu's default: `qemu`).
        username: String,
    },
}

/// The client credentials `cli`'s `--tls-creds` names, for `-L` (`None`
/// without `--tls-creds`).
///
/// # Errors
/// The message to show: a malformed object, an unknown id, or
/// credentials that are not a client's.
pub fn client_credentials(cli: &Cli) -> Result<Option<ClientCredentials>, String> {
    let Some(id) = &cli.tls_creds else {
        return Ok(None);
    };
    let mut found = None;
    for spec in &cli.objects {
        let o = Object::parse(spec)?;
        if o.id() == id {
            found = Some(o);
        }
    }
    let creds = found.ok_or_else(|| format!("No TLS credentials with id '{id}'"))?;
    let dir = creds.credentials_dir("client")?;
    match creds.kind.as_str() {
        "tls-creds-x509" => Ok(Some(ClientCredentials::X509 { dir })),
        "tls-creds-psk" => Ok(Some(ClientCredentials::Psk {
            file: dir.join("keys.psk"),
            username: creds
                .props
                .get("username")
                .cloned()
                .unwrap_or_else(|| "qemu".into()),
        })),
        other => Err(format!("Object '{id}' is not TLS credentials but {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn image_options_name_a_file_and_a_format() {
        let ok = |s| image_opts(s).unwrap();
        assert_eq!(
            ok("driver=raw,file.driver=file,file.filename=/x"),
            ("/x".into(), Format::Raw)
        );
        assert_eq!(ok("driver=file,filename=/y"), ("/y".into(), Format::Raw));
        assert_eq!(
            ok("file.filename=/z,driver=qcow2"),
            ("/z".into(), Format::Qcow2)
        );
        for (bad, says) in [
            ("driver=vmdk,file.filename=/x", "driver=vmdk"),
            (
                "driver=raw,file.driver=nbd,file.filename=/x",
                "file.driver=nbd",
            ),
            ("driver=raw,file.filename=/x,discard=unmap", "\"discard\""),
            ("driver=raw", "no file name"),
            ("json:{}", "json:"),
        ] {
            let e = image_opts(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let mut c = Cli::try_parse_from([
            "costack-nbd",
            "--image-opts",
            "driver=qcow2,file.filename=/i",
        ])
        .unwrap();
        apply(&mut c).unwrap();
        assert_eq!((c.file, c.format), (Some("/i".into()), Some(Format::Qcow2)));
    }

    fn cli(args: &[&str]) -> Result<Cli, String> {
        let mut c = Cli::try_parse_from(std::iter::once("costack-nbd").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        apply(&mut c).map(|()| c)
    }

    #[test]
    fn credentials_become_tls_options() {
        let c = cli(&[
            "--object",
            "tls-creds-x509,id=tls0,dir=/pki,endpoint=server",
            "--tls-creds",
            "tls0",
        ])
        .unwrap();
        assert_eq!(c.tls, TlsMode::Require);
        assert_eq!(c.tls_certificates, Some(PathBuf::from("/pki")));
        assert!(
            c.tls_verify_peer,
            "qemu verifies clients unless told not to"
        );
        let c = cli(&[
            "--object",
            "tls-creds-x509,id=t,dir=/pki,endpoint=server,verify-peer=off",
            "--tls-creds=t",
        ])
        .unwrap();
        assert!(!c.tls_verify_peer);
        let c = cli(&[
            "--object",
            "secret,id=sec0,data=x",
            "--object",
            "qom-type=tls-creds-psk,id=p,dir=/k,endpoint=server,verify-peer=on",
            "--tls-creds",
            "p",
        ])
        .unwrap();
        assert_eq!(c.tls_psk, Some(PathBuf::from("/k/keys.psk")));
        // Objects alone change nothing.
        let c = cli(&["--object", "tls-creds-psk,id=p,dir=/k,endpoint=server"]).unwrap();
        assert_eq!((c.tls, c.tls_psk), (TlsMode::Off, None));
        // An authorization: the identity, commas unescaped.
        let c = cli(&[
            "--object",
            x509_server(),
            "--object",
            "authz-simple,id=a0,identity=CN=localhost,,O=Acme,,C=US",
            "--tls-creds",
            "tls0",
            "--tls-authz",
            "a0",
        ])
        .unwrap();
        assert_eq!(
            c.tls_authz_identity.as_deref(),
            Some("CN=localhost,O=Acme,C=US")
        );
    }

    fn x509_server() -> &'static str {
        "tls-creds-x509,id=tls0,dir=/pki,endpoint=server"
    }

    #[test]
    fn list_mode_takes_client_credentials() {
        let creds = |args: &[&str]| {
            let c = Cli::try_parse_from(std::iter::once("costack-nbd").chain(args.iter().copied()))
                .unwrap();
            client_credentials(&c)
        };
        assert_eq!(creds(&["-L"]), Ok(None));
        assert_eq!(
            creds(&[
                "-L",
                "--object",
                "tls-creds-x509,id=t,dir=/c,endpoint=client",
                "--tls-creds",
                "t"
            ]),
            Ok(Some(ClientCredentials::X509 { dir: "/c".into() }))
        );
        assert_eq!(
            creds(&[
                "-L",
                "--object",
                "tls-creds-psk,id=t,dir=/k",
                "--tls-creds=t"
            ]),
            Ok(Some(ClientCredentials::Psk {
                file: "/k/keys.psk".into(),
                username: "qemu".into()
            }))
        );
        let e = creds(&["-L", "--object", x509_server(), "--tls-creds", "tls0"]).unwrap_err();
        assert!(e.contains("client endpoint"), "{e}");
    }

    #[test]
    fn what_cannot_be_honoured_is_refused() {
        let x509 = "tls-creds-x509,id=t,dir=/pki,endpoint=server";
        for (args, says) in [
            (vec!["--tls-creds", "t"], "No TLS credentials with id 't'"),
            (
                vec![
                    "--object",
                    "tls-creds-x509,id=t,dir=/p,endpoint=client",
                    "--tls-creds",
                    "t",
                ],
                "server endpoint",
            ),
            (
                vec!["--object", x509, "--object", x509],
                "duplicate object id",
            ),
            (
                vec!["--object", "authz-list,id=a,policy=deny"],
                "not supported",
            ),
            (
                vec!["--object", x509, "--tls-creds", "t", "--tls-authz", "a"],
                "No authorization object with id 'a'",
            ),
            (
                vec![
                    "--object",
                    "tls-creds-psk,id=t,dir=/k,endpoint=server",
                    "--object",
                    "authz-simple,id=a,identity=CN=x",
                    "--tls-creds",
                    "t",
                    "--tls-authz",
                    "a",
                ],
                "only X.509",
            ),
            (
                vec!["--tls-hostname", "localhost"],
                "only permitted with --list",
            ),
            (
                vec!["--object", "tls-creds-x509,id=t,dir=/p,priority=NORMAL"],
                "\"priority\"",
            ),
            (vec!["--object", "tls-creds-x509,dir=/p"], "'id' is missing"),
            (vec!["--object", "{\"qom-type\":\"secret\"}"], "JSON"),
            (
                vec!["--object", x509, "--tls-creds", "t", "--tls", "on"],
                "one or the other",
            ),
        ] {
            let e = cli(&args).unwrap_err();
            assert!(e.contains(says), "{args:?}: {e}");
        }
    }
}
