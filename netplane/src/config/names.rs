//! Names: the ones netplane derives (netns names, host veth names, MACs) and the rules
//! for the ones the user chooses.

use std::net::IpAddr;

use super::schema::{ConfigError, invalid};

/// Linux's IFNAMSIZ is 16 including the terminating NUL.
pub(super) const IFNAME_MAX: usize = 15;
/// The instance name starts every netns name and names the bpffs pin directory; a
/// container name ends its netns name. Keep both short.
const NAME_MAX: usize = 32;

/// `<instance>-<container>`, as `ip netns` lists it.
pub(super) fn netns_name(instance: &str, container: &str) -> String {
    format!("{instance}-{container}")
}

/// The first letters of every host veth's name.
pub const HOST_VETH_PREFIX: &str = "vnp";

/// `vnp` + FNV-1a of `<instance>/<container>` in hex: 11 bytes, within the kernel's
/// 15-byte interface-name limit however long the names are, deterministic so a later run
/// finds the device again, and the `vnp` prefix tells an `ip link` reader whose it is.
pub fn host_veth_name(instance: &str, container: &str) -> String {
    format!(
        "{HOST_VETH_PREFIX}{:08x}",
        fnv1a_32(format!("{instance}/{container}").as_bytes())
    )
}

/// 32-bit FNV-1a: tiny, stable across Rust versions (unlike `DefaultHasher`), good spread.
pub(crate) fn fnv1a_32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |hash, &b| {
        (hash ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Docker style: 02:42 followed by the IPv4 address (an IPv6-only container's: the last
/// 32 bits of its IPv6 address), so it is stable and readable. 0x02 in the first byte
/// marks it locally administered and unicast: no vendor's MAC can clash.
pub(super) fn container_mac(ip: IpAddr) -> [u8; 6] {
    let [a, b, c, d] = match ip {
        IpAddr::V4(ip) => ip.octets(),
        IpAddr::V6(ip) => {
            let o = ip.octets();
            [o[12], o[13], o[14], o[15]]
        }
    };
    [0x02, 0x42, a, b, c, d]
}

/// `02:42:ac:12:00:02`.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// Instance and container names.
pub(super) fn check_name(field: &str, value: &str) -> Result<(), ConfigError> {
    if value.is_empty() {
        return Err(invalid(field, value, "must not be empty"));
    }
    if let Some(bad) = value
        .chars()
        .find(|&ch| !(ch.is_ascii_alphanumeric() || ch == '_' || ch == '-'))
    {
        return Err(invalid(
            field,
            value,
            format!("contains {bad:?}; only ASCII letters, digits, '_' and '-' are allowed"),
        ));
    }
    if value.len() > NAME_MAX {
        return Err(invalid(
            field,
            value,
            format!(
                "is {} characters; the limit is {NAME_MAX} (it prefixes network namespace \
                 names and bpffs pin paths)",
                value.len()
            ),
        ));
    }
    Ok(())
}

/// The kernel's own rules for an interface name (`dev_valid_name`), for host devices that
/// netplane does not name itself.
pub(super) fn check_ifname(field: &str, value: &str) -> Result<(), ConfigError> {
    if value.is_empty() {
        return Err(invalid(field, value, "must not be empty"));
    }
    if value.len() > IFNAME_MAX {
        return Err(invalid(
            field,
            value,
            format!(
                "is {} bytes; Linux limits interface names to {IFNAME_MAX} characters",
                value.len()
            ),
        ));
    }
    if value == "." || value == ".." {
        return Err(invalid(field, value, "is not a valid interface name"));
    }
    if let Some(bad) = value
        .chars()
        .find(|&ch| ch == '/' || ch == ':' || ch.is_whitespace())
    {
        return Err(invalid(
            field,
            value,
            format!("contains {bad:?}, which interface names cannot"),
        ));
    }
    Ok(())
}

/// Bridges netplane creates: the kernel's rules plus a conservative character set, so
/// the name is also safe in shell commands, iptables rules and pin paths.
pub(super) fn check_bridge_name(field: &str, value: &str) -> Result<(), ConfigError> {
    check_ifname(field, value)?;
    if let Some(bad) = value
        .chars()
        .find(|&ch| !(ch.is_ascii_alphanumeric() || matches!(ch, '_' | '.' | '-')))
    {
        return Err(invalid(
            field,
            value,
            format!("contains {bad:?}; only ASCII letters, digits, '_', '.' and '-' are allowed"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testutil::{container, network, plan, plan_err, with_containers};

    #[test]
    fn host_veth_names() {
        let plan = plan(&with_containers(
            r#"
            [[containers]]
            name = "a-container-with-a-long-name-32c"
            network = "np0"
            [[containers]]
            name = "b"
            network = "np0"
            "#,
        ));
        let (a, b) = (&plan.containers[0].host_veth, &plan.containers[1].host_veth);
        for veth in [a, b] {
            assert!(
                veth.len() <= IFNAME_MAX && veth.starts_with("vnp"),
                "{veth}"
            );
            assert!(check_bridge_name("veth", veth).is_ok(), "{veth}");
        }
        assert_ne!(a, b);
        // A known value: the name must not change between runs or Rust versions.
        assert_eq!(host_veth_name("netplane", "web"), "vnpd2569b7f");
        assert_ne!(
            host_veth_name("netplane", "web"),
            host_veth_name("other", "web")
        );
        // The separator keeps "a"+"b/c" and "a/b"+"c" from meaning the same thing.
        assert_ne!(host_veth_name("ab", "c"), host_veth_name("a", "bc"));
    }

    #[test]
    fn fnv1a_known_values() {
        assert_eq!(fnv1a_32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a_32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a_32(b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn mac_format() {
        assert_eq!(
            format_mac([0x02, 0x42, 0xac, 0x12, 0, 0x02]),
            "02:42:ac:12:00:02"
        );
        assert_eq!(format_mac([0xff; 6]), "ff:ff:ff:ff:ff:ff");
    }

    #[test]
    fn mac_and_netns_are_derived_from_address_and_names() {
        assert_eq!(
            container_mac("10.1.0.2".parse().unwrap()),
            [0x02, 0x42, 10, 1, 0, 2]
        );
        assert_eq!(
            container_mac("2001:db8:18::a:b0c".parse().unwrap()),
            [0x02, 0x42, 0, 0x0a, 0x0b, 0x0c]
        );
        assert_eq!(netns_name("lab", "a"), "lab-a");
    }

    #[test]
    fn invalid_instance_names() {
        plan_err(r#"name = """#, "name", "");
        let msg = plan_err(r#"name = "my net""#, "name", "my net");
        assert!(msg.contains("' '"), "{msg}");
        plan_err(r#"name = "a/b""#, "name", "a/b");
        plan_err(r#"name = "a.b""#, "name", "a.b");
        let long = "n".repeat(33);
        let msg = plan_err(&format!("name = {long:?}"), "name", &long);
        assert!(msg.contains("32"), "{msg}");
        plan(&format!("name = {:?}", "n".repeat(32)));
        plan(r#"name = "Lab_2-x""#);
    }

    #[test]
    fn invalid_uplink() {
        plan_err(r#"uplink = """#, "uplink", "");
        let msg = plan_err(
            r#"uplink = "sixteen-chars-xx""#,
            "uplink",
            "sixteen-chars-xx",
        );
        assert!(msg.contains("15 characters"), "{msg}");
        plan_err(r#"uplink = "eth 0""#, "uplink", "eth 0");
        plan_err(r#"uplink = "..""#, "uplink", "..");
        plan(r#"uplink = "enp0s31f6""#);
    }

    #[test]
    fn invalid_network_names() {
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "br 0",
            "br:0",
            "br@0",
            "sixteen-chars-xx",
        ] {
            plan_err(&network(bad, "10.0.0.0/24", None), "networks[0].name", bad);
        }
        let msg = plan_err(
            &network("sixteen-chars-xx", "10.0.0.0/24", None),
            "networks[0].name",
            "sixteen-chars-xx",
        );
        assert!(msg.contains("15 characters"), "{msg}");
        plan(&network("br-0.lab_x", "10.0.0.0/24", None));
        plan(&network(&"b".repeat(15), "10.0.0.0/24", None));
    }

    #[test]
    fn invalid_container_names() {
        for bad in ["", "a b", "a.b", "a/b", &"c".repeat(33)] {
            plan_err(
                &with_containers(&container(bad, "np0", None, &[])),
                "containers[0].name",
                bad,
            );
        }
        plan(&with_containers(&container(
            &"c".repeat(32),
            "np0",
            None,
            &[],
        )));
    }
}
