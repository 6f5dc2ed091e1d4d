//! The thin I/O layer: the forwarding sysctls and the NETLINK_NETFILTER socket, for nftables
//! and for conntrack.

use std::fs;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use nix::libc;
use nix::sys::socket::{self, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType};
use nix::sys::time::TimeVal;

use crate::conntrack::{encode_deletes, encode_dump, parse_dump, Deletes, Flow};
use crate::error::Error;
use crate::netlink::{encode_batch, parse_replies, Acks, Sequence};
use crate::rules::Step;
use hostlb_contract::Family;

/// How long to wait for the kernel's answers to a batch.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Below this, socket buffers are left at their defaults (`net.core.[rw]mem_default` is 208 KiB).
const DEFAULT_BUFFER: usize = 128 * 1024;
/// What one queued answer costs in the receive buffer: a small skb's true size is under 1 KiB.
const ANSWER_TRUESIZE: usize = 2048;
/// Deletes sent at once: their answers fit the default receive buffer.
const DELETES_PER_DATAGRAM: usize = 64;
/// Larger than any datagram the kernel sends: it fills at most 32 KiB per part of a dump.
const RECEIVE_BUFFER: usize = 64 * 1024;

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
    let fd = open_netfilter_socket()?;
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
    send(&fd, &batch, "sending the nftables batch")?;

    let mut acks = Acks::new(sequence, steps.len());
    let mut buf = vec![0u8; RECEIVE_BUFFER];
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

/// Deletes the conntrack entries of the flows that `is_stale` picks (see `conntrack::is_stale`),
/// in the namespace of the calling thread, so that their next packets meet the rules now in
/// place. Returns how many it deleted.
pub fn forget_stale_flows(is_stale: impl Fn(&Flow) -> bool) -> Result<usize, Error> {
    let fd = open_netfilter_socket()?;
    let mut buf = vec![0u8; RECEIVE_BUFFER];
    let dump = 1;
    send(&fd, &encode_dump(dump), "requesting the conntrack entries")?;
    let mut stale = Vec::new();
    let outcome = loop {
        let part = parse_dump(receive(&fd, &mut buf, "receiving the conntrack entries")?);
        stale.extend(part.flows.into_iter().filter(|flow| is_stale(flow)));
        if let Some(outcome) = part.end {
            break outcome;
        }
    };
    outcome.map_err(|errno| Error::Conntrack { step: "listing the entries", errno })?;

    let mut deleted = 0;
    let mut first = dump + 1;
    for flows in stale.chunks(DELETES_PER_DATAGRAM) {
        send(&fd, &encode_deletes(flows, first), "sending conntrack deletes")?;
        let mut deletes = Deletes::new(first, flows.len());
        while !deletes.done() {
            let answers = receive(&fd, &mut buf, "receiving the answers to conntrack deletes")?;
            parse_replies(answers).iter().for_each(|reply| deletes.record(reply));
        }
        deleted += deletes.result().map_err(|errno| Error::Conntrack { step: "deleting an entry", errno })?;
        first = first.wrapping_add(flows.len() as u32);
    }
    Ok(deleted)
}

/// A NETLINK_NETFILTER socket bound to the kernel, with short errors, the kernel's error texts
/// and a receive timeout.
fn open_netfilter_socket() -> Result<OwnedFd, Error> {
    let netlink = |step: &'static str| move |errno: Errno| Error::Netlink { step, errno };
    let fd: OwnedFd =
        socket::socket(AddressFamily::Netlink, SockType::Raw, SockFlag::SOCK_CLOEXEC, SockProtocol::NetlinkNetFilter)
            .map_err(netlink("opening a NETLINK_NETFILTER socket"))?;
    socket::bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(netlink("binding the netlink socket"))?;
    // Both are optional comforts: short errors (no echo of the request), and the kernel's text.
    set_netlink_flag(&fd, libc::NETLINK_CAP_ACK);
    set_netlink_flag(&fd, libc::NETLINK_EXT_ACK);
    let timeout = TimeVal::new(REPLY_TIMEOUT.as_secs() as _, 0);
    socket::setsockopt(&fd, sockopt::ReceiveTimeout, &timeout).map_err(netlink("setting a receive timeout"))?;
    Ok(fd)
}

fn send(fd: &OwnedFd, message: &[u8], step: &'static str) -> Result<(), Error> {
    let sent = socket::sendto(fd.as_raw_fd(), message, &NetlinkAddr::new(0, 0), MsgFlags::empty())
        .map_err(|errno| Error::Netlink { step, errno })?;
    if sent != message.len() {
        return Err(Error::Incomplete(format!("{step}: sent {sent} of {} bytes", message.len())));
    }
    Ok(())
}

/// One datagram from the kernel; no answer within `REPLY_TIMEOUT` is an error (EAGAIN).
fn receive<'a>(fd: &OwnedFd, buf: &'a mut [u8], step: &'static str) -> Result<&'a [u8], Error> {
    loop {
        match socket::recv(fd.as_raw_fd(), buf, MsgFlags::empty()) {
            Ok(len) => return Ok(&buf[..len]),
            Err(Errno::EINTR) => continue,
            Err(errno) => return Err(Error::Netlink { step, errno }),
        }
    }
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
