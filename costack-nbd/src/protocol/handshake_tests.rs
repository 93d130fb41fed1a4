//! Unit tests of `handshake.rs` (a child module of it: private items are in
//! reach through `super`).

use super::*;
use crate::block::MemDisk;
use crate::protocol::proto::*;
use std::io::Cursor;

type Mem = Duplex<Cursor<Vec<u8>>, Vec<u8>>;

fn config() -> HandshakeConfig {
    let mut a = ExportInfo::new("", 1 << 20);
    a.description = "default disk".into();
    let mut b = ExportInfo::new("ro", 4096);
    b.read_only = true;
    HandshakeConfig::new(vec![a, b])
}

/// Client bytes: flags, then each option.
fn script(client_flags: u32, options: &[(OptionCode, Vec<u8>)]) -> Vec<u8> {
    let mut v = client_flags.to_be_bytes().to_vec();
    for (o, d) in options {
        v.extend(encode_option(*o, d));
    }
    v
}

fn run(input: Vec<u8>, cfg: &HandshakeConfig) -> (Result<Negotiated, HandshakeError>, Vec<u8>) {
    let mut s: Mem = Duplex::new(Cursor::new(input), Vec::new());
    let r = negotiate(&mut s, cfg);
    (r, s.writer)
}

/// Parses the server output after the greeting into option replies.
fn replies(out: &[u8]) -> Vec<(u32, ReplyType, Vec<u8>)> {
    let mut v = Vec::new();
    let mut rest = &out[GREETING_LEN..];
    while !rest.is_empty() {
        let h = OptionReplyHeader::decode(rest).unwrap();
        let end = OPTION_REPLY_HEADER_LEN + h.length as usize;
        v.push((
            h.option,
            h.reply,
            rest[OPTION_REPLY_HEADER_LEN..end].to_vec(),
        ));
        rest = &rest[end..];
    }
    v
}

const BOTH: u32 = NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES;

fn go(name: &str, infos: &[InfoType]) -> Vec<u8> {
    InfoRequest {
        name: name.as_bytes().to_vec(),
        requests: infos.to_vec(),
    }
    .encode()
}

#[test]
fn greeting_is_exact() {
    let (r, out) = run(vec![], &config());
    assert!(matches!(r, Err(HandshakeError::Disconnected)));
    let mut expect = b"NBDMAGICIHAVEOPT".to_vec();
    expect.extend([0x00, 0x03]);
    assert_eq!(out, expect);
}

#[test]
fn export_name_with_and_without_zeroes() {
    let cfg = config();
    let (r, out) = run(script(BOTH, &[(OptionCode::ExportName, vec![])]), &cfg);
    let n = r.unwrap();
    assert_eq!(n.export_index, 0);
    assert_eq!(n.via, OptionCode::ExportName);
    assert!(!n.structured_replies);
    let flags = NBD_FLAG_HAS_FLAGS
        | NBD_FLAG_SEND_FLUSH
        | NBD_FLAG_SEND_FUA
        | NBD_FLAG_SEND_TRIM
        | NBD_FLAG_SEND_WRITE_ZEROES
        | NBD_FLAG_SEND_CACHE;
    assert_eq!(n.transmission_flags, flags);
    let mut expect = (1u64 << 20).to_be_bytes().to_vec();
    expect.extend(flags.to_be_bytes());
    assert_eq!(&out[GREETING_LEN..], &expect[..]);

    let (r, out) = run(
        script(
            NBD_FLAG_C_FIXED_NEWSTYLE,
            &[(OptionCode::ExportName, b"ro".to_vec())],
        ),
        &cfg,
    );
    let n = r.unwrap();
    assert_eq!(n.export_index, 1);
    assert_eq!(out.len(), GREETING_LEN + 10 + 124);
    assert!(out[GREETING_LEN + 10..].iter().all(|&b| b == 0));
    let f = u16::from_be_bytes([out[GREETING_LEN + 8], out[GREETING_LEN + 9]]);
    assert_ne!(f & NBD_FLAG_READ_ONLY, 0);
    assert_eq!(f & (NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES), 0);
}

