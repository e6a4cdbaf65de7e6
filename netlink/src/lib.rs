//! A small synchronous rtnetlink client: list, configure and delete links,
//! add addresses, add and delete routes. The runtime uses it for pod taps
//! and host routes, the guest agent for the pod's interface.
//!
//! Synchronous on purpose: each call is one request and its answer, a few
//! microseconds of kernel work, and a socket belongs to the network
//! namespace of the thread that opened it. Running these calls on the
//! caller's thread (rather than a blocking pool) keeps them in the
//! namespace the caller is in, which tests that `setns` a thread rely on.

mod mac;

use std::io;
use std::net::IpAddr;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

pub use mac::{format_mac, parse_mac};

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("opening a netlink socket: {0}")]
    Open(#[source] io::Error),
    /// The kernel refused the request, or the socket failed.
    #[error("{op}: {source}")]
    Kernel {
        op: String,
        #[source]
        source: io::Error,
    },
    #[error("{op}: malformed netlink answer: {detail}")]
    Decode { op: String, detail: String },
}

impl NetlinkError {
    /// The errno the kernel answered with, if that is what failed.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { source, .. } | NetlinkError::Open(source) => {
                source.raw_os_error()
            }
            NetlinkError::Decode { .. } => None,
        }
    }
}

pub type Result<T, E = NetlinkError> = std::result::Result<T, E>;

/// A network interface as the kernel lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// The hardware address when it is a 6-byte (Ethernet) one.
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    pub up: bool,
}

/// A route in the main table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub destination: IpAddr,
    /// 0 for a default route.
    pub prefix_len: u8,
    pub gateway: Option<IpAddr>,
    /// Output interface index.
    pub device: Option<u32>,
    /// Scope link: the destination is directly on the device's link. Routes
    /// without a gateway are always link-scoped, as `ip route` makes them.
    pub link_scope: bool,
}

/// One NETLINK_ROUTE socket, bound to the calling thread's namespace.
pub struct Netlink {
    socket: Socket,
    sequence: u32,
}

/// Big enough for one datagram of a dump (the kernel sends at most 32 KiB).
const RECV_BUFFER: usize = 64 * 1024;

