//! Dropping root after setup: once /dev/kvm, the tap, disk files and
//! sockets are open, the VMM needs no privilege at all.

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("dropping supplementary groups: {0}")]
    SetGroups(std::io::Error),
    #[error("switching to gid {gid}: {source}")]
    SetGid { gid: u32, source: std::io::Error },
    #[error("switching to uid {uid}: {source}")]
    SetUid { uid: u32, source: std::io::Error },
    #[error("uid {0} could regain root after the switch")]
    NotDropped(u32),
}

/// Switches the whole process (all threads, via glibc) to `uid`/`gid`.
pub fn drop_to(uid: u32, gid: u32) -> Result<(), PrivilegeError> {
    let last = || std::io::Error::last_os_error();
    // SAFETY: plain syscalls with integer arguments.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0 {
            return Err(PrivilegeError::SetGroups(last()));
        }
        if libc::setresgid(gid, gid, gid) != 0 {
            return Err(PrivilegeError::SetGid {
                gid,
                source: last(),
            });
        }
        if libc::setresuid(uid, uid, uid) != 0 {
            return Err(PrivilegeError::SetUid {
                uid,
                source: last(),
            });
        }
        // The saved set-user-ID is gone too: going back must fail.
        if uid != 0 && libc::setuid(0) == 0 {
            return Err(PrivilegeError::NotDropped(uid));
        }
    }
    Ok(())
}
