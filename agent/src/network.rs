//! The pod's network inside the guest: interfaces (found by MAC, else by
//! name) get their MTU and addresses and come up, then routes are added.
//! Everything converges when repeated: existing addresses are kept and
//! routes are replaced.

use std::net::IpAddr;

use podvisor_netlink::{format_mac, parse_mac, Link, Netlink, NetlinkError, Route};
use podvisor_proto::{Interface, Route as RouteSpec};

use crate::error::{AgentError, Result};

/// Applies `interfaces` then `routes` in the guest's network namespace.
pub fn configure(interfaces: &[Interface], routes: &[RouteSpec]) -> Result<()> {
    let mut netlink = Netlink::open().map_err(|e| internal("netlink", e))?;
    let links = netlink
        .links()
        .map_err(|e| internal("list interfaces", e))?;
    if let Some(lo) = links.iter().find(|l| l.name == "lo") {
        netlink
            .set_link(lo.index, "lo", Some(true), None)
            .map_err(|e| internal("bring up lo", e))?;
    }
    // The request's interface names, mapped to the links they matched, so
    // routes can name a device the way the runtime named it.
    let mut named: Vec<(String, Link)> = Vec::new();
    for interface in interfaces {
        let link = find_link(&links, interface)?;
        configure_interface(&mut netlink, &link, interface)?;
        if !interface.name.is_empty() {
            named.push((interface.name.clone(), link));
        }
    }
    for spec in routes {
        let route = parse_route(spec, |device| {
            named
                .iter()
                .find(|(name, _)| name == device)
                .map(|(_, link)| link.index)
                .or_else(|| links.iter().find(|l| l.name == device).map(|l| l.index))
        })?;
        netlink
            .replace_route(&route)
            .map_err(|e| internal(&format!("route {}", describe(spec)), e))?;
        tracing::info!(route = %describe(spec), "route added");
    }
    Ok(())
}

/// The link with the interface's MAC when it names one, else its name.
fn find_link(links: &[Link], interface: &Interface) -> Result<Link> {
    let found = if interface.mac.is_empty() {
        if interface.name.is_empty() {
            return Err(AgentError::InvalidArgument(
                "an interface needs a mac or a name".into(),
            ));
        }
        links.iter().find(|l| l.name == interface.name)
    } else {
        let mac = parse_mac(&interface.mac).ok_or_else(|| {
            AgentError::InvalidArgument(format!(
                "interface mac {:?} is not a MAC address",
                interface.mac
            ))
        })?;
        links.iter().find(|l| l.mac == Some(mac))
    };
    found.cloned().ok_or_else(|| {
        let have: Vec<String> = links
            .iter()
            .map(|l| match l.mac {
                Some(mac) => format!("{} {}", l.name, format_mac(&mac)),
                None => l.name.clone(),
            })
            .collect();
        AgentError::FailedPrecondition(format!(
            "no interface with {} in the guest (it has: {})",
            if interface.mac.is_empty() {
                format!("name {:?}", interface.name)
            } else {
                format!("MAC {}", interface.mac)
            },
            have.join(", ")
        ))
    })
}

fn configure_interface(netlink: &mut Netlink, link: &Link, interface: &Interface) -> Result<()> {
    let addresses = interface
        .addresses
        .iter()
        .map(|a| parse_cidr(a).map_err(|e| invalid(&format!("interface {}", link.name), e)))
        .collect::<Result<Vec<_>>>()?;
    let mtu = (interface.mtu > 0).then_some(interface.mtu);
    netlink
        .set_link(link.index, &link.name, Some(true), mtu)
        .map_err(|e| internal(&format!("interface {}", link.name), e))?;
    for (address, prefix_len) in addresses {
        netlink
            .add_address(link.index, &link.name, address, prefix_len)
            .map_err(|e| internal(&format!("interface {}", link.name), e))?;
    }
    tracing::info!(interface = %link.name, addresses = ?interface.addresses, mtu = interface.mtu, "interface configured");
    Ok(())
}

fn parse_route(spec: &RouteSpec, device: impl Fn(&str) -> Option<u32>) -> Result<Route> {
    let what = format!("route {}", describe(spec));
    let gateway = if spec.gateway.is_empty() {
        None
    } else {
        Some(spec.gateway.parse::<IpAddr>().map_err(|_| {
            invalid(
                &what,
                format!("gateway {:?} is not an address", spec.gateway),
            )
        })?)
    };
    let (destination, prefix_len) = if spec.destination == "default" {
        let any = match gateway {
            Some(IpAddr::V6(_)) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            _ => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        };
        (any, 0)
    } else {
        parse_cidr(&spec.destination).map_err(|e| invalid(&what, e))?
    };
    if gateway.is_some_and(|g| g.is_ipv4() != destination.is_ipv4()) {
        return Err(invalid(
            &what,
            "the gateway and destination families differ".into(),
        ));
    }
    let device = if spec.device.is_empty() {
        None
    } else {
        Some(device(&spec.device).ok_or_else(|| {
            AgentError::FailedPrecondition(format!("{what}: no interface {:?}", spec.device))
        })?)
    };
    if device.is_none() && (spec.link_scope || gateway.is_none()) {
        return Err(invalid(&what, "an on-link route needs a device".into()));
    }
    Ok(Route {
        destination,
        prefix_len,
        gateway,
        device,
        link_scope: spec.link_scope,
    })
}