impl Netlink {
    pub fn open() -> Result<Netlink> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Open)?;
        socket.bind_auto().map_err(NetlinkError::Open)?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(NetlinkError::Open)?;
        Ok(Netlink {
            socket,
            sequence: 0,
        })
    }

    /// Every interface of the namespace.
    pub fn links(&mut self) -> Result<Vec<Link>> {
        let answers = self.dump(
            "list interfaces",
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
        )?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(link) => Some(link_from(link)),
                _ => None,
            })
            .collect())
    }

    /// The interface called `name`, or `None` when there is none.
    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>> {
        let mut message = LinkMessage::default();
        message
            .attributes
            .push(LinkAttribute::IfName(name.to_string()));
        let op = format!("look up interface {name}");
        match self.request(&op, RouteNetlinkMessage::GetLink(message), 0) {
            Ok(answers) => Ok(answers.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(link) => Some(link_from(link)),
                _ => None,
            })),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sets the MTU (when given) and brings the link up or down (when
    /// given). `name` only labels errors.
    pub fn set_link(
        &mut self,
        index: u32,
        name: &str,
        up: Option<bool>,
        mtu: Option<u32>,
    ) -> Result<()> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        if let Some(up) = up {
            message.header.change_mask = LinkFlags::Up;
            if up {
                message.header.flags = LinkFlags::Up;
            }
        }
        if let Some(mtu) = mtu {
            message.attributes.push(LinkAttribute::Mtu(mtu));
        }
        let op = match (up, mtu) {
            (Some(true), Some(mtu)) => format!("set {name} up with MTU {mtu}"),
            (Some(false), Some(mtu)) => format!("set {name} down with MTU {mtu}"),
            (Some(up), None) => format!("set {name} {}", if up { "up" } else { "down" }),
            (None, Some(mtu)) => format!("set the MTU of {name} to {mtu}"),
            (None, None) => return Ok(()),
        };
        self.request(&op, RouteNetlinkMessage::SetLink(message), 0)
            .map(drop)
    }

    /// Deletes the interface; one that is already gone is not an error.
    pub fn delete_link(&mut self, index: u32, name: &str) -> Result<()> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        let op = format!("delete interface {name}");
        match self.request(&op, RouteNetlinkMessage::DelLink(message), 0) {
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(()),
            other => other.map(drop),
        }
    }

    /// Adds `address/prefix_len` to the interface; an address it already
    /// has is not an error (setup converges when repeated).
    pub fn add_address(
        &mut self,
        index: u32,
        name: &str,
        address: IpAddr,
        prefix_len: u8,
    ) -> Result<()> {
        let mut message = AddressMessage::default();
        message.header.family = family(address);
        message.header.prefix_len = prefix_len;
        message.header.index = index;
        message.header.scope = if address.is_loopback() {
            AddressScope::Host
        } else {
            AddressScope::Universe
        };
        if address.is_ipv4() {
            // IPv4 wants both: IFA_LOCAL is the interface's own address.
            message.attributes.push(AddressAttribute::Local(address));
        }
        message.attributes.push(AddressAttribute::Address(address));
        let op = format!("add address {address}/{prefix_len} to {name}");
        match self.request(
            &op,
            RouteNetlinkMessage::NewAddress(message),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Err(e) if e.errno() == Some(libc::EEXIST) => Ok(()),
            other => other.map(drop),
        }
    }

    /// Adds the route, replacing one to the same destination.
    pub fn replace_route(&mut self, route: &Route) -> Result<()> {
        let message = route_message(route, false);
        let op = format!("add route {}", describe(route));
        self.request(
            &op,
            RouteNetlinkMessage::NewRoute(message),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .map(drop)
    }

    /// Deletes the route; one that is already gone is not an error.
    pub fn delete_route(&mut self, route: &Route) -> Result<()> {
        let message = route_message(route, true);
        let op = format!("delete route {}", describe(route));
        match self.request(&op, RouteNetlinkMessage::DelRoute(message), 0) {
            Err(e) if matches!(e.errno(), Some(libc::ESRCH) | Some(libc::ENOENT)) => Ok(()),
            other => other.map(drop),
        }
    }

    fn dump(&mut self, op: &str, message: RouteNetlinkMessage) -> Result<Vec<RouteNetlinkMessage>> {
        self.exchange(op, message, NLM_F_REQUEST | NLM_F_DUMP)
    }

    fn request(
        &mut self,
        op: &str,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.exchange(op, message, NLM_F_REQUEST | NLM_F_ACK | flags)
    }

    /// Sends one request and reads answers until its ACK, error or the end
    /// of its dump.
    fn exchange(
        &mut self,
        op: &str,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.sequence = self.sequence.wrapping_add(1);
        let sequence = self.sequence;
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        packet.finalize();
        let mut bytes = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut bytes);
        let kernel = |source| NetlinkError::Kernel {
            op: op.to_string(),
            source,
        };
        self.socket.send(&bytes, 0).map_err(kernel)?;

        let mut answers = Vec::new();
        loop {
            let mut buffer = Vec::with_capacity(RECV_BUFFER);
            let received = self.socket.recv(&mut buffer, 0).map_err(kernel)?;
            let mut offset = 0;
            while offset < received.min(buffer.len()) {
                let (answer, length) = parse_one(op, &buffer[offset..])?;
                offset += (length + 3) & !3;
                if answer.header.sequence_number != sequence {
                    continue; // an answer to an earlier, abandoned request
                }
                match answer.payload {
                    NetlinkPayload::InnerMessage(inner) => answers.push(inner),
                    NetlinkPayload::Error(error) => {
                        return match error.code {
                            None => Ok(answers), // the ACK
                            Some(code) => Err(kernel(io::Error::from_raw_os_error(
                                code.get().checked_neg().unwrap_or(libc::EIO),
                            ))),
                        };
                    }
                    NetlinkPayload::Done(_) => return Ok(answers),
                    _ => {}
                }
            }
        }
    }
}

/// Parses the message at the start of `bytes`; returns it and its length.
fn parse_one(op: &str, bytes: &[u8]) -> Result<(NetlinkMessage<RouteNetlinkMessage>, usize)> {
    let decode = |detail: String| NetlinkError::Decode {
        op: op.to_string(),
        detail,
    };
    let length = bytes
        .get(..4)
        .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or_else(|| decode(format!("{} trailing bytes", bytes.len())))?;
    if length < 16 || length > bytes.len() {
        return Err(decode(format!(
            "message length {length} with {} bytes left",
            bytes.len()
        )));
    }
    let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes[..length])
        .map_err(|e| decode(e.to_string()))?;
    Ok((message, length))
}

