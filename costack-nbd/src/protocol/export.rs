//! What an export offers in the handshake: its size, flags, block size
//! constraints and metadata contexts ([`ExportInfo`]).

use crate::block::BlockDevice;
use crate::protocol::proto::{
    NBD_FLAG_CAN_MULTI_CONN, NBD_FLAG_HAS_FLAGS, NBD_FLAG_READ_ONLY, NBD_FLAG_ROTATIONAL,
    NBD_FLAG_SEND_CACHE, NBD_FLAG_SEND_DF, NBD_FLAG_SEND_FAST_ZERO, NBD_FLAG_SEND_FLUSH,
    NBD_FLAG_SEND_FUA, NBD_FLAG_SEND_TRIM, NBD_FLAG_SEND_WRITE_ZEROES,
};

/// Context id this server assigns to `base:allocation` in
/// `NBD_OPT_SET_META_CONTEXT` replies. An export's
/// [`qemu_contexts`](ExportInfo::qemu_contexts) get the ids after it, in
/// their order.
pub const BASE_ALLOCATION_CONTEXT_ID: u32 = 1;

/// A metadata context an export may offer beside `base:allocation`, as
/// qemu-nbd does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QemuContext {
    /// `qemu:allocation-depth` (qemu-nbd `-A`): where in the backing chain
    /// each extent is allocated ([`BlockDevice::allocation_depth`]).
    AllocationDepth,
    /// `qemu:dirty-bitmap:NAME` (qemu-nbd `-B NAME`): the image's
    /// persistent bitmap NAME ([`BlockDevice::dirty_bitmap`]).
    DirtyBitmap(String),
}

impl QemuContext {
    /// The context's name on the wire.
    ///
    /// ```
    /// use costack_nbd::protocol::handshake::QemuContext;
    /// assert_eq!(QemuContext::DirtyBitmap("b0".into()).name(), "qemu:dirty-bitmap:b0");
    /// ```
    pub fn name(&self) -> String {
        match self {
            QemuContext::AllocationDepth => "qemu:allocation-depth".to_owned(),
            QemuContext::DirtyBitmap(bitmap) => format!("qemu:dirty-bitmap:{bitmap}"),
        }
    }
}

/// Largest request payload this server accepts by default (32 MiB), also
/// the default advertised maximum block size.
pub const DEFAULT_MAX_BLOCK: u32 = 32 * 1024 * 1024;

/// Block size constraints advertised with `NBD_INFO_BLOCK_SIZE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSizes {
    /// Minimum block size: alignment required of offsets and lengths. A power
    /// of two no larger than 64 KiB.
    pub minimum: u32,
    /// Preferred block size: a power of two, at least `max(minimum, 512)`.
    pub preferred: u32,
    /// Maximum request length: a multiple of `minimum`, or `u32::MAX` for no
    /// limit.
    pub maximum: u32,
}

impl Default for BlockSizes {
    fn default() -> Self {
        Self {
            minimum: 1,
            preferred: 4096,
            maximum: DEFAULT_MAX_BLOCK,
        }
    }
}

impl BlockSizes {
    /// Whether the values satisfy the specification's constraints.
    pub fn is_valid(&self) -> bool {
        self.minimum.is_power_of_two()
            && self.minimum <= 65_536
            && self.preferred.is_power_of_two()
            && self.preferred >= self.minimum.max(512)
            && (self.maximum == u32::MAX
                || (self.maximum.is_multiple_of(self.minimum) && self.maximum >= self.minimum))
    }
}

