//! The one system call the switch needs that rustix has no safe wrapper
//! for: binding an `AF_PACKET` socket to one interface (`sockaddr_ll`).

#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{Context, Result, bail};

const ETH_P_ALL: u16 = 0x0003;

/// A raw, non-blocking `AF_PACKET` socket that sends and receives whole
/// Ethernet frames on the interface `ifname` of the calling thread's
/// network namespace.
///
/// # Errors
/// When the interface does not exist or the socket cannot be made.
pub fn open(ifname: &str) -> Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked and owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            i32::from(ETH_P_ALL.to_be()),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("AF_PACKET socket");
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let index = rustix::net::netdevice::name_to_index(&fd, ifname)
        .with_context(|| format!("interface {ifname}"))?;
    // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = ETH_P_ALL.to_be();
    addr.sll_ifindex = i32::try_from(index)?;
    // SAFETY: addr is a valid sockaddr_ll of the length given.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast::<libc::sockaddr>(),
            u32::try_from(std::mem::size_of::<libc::sockaddr_ll>())?,
        )
    };
    if rc != 0 {
        bail!(
            "binding a packet socket to {ifname}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(fd)
}

/// Puts the calling thread under `SCHED_FIFO` at the highest priority,
/// so the switch is never starved by the hosts' processes: on a real
/// fleet the network does not share the hosts' CPUs. Best effort: an
/// error (no privilege) leaves the thread as it was.
///
/// # Errors
/// When the kernel refuses.
pub fn realtime() -> Result<()> {
    // SAFETY: sched_param is plain data; pid 0 is the calling thread.
    let rc = unsafe {
        let mut p: libc::sched_param = std::mem::zeroed();
        p.sched_priority = libc::sched_get_priority_max(libc::SCHED_FIFO);
        libc::sched_setscheduler(0, libc::SCHED_FIFO, &raw const p)
    };
    if rc != 0 {
        bail!(
            "SCHED_FIFO for the switch thread: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}
