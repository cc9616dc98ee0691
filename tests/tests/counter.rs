//! The TC packet counter, in the kernel: on crafted packets with BPF_PROG_TEST_RUN, and on
//! real pings across a sandbox veth pair.
#![expect(
    unused_crate_dependencies,
    reason = "an integration test sees every dependency of the harness crate; its library target is where an unused one shows"
)]

use netplane::dataplane::ebpf::counter::PacketCounter;
use netplane_common::counters::{Counters, Direction};
use netplane_common::packet::parse_ethernet;
use netplane_tests::{Sandbox, packet::udp_frame, privileged};

/// `TCX_NEXT`: the counter hands every packet on to the next TCX program.
const TCX_NEXT: i32 = -1;

#[test]
fn test_run_counts_a_crafted_frame() {
    if !privileged("test_run_counts_a_crafted_frame") {
        return;
    }
    let frame = udp_frame([192, 0, 2, 1], 4000, [192, 0, 2, 2], 53, b"netplane");
    assert!(
        parse_ethernet(&frame).unwrap().l4_checksum_ok().unwrap(),
        "crafted frame is valid"
    );

    let mut counter = PacketCounter::load().expect("load");
    assert_eq!(
        counter.test_run(Direction::Ingress, &frame).unwrap(),
        TCX_NEXT
    );
    assert_eq!(
        counter.test_run(Direction::Ingress, &frame).unwrap(),
        TCX_NEXT
    );
    let small = udp_frame([192, 0, 2, 2], 53, [192, 0, 2, 1], 4000, b"");
    assert_eq!(
        counter.test_run(Direction::Egress, &small).unwrap(),
        TCX_NEXT
    );

    let t = counter.read().unwrap();
    let len = frame.len() as u64;
    assert_eq!(
        t.ingress,
        Counters {
            packets: 2,
            bytes: 2 * len
        }
    );
    assert_eq!(
        t.egress,
        Counters {
            packets: 1,
            bytes: small.len() as u64
        }
    );
}

#[test]
fn pings_across_a_veth_pair_are_counted_exactly() {
    if !privileged("pings_across_a_veth_pair_are_counted_exactly") {
        return;
    }
    let mut sb = Sandbox::new();
    let a = sb.netns("a");
    let b = sb.netns("b");
    sb.veth(&a, "eth0", "192.0.2.1/24", &b, "eth0", "192.0.2.2/24");
    // Static neighbours: no ARP on the wire, so only the pings are counted.
    let (mac_a, mac_b) = (a.mac("eth0"), b.mac("eth0"));
    a.sh(&[
        "ip",
        "neigh",
        "replace",
        "192.0.2.2",
        "lladdr",
        &mac_b,
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);
    b.sh(&[
        "ip",
        "neigh",
        "replace",
        "192.0.2.1",
        "lladdr",
        &mac_a,
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);

    const PINGS: u64 = 7;
    const PAYLOAD: u64 = 100;
    let totals = a.enter(|| {
        let mut counter = PacketCounter::load().expect("load");
        counter.attach("eth0").expect("attach");
        let out = a.run(&[
            "ping",
            "-q",
            "-n",
            "-c",
            &PINGS.to_string(),
            "-i",
            "0.05",
            "-s",
            &PAYLOAD.to_string(),
            "-W",
            "2",
            "192.0.2.2",
        ]);
        assert!(
            out.status.success(),
            "ping failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let t = counter.read().expect("read");
        counter.detach().expect("detach");
        t
    });
    // Ethernet 14 + IPv4 20 + ICMP 8 + payload.
    let frame = 14 + 20 + 8 + PAYLOAD;
    assert_eq!(
        totals.egress,
        Counters {
            packets: PINGS,
            bytes: PINGS * frame
        },
        "echo requests"
    );
    assert_eq!(
        totals.ingress,
        Counters {
            packets: PINGS,
            bytes: PINGS * frame
        },
        "echo replies"
    );
}

#[test]
fn detached_counter_sees_nothing() {
    if !privileged("detached_counter_sees_nothing") {
        return;
    }
    let mut sb = Sandbox::new();
    let a = sb.netns("a");
    let b = sb.netns("b");
    sb.veth(&a, "eth0", "198.51.100.1/24", &b, "eth0", "198.51.100.2/24");
    let counted = a.enter(|| {
        let mut counter = PacketCounter::load().expect("load");
        counter.attach("eth0").expect("attach");
        counter.detach().expect("detach");
        let out = a.run(&[
            "ping",
            "-q",
            "-c",
            "3",
            "-i",
            "0.05",
            "-W",
            "2",
            "198.51.100.2",
        ]);
        assert!(out.status.success());
        counter.read().expect("read")
    });
    assert_eq!(counted.ingress.packets + counted.egress.packets, 0);
}
