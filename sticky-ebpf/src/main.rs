//! sticky's data plane: an SK_REUSEPORT program that sends every connection from one client
//! address (or prefix) to the same worker's listening socket.
//!
//! For each new connection the kernel runs the program on the reuseport group. It reads the
//! client's source address from the SYN, masks it to the configured prefix, hashes it with the
//! persisted seed and looks the hash up in a table that user space filled with slot numbers.
//! The slot's socket is then selected from the socket array. The program never drops: when the
//! slot is empty it falls back to the next live slot, and when nothing can be selected it lets
//! the kernel choose. Every outcome is counted.
//!
//! With trusted proxies (`--trusted-proxy`), a connection whose source is in the
//! `STICKY_PROXIES` trie goes to the loader's own socket instead ([`LOADER_INDEX`]): the real
//! client's address is in the stream, which the loader reads. Every other client stays here.
//!
//! With `--quic`, a UDP datagram whose destination connection ID is one a worker minted in
//! sticky's layout goes to the slot the ID names, wherever the client's address has moved
//! ([`quic_slot`]), or to the socket of the slot's previous generation while that one drains
//! (a rolling restart); every other datagram goes by the client's address.
//!
//! The object carries the same logic twice: [`sticky_migrate`] (Linux 5.14+) is also run when a
//! listener closes with connections still queued, and moves each of them to the socket its
//! client maps to now, reading the client address from the migrating socket. [`sticky_dispatch`]
//! is the select-only variant for older kernels.
//!
//! The exceptional paths (a fallback, a connection passed to the kernel, an unreadable address,
//! an unroutable QUIC datagram) are logged through aya-log ([`logs`]), at debug.
#![no_std]
#![no_main]

mod logs;

use core::{ffi::c_void, mem::MaybeUninit};

use aya_ebpf::{
    EbpfContext as _,
    bindings::{bpf_hdr_start_off::BPF_HDR_START_NET, sk_action},
    helpers::generated::{bpf_skb_load_bytes, bpf_skb_load_bytes_relative},
    macros::{map, sk_reuseport},
    maps::{Array, LpmTrie, PerCpuArray, ReusePortSockArray, lpm_trie::Key},
    programs::{SkReuseportContext, SockContext},
};
use sticky_common::{
    COUNTER_DRAINING, COUNTER_FALLBACK, COUNTER_PASSED, COUNTER_PROXIED, COUNTER_QUIC_ROUTED,
    COUNTER_QUIC_UNROUTABLE, COUNTER_UNREADABLE, COUNTERS, DRAINING_INDEX, DispatchConfig,
    LOADER_INDEX, MAX_PROXIES, MAX_SLOTS, SOCKET_ENTRIES, Table,
    client::{Client, Pick, pick_slot},
    quic::{self, HEADER_OCTETS, Route},
};

#[map]
static STICKY_SOCKETS: ReusePortSockArray = ReusePortSockArray::with_max_entries(SOCKET_ENTRIES, 0);

#[map]
static STICKY_PROXIES: LpmTrie<[u32; 4], u8> = LpmTrie::with_max_entries(MAX_PROXIES, 0);

#[map]
static STICKY_TABLE: Array<Table> = Array::with_max_entries(1, 0);

#[map]
static STICKY_CONFIG: Array<DispatchConfig> = Array::with_max_entries(1, 0);

#[map]
static STICKY_GENERATIONS: Array<u8> = Array::with_max_entries(MAX_SLOTS, 0);

#[map]
static STICKY_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS, 0);

/// `ETH_P_IP` and `ETH_P_IPV6` as the context reports them: network byte order.
const ETH_P_IP: u32 = 0x0800u16.to_be() as u32;
const ETH_P_IPV6: u32 = 0x86ddu16.to_be() as u32;
/// Address families of `bpf_sock.family`.
const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
/// Offsets of the source address in the IPv4 and IPv6 headers.
const IPV4_SADDR: u32 = 12;
const IPV6_SADDR: u32 = 8;
/// `IPPROTO_UDP`, as the context reports the transport protocol.
const IPPROTO_UDP: u32 = 17;
/// The UDP header's length: a datagram's payload starts there (the program's data starts at
/// the transport header).
const UDP_HEADER: u32 = 8;
/// [`quic_slot`]'s answer for a datagram that goes by its client's address.
const BY_ADDRESS: u32 = u32::MAX;