#[test]
fn export_name_unknown_closes() {
    let (r, out) = run(
        script(BOTH, &[(OptionCode::ExportName, b"nope".to_vec())]),
        &config(),
    );
    assert!(matches!(r, Err(HandshakeError::UnknownExport(n)) if n == "nope"));
    assert_eq!(out.len(), GREETING_LEN);
}

#[test]
fn full_go_negotiation_byte_for_byte() {
    let cfg = config();
    let meta = MetaContextRequest {
        export: vec![],
        queries: vec![b"base:allocation".to_vec()],
    }
    .encode();
    let input = script(
        BOTH,
        &[
            (OptionCode::Unknown(99), b"junk".to_vec()),
            (OptionCode::StructuredReply, vec![]),
            (OptionCode::SetMetaContext, meta),
            (
                OptionCode::Go,
                go(
                    "",
                    &[InfoType::Name, InfoType::Description, InfoType::BlockSize],
                ),
            ),
        ],
    );
    let (r, out) = run(input, &cfg);
    let n = r.unwrap();
    assert!(n.structured_replies);
    assert_eq!(n.base_allocation, Some(BASE_ALLOCATION_CONTEXT_ID));
    assert!(n.block_sizes_requested);
    assert_ne!(n.transmission_flags & NBD_FLAG_SEND_DF, 0);

    // Build the exact expected byte stream.
    let mut e = encode_greeting(3).to_vec();
    encode_option_reply(&mut e, 99, ReplyType::ErrUnsup, b"option not supported");
    encode_option_reply(&mut e, NBD_OPT_STRUCTURED_REPLY, ReplyType::Ack, &[]);
    let mut ctx = 1u32.to_be_bytes().to_vec();
    ctx.extend(b"base:allocation");
    encode_option_reply(
        &mut e,
        NBD_OPT_SET_META_CONTEXT,
        ReplyType::MetaContext,
        &ctx,
    );
    encode_option_reply(&mut e, NBD_OPT_SET_META_CONTEXT, ReplyType::Ack, &[]);
    encode_option_reply(&mut e, NBD_OPT_GO, ReplyType::Info, &[0, 1]);
    let mut d = vec![0, 2];
    d.extend(b"default disk");
    encode_option_reply(&mut e, NBD_OPT_GO, ReplyType::Info, &d);
    encode_option_reply(
        &mut e,
        NBD_OPT_GO,
        ReplyType::Info,
        &[0, 3, 0, 0, 0, 1, 0, 0, 0x10, 0, 0x02, 0, 0, 0],
    );
    let flags: u16 = 0x01 | 0x04 | 0x08 | 0x20 | 0x40 | 0x80 | 0x400;
    let mut info = vec![0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0];
    info.extend(flags.to_be_bytes());
    encode_option_reply(&mut e, NBD_OPT_GO, ReplyType::Info, &info);
    encode_option_reply(&mut e, NBD_OPT_GO, ReplyType::Ack, &[]);
    assert_eq!(out, e);
}

