//! The node's own addresses, where the agent takes traffic for the Services it serves: every
//! address a proxy pod's host port answers on (kubelet's host ports are DNATed for any local
//! address), except loopback, link-local ones, and those of the links that carry Service
//! addresses (kube-proxy's IPVS mode, NodeLocal DNSCache), whose traffic is not for the node.

use std::collections::BTreeMap;
use std::net::IpAddr;

use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressScope};
use netlink_packet_route::link::LinkAttribute;

/// Links whose addresses belong to Services, not to the node.
const SERVICE_ADDRESS_LINKS: [&str; 2] = ["kube-ipvs0", "nodelocaldns"];

/// One address of one link, as the kernel lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkAddress {
    pub link: u32,
    pub scope: AddressScope,
    pub address: IpAddr,
}

/// The addresses the agent takes traffic on, sorted, without repeats.
pub fn serving_addresses(link_names: &BTreeMap<u32, String>, addresses: &[LinkAddress]) -> Vec<IpAddr> {
    let service_link =
        |link: u32| link_names.get(&link).is_some_and(|name| SERVICE_ADDRESS_LINKS.contains(&name.as_str()));
    let mut found: Vec<IpAddr> = addresses
        .iter()
        .filter(|a| a.scope == AddressScope::Universe && !a.address.is_loopback() && !service_link(a.link))
        .map(|a| a.address)
        .collect();
    found.sort();
    found.dedup();
    found
}

/// Reads the links and addresses of the calling process's network namespace.
pub async fn read() -> std::io::Result<Vec<IpAddr>> {
    let (connection, handle, _) = rtnetlink::new_connection()?;
    let running = tokio::spawn(connection);
    let failed = |error: rtnetlink::Error| std::io::Error::other(error.to_string());
    let outcome = async {
        let mut link_names = BTreeMap::new();
        let mut links = handle.link().get().execute();
        while let Some(link) = links.try_next().await.map_err(failed)? {
            let name = link.attributes.iter().find_map(|attribute| match attribute {
                LinkAttribute::IfName(name) => Some(name.clone()),
                _ => None,
            });
            link_names.extend(name.map(|name| (link.header.index, name)));
        }
        let mut addresses = Vec::new();
        let mut listed = handle.address().get().execute();
        while let Some(message) = listed.try_next().await.map_err(failed)? {
            // IPv4 names the local address apart from a point-to-point peer's; IPv6 has one.
            let local = message.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(address) => Some(*address),
                _ => None,
            });
            let address = local.or_else(|| {
                message.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(address) => Some(*address),
                    _ => None,
                })
            });
            if let Some(address) = address {
                addresses.push(LinkAddress { link: message.header.index, scope: message.header.scope, address });
            }
        }
        Ok(serving_addresses(&link_names, &addresses))
    }
    .await;
    running.abort();
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_addresses_of_the_nodes_links_but_not_those_carrying_service_addresses() {
        let links = BTreeMap::from([(1, "lo".to_string()), (2, "eth0".to_string()), (3, "kube-ipvs0".to_string())]);
        let address =
            |link: u32, scope: AddressScope, text: &str| LinkAddress { link, scope, address: text.parse().unwrap() };
        let addresses = [
            address(1, AddressScope::Host, "127.0.0.1"),
            address(1, AddressScope::Host, "::1"),
            address(2, AddressScope::Universe, "10.0.0.2"),
            address(2, AddressScope::Universe, "10.0.0.12"),
            address(2, AddressScope::Universe, "fd00::2"),
            address(2, AddressScope::Link, "fe80::1"),
            address(3, AddressScope::Universe, "10.96.0.10"),
            address(2, AddressScope::Universe, "10.0.0.2"),
        ];
        let found: Vec<String> = serving_addresses(&links, &addresses).iter().map(ToString::to_string).collect();
        assert_eq!(found, ["10.0.0.2", "10.0.0.12", "fd00::2"]);
    }
}