/// "10.0.0.7/32" or "fd00::7/128"; a bare address means a host route.
fn parse_cidr(text: &str) -> std::result::Result<(IpAddr, u8), String> {
    let (address, prefix) = match text.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (text, None),
    };
    let address: IpAddr = address
        .parse()
        .map_err(|_| format!("{text:?} is not an address in CIDR notation"))?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    let prefix_len = match prefix {
        None => max,
        Some(p) => p
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("{text:?}: prefix length must be 0 to {max}"))?,
    };
    Ok((address, prefix_len))
}

fn describe(spec: &RouteSpec) -> String {
    let mut text = spec.destination.clone();
    if !spec.gateway.is_empty() {
        text.push_str(&format!(" via {}", spec.gateway));
    }
    if !spec.device.is_empty() {
        text.push_str(&format!(" dev {}", spec.device));
    }
    if spec.link_scope {
        text.push_str(" scope link");
    }
    text
}

fn invalid(what: &str, message: String) -> AgentError {
    AgentError::InvalidArgument(format!("{what}: {message}"))
}

fn internal(what: &str, err: NetlinkError) -> AgentError {
    AgentError::Runtime {
        op: what.to_string(),
        message: err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(destination: &str, gateway: &str, device: &str, link_scope: bool) -> RouteSpec {
        RouteSpec {
            destination: destination.into(),
            gateway: gateway.into(),
            device: device.into(),
            link_scope,
        }
    }

    fn eth0(name: &str) -> Option<u32> {
        (name == "eth0").then_some(2)
    }

    #[test]
    fn routes_parse_like_ip_route() {
        let default = parse_route(&spec("default", "10.88.0.1", "eth0", false), eth0).unwrap();
        assert_eq!(default.prefix_len, 0);
        assert_eq!(default.gateway, Some("10.88.0.1".parse().unwrap()));
        assert_eq!(default.device, Some(2));
        let onlink = parse_route(&spec("10.88.0.1/32", "", "eth0", true), eth0).unwrap();
        assert_eq!(onlink.destination, "10.88.0.1".parse::<IpAddr>().unwrap());
        assert!(onlink.link_scope && onlink.gateway.is_none());
        let v6 = parse_route(&spec("default", "fe80::1", "eth0", false), eth0).unwrap();
        assert!(v6.destination.is_ipv6());
    }

    #[test]
    fn bad_routes_name_the_route_and_the_problem() {
        let err = parse_route(&spec("default", "nope", "eth0", false), eth0).unwrap_err();
        assert!(
            err.to_string()
                .contains("route default via nope dev eth0: gateway"),
            "{err}"
        );
        let err = parse_route(&spec("10.0.0.0/33", "", "eth0", true), eth0).unwrap_err();
        assert!(err.to_string().contains("prefix length"), "{err}");
        let err = parse_route(&spec("10.0.0.1/32", "", "eth9", true), eth0).unwrap_err();
        assert!(matches!(err, AgentError::FailedPrecondition(_)), "{err}");
        assert!(err.to_string().contains("eth9"), "{err}");
        let err = parse_route(&spec("10.0.0.1/32", "", "", true), eth0).unwrap_err();
        assert!(err.to_string().contains("needs a device"), "{err}");
        let err = parse_route(&spec("10.0.0.0/8", "fd00::1", "eth0", false), eth0).unwrap_err();
        assert!(err.to_string().contains("families"), "{err}");
    }

    #[test]
    fn interfaces_are_found_by_mac_then_by_name() {
        let links = vec![
            Link {
                index: 1,
                name: "lo".into(),
                mac: Some([0; 6]),
                mtu: 65536,
                up: true,
            },
            Link {
                index: 2,
                name: "eth0".into(),
                mac: Some([0x02, 1, 2, 3, 4, 5]),
                mtu: 1500,
                up: false,
            },
        ];
        let by_mac = Interface {
            mac: "02:01:02:03:04:05".into(),
            name: "whatever".into(),
            ..Default::default()
        };
        assert_eq!(find_link(&links, &by_mac).unwrap().index, 2);
        let by_name = Interface {
            name: "eth0".into(),
            ..Default::default()
        };
        assert_eq!(find_link(&links, &by_name).unwrap().index, 2);
        let missing = Interface {
            mac: "02:ff:ff:ff:ff:ff".into(),
            ..Default::default()
        };
        let err = find_link(&links, &missing).unwrap_err().to_string();
        assert!(err.contains("MAC 02:ff:ff:ff:ff:ff"), "{err}");
        assert!(err.contains("eth0 02:01:02:03:04:05"), "{err}");
        let bad = Interface {
            mac: "not-a-mac".into(),
            ..Default::default()
        };
        assert!(matches!(
            find_link(&links, &bad),
            Err(AgentError::InvalidArgument(_))
        ));
    }

    #[test]
    fn addresses_parse() {
        assert_eq!(
            parse_cidr("10.0.0.7/32").unwrap(),
            ("10.0.0.7".parse().unwrap(), 32)
        );
        assert_eq!(parse_cidr("fd00::7").unwrap().1, 128);
        assert_eq!(
            parse_cidr("10.0.0.7/40"),
            Err("\"10.0.0.7/40\": prefix length must be 0 to 32".to_string())
        );
        assert_eq!(
            parse_cidr("ten/8"),
            Err("\"ten/8\" is not an address in CIDR notation".to_string())
        );
    }
}
