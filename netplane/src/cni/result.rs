//! The ADD result, in the version the runtime asked for: 1.x as SPEC.md defines it, and
//! 0.3.x/0.4.0, whose addresses also carry `"version": "4"`.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv6Net};
use serde_json::{Value, json};

use crate::config::{Container, Network, format_mac};
use crate::topology::Link;

/// The result of attaching `c` to `net`: the bridge (when the network has one), the host
/// veth and the container's interface (with its `sandbox`), the address with the index of
/// that interface in `interfaces`, the routes it has, and the DNS of the IPAM result.
pub fn build(
    version: &str,
    net: &Network,
    c: &Container,
    links: &[Link],
    routes: &[Value],
    dns: Option<&Value>,
) -> Value {
    let mac_of = |name: &str| {
        links
            .iter()
            .find(|l| l.name == name)
            .and_then(|l| l.mac)
            .map(format_mac)
    };
    let mut interfaces = Vec::new();
    interfaces.push(json!({"name": net.name, "mac": mac_of(&net.name)}));
    interfaces.push(json!({"name": c.host_veth, "mac": mac_of(&c.host_veth)}));
    let sandbox = c
        .attachment
        .as_ref()
        .map_or(c.netns.as_str(), |a| a.netns.as_str());
    interfaces.push(json!({"name": c.ifname(), "mac": format_mac(c.mac), "sandbox": sandbox}));
    let interface = interfaces.len() - 1;
    let v4 = c
        .net4()
        .map(|a| (IpNet::V4(a), c.gateway.map(IpAddr::V4), "4"));
    let v6 = c.ip6.zip(net.subnet6).map(|(ip6, s6)| {
        let address = Ipv6Net::new(ip6, s6.prefix_len()).expect("planned");
        (IpNet::V6(address), net.gateway6.map(IpAddr::V6), "6")
    });
    let ips: Vec<Value> = v4
        .into_iter()
        .chain(v6)
        .map(|(address, gateway, family)| {
            let mut ip = json!({"address": address.to_string(), "interface": interface});
            if let (true, Some(gw)) = (net.has_gateway(), gateway) {
                ip["gateway"] = gw.to_string().into();
            }
            if !version.starts_with("1.") {
                ip["version"] = family.into();
            }
            ip
        })
        .collect();
    // The routes through the container's interface, as they are.
    let routes: Vec<Value> = routes.to_vec();
    let mut result = json!({
        "cniVersion": version,
        "interfaces": interfaces,
        "ips": ips,
        "routes": routes,
    });
    if let Some(dns) = dns {
        result["dns"] = dns.clone();
    }
    result
}