/// Selects new connections, and (Linux 5.14+) migrates the queue of a closing listener.
#[sk_reuseport(migrate)]
pub fn sticky_migrate(ctx: SkReuseportContext) -> u32 {
    let client = match ctx.migrating_sk() {
        Some(sk) => client_of_socket(&sk),
        None if by_connection_id(&ctx) => return sk_action::SK_PASS,
        None => client_of_packet(&ctx),
    };
    finish(&ctx, client)
}

/// Selects new connections (any kernel with SK_REUSEPORT).
#[sk_reuseport]
pub fn sticky_dispatch(ctx: SkReuseportContext) -> u32 {
    if by_connection_id(&ctx) {
        return sk_action::SK_PASS;
    }
    finish(&ctx, client_of_packet(&ctx))
}

/// With `--quic`, selects the socket a datagram's connection ID names (its slot's, or that slot's
/// draining one), if it does and that socket is there; returns whether it did. Called before the client's address is read: with the
/// address words alive across the call, LLVM spilled them to the stack and read back slots
/// only one address family had written, which the verifier refuses without CAP_PERFMON.
#[inline(always)]
fn by_connection_id(ctx: &SkReuseportContext) -> bool {
    // A TCP connection never carries one: no call, no map lookup on its path.
    if ctx.ip_protocol() != IPPROTO_UDP {
        return false;
    }
    let index = quic_slot(ctx.as_ptr());
    if index == BY_ADDRESS {
        return false;
    }
    if STICKY_SOCKETS.select_reuseport(ctx, index).is_ok() {
        count(COUNTER_QUIC_ROUTED);
        let draining = index >= DRAINING_INDEX;
        count(if draining { index - DRAINING_INDEX + COUNTER_DRAINING } else { index });
        return true;
    }
    count(COUNTER_QUIC_UNROUTABLE);
    logs::quic_no_socket(index);
    false
}

/// Selects the client's socket, counts the outcome and lets the connection through.
#[inline(always)]
fn finish(ctx: &SkReuseportContext, client: Result<Client, u32>) -> u32 {
    // A match rather than `and_then`: with the closure, LLVM called `select` out of line and
    // passed the client through the stack, part of it unwritten, which the verifier refuses.
    let counter = match client {
        Ok(client) => select(ctx, client).unwrap_or_else(|counter| counter),
        Err(counter) => {
            logs::unreadable();
            counter
        }
    };
    count(counter);
    // Never drop: without a selection the kernel picks a socket itself.
    sk_action::SK_PASS
}

/// The source address of the packet being dispatched.
#[inline(always)]
fn client_of_packet(ctx: &SkReuseportContext) -> Result<Client, u32> {
    match ctx.eth_protocol() {
        ETH_P_IP => load_words::<1>(ctx, IPV4_SADDR).map(|[saddr]| Client::V4(saddr)),
        ETH_P_IPV6 => load_words::<4>(ctx, IPV6_SADDR).map(Client::V6),
        _ => Err(COUNTER_UNREADABLE),
    }
}

/// The remote address of a connection being migrated; a v4-mapped IPv6 address is the IPv4
/// client it stands for, as in the packet path.
#[inline(always)]
fn client_of_socket(sk: &SockContext) -> Result<Client, u32> {
    // SAFETY: the kernel hands a valid, non-null socket for the length of the program run.
    let sk = unsafe { &*sk.sock };
    match sk.family {
        AF_INET => Ok(Client::V4(sk.dst_ip4)),
        AF_INET6 => {
            let ip6 = sk.dst_ip6;
            let v4_mapped = ip6[0] == 0 && ip6[1] == 0 && ip6[2] == 0xffffu32.to_be();
            Ok(if v4_mapped { Client::V4(ip6[3]) } else { Client::V6(ip6) })
        }
        _ => Err(COUNTER_UNREADABLE),
    }
}

/// Selects `client`'s socket; returns the counter to bump: the selected slot, or one of the
/// global outcomes as the error.
///
/// A trusted proxy's connection goes to the loader's socket. Should that be missing (only
/// while no loader runs, when its workers are gone too), the kernel chooses: the worker still
/// receives the proxy's header. Not falling through to the slot scan below also keeps the
/// scan explored once by the verifier, whose unprivileged rules (no CAP_PERFMON) bound it.
#[inline(always)]
fn select(ctx: &SkReuseportContext, client: Client) -> Result<u32, u32> {
    if is_trusted_proxy(client.trie_words()) {
        return match STICKY_SOCKETS.select_reuseport(ctx, LOADER_INDEX) {
            Ok(()) => Ok(COUNTER_PROXIED),
            Err(_) => {
                logs::no_loader_socket();
                Err(COUNTER_PASSED)
            }
        };
    }
    let config = STICKY_CONFIG.get(0).ok_or(COUNTER_PASSED)?;
    let table = STICKY_TABLE.get(0).ok_or(COUNTER_PASSED)?;
    // A slot is live when its socket can be selected; a slot with no socket falls back to
    // the next live one, so the connection is still served.
    let live = |slot| STICKY_SOCKETS.select_reuseport(ctx, slot).is_ok();
    match pick_slot(&client, config, table, live) {
        Pick::Hashed(slot) => Ok(slot),
        Pick::Fallback { from, to } => {
            count(COUNTER_FALLBACK);
            logs::fallback(from, to);
            Ok(to)
        }
        Pick::None => {
            logs::no_live_slot();
            Err(COUNTER_PASSED)
        }
    }
}

