//! The kernel's BPF programs, by id: whether one is loaded, which SK_REUSEPORT programs are.

/// Whether the kernel still has a BPF program with this id; panics if the kernel cannot say
/// (so a "gone" check never passes because the lookup failed).
pub fn program_is_loaded(id: u32) -> bool {
    /// The `bpf_attr` of BPF_PROG_GET_FD_BY_ID.
    #[repr(C)]
    struct Attr {
        prog_id: u32,
        next_id: u32,
        open_flags: u32,
    }
    const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
    let attr = Attr { prog_id: id, next_id: 0, open_flags: 0 };
    // SAFETY: bpf(2) reads `size` bytes of `attr` and returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_PROG_GET_FD_BY_ID, &attr, std::mem::size_of::<Attr>())
    };
    if fd >= 0 {
        // SAFETY: the fd was just returned to this process.
        unsafe { libc::close(fd as i32) };
        return true;
    }
    let err = std::io::Error::last_os_error();
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "cannot look up BPF program {id}: {err}");
    false
}

/// The ids of every SK_REUSEPORT program the kernel has loaded; panics if it cannot list them.
pub fn reuseport_programs() -> Vec<u32> {
    /// `BPF_PROG_TYPE_SK_REUSEPORT`.
    const SK_REUSEPORT: u32 = 21;
    aya::programs::loaded_programs()
        .filter_map(|info| match info {
            Ok(info) => Some(info),
            // Unloaded between the listing of its id and the opening of it.
            Err(aya::programs::ProgramError::SyscallError(err))
                if err.io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                None
            }
            Err(err) => panic!("cannot list the kernel's BPF programs: {err}"),
        })
        .filter(|info| info.program_type() as u32 == SK_REUSEPORT)
        .map(|info| info.id())
        .collect()
}

/// `ids`, each asserted loaded now: take program ids through this before a test checks that
/// they are gone, so that check cannot pass for ids that never were.
pub fn loaded_programs(ids: Vec<u32>) -> Vec<u32> {
    assert!(!ids.is_empty(), "no program ids");
    for &id in &ids {
        assert!(program_is_loaded(id), "program {id} is not loaded");
    }
    ids
}
