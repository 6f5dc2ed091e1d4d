//! The thin I/O layer: the forwarding sysctls and the NETLINK_NETFILTER socket.

use std::fs;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use nix::libc;
use nix::sys::socket::{self, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType};
use nix::sys::time::TimeVal;

use crate::error::Error;
use crate::netlink::{encode_batch, parse_replies, Acks, Sequence};
use crate::rules::Step;
use hostlb_proxy_spec::Family;

/// How long to wait for the kernel's answers to a batch.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Below this, socket buffers are left at their defaults (`net.core.[rw]mem_default` is 208 KiB).
const DEFAULT_BUFFER: usize = 128 * 1024;
/// What one queued answer costs in the receive buffer: a small skb's true size is under 1 KiB.
const ANSWER_TRUESIZE: usize = 2048;

pub fn forwarding_sysctl(family: Family) -> &'static str {
    match family {
        Family::V4 => "/proc/sys/net/ipv4/ip_forward",
        Family::V6 => "/proc/sys/net/ipv6/conf/all/forwarding",
    }
}

/// Turns forwarding on unless it already is: with `securityContext.sysctls` kubelet has set it
/// and `/proc/sys` is read-only. Returns whether it had to be written.
pub fn enable_forwarding(family: Family) -> Result<bool, Error> {
    let path = Path::new(forwarding_sysctl(family));
    let current =
        fs::read_to_string(path).map_err(|source| Error::Sysctl { action: "reading", path: path.into(), source })?;
    if current.trim() == "1" {
        return Ok(false);
    }
    fs::write(path, "1\n").map_err(|source| Error::Sysctl { action: "writing 1 to", path: path.into(), source })?;
    Ok(true)
}

/// Sends `steps` as one nftables transaction and waits for the kernel to acknowledge each.
pub fn apply(steps: &[Step]) -> Result<(), Error> {
    let netlink = |step: &'static str| move |errno: Errno| Error::Netlink { step, errno };
    let fd: OwnedFd =
        socket::socket(AddressFamily::Netlink, SockType::Raw, SockFlag::SOCK_CLOEXEC, SockProtocol::NetlinkNetFilter)
            .map_err(netlink("opening a NETLINK_NETFILTER socket"))?;
    let kernel = NetlinkAddr::new(0, 0);
    socket::bind(fd.as_raw_fd(), &kernel).map_err(netlink("binding the netlink socket"))?;
    // Both are optional comforts: short errors (no echo of the request), and the kernel's text.
    set_netlink_flag(&fd, libc::NETLINK_CAP_ACK);
    set_netlink_flag(&fd, libc::NETLINK_EXT_ACK);
    let timeout = TimeVal::new(REPLY_TIMEOUT.as_secs() as _, 0);
    socket::setsockopt(&fd, sockopt::ReceiveTimeout, &timeout).map_err(netlink("setting a receive timeout"))?;

    let sequence = Sequence { first: 1 };
    let batch = encode_batch(steps, sequence);
    // The batch goes as one datagram, and the kernel queues one answer per step before we read
    // any: size both buffers for that. Forcing them past the sysctl limits needs NET_ADMIN,
    // which programming nftables needs anyway; if it fails, the defaults may still do.
    let send_buffer = batch.len() * 2;
    if send_buffer > DEFAULT_BUFFER {
        let _ = socket::setsockopt(&fd, sockopt::SndBufForce, &send_buffer)
            .or_else(|_| socket::setsockopt(&fd, sockopt::SndBuf, &send_buffer));
    }
    let receive_buffer = (steps.len() + 1) * ANSWER_TRUESIZE;
    if receive_buffer > DEFAULT_BUFFER {
        let _ = socket::setsockopt(&fd, sockopt::RcvBufForce, &receive_buffer)
            .or_else(|_| socket::setsockopt(&fd, sockopt::RcvBuf, &receive_buffer));
    }
    let sent = socket::sendto(fd.as_raw_fd(), &batch, &kernel, MsgFlags::empty())
        .map_err(netlink("sending the nftables batch"))?;
    if sent != batch.len() {
        return Err(Error::Incomplete(format!("sent {sent} of {} bytes of the batch", batch.len())));
    }

    let mut acks = Acks::new(sequence, steps.len());
    let mut buf = vec![0u8; 64 * 1024];
    while !acks.done() {
        match socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(len) => parse_replies(&buf[..len]).into_iter().for_each(|reply| acks.record(reply)),
            Err(Errno::EINTR) => continue,
            // Timed out: report what the answers so far say.
            Err(Errno::EAGAIN) => break,
            Err(Errno::ENOBUFS) => {
                return Err(Error::Incomplete(format!(
                    "the kernel's answers to {} steps overflowed the receive buffer; the batch may or may not \
                     have been applied",
                    steps.len()
                )))
            }
            Err(errno) => return Err(Error::Netlink { step: "receiving the kernel's answers", errno }),
        }
    }
    acks.result(steps)
}

fn set_netlink_flag(fd: &impl AsFd, option: libc::c_int) {
    let on: libc::c_int = 1;
    // SAFETY: a valid socket, and a pointer to an int with its size, as setsockopt expects.
    unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            libc::SOL_NETLINK,
            option,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}