fn link_from(message: LinkMessage) -> Link {
    let mut link = Link {
        index: message.header.index,
        name: String::new(),
        mac: None,
        mtu: 0,
        up: message.header.flags.contains(LinkFlags::Up),
    };
    for attribute in message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => link.name = name,
            LinkAttribute::Mtu(mtu) => link.mtu = mtu,
            LinkAttribute::Address(bytes) => link.mac = <[u8; 6]>::try_from(bytes.as_slice()).ok(),
            _ => {}
        }
    }
    link
}

fn family(address: IpAddr) -> AddressFamily {
    match address {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn route_address(address: IpAddr) -> RouteAddress {
    match address {
        IpAddr::V4(a) => RouteAddress::Inet(a),
        IpAddr::V6(a) => RouteAddress::Inet6(a),
    }
}

fn route_message(route: &Route, delete: bool) -> RouteMessage {
    let mut message = RouteMessage::default();
    let header = &mut message.header;
    header.address_family = family(route.destination);
    header.destination_prefix_length = route.prefix_len;
    header.table = RouteHeader::RT_TABLE_MAIN;
    header.kind = RouteType::Unicast;
    if delete {
        // Match whatever scope and protocol the route was added with.
        header.scope = RouteScope::NoWhere;
    } else {
        header.protocol = RouteProtocol::Static;
        header.scope = if route.link_scope || route.gateway.is_none() {
            RouteScope::Link
        } else {
            RouteScope::Universe
        };
    }
    if route.prefix_len > 0 {
        message
            .attributes
            .push(RouteAttribute::Destination(route_address(
                route.destination,
            )));
    }
    if let Some(gateway) = route.gateway {
        message
            .attributes
            .push(RouteAttribute::Gateway(route_address(gateway)));
    }
    if let Some(device) = route.device {
        message.attributes.push(RouteAttribute::Oif(device));
    }
    message
}

fn describe(route: &Route) -> String {
    let mut text = if route.prefix_len == 0 {
        "default".to_string()
    } else {
        format!("{}/{}", route.destination, route.prefix_len)
    };
    if let Some(gateway) = route.gateway {
        text.push_str(&format!(" via {gateway}"));
    }
    if let Some(device) = route.device {
        text.push_str(&format!(" dev #{device}"));
    }
    if route.link_scope {
        text.push_str(" scope link");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_messages_carry_what_ip_route_would() {
        let route = Route {
            destination: "0.0.0.0".parse().unwrap(),
            prefix_len: 0,
            gateway: Some("10.88.0.1".parse().unwrap()),
            device: Some(2),
            link_scope: false,
        };
        let message = route_message(&route, false);
        assert_eq!(message.header.scope, RouteScope::Universe);
        assert!(!message
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Destination(_))));
        assert_eq!(describe(&route), "default via 10.88.0.1 dev #2");

        let onlink = Route {
            destination: "10.88.0.1".parse().unwrap(),
            prefix_len: 32,
            gateway: None,
            device: Some(2),
            link_scope: true,
        };
        let message = route_message(&onlink, false);
        assert_eq!(message.header.scope, RouteScope::Link);
        assert_eq!(message.header.protocol, RouteProtocol::Static);
        assert_eq!(
            route_message(&onlink, true).header.scope,
            RouteScope::NoWhere
        );
    }

    #[test]
    fn truncated_answers_are_errors_not_panics() {
        assert!(parse_one("t", &[1, 2]).is_err());
        assert!(parse_one("t", &[200, 0, 0, 0, 0, 0]).is_err());
        let mut garbage = vec![0u8; 20];
        garbage[0] = 20;
        garbage[4] = 0xff; // an unknown message type
        let _ = parse_one("t", &garbage);
    }

    #[test]
    fn lists_the_loopback_interface() {
        // Reading the namespace's own links needs no privilege.
        let mut netlink = Netlink::open().expect("netlink socket");
        let links = netlink.links().expect("dump links");
        let lo = links.iter().find(|l| l.name == "lo").expect("lo is listed");
        assert_eq!(netlink.link_by_name("lo").unwrap().unwrap().index, lo.index);
        assert!(netlink.link_by_name("no-such-link0").unwrap().is_none());
    }
}
