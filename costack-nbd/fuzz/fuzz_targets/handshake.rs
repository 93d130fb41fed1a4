//! Arbitrary client bytes against the server side of the handshake.
//!
//! `negotiate` must never panic, and whatever it sends back must be a
//! well-formed greeting followed by well-formed option replies (and, after
//! `NBD_OPT_EXPORT_NAME`, the export-name reply).

#![no_main]

use std::io::Cursor;

use costack_nbd::protocol::handshake::{negotiate, BlockSizes, Duplex, ExportInfo, HandshakeConfig};
use costack_nbd::protocol::proto::{
    self, Info, OptionCode, OptionReplyHeader, ReplyType, EXPORT_NAME_ZEROES, NBD_FLAG_C_NO_ZEROES,
    NBD_FLAG_BLOCK_STATUS_PAYLOAD, OPTION_REPLY_HEADER_LEN, OPTION_REPLY_MAGIC,
};
use costack_nbd::protocol::request::TransmissionParams;
use libfuzzer_sys::fuzz_target;

fn config(selector: u8) -> HandshakeConfig {
    let mut ro = ExportInfo::new("ro", 1 << 16);
    ro.read_only = true;
    ro.description = "read-only".into();
    let mut aligned = ExportInfo::new("aligned", u64::MAX - 4095);
    aligned.block_sizes = BlockSizes {
        minimum: 4096,
        preferred: 4096,
        maximum: 1 << 20,
    };
    aligned.fast_zero = true;
    let mut cfg = HandshakeConfig::new(vec![ExportInfo::new("", 1 << 20), ro, aligned]);
    if selector & 1 != 0 {
        // Small limits reach the "too long" and "too many" paths.
        cfg.max_option_len = 64;
        cfg.max_options = 4;
    }
    if selector & 2 != 0 {
        cfg.exports.truncate(1);
    }
    cfg
}

/// Checks the server's output; panics (a finding) if it is malformed.
fn check_output(
    out: &[u8],
    result: &Result<costack_nbd::protocol::handshake::Negotiated, impl std::fmt::Debug>,
    client_flags: Option<u32>,
) {
    assert!(out.len() >= proto::GREETING_LEN, "no greeting");
    proto::decode_greeting(&out[..proto::GREETING_LEN]).expect("greeting decodes");
    let mut rest = &out[proto::GREETING_LEN..];
    // The export-name reply has no header: strip it first.
    if let Ok(n) = result {
        if n.via == OptionCode::ExportName {
            let no_zeroes = client_flags.unwrap_or(0) & NBD_FLAG_C_NO_ZEROES != 0;
            let len = 10 + if no_zeroes { 0 } else { EXPORT_NAME_ZEROES };
            assert!(rest.len() >= len, "short export-name reply");
            let tail = &rest[rest.len() - len..];
            assert_eq!(&tail[..8], &n.export.size.to_be_bytes());
            assert_eq!(&tail[8..10], &n.transmission_flags.to_be_bytes());
            rest = &rest[..rest.len() - len];
        }
    }
    let mut last = None;
    while !rest.is_empty() {
        assert!(
            rest.len() >= OPTION_REPLY_HEADER_LEN,
            "truncated option reply"
        );
        let (h, tail) = rest.split_at(OPTION_REPLY_HEADER_LEN);
        assert_eq!(&h[..8], &OPTION_REPLY_MAGIC.to_be_bytes());
        let hdr = OptionReplyHeader::decode(h).expect("option reply header decodes");
        let len = hdr.length as usize;
        assert!(tail.len() >= len, "option reply payload overruns output");
        let (payload, tail) = tail.split_at(len);
        if hdr.reply == ReplyType::Info {
            Info::decode(payload).expect("NBD_REP_INFO payload decodes");
        }
        assert!(
            !matches!(hdr.reply, ReplyType::Unknown(_)),
            "server sent an unknown reply type"
        );
        last = Some(hdr);
        rest = tail;
    }
    if let Ok(n) = result {
        assert!(n.export_index < 3);
        // The export's flags, plus the block status payload form exactly
        // with extended headers.
        let payload_form = n.transmission_flags & NBD_FLAG_BLOCK_STATUS_PAYLOAD;
        assert_eq!(
            n.transmission_flags & !NBD_FLAG_BLOCK_STATUS_PAYLOAD,
            n.export.transmission_flags(n.structured_replies)
        );
        assert_eq!(payload_form != 0, n.extended_headers);
        if n.via == OptionCode::Go {
            let last = last.expect("NBD_OPT_GO is answered");
            assert_eq!(last.reply, ReplyType::Ack);
            assert_eq!(last.option, u32::from(OptionCode::Go));
        }
        if n.base_allocation.is_some() {
            assert!(
                n.structured_replies,
                "meta context without structured replies"
            );
        }
        let p = TransmissionParams::from_negotiated(n);
        assert!(p.max_payload > 0);
        assert_eq!(p.read_only, n.export.read_only);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, input)) = data.split_first() else {
        return;
    };
    let cfg = config(selector);
    let client_flags = input
        .get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    let mut stream = Duplex::new(Cursor::new(input), Vec::new());
    let result = negotiate(&mut stream, &cfg);
    check_output(&stream.writer, &result, client_flags);
});
