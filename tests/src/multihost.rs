//! The multi-host world of seed 004 (issue 13): an underlay L2 segment, a Linux bridge in a
//! namespace of its own on TEST-NET-1 (192.0.2.0/24), and three machines cabled to it by
//! veth pairs:
//!
//! ```text
//!   hosta  192.0.2.11  netplane instance <prefix>-a  ─┐
//!   hostb  192.0.2.12  netplane instance <prefix>-b  ─┼─ br0 in <prefix>-l2
//!   node02 192.0.2.20  static routes to both subnets ─┘
//! ```
//!
//! Each host's uplink is `up0`, its default route via node02 (which stands for the rest of
//! the world, and does not forward). node02 routes host A's container subnet
//! ([`A_SUBNET`]) via host A and host B's ([`B_SUBNET`]) via host B, as the seed's node02
//! does. The configs (networks, containers, `[[routes]]`) are the test's.
//!
//! [`World::with_ipv6`] puts the underlay on IPv6 too (2001:db8:c0::/64), with node02
//! routing each host's IPv6 container subnet ([`A_SUBNET6`], [`B_SUBNET6`]) via it.
//!
//! Everything is one [`Sandbox`]: both instances' `down`, then every namespace, on drop,
//! panic or signal. Nothing touches the root namespace.

use crate::host::{Instance, UPLINK};
use crate::{Netns, Sandbox};

pub const A_IP: &str = "192.0.2.11";
pub const B_IP: &str = "192.0.2.12";
pub const NODE02_IP: &str = "192.0.2.20";
/// Host A's container subnet, routed from node02 and host B via [`A_IP`].
pub const A_SUBNET: &str = "10.0.1.0/24";
/// Host B's container subnet, routed from node02 and host A via [`B_IP`].
pub const B_SUBNET: &str = "10.0.2.0/24";

/// The hosts' and node02's IPv6 underlay addresses ([`World::with_ipv6`]), RFC 3849.
pub const A_IP6: &str = "2001:db8:c0::11";
pub const B_IP6: &str = "2001:db8:c0::12";
pub const NODE02_IP6: &str = "2001:db8:c0::20";
/// Host A's IPv6 container subnet, routed from node02 via [`A_IP6`].
pub const A_SUBNET6: &str = "2001:db8:1::/64";
/// Host B's IPv6 container subnet, routed from node02 via [`B_IP6`].
pub const B_SUBNET6: &str = "2001:db8:2::/64";

/// The underlay, two netplane hosts and node02 (see the module doc).
pub struct World {
    pub sandbox: Sandbox,
    /// Holds the bridge `br0` and one port per machine, named after the machine.
    pub underlay: Netns,
    pub a: Instance,
    pub b: Instance,
    pub node02: Netns,
}

impl World {
    pub fn new() -> World {
        let mut sandbox = Sandbox::new();
        let underlay = sandbox.netns("l2");
        // STP is off (the default), so the ports forward at once: no forward delay.
        underlay.sh(&["ip", "link", "add", "br0", "type", "bridge"]);
        underlay.sh(&["ip", "link", "set", "br0", "up"]);
        let mut machine = |role: &str, ip: &str| {
            let ns = sandbox.netns(role);
            sandbox.bridge_port(&underlay, "br0", role, &ns, UPLINK, &format!("{ip}/24"));
            ns
        };
        let (hosta, hostb, node02) = (
            machine("hosta", A_IP),
            machine("hostb", B_IP),
            machine("node02", NODE02_IP),
        );
        for host in [&hosta, &hostb] {
            host.sh(&["ip", "route", "add", "default", "via", NODE02_IP]);
        }
        node02.sh(&["ip", "route", "add", A_SUBNET, "via", A_IP]);
        node02.sh(&["ip", "route", "add", B_SUBNET, "via", B_IP]);
        let a = Instance::new(&sandbox, sandbox.instance_name("a"), hosta);
        let b = Instance::new(&sandbox, sandbox.instance_name("b"), hostb);
        World {
            sandbox,
            underlay,
            a,
            b,
            node02,
        }
    }
}

impl World {
    /// IPv6 on the underlay too: each machine's `up0` gets its IPv6 address (no DAD:
    /// usable at once; the sandbox makes namespaces with IPv6 off), and node02 routes
    /// [`A_SUBNET6`] and [`B_SUBNET6`] via the hosts, as it routes their IPv4 subnets.
    pub fn with_ipv6(self) -> World {
        for (ns, ip) in [
            (&self.a.host, A_IP6),
            (&self.b.host, B_IP6),
            (&self.node02, NODE02_IP6),
        ] {
            ns.sysctl(&format!("net.ipv6.conf.{UPLINK}.disable_ipv6"), "0");
            ns.sh(&[
                "ip",
                "-6",
                "addr",
                "add",
                &format!("{ip}/64"),
                "dev",
                UPLINK,
                "nodad",
            ]);
        }
        for (subnet, via) in [(A_SUBNET6, A_IP6), (B_SUBNET6, B_IP6)] {
            self.node02
                .sh(&["ip", "-6", "route", "add", subnet, "via", via]);
        }
        self
    }
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}
