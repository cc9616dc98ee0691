//! The eBPF NAT programs for IPv6 (NAT66) in the kernel, on crafted packets
//! (BPF_PROG_TEST_RUN): what they write, the checksums they leave, path MTU discovery's
//! Packet Too Big translated back, and neighbour discovery left alone.
#![expect(
    unused_crate_dependencies,
    reason = "an integration test sees every dependency of the harness crate; its library target is where an unused one shows"
)]

use std::net::{Ipv4Addr, Ipv6Addr};

use netplane::config::{Config, Plan};
use netplane::dataplane::HostContext;
use netplane::dataplane::ebpf::TestRunPrograms;
use netplane_tests::privileged;

const U4: [u8; 4] = [203, 0, 113, 1];
const U6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x113, 0, 0, 0, 0, 1);

fn plan() -> Plan {
    let text = r#"
name = "kt6"
[[networks]]
name = "npa"
subnet = "10.89.0.0/24"
subnet6 = "2001:db8:89::/64"
[[networks]]
name = "npb"
subnet = "10.89.1.0/24"
subnet6 = "2001:db8:8a::/64"
[[containers]]
name = "web"
network = "npa"
publish = ["8080:80", "5353:53/udp", "[::1]:8081:80"]
[[containers]]
name = "peer"
network = "npa"
[[containers]]
name = "other"
network = "npb"
"#;
    Config::parse(text, "test").unwrap().plan().unwrap()
}

fn programs() -> TestRunPrograms {
    let plan = plan();
    let host = HostContext {
        uplink: "up0".into(),
        uplink_index: 0,
        uplink_addr: Ipv4Addr::from(U4),
        local_addrs: std::iter::once(Ipv4Addr::from(U4))
            .chain(plan.networks.iter().map(|n| n.gateway))
            .collect(),
        uplink_addr6: Some(U6),
        local_addrs6: std::iter::once(U6)
            .chain(std::iter::once(Ipv6Addr::LOCALHOST))
            .chain(plan.networks.iter().filter_map(|n| n.gateway6))
            .collect(),
        links: Vec::new(),
        touched: None,
    };
    TestRunPrograms::load(&plan, &host).expect("load the NAT programs, IPv6 ones included")
}

#[test]
fn the_ipv6_programs_pass_the_verifier() {
    if !privileged("the_ipv6_programs_pass_the_verifier") {
        return;
    }
    let _p = programs();
}