#[test]
fn info_then_go_and_unknown_export() {
    let cfg = config();
    let input = script(
        BOTH,
        &[
            (OptionCode::Info, go("missing", &[])),
            (OptionCode::Info, go("ro", &[])),
            (OptionCode::Go, go("ro", &[])),
        ],
    );
    let (r, out) = run(input, &cfg);
    let n = r.unwrap();
    assert_eq!(n.export_index, 1);
    assert!(!n.block_sizes_requested);
    assert_eq!(n.base_allocation, None);
    let rs = replies(&out);
    assert_eq!(rs[0].0, NBD_OPT_INFO);
    assert_eq!(rs[0].1, ReplyType::ErrUnknown);
    // INFO: block size, export, ack; GO: the same.
    let kinds: Vec<_> = rs[1..].iter().map(|r| (r.0, r.1)).collect();
    assert_eq!(
        kinds,
        vec![
            (NBD_OPT_INFO, ReplyType::Info),
            (NBD_OPT_INFO, ReplyType::Info),
            (NBD_OPT_INFO, ReplyType::Ack),
            (NBD_OPT_GO, ReplyType::Info),
            (NBD_OPT_GO, ReplyType::Info),
            (NBD_OPT_GO, ReplyType::Ack),
        ]
    );
    assert_eq!(rs[2].2, rs[5].2, "INFO and GO must agree");
    match Info::decode(&rs[5].2).unwrap() {
        Info::Export { size, flags } => {
            assert_eq!(size, 4096);
            assert_ne!(flags & NBD_FLAG_READ_ONLY, 0);
            assert_eq!(flags & NBD_FLAG_SEND_DF, 0);
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// Option, reply type and data of one option reply.
type OptionReply = (u32, ReplyType, Vec<u8>);

/// Runs `negotiate_options` on `input`; returns the outcome and the
/// replies after the greeting.
fn run_options(
    input: Vec<u8>,
    cfg: &HandshakeConfig,
) -> (Result<Outcome, HandshakeError>, Vec<OptionReply>) {
    let mut s: Mem = Duplex::new(Cursor::new(input), Vec::new());
    let r = negotiate_options(&mut s, cfg);
    (r, replies(&s.writer))
}

#[test]
fn tls_required_refuses_all_but_starttls_and_abort() {
    let mut cfg = config();
    cfg.tls = TlsPolicy::Require;
    let input = script(
        BOTH,
        &[
            (OptionCode::List, vec![]),
            (OptionCode::StructuredReply, vec![]),
            (OptionCode::Go, go("", &[])),
            (OptionCode::Info, go("", &[])),
            (OptionCode::SetMetaContext, vec![]),
            (OptionCode::Unknown(99), vec![]),
            (OptionCode::StartTls, vec![1]),
            (OptionCode::StartTls, vec![]),
        ],
    );
    let (r, rs) = run_options(input, &cfg);
    let Ok(Outcome::StartTls(resume)) = r else {
        panic!("expected STARTTLS, got {r:?}");
    };
    let kinds: Vec<ReplyType> = rs.iter().map(|r| r.1).collect();
    assert_eq!(kinds[..6], [ReplyType::ErrTlsReqd; 6]);
    assert_eq!(kinds[6..], [ReplyType::ErrInvalid, ReplyType::Ack]);
    assert_eq!(resume.options_left, cfg.max_options - 8);

    // EXPORT_NAME in the clear cannot be refused: the session ends.
    let input = script(BOTH, &[(OptionCode::ExportName, vec![])]);
    let (r, rs) = run_options(input, &cfg);
    assert!(matches!(r, Err(HandshakeError::TlsRequired)), "{r:?}");
    assert!(rs.is_empty());
    // ABORT is answered.
    let input = script(BOTH, &[(OptionCode::Abort, vec![])]);
    let (r, rs) = run_options(input, &cfg);
    assert!(matches!(r, Err(HandshakeError::Aborted)));
    assert_eq!(rs[0].1, ReplyType::Ack);
}

#[test]
fn after_starttls_options_start_afresh() {
    for policy in [TlsPolicy::On, TlsPolicy::Require] {
        let mut cfg = config();
        cfg.tls = policy;
        // Structured replies negotiated in the clear, then STARTTLS.
        let input = script(
            BOTH,
            &[
                (OptionCode::StructuredReply, vec![]),
                (OptionCode::StartTls, vec![]),
            ],
        );
        let (r, rs) = run_options(input, &cfg);
        let expect_structured = if policy == TlsPolicy::On {
            ReplyType::Ack
        } else {
            ReplyType::ErrTlsReqd
        };
        assert_eq!(rs[0].1, expect_structured);
        assert_eq!(rs[1].1, ReplyType::Ack);
        let Ok(Outcome::StartTls(resume)) = r else {
            panic!("expected STARTTLS, got {r:?}");
        };
        // Over "TLS": no greeting, a second STARTTLS is invalid, the
        // structured replies of before are forgotten.
        let mut input = Vec::new();
        input.extend(encode_option(OptionCode::StartTls, &[]));
        input.extend(encode_option(OptionCode::ExportName, b""));
        let mut s: Mem = Duplex::new(Cursor::new(input), Vec::new());
        let n = resume_after_tls(&mut s, &cfg, resume).unwrap();
        assert!(!n.structured_replies);
        let h = OptionReplyHeader::decode(&s.writer).unwrap();
        assert_eq!(h.reply, ReplyType::ErrInvalid);
    }
}

#[test]
fn tls_on_still_serves_clear_clients_and_off_refuses_starttls() {
    let mut cfg = config();
    cfg.tls = TlsPolicy::On;
    let input = script(BOTH, &[(OptionCode::ExportName, vec![])]);
    let mut s: Mem = Duplex::new(Cursor::new(input), Vec::new());
    let r = negotiate_options(&mut s, &cfg);
    assert!(matches!(r, Ok(Outcome::Transmission(_))), "{r:?}");
    // negotiate() cannot upgrade: an accepted STARTTLS ends the session.
    let input = script(BOTH, &[(OptionCode::StartTls, vec![])]);
    let (r, _) = run(input, &cfg);
    assert!(matches!(r, Err(HandshakeError::TlsNotHandled)), "{r:?}");
    cfg.tls = TlsPolicy::Off;
    let input = script(
        BOTH,
        &[(OptionCode::StartTls, vec![]), (OptionCode::Abort, vec![])],
    );
    let (_, rs) = run_options(input, &cfg);
    assert_eq!(rs[0].1, ReplyType::ErrPolicy);
}

#[test]
fn list_and_abort() {
    let cfg = config();
    let input = script(
        BOTH,
        &[
            (OptionCode::List, vec![]),
            (OptionCode::List, vec![1]),
            (OptionCode::StartTls, vec![]),
            (OptionCode::Abort, vec![]),
        ],
    );
    let (r, out) = run(input, &cfg);
    assert!(matches!(r, Err(HandshakeError::Aborted)));
    let rs = replies(&out);
    assert_eq!(rs[0].1, ReplyType::Server);
    assert_eq!(rs[0].2, encode_rep_server("", "default disk"));
    assert_eq!(rs[1].1, ReplyType::Server);
    assert_eq!(rs[1].2, [0, 0, 0, 2, b'r', b'o']);
    assert_eq!(rs[2].1, ReplyType::Ack);
    assert_eq!(rs[3].1, ReplyType::ErrInvalid);
    assert_eq!(rs[4].1, ReplyType::ErrPolicy);
    assert_eq!((rs[5].0, rs[5].1), (NBD_OPT_ABORT, ReplyType::Ack));
    assert_eq!(rs.len(), 6);
}

#[test]
fn structured_reply_rules() {
    let input = script(
        BOTH,
        &[
            (OptionCode::StructuredReply, vec![0]),
            (OptionCode::StructuredReply, vec![]),
            (OptionCode::StructuredReply, vec![]),
        ],
    );
    let (r, out) = run(input, &config());
    assert!(matches!(r, Err(HandshakeError::Disconnected)));
    let rs: Vec<_> = replies(&out).into_iter().map(|r| r.1).collect();
    assert_eq!(
        rs,
        vec![ReplyType::ErrInvalid, ReplyType::Ack, ReplyType::ErrInvalid]
    );
}

#[test]
fn extended_header_rules() {
    let set = MetaContextRequest {
        export: vec![],
        queries: vec![BASE_ALLOCATION.as_bytes().to_vec()],
    }
    .encode();
    let input = script(
        BOTH,
        &[
            (OptionCode::ExtendedHeaders, vec![0]),
            (OptionCode::ExtendedHeaders, vec![]),
            (OptionCode::ExtendedHeaders, vec![]),
            // Extended headers take precedence over structured replies.
            (OptionCode::StructuredReply, vec![]),
            // ... and allow metadata contexts on their own.
            (OptionCode::SetMetaContext, set),
            (OptionCode::Go, go("", &[])),
        ],
    );
    let (r, out) = run(input, &config());
    let n = r.unwrap();
    assert!(n.extended_headers && n.structured_replies);
    assert_eq!(n.base_allocation, Some(BASE_ALLOCATION_CONTEXT_ID));
    let flags = n.transmission_flags;
    assert_ne!(flags & NBD_FLAG_BLOCK_STATUS_PAYLOAD, 0, "{flags:#x}");
    assert_ne!(flags & NBD_FLAG_SEND_DF, 0);
    let rs: Vec<_> = replies(&out).into_iter().map(|r| r.1).collect();
    assert_eq!(
        rs[..6],
        [
            ReplyType::ErrInvalid,
            ReplyType::Ack,
            ReplyType::ErrInvalid,
            ReplyType::ErrExtHeaderReqd,
            ReplyType::MetaContext,
            ReplyType::Ack,
        ]
    );

    // The payload form is offered with extended headers alone (as
    // qemu-nbd), so that INFO and GO agree whatever comes between.
    let input = script(
        BOTH,
        &[
            (OptionCode::ExtendedHeaders, vec![]),
            (OptionCode::Go, go("", &[])),
        ],
    );
    let n = run(input, &config()).0.unwrap();
    assert_ne!(n.transmission_flags & NBD_FLAG_BLOCK_STATUS_PAYLOAD, 0);
    assert_eq!(n.base_allocation, None);

    // NBD_OPT_EXPORT_NAME cannot refuse, so it ends the session.
    let input = script(
        BOTH,
        &[
            (OptionCode::ExtendedHeaders, vec![]),
            (OptionCode::ExportName, vec![]),
        ],
    );
    assert!(matches!(
        run(input, &config()).0,
        Err(HandshakeError::ExportNameWithExtendedHeaders)
    ));
}

#[test]
fn meta_context_listing_and_selection() {
    let cfg = config();
    let q = |export: &str, qs: &[&str]| {
        MetaContextRequest {
            export: export.as_bytes().to_vec(),
            queries: qs.iter().map(|q| q.as_bytes().to_vec()).collect(),
        }
        .encode()
    };
    let input = script(
        BOTH,
        &[
            // Before structured replies: refused.
            (OptionCode::SetMetaContext, q("", &["base:allocation"])),
            (OptionCode::StructuredReply, vec![]),
            (OptionCode::ListMetaContext, q("", &[])),
            (OptionCode::ListMetaContext, q("", &["base:"])),
            (
                OptionCode::ListMetaContext,
                q("", &["x-foo:bar", "nocolon"]),
            ),
            (OptionCode::ListMetaContext, q("nope", &[])),
            (OptionCode::ListMetaContext, vec![0, 0]),
            (OptionCode::SetMetaContext, q("", &["base:"])),
            // Selected for "ro", but GO picks "" below.
            (
                OptionCode::SetMetaContext,
                q("ro", &["base:allocation", "base:allocation"]),
            ),
            (OptionCode::Go, go("", &[])),
        ],
    );
    let (r, out) = run(input, &cfg);
    let n = r.unwrap();
    assert_eq!(
        n.base_allocation, None,
        "context was set for another export"
    );
    let rs: Vec<_> = replies(&out).into_iter().map(|r| (r.1, r.2)).collect();
    let ctx0 = encode_rep_meta_context(0, BASE_ALLOCATION);
    let ctx1 = encode_rep_meta_context(1, BASE_ALLOCATION);
    let expect = vec![
        (ReplyType::ErrInvalid, None),
        (ReplyType::Ack, None),
        (ReplyType::MetaContext, Some(ctx0.clone())),
        (ReplyType::Ack, None),
        (ReplyType::MetaContext, Some(ctx0)),
        (ReplyType::Ack, None),
        (ReplyType::Ack, None),
        (ReplyType::ErrUnknown, None),
        (ReplyType::ErrInvalid, None),
        (ReplyType::Ack, None),
        (ReplyType::MetaContext, Some(ctx1)),
        (ReplyType::Ack, None),
    ];
    assert_eq!(rs.len(), expect.len() + 3, "plus GO's info/info/ack");
    for (i, (ty, payload)) in expect.into_iter().enumerate() {
        assert_eq!(rs[i].0, ty, "reply {i}");
        if let Some(p) = payload {
            assert_eq!(rs[i].1, p, "reply {i}");
        }
    }
}

#[test]
fn qemu_contexts_are_listed_by_namespace_and_selected_by_name() {
    let mut e = ExportInfo::new("", 1 << 20);
    e.qemu_contexts = vec![
        QemuContext::AllocationDepth,
        QemuContext::DirtyBitmap("b0".into()),
    ];
    let cfg = HandshakeConfig::new(vec![e]);
    let q = |qs: &[&str]| {
        MetaContextRequest {
            export: Vec::new(),
            queries: qs.iter().map(|q| q.as_bytes().to_vec()).collect(),
        }
        .encode()
    };
    let input = script(
        BOTH,
        &[
            (OptionCode::StructuredReply, vec![]),
            (OptionCode::ListMetaContext, q(&["qemu:"])),
            (OptionCode::ListMetaContext, q(&["qemu:dirty-bitmap:"])),
            (OptionCode::ListMetaContext, q(&[])),
            // A namespace selects nothing; names select in the export's
            // order, each once.
            (
                OptionCode::SetMetaContext,
                q(&[
                    "qemu:dirty-bitmap:b0",
                    "qemu:",
                    "base:allocation",
                    "qemu:dirty-bitmap:b0",
                ]),
            ),
            (OptionCode::Go, go("", &[])),
        ],
    );
    let (r, out) = run(input, &cfg);
    let n = r.unwrap();
    assert_eq!(n.base_allocation, Some(1));
    assert_eq!(
        n.qemu_contexts,
        vec![(3, QemuContext::DirtyBitmap("b0".into()))]
    );
    let rs: Vec<_> = replies(&out).into_iter().map(|r| (r.1, r.2)).collect();
    let ctx = |id, name: &str| (ReplyType::MetaContext, encode_rep_meta_context(id, name));
    let ack = (ReplyType::Ack, Vec::new());
    let expect = vec![
        ack.clone(),
        ctx(0, "qemu:allocation-depth"),
        ctx(0, "qemu:dirty-bitmap:b0"),
        ack.clone(),
        ctx(0, "qemu:dirty-bitmap:b0"),
        ack.clone(),
        ctx(0, BASE_ALLOCATION),
        ctx(0, "qemu:allocation-depth"),
        ctx(0, "qemu:dirty-bitmap:b0"),
        ack.clone(),
        ctx(1, BASE_ALLOCATION),
        ctx(3, "qemu:dirty-bitmap:b0"),
        ack,
    ];
    assert_eq!(&rs[..expect.len()], &expect[..]);
}

#[test]
fn malformed_info_request_gets_invalid_and_continues() {
    let input = script(
        BOTH,
        &[
            (OptionCode::Go, vec![0, 0, 0, 50, 0]),
            (OptionCode::Go, go("", &[])),
        ],
    );
    let (r, out) = run(input, &config());
    assert!(r.is_ok());
    assert_eq!(replies(&out)[0].1, ReplyType::ErrInvalid);
}

#[test]
fn truncated_inputs_are_disconnects() {
    let cfg = config();
    let full = script(BOTH, &[(OptionCode::Go, go("", &[InfoType::Name]))]);
    for cut in 0..full.len() {
        let (r, _) = run(full[..cut].to_vec(), &cfg);
        assert!(
            matches!(r, Err(HandshakeError::Disconnected)),
            "cut at {cut}: {r:?}"
        );
    }
    assert!(run(full, &cfg).0.is_ok());
}

#[test]
fn bad_magic_and_flags() {
    let cfg = config();
    let mut input = BOTH.to_be_bytes().to_vec();
    input.extend(b"IHAVEOPX");
    input.extend([0; 8]);
    let (r, _) = run(input, &cfg);
    assert!(matches!(r, Err(HandshakeError::BadOptionMagic(_))));

    let (r, _) = run(4u32.to_be_bytes().to_vec(), &cfg);
    assert!(matches!(r, Err(HandshakeError::UnknownClientFlags(4))));
}

#[test]
fn non_fixed_client_may_only_export_name() {
    let cfg = config();
    let (r, _) = run(script(0, &[(OptionCode::List, vec![])]), &cfg);
    assert!(matches!(r, Err(HandshakeError::NotFixedNewstyle(3))));
    let (r, out) = run(script(0, &[(OptionCode::ExportName, vec![])]), &cfg);
    assert!(r.is_ok());
    assert_eq!(out.len(), GREETING_LEN + 134);
}

#[test]
fn huge_option_length_is_refused_without_reading_it() {
    let cfg = config();
    let mut input = BOTH.to_be_bytes().to_vec();
    input.extend(
        OptionHeader {
            option: OptionCode::Go,
            length: u32::MAX,
        }
        .encode(),
    );
    let (r, out) = run(input, &cfg);
    assert!(matches!(
        r,
        Err(HandshakeError::OptionTooLong {
            option: NBD_OPT_GO,
            length: u32::MAX
        })
    ));
    assert_eq!(replies(&out)[0].1, ReplyType::ErrTooBig);

    // A maximal legal export name still fits the default limit.
    let name = "n".repeat(MAX_STRING_LEN);
    let mut cfg = config();
    cfg.exports.push(ExportInfo::new(name.clone(), 512));
    let (r, _) = run(script(BOTH, &[(OptionCode::Go, go(&name, &[]))]), &cfg);
    assert_eq!(r.unwrap().export_index, 2);
}

#[test]
fn too_many_options() {
    let mut cfg = config();
    cfg.max_options = 3;
    let opts = vec![(OptionCode::Unknown(50), vec![]); 4];
    let (r, out) = run(script(BOTH, &opts), &cfg);
    assert!(matches!(r, Err(HandshakeError::TooManyOptions)));
    assert_eq!(replies(&out).len(), 3);
}

#[test]
fn export_for_device_and_flags() {
    let d = MemDisk::new(1 << 20).with_read_only(true);
    let e = ExportInfo::for_device("x", &d);
    assert!(e.read_only);
    assert_eq!(e.size, 1 << 20);
    let f = e.transmission_flags(false);
    assert_eq!(f & NBD_FLAG_SEND_FAST_ZERO, 0);
    assert_ne!(f & NBD_FLAG_READ_ONLY, 0);
    let w = ExportInfo::for_device("w", &MemDisk::new(512));
    let f = w.transmission_flags(true);
    assert_ne!(f & NBD_FLAG_SEND_FAST_ZERO, 0);
    assert_ne!(f & NBD_FLAG_SEND_DF, 0);
    assert!(BlockSizes::default().is_valid());
    assert!(!BlockSizes {
        minimum: 3,
        ..BlockSizes::default()
    }
    .is_valid());
}