/// Whether `address` (as the trie keys it) is a trusted proxy's; without trusted proxies, no
/// lookup is made. Its own function (a BPF-to-BPF call), so that its key lives in a stack
/// frame of its own: inlined, the unprivileged verifier refused the program ("the sequence of
/// 8193 jumps is too complex").
#[inline(never)]
fn is_trusted_proxy(address: [u32; 4]) -> bool {
    let trusts_some = STICKY_CONFIG.get(0).is_some_and(|config| config.proxies != 0);
    trusts_some && STICKY_PROXIES.get(&Key::new(128, address)).is_some()
}

/// With `--quic`: the socket-array index of the socket a datagram's destination connection ID
/// names ([`quic::socket_index`]), or [`BY_ADDRESS`] (counting it when it is a short header,
/// or too short). Its own function, so
/// that the verifier explores it apart from the address path.
#[inline(never)]
fn quic_slot(ctx: *mut c_void) -> u32 {
    let Some(config) = STICKY_CONFIG.get(0) else { return BY_ADDRESS };
    if config.quic_cid_len == 0 {
        return BY_ADDRESS;
    }
    let mut header = MaybeUninit::<[u8; HEADER_OCTETS]>::uninit();
    // SAFETY: the helper writes at most `HEADER_OCTETS` bytes into `header`.
    let ret = unsafe {
        bpf_skb_load_bytes(ctx, UDP_HEADER, header.as_mut_ptr().cast(), HEADER_OCTETS as u32)
    };
    if ret != 0 {
        // Shorter than any QUIC packet.
        count(COUNTER_QUIC_UNROUTABLE);
        logs::quic_short();
        return BY_ADDRESS;
    }
    // SAFETY: a zero return means the helper filled the whole buffer.
    let header = unsafe { header.assume_init() };
    let route = quic::route(&header, config.quic_cid_len as u8, config.quic_key);
    let index = match route {
        // A lookup, not an index into one value: the verifier refuses a variable offset into
        // a map value without CAP_PERFMON.
        Route::Cid(id) => STICKY_GENERATIONS
            .get(u32::from(id.slot))
            .and_then(|&current| quic::socket_index(id, current)),
        Route::Address => return BY_ADDRESS,
        Route::Unroutable => None,
    };
    match index {
        Some(index) => index,
        None => {
            count(COUNTER_QUIC_UNROUTABLE);
            logs::quic_foreign();
            BY_ADDRESS
        }
    }
}

/// Reads `N` address words at `offset` from the start of the network header.
///
/// The buffer is left uninitialised for the helper to fill: zeroing it first makes LLVM call
/// `memset`, whose byte loop does variable-offset stack arithmetic that the verifier refuses
/// to a loader without CAP_PERFMON (the unit's capability set).
#[inline(always)]
fn load_words<const N: usize>(ctx: &SkReuseportContext, offset: u32) -> Result<[u32; N], u32> {
    let mut words = MaybeUninit::<[u32; N]>::uninit();
    // SAFETY: the helper writes at most `size_of::<[u32; N]>()` bytes into `words`; the
    // verifier accepts uninitialised stack memory as its destination.
    let ret = unsafe {
        bpf_skb_load_bytes_relative(
            ctx.as_ptr(),
            offset,
            words.as_mut_ptr().cast(),
            size_of::<[u32; N]>() as u32,
            BPF_HDR_START_NET,
        )
    };
    // SAFETY: a zero return means the helper filled the whole buffer.
    if ret == 0 { Ok(unsafe { words.assume_init() }) } else { Err(COUNTER_UNREADABLE) }
}

/// Adds one to a per-CPU counter.
#[inline(always)]
fn count(index: u32) {
    if let Some(counter) = STICKY_COUNTERS.get_ptr_mut(index) {
        // SAFETY: the pointer is this CPU's slot of the counter, valid for this program run.
        unsafe { *counter += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
