//! sticky's data plane: an SK_REUSEPORT program that sends every connection from one client
//! address (or prefix) to the same worker's listening socket.
//!
//! For each new connection the kernel runs [`sticky_dispatch`] on the reuseport group. It reads
//! the client's source address from the SYN, masks it to the configured prefix, hashes it with
//! the persisted seed and looks the hash up in a table that user space filled with slot numbers.
//! The slot's socket is then selected from the socket array. The program never drops: when the
//! slot is empty it falls back to the next live slot, and when nothing can be selected it lets
//! the kernel choose. Every outcome is counted.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext as _,
    bindings::{bpf_hdr_start_off::BPF_HDR_START_NET, sk_action},
    helpers::generated::bpf_skb_load_bytes_relative,
    macros::{map, sk_reuseport},
    maps::{Array, PerCpuArray, ReusePortSockArray},
    programs::SkReuseportContext,
};
use sticky_common::{
    COUNTER_FALLBACK, COUNTER_PASSED, COUNTER_UNREADABLE, COUNTERS, DispatchConfig, MAX_SLOTS,
    TABLE_SIZE, hash::client_hash,
};

#[map]
static STICKY_SOCKETS: ReusePortSockArray = ReusePortSockArray::with_max_entries(MAX_SLOTS, 0);

#[map]
static STICKY_TABLE: Array<u32> = Array::with_max_entries(TABLE_SIZE, 0);

#[map]
static STICKY_CONFIG: Array<DispatchConfig> = Array::with_max_entries(1, 0);

#[map]
static STICKY_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS, 0);

/// `ETH_P_IP` and `ETH_P_IPV6` as the context reports them: network byte order.
const ETH_P_IP: u32 = 0x0800u16.to_be() as u32;
const ETH_P_IPV6: u32 = 0x86ddu16.to_be() as u32;
/// Offsets of the source address in the IPv4 and IPv6 headers.
const IPV4_SADDR: u32 = 12;
const IPV6_SADDR: u32 = 8;

#[sk_reuseport]
pub fn sticky_dispatch(ctx: SkReuseportContext) -> u32 {
    let counter = match try_dispatch(&ctx) {
        Ok(slot) => slot,
        Err(counter) => counter,
    };
    count(counter);
    // Never drop: without a selection the kernel picks a socket itself.
    sk_action::SK_PASS
}

/// Selects the client's socket and returns the counter to bump: the selected slot, or one of
/// the global outcomes as the error.
fn try_dispatch(ctx: &SkReuseportContext) -> Result<u32, u32> {
    let config = STICKY_CONFIG.get(0).ok_or(COUNTER_PASSED)?;
    let hash = match ctx.eth_protocol() {
        ETH_P_IP => {
            let [saddr] = load_words::<1>(ctx, IPV4_SADDR)?;
            client_hash(config.seed, &[saddr & config.v4_mask])
        }
        ETH_P_IPV6 => {
            let saddr = load_words::<4>(ctx, IPV6_SADDR)?;
            let mut masked = [0; 4];
            for i in 0..4 {
                masked[i] = saddr[i] & config.v6_mask[i];
            }
            client_hash(config.seed, &masked)
        }
        _ => return Err(COUNTER_UNREADABLE),
    };
    let entry = (hash as u32) & (TABLE_SIZE - 1);
    let slot = *STICKY_TABLE.get(entry).ok_or(COUNTER_PASSED)?;
    if STICKY_SOCKETS.select_reuseport(ctx, slot).is_ok() {
        return Ok(slot);
    }
    // The slot has no socket: take the next live one, so the connection is still served.
    for step in 1..MAX_SLOTS {
        if step >= config.slots {
            break;
        }
        let other = (slot + step) % config.slots;
        if STICKY_SOCKETS.select_reuseport(ctx, other).is_ok() {
            count(COUNTER_FALLBACK);
            return Ok(other);
        }
    }
    Err(COUNTER_PASSED)
}

/// Reads `N` address words at `offset` from the start of the network header.
#[inline(always)]
fn load_words<const N: usize>(ctx: &SkReuseportContext, offset: u32) -> Result<[u32; N], u32> {
    let mut words = [0u32; N];
    // SAFETY: the helper writes at most `size_of_val(&words)` bytes into `words`.
    let ret = unsafe {
        bpf_skb_load_bytes_relative(
            ctx.as_ptr(),
            offset,
            words.as_mut_ptr().cast(),
            core::mem::size_of_val(&words) as u32,
            BPF_HDR_START_NET,
        )
    };
    if ret == 0 { Ok(words) } else { Err(COUNTER_UNREADABLE) }
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
static LICENSE: [u8; 4] = *b"GPL\0";
