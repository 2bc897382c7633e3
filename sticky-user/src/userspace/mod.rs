//! Userspace dispatch (`--dispatch userspace`): the loader accepts every connection and hands
//! it to its client's worker over a Unix socket, with the same seed, table and hash as the
//! eBPF program.

pub(crate) mod handoff;