/// Description of one export offered during the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    /// Export name (`""` is the default export).
    pub name: String,
    /// Human-readable description; empty means none.
    pub description: String,
    /// Size in bytes.
    pub size: u64,
    /// Refuse writes and advertise `NBD_FLAG_READ_ONLY`.
    pub read_only: bool,
    /// Advertised block size constraints.
    pub block_sizes: BlockSizes,
    /// A minimum block size advertised beyond `block_sizes.minimum`
    /// without being enforced (1: none). qemu-nbd advertises 512 for an
    /// image whose raw format it guessed, yet serves unaligned requests.
    pub advised_minimum: u32,
    /// Advertise `NBD_FLAG_SEND_FLUSH`.
    pub flush: bool,
    /// Advertise `NBD_FLAG_SEND_FUA`.
    pub fua: bool,
    /// Advertise `NBD_FLAG_SEND_TRIM` (writable exports only).
    pub trim: bool,
    /// Advertise `NBD_FLAG_SEND_WRITE_ZEROES` (writable exports only).
    pub write_zeroes: bool,
    /// Advertise `NBD_FLAG_SEND_FAST_ZERO` (only with write-zeroes).
    pub fast_zero: bool,
    /// Advertise `NBD_FLAG_SEND_CACHE`.
    pub cache: bool,
    /// Advertise `NBD_FLAG_CAN_MULTI_CONN`: only when flushes are visible
    /// across all connections (e.g. one shared in-memory disk).
    pub multi_conn: bool,
    /// Advertise `NBD_FLAG_ROTATIONAL`.
    pub rotational: bool,
    /// Metadata contexts offered beside `base:allocation` (qemu-nbd's
    /// `-A` and `-B`), with context ids 2, 3, ... in this order.
    pub qemu_contexts: Vec<QemuContext>,
}

impl ExportInfo {
    /// The block sizes told to the client: `block_sizes`, with the minimum
    /// raised to `advised_minimum` (and the preferred size with it).
    pub fn advertised_block_sizes(&self) -> BlockSizes {
        let b = self.block_sizes;
        let minimum = b.minimum.max(self.advised_minimum);
        BlockSizes {
            minimum,
            preferred: b.preferred.max(minimum),
            maximum: b.maximum,
        }
    }

    /// A writable export with every optional feature enabled except
    /// multi-conn and rotational, and default block sizes.
    pub fn new(name: impl Into<String>, size: u64) -> Self {
        Self {
            name: name.into(),
            description: String::new(),
            size,
            read_only: false,
            block_sizes: BlockSizes::default(),
            advised_minimum: 1,
            flush: true,
            fua: true,
            trim: true,
            write_zeroes: true,
            fast_zero: false,
            cache: true,
            multi_conn: false,
            rotational: false,
            qemu_contexts: Vec::new(),
        }
    }

    /// An export describing `dev`: size, read-only state and fast-zero
    /// support are taken from the device.
    pub fn for_device<D: BlockDevice + ?Sized>(name: impl Into<String>, dev: &D) -> Self {
        Self {
            read_only: dev.is_read_only(),
            fast_zero: dev.can_fast_zero(),
            ..Self::new(name, dev.size())
        }
    }

    /// Transmission flags for this export.
    ///
    /// As in qemu-nbd, a read-only export advertises `READ_ONLY` and omits
    /// `SEND_TRIM`, `SEND_WRITE_ZEROES` and `SEND_FAST_ZERO` (flush, FUA and
    /// cache stay, being harmless). `SEND_DF` is only set once structured
    /// replies have been negotiated, as the specification requires.
    pub fn transmission_flags(&self, structured_replies: bool) -> u16 {
        let mut f = NBD_FLAG_HAS_FLAGS;
        let mut set = |cond: bool, flag: u16| {
            if cond {
                f |= flag;
            }
        };
        set(self.flush, NBD_FLAG_SEND_FLUSH);
        set(self.fua, NBD_FLAG_SEND_FUA);
        set(self.cache, NBD_FLAG_SEND_CACHE);
        set(self.rotational, NBD_FLAG_ROTATIONAL);
        set(self.multi_conn, NBD_FLAG_CAN_MULTI_CONN);
        set(structured_replies, NBD_FLAG_SEND_DF);
        if self.read_only {
            set(true, NBD_FLAG_READ_ONLY);
        } else {
            set(self.trim, NBD_FLAG_SEND_TRIM);
            set(self.write_zeroes, NBD_FLAG_SEND_WRITE_ZEROES);
            set(self.write_zeroes && self.fast_zero, NBD_FLAG_SEND_FAST_ZERO);
        }
        f
    }
}
