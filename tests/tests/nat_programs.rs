//! The eBPF NAT programs in the kernel, on crafted packets (BPF_PROG_TEST_RUN): what they
//! write, the checksums they leave, and what they refuse to touch.
#![expect(
    unused_crate_dependencies,
    reason = "an integration test sees every dependency of the harness crate; its library target is where an unused one shows"
)]

use std::net::{Ipv4Addr, Ipv6Addr};

use netplane::config::{Config, Plan};
use netplane::dataplane::HostContext;
use netplane::dataplane::ebpf::TestRunPrograms;
use netplane::topology::Link;
use netplane_common::nat::forwarded as fwd;
use netplane_common::packet::{Ipv4, parse_ethernet, parse_ipv4};
use netplane_common::packet6::parse_ethernet6;
use netplane_tests::packet::{
    Ip, Ip6, TCP_ACK, TCP_SYN, icmp_echo, icmp_error, ipv4_frame, tcp, tcp6, udp, udp_datagram,
};
use netplane_tests::{Netns, Sandbox, privileged};

const UPLINK_IN: &str = "netplane_uplink_ingress";
const UPLINK_OUT: &str = "netplane_uplink_egress";
const BRIDGE_IN: &str = "netplane_bridge_ingress";
const BRIDGE_OUT: &str = "netplane_bridge_egress";
const TCX_NEXT: i32 = -1;
const TC_ACT_SHOT: i32 = 2;

const U: [u8; 4] = [203, 0, 113, 1];
const D: [u8; 4] = [203, 0, 113, 2];
const WEB: [u8; 4] = [10, 89, 0, 2];
const PEER: [u8; 4] = [10, 89, 0, 3];
const OTHER: [u8; 4] = [10, 89, 1, 2];

fn plan() -> Plan {
    plan_with("")
}

/// The test plan, with `conntrack` settings (TOML lines of that section).
fn plan_with(conntrack: &str) -> Plan {
    let containers = r#"
        [[containers]]
        name = "web"
        network = "npa"
        publish = ["8080:80", "8088:80", "5353:53/udp", "127.0.0.1:8081:80"]
        [[containers]]
        name = "peer"
        network = "npa"
        [[containers]]
        name = "other"
        network = "npb"
        "#;
    let text = format!(
        "name = \"kt\"\n{}{containers}\n[conntrack]\n{conntrack}\n",
        netplane_tests::TWO_NETWORKS
    );
    Config::parse(&text, "test").unwrap().plan().unwrap()
}

fn programs() -> TestRunPrograms {
    programs_for(&plan())
}

/// The programs with maps programmed for `plan`, on a host whose uplink has address U and
/// which carries every network's gateway (as HostContext::from_host lists them: an
/// isolated network's too, which the data plane must leave out).
fn programs_for(plan: &Plan) -> TestRunPrograms {
    let host = netplane_tests::testrun::host(plan, Ipv4Addr::from(U), None);
    TestRunPrograms::load(plan, &host).expect("load the NAT programs")
}

/// The IPv4 packet of `frame`, with both checksums verified as a receiver would.
fn checked(frame: &[u8]) -> Ipv4<'_> {
    let ip = parse_ethernet(frame).expect("an IPv4 frame");
    assert!(ip.header_checksum_ok(), "IP header checksum");
    assert_ne!(ip.l4_checksum_ok(), Some(false), "L4 checksum");
    ip
}

fn drops(p: &TestRunPrograms, reason: &str) -> u64 {
    p.drops()
        .into_iter()
        .find(|(r, _)| *r == reason)
        .map(|(_, n)| n)
        .unwrap()
}

#[test]
fn masquerade_and_its_replies_keep_checksums_right() {
    if !privileged("masquerade_and_its_replies_keep_checksums_right") {
        return;
    }
    let mut p = programs();
    let syn = tcp(Ip::new(WEB, D), 40000, 80, TCP_SYN, b"");
    let (verdict, out) = p.run(UPLINK_OUT, &syn).unwrap();
    assert_eq!(verdict, TCX_NEXT);
    let ip = checked(&out);
    assert_eq!(
        (ip.src(), ip.ports()),
        (U, Some((40000, 80))),
        "SNAT to the uplink, source port kept"
    );

    let synack = tcp(Ip::new(D, U), 80, 40000, TCP_SYN | TCP_ACK, b"");
    let (_, out) = p.run(UPLINK_IN, &synack).unwrap();
    let ip = checked(&out);
    assert_eq!(
        (ip.dst(), ip.ports()),
        (WEB, Some((80, 40000))),
        "the reply goes back to the container"
    );

    // UDP and ICMP echo (the identifier is the port) take the same path.
    let (_, out) = p
        .run(UPLINK_OUT, &udp(Ip::new(WEB, D), 5000, 53, b"query"))
        .unwrap();
    assert_eq!(checked(&out).src(), U);
    let (_, out) = p
        .run(UPLINK_OUT, &icmp_echo(Ip::new(WEB, D), 8, 77, 1))
        .unwrap();
    assert_eq!(checked(&out).src(), U);
    let (_, out) = p
        .run(UPLINK_IN, &icmp_echo(Ip::new(D, U), 0, 77, 1))
        .unwrap();
    assert_eq!(checked(&out).dst(), WEB);
}

#[test]
fn a_taken_source_port_is_replaced_within_the_range() {
    if !privileged("a_taken_source_port_is_replaced_within_the_range") {
        return;
    }
    // Closed flows go after a second, so that the test can outlive one.
    let mut p = programs_for(&plan_with("tcp_closing_timeout = 1"));
    let (_, first) = p
        .run(UPLINK_OUT, &tcp(Ip::new(WEB, D), 41000, 80, TCP_SYN, b""))
        .unwrap();
    let (_, second) = p
        .run(UPLINK_OUT, &tcp(Ip::new(PEER, D), 41000, 80, TCP_SYN, b""))
        .unwrap();
    assert_eq!(checked(&first).ports(), Some((41000, 80)));
    let (sport, _) = checked(&second).ports().unwrap();
    assert!((32768..=60999).contains(&sport), "{sport}");
    // Each reply finds its own container.
    let (_, out) = p
        .run(
            UPLINK_IN,
            &tcp(Ip::new(D, U), 80, sport, TCP_SYN | TCP_ACK, b""),
        )
        .unwrap();
    assert_eq!(checked(&out).dst(), PEER);
    // The second flow has no entry of its own port: its later segments find theirs among
    // the candidates ...
    let ack = tcp(Ip::new(PEER, D), 41000, 80, TCP_ACK, b"x");
    let (_, out) = p.run(UPLINK_OUT, &ack).unwrap();
    assert_eq!(checked(&out).ports(), Some((sport, 80)));
    // ... also once the first flow is gone and its port free again: a segment without SYN
    // never takes a free port, it looks on.
    p.run(UPLINK_OUT, &tcp(Ip::new(WEB, D), 41000, 80, 0x04, b""))
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1_300));
    let (verdict, out) = p.run(UPLINK_OUT, &ack).unwrap();
    assert_eq!(verdict, TCX_NEXT);
    assert_eq!(
        checked(&out).ports(),
        Some((sport, 80)),
        "the flow keeps its port"
    );
    assert_eq!(drops(&p, "tcp-no-syn-new-flow"), 0);
}

#[test]
fn published_ports_are_translated_both_ways() {
    if !privileged("published_ports_are_translated_both_ways") {
        return;
    }
    let mut p = programs();
    let (_, out) = p
        .run(UPLINK_IN, &tcp(Ip::new(D, U), 5555, 8080, TCP_SYN, b""))
        .unwrap();
    let ip = checked(&out);
    assert_eq!(
        (ip.src(), ip.dst(), ip.ports()),
        (D, WEB, Some((5555, 80))),
        "DNAT keeps the client"
    );
    let (_, out) = p
        .run(
            UPLINK_OUT,
            &tcp(Ip::new(WEB, D), 80, 5555, TCP_SYN | TCP_ACK, b""),
        )
        .unwrap();
    let ip = checked(&out);
    assert_eq!((ip.src(), ip.ports()), (U, Some((8080, 5555))));
    // An unpublished port is left alone.
    let frame = tcp(Ip::new(D, U), 5556, 8090, TCP_SYN, b"");
    assert_eq!(p.run(UPLINK_IN, &frame).unwrap(), (TCX_NEXT, frame));
}

#[test]
fn a_syn_reopens_a_closed_flow_through_another_published_port() {
    if !privileged("a_syn_reopens_a_closed_flow_through_another_published_port") {
        return;
    }
    let mut p = programs();
    // A connection to 8080 from D:5555, reset by the client alone: the server's side of the
    // flow never sees a FIN or RST of its own.
    p.run(UPLINK_IN, &tcp(Ip::new(D, U), 5555, 8080, TCP_SYN, b""))
        .unwrap();
    p.run(
        UPLINK_OUT,
        &tcp(Ip::new(WEB, D), 80, 5555, TCP_SYN | TCP_ACK, b""),
    )
    .unwrap();
    p.run(UPLINK_IN, &tcp(Ip::new(D, U), 5555, 8080, 0x04, b""))
        .unwrap();
    // The client reuses its port towards another published port of the same backend: the
    // reply tuple (web:80 → D:5555) is the same, and the closed flow must give way.
    let (verdict, out) = p
        .run(UPLINK_IN, &tcp(Ip::new(D, U), 5555, 8088, TCP_SYN, b""))
        .unwrap();
    assert_eq!(verdict, TCX_NEXT);
    assert_eq!(checked(&out).dst(), WEB);
    let (_, out) = p
        .run(
            UPLINK_OUT,
            &tcp(Ip::new(WEB, D), 80, 5555, TCP_SYN | TCP_ACK, b""),
        )
        .unwrap();
    assert_eq!(
        checked(&out).ports(),
        Some((8088, 5555)),
        "the replies now belong to the new flow"
    );
    assert_eq!(drops(&p, "ct-insert-failed"), 0);
}

#[test]
fn a_zero_udp_checksum_stays_zero() {
    if !privileged("a_zero_udp_checksum_stays_zero") {
        return;
    }
    let mut p = programs();
    let ip = Ip::new(D, U);
    let frame = ipv4_frame(
        ip,
        17,
        &udp_datagram(&ip, 6000, 5353, b"no checksum", false),
    );
    let (_, out) = p.run(UPLINK_IN, &frame).unwrap();
    let ip = checked(&out);
    assert_eq!((ip.dst(), ip.ports()), (WEB, Some((6000, 53))));
    assert_eq!(
        &ip.payload[6..8],
        &[0, 0],
        "RFC 768: zero means no checksum, and stays so"
    );
}

#[test]
fn ip_options_and_fragments() {
    if !privileged("ip_options_and_fragments") {
        return;
    }
    let mut p = programs();
    // Four bytes of options (NOP NOP NOP EOL): the L4 header starts 24 bytes in.
    let ip = Ip {
        options: &[1, 1, 1, 0],
        ..Ip::new(WEB, D)
    };
    let (_, out) = p
        .run(UPLINK_OUT, &tcp(ip, 42000, 443, TCP_SYN, b""))
        .unwrap();
    let ip = checked(&out);
    assert_eq!((ip.src(), ip.ports()), (U, Some((42000, 443))));
    assert_eq!(&ip.header[20..24], &[1, 1, 1, 0], "options untouched");

    // A later fragment whose first fragment was not seen passes untouched.
    let later = Ip {
        id: 0x4242,
        frag_offset: 1480,
        ..Ip::new(D, U)
    };
    let lone = ipv4_frame(later, 17, &[0xab; 64]);
    assert_eq!(p.run(UPLINK_IN, &lone).unwrap(), (TCX_NEXT, lone));
    // Its first fragment, to a published port, comes too late: the later one is in the
    // host's reassembly queue, so the datagram is dropped whole, and counted.
    let late_first = Ip {
        id: 0x4242,
        more_fragments: true,
        ..Ip::new(D, U)
    };
    let datagram = udp_datagram(&Ip::new(D, U), 7001, 5353, &[0x5a; 1544], true);
    let late_first = ipv4_frame(late_first, 17, &datagram[..1480]);
    assert_eq!(p.run(UPLINK_IN, &late_first).unwrap().0, TC_ACT_SHOT);
    assert_eq!(drops(&p, "fragment-reordered"), 1);
    // Once: a retransmission of the datagram (same id) passes.
    assert_eq!(p.run(UPLINK_IN, &late_first).unwrap().0, TCX_NEXT);
    assert_eq!(drops(&p, "fragment-reordered"), 1);

    // After its first fragment, a later one follows the same translation.
    let first = Ip {
        id: 0x4343,
        more_fragments: true,
        ..Ip::new(D, U)
    };
    let datagram = udp_datagram(&Ip::new(D, U), 7000, 5353, &[0x5a; 2000], true);
    let (_, out) = p
        .run(UPLINK_IN, &ipv4_frame(first, 17, &datagram[..1480]))
        .unwrap();
    let ip = parse_ethernet(&out).unwrap();
    assert!(ip.header_checksum_ok());
    assert_eq!((ip.dst(), ip.ports()), (WEB, Some((7000, 53))));
    let rest = Ip {
        id: 0x4343,
        frag_offset: 1480,
        ..Ip::new(D, U)
    };
    let (_, out) = p
        .run(UPLINK_IN, &ipv4_frame(rest, 17, &datagram[1480..]))
        .unwrap();
    let ip = parse_ethernet(&out).unwrap();
    assert!(ip.header_checksum_ok());
    assert_eq!(ip.dst(), WEB);
    assert_eq!(
        ip.payload,
        &datagram[1480..],
        "the payload of a later fragment is not touched"
    );
}

#[test]
fn malformed_and_foreign_packets_are_never_rewritten() {
    if !privileged("malformed_and_foreign_packets_are_never_rewritten") {
        return;
    }
    let mut p = programs();
    let syn = tcp(Ip::new(D, U), 5555, 8080, TCP_SYN, b"");
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        // (A frame cut inside its IP header is refused by BPF_PROG_TEST_RUN itself.)
        ("truncated TCP header", syn[..14 + 20 + 3].to_vec()),
        // (Other protocols, GRE for one, are masqueraded by address since issue 12:
        // tests/tests/robustness/masquerade.rs.)
        (
            "ICMP that is not an echo",
            ipv4_frame(Ip::new(D, U), 1, &[3, 3, 0, 0, 0, 0, 0, 0]),
        ),
        ("ARP", {
            let mut f = syn.clone();
            f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
            f
        }),
    ];
    let mut long = syn[..14 + 20 + 3].to_vec();
    long[16..18].copy_from_slice(&100u16.to_be_bytes());
    cases.push(("total length beyond the frame", long));
    let mut bad_ihl = syn.clone();
    bad_ihl[14] = 0x44;
    cases.push(("IHL below 5", bad_ihl));
    for (what, frame) in cases {
        for prog in [UPLINK_IN, UPLINK_OUT, BRIDGE_IN] {
            let got = p
                .run(prog, &frame)
                .unwrap_or_else(|e| panic!("{what} through {prog}: {e}"));
            assert_eq!(got, (TCX_NEXT, frame.clone()), "{what} through {prog}");
        }
    }
    // A TCP segment without SYN cannot open a masqueraded flow: dropped, and counted,
    // rather than leaking a container address.
    let ack = tcp(Ip::new(WEB, D), 43000, 80, TCP_ACK, b"data");
    assert_eq!(p.run(UPLINK_OUT, &ack).unwrap().0, TC_ACT_SHOT);
    assert_eq!(drops(&p, "tcp-no-syn-new-flow"), 1);
}

#[test]
fn bridges_isolate_networks_and_guard_loopback_ports() {
    if !privileged("bridges_isolate_networks_and_guard_loopback_ports") {
        return;
    }
    let mut p = programs();
    let direct = tcp(Ip::new(OTHER, WEB), 5000, 80, TCP_SYN, b"");
    assert_eq!(p.run(BRIDGE_IN, &direct).unwrap().0, TC_ACT_SHOT);
    assert_eq!(drops(&p, "isolation"), 1);
    // ... but the other network may use the published port, and its own gateway is fine.
    let (verdict, out) = p
        .run(BRIDGE_IN, &tcp(Ip::new(OTHER, U), 5001, 8080, TCP_SYN, b""))
        .unwrap();
    assert_eq!(verdict, TCX_NEXT);
    assert_eq!(checked(&out).dst(), WEB);
    let to_gateway = icmp_echo(Ip::new(OTHER, [10, 89, 0, 1]), 8, 1, 1);
    assert_eq!(
        p.run(BRIDGE_IN, &to_gateway).unwrap(),
        (TCX_NEXT, to_gateway)
    );

    let crafted = tcp(Ip::new(PEER, [127, 0, 0, 1]), 5002, 8081, TCP_SYN, b"");
    assert_eq!(
        p.run(BRIDGE_IN, &crafted).unwrap().0,
        TC_ACT_SHOT,
        "moby#45610"
    );
    assert_eq!(drops(&p, "loopback-guard"), 1);
}

/// The quote of an ICMP error frame: its IPv4 header checksum checked, (src, dst, ports).
fn quote(frame: &[u8]) -> ([u8; 4], [u8; 4], Option<(u16, u16)>) {
    let ip = checked(frame);
    assert_eq!(ip.protocol(), 1, "an ICMP message");
    let q = parse_ipv4(&ip.payload[8..]).expect("a quoted IPv4 packet");
    assert!(q.header_checksum_ok(), "the quote's IP header checksum");
    (q.src(), q.dst(), q.ports())
}

#[test]
fn icmp_errors_about_translated_flows_are_translated_back() {
    if !privileged("icmp_errors_about_translated_flows_are_translated_back") {
        return;
    }
    const ROUTER: [u8; 4] = [198, 51, 100, 1];
    let mut p = programs();

    // Masquerade: WEB:40000 → D:80 left as U:40000. A router on the way needs smaller
    // packets: the container must learn it (path MTU discovery).
    let (_, sent) = p
        .run(UPLINK_OUT, &tcp(Ip::new(WEB, D), 40000, 80, TCP_SYN, b""))
        .unwrap();
    let (verdict, out) = p
        .run(UPLINK_IN, &icmp_error(Ip::new(ROUTER, U), 3, 4, &sent))
        .unwrap();
    assert_eq!(verdict, TCX_NEXT);
    assert_eq!((checked(&out).src(), checked(&out).dst()), (ROUTER, WEB));
    assert_eq!(quote(&out), (WEB, D, Some((40000, 80))));

    // A published port: D:5555 → U:8080 reached WEB:80, whose reply left as U:8080.
    p.run(UPLINK_IN, &tcp(Ip::new(D, U), 5555, 8080, TCP_SYN, b""))
        .unwrap();
    let (_, reply) = p
        .run(
            UPLINK_OUT,
            &tcp(Ip::new(WEB, D), 80, 5555, TCP_SYN | TCP_ACK, b""),
        )
        .unwrap();
    let (_, out) = p
        .run(UPLINK_IN, &icmp_error(Ip::new(ROUTER, U), 11, 0, &reply))
        .unwrap();
    assert_eq!(checked(&out).dst(), WEB);
    assert_eq!(quote(&out), (WEB, D, Some((80, 5555))));

    // The other way: the container refuses a datagram to a published UDP port ...
    let (_, datagram) = p
        .run(UPLINK_IN, &udp(Ip::new(D, U), 6000, 5353, b"q"))
        .unwrap();
    let (verdict, out) = p
        .run(UPLINK_OUT, &icmp_error(Ip::new(WEB, D), 3, 3, &datagram))
        .unwrap();
    assert_eq!(verdict, TCX_NEXT);
    assert_eq!((checked(&out).src(), checked(&out).dst()), (U, D));
    assert_eq!(quote(&out), (D, U, Some((6000, 5353))));

    // ... and a masqueraded flow's reply; the host's own error keeps its address.
    let (_, synack) = p
        .run(
            UPLINK_IN,
            &tcp(Ip::new(D, U), 80, 40000, TCP_SYN | TCP_ACK, b""),
        )
        .unwrap();
    let (_, out) = p
        .run(UPLINK_OUT, &icmp_error(Ip::new(WEB, D), 3, 3, &synack))
        .unwrap();
    assert_eq!(checked(&out).src(), U);
    assert_eq!(quote(&out), (D, U, Some((80, 40000))));
    let (_, out) = p
        .run(UPLINK_OUT, &icmp_error(Ip::new(U, D), 3, 4, &synack))
        .unwrap();
    assert_eq!(checked(&out).src(), U);
    assert_eq!(quote(&out), (D, U, Some((80, 40000))));

    // An error about a flow nobody translated passes as it is.
    let foreign = tcp(Ip::new(D, U), 1234, 4321, TCP_SYN, b"");
    let err = icmp_error(Ip::new(ROUTER, U), 3, 1, &foreign);
    assert_eq!(p.run(UPLINK_IN, &err).unwrap(), (TCX_NEXT, err));
}

/// A source of a flood: `i` spread over TEST-NET-2 addresses and ports.
fn flood_source(i: u32) -> ([u8; 4], u16) {
    ([198, 51, 100, (i % 250 + 1) as u8], 1024 + (i / 250) as u16)
}

#[test]
fn an_unreplied_flood_never_evicts_assured_flows() {
    if !privileged("an_unreplied_flood_never_evicts_assured_flows") {
        return;
    }
    const TABLE: u32 = 1024;
    let mut p = programs_for(&plan_with(&format!("max_entries = {TABLE}")));
    // Idle established flows: masqueraded (container → D:80) and published (D → 8080),
    // each through its whole handshake.
    let flows = 40u16;
    for i in 0..flows {
        let (m, c) = (20_000 + i, 30_000 + i);
        for (prog, frame) in [
            (UPLINK_OUT, tcp(Ip::new(WEB, D), m, 80, TCP_SYN, b"")),
            (UPLINK_IN, tcp(Ip::new(D, U), 80, m, TCP_SYN | TCP_ACK, b"")),
            (UPLINK_OUT, tcp(Ip::new(WEB, D), m, 80, TCP_ACK, b"")),
            (UPLINK_IN, tcp(Ip::new(D, U), c, 8080, TCP_SYN, b"")),
            (
                UPLINK_OUT,
                tcp(Ip::new(WEB, D), 80, c, TCP_SYN | TCP_ACK, b""),
            ),
            (UPLINK_IN, tcp(Ip::new(D, U), c, 8080, TCP_ACK, b"")),
        ] {
            assert_eq!(p.run(prog, &frame).unwrap().0, TCX_NEXT);
        }
    }
    // Ten times the table of spoofed SYNs to the published port, each answered by the
    // backend's SYN-ACK (to nowhere: no third ACK comes), and as many UDP flows a
    // container opens that nobody answers.
    for i in 0..10 * TABLE {
        let (src, sport) = flood_source(i);
        p.run(UPLINK_IN, &tcp(Ip::new(src, U), sport, 8080, TCP_SYN, b""))
            .unwrap();
        p.run(
            UPLINK_OUT,
            &tcp(Ip::new(WEB, src), 80, sport, TCP_SYN | TCP_ACK, b""),
        )
        .unwrap();
        p.run(
            UPLINK_OUT,
            &udp(Ip::new(PEER, src), 10_000 + (i % 50_000) as u16, 53, b"q"),
        )
        .unwrap();
    }
    // Every established flow still goes both ways.
    for i in 0..flows {
        let (m, c) = (20_000 + i, 30_000 + i);
        let (verdict, out) = p
            .run(UPLINK_OUT, &tcp(Ip::new(WEB, D), m, 80, TCP_ACK, b"data"))
            .unwrap();
        assert_eq!(verdict, TCX_NEXT, "masqueraded flow {m} still leaves");
        assert_eq!(checked(&out).ports(), Some((m, 80)));
        let (_, out) = p
            .run(UPLINK_IN, &tcp(Ip::new(D, U), 80, m, TCP_ACK, b"data"))
            .unwrap();
        assert_eq!(checked(&out).dst(), WEB, "masqueraded flow {m}'s reply");
        let (_, out) = p
            .run(UPLINK_IN, &tcp(Ip::new(D, U), c, 8080, TCP_ACK, b"data"))
            .unwrap();
        assert_eq!(checked(&out).dst(), WEB, "published flow {c}");
        let (_, out) = p
            .run(UPLINK_OUT, &tcp(Ip::new(WEB, D), 80, c, TCP_ACK, b"data"))
            .unwrap();
        assert_eq!(
            (checked(&out).src(), checked(&out).ports()),
            (U, Some((8080, c))),
            "published flow {c}'s reply"
        );
    }
    assert_eq!(drops(&p, "tcp-no-syn-new-flow"), 0);
    assert_eq!(drops(&p, "ct-full"), 0);
}

/// A spoofer that repeats its SYN after the SYN-ACK it never saw (or a client's SYN
/// retransmission) assures nothing: only the handshake's third packet does. Twice the
/// main table of such flows leave it empty, so none is refused for room (`ct-full`).
#[test]
fn a_repeated_syn_does_not_assure_a_flow() {
    if !privileged("a_repeated_syn_does_not_assure_a_flow") {
        return;
    }
    const TABLE: u32 = 1024;
    let mut p = programs_for(&plan_with(&format!("max_entries = {TABLE}")));
    for i in 0..2 * TABLE {
        let (src, sport) = flood_source(i);
        let syn = tcp(Ip::new(src, U), sport, 8080, TCP_SYN, b"");
        p.run(UPLINK_IN, &syn).unwrap();
        p.run(
            UPLINK_OUT,
            &tcp(Ip::new(WEB, src), 80, sport, TCP_SYN | TCP_ACK, b""),
        )
        .unwrap();
        p.run(UPLINK_IN, &syn).unwrap();
    }
    assert_eq!(drops(&p, "ct-full"), 0, "no spoofed flow was assured");
}

/// A spoofer's blind ACK after the SYN-ACK it never saw assures nothing either: its ACK
/// number is not the SYN-ACK's + 1. Twice the main table of such flows leave it empty;
/// then as many real handshakes (ACK = SYN-ACK + 1) fill it, and the one too many is
/// counted, which shows that the check tells the two apart.
#[test]
fn a_blind_ack_does_not_assure_a_flow() {
    if !privileged("a_blind_ack_does_not_assure_a_flow") {
        return;
    }
    const TABLE: u32 = 1024;
    const SYNACK_SEQ: u32 = 1000; // what tcp() writes
    let mut p = programs_for(&plan_with(&format!("max_entries = {TABLE}")));
    let handshake = |p: &mut TestRunPrograms, i: u32, ack: u32| {
        let (src, sport) = flood_source(i);
        p.run(UPLINK_IN, &tcp(Ip::new(src, U), sport, 8080, TCP_SYN, b""))
            .unwrap();
        p.run(
            UPLINK_OUT,
            &tcp(Ip::new(WEB, src), 80, sport, TCP_SYN | TCP_ACK, b""),
        )
        .unwrap();
        let third = with_ack(tcp(Ip::new(src, U), sport, 8080, TCP_ACK, b""), ack);
        assert_eq!(p.run(UPLINK_IN, &third).unwrap().0, TCX_NEXT);
    };
    for i in 0..2 * TABLE {
        handshake(&mut p, i, SYNACK_SEQ.wrapping_add(0x1234_5678 + i * 4096));
    }
    assert_eq!(
        drops(&p, "ct-full"),
        0,
        "no blindly acknowledged flow was assured"
    );
    for i in 2 * TABLE..3 * TABLE + 1 {
        handshake(&mut p, i, SYNACK_SEQ + 1);
    }
    assert_eq!(drops(&p, "ct-full"), 1, "real handshakes are assured");
}

/// `frame` (from [`tcp`]) with acknowledgment number `ack`, its checksum updated.
fn with_ack(mut f: Vec<u8>, ack: u32) -> Vec<u8> {
    let (ack_at, csum_at) = (14 + 20 + 8, 14 + 20 + 16);
    let old = u32::from_be_bytes(f[ack_at..ack_at + 4].try_into().unwrap());
    let check = u16::from_be_bytes([f[csum_at], f[csum_at + 1]]);
    let check = netplane_common::csum::replace32(check, old, ack);
    f[ack_at..ack_at + 4].copy_from_slice(&ack.to_be_bytes());
    f[csum_at..csum_at + 2].copy_from_slice(&check.to_be_bytes());
    f
}

#[test]
fn the_main_conntrack_table_holds_max_entries_flows() {
    if !privileged("the_main_conntrack_table_holds_max_entries_flows") {
        return;
    }
    const TABLE: u16 = 1024;
    let mut p = programs_for(&plan_with(&format!("max_entries = {TABLE}")));
    // UDP flows that saw both directions and then the original again: assured, each in
    // the main table. One more than fits: it is counted, and still works.
    let assure = |p: &mut TestRunPrograms, sport: u16| {
        p.run(UPLINK_OUT, &udp(Ip::new(WEB, D), sport, 53, b"q"))
            .unwrap();
        p.run(UPLINK_IN, &udp(Ip::new(D, U), 53, sport, b"r"))
            .unwrap();
        p.run(UPLINK_OUT, &udp(Ip::new(WEB, D), sport, 53, b"q"))
            .unwrap();
    };
    for i in 0..=TABLE {
        assure(&mut p, 10_000 + i);
    }
    // Whatever CPU inserted them, all of them are there (with BPF_F_NO_COMMON_LRU, a CPU
    // could use only its share).
    for i in 0..=TABLE {
        let (_, out) = p
            .run(UPLINK_IN, &udp(Ip::new(D, U), 53, 10_000 + i, b"r"))
            .unwrap();
        assert_eq!(checked(&out).dst(), WEB, "flow {i}");
    }
    assert_eq!(drops(&p, "ct-full"), 1, "the table is full at max_entries");
}

/// [`tcp`] with sequence number `seq` (its checksum updated as a sender would).
fn tcp_at(ip: Ip, sport: u16, dport: u16, flags: u8, seq: u32) -> Vec<u8> {
    let mut f = tcp(ip, sport, dport, flags, b"");
    let (seq_at, csum_at) = (14 + 20 + 4, 14 + 20 + 16);
    let old = u32::from_be_bytes(f[seq_at..seq_at + 4].try_into().unwrap());
    let check = u16::from_be_bytes([f[csum_at], f[csum_at + 1]]);
    let check = netplane_common::csum::replace32(check, old, seq);
    f[seq_at..seq_at + 4].copy_from_slice(&seq.to_be_bytes());
    f[csum_at..csum_at + 2].copy_from_slice(&check.to_be_bytes());
    f
}

#[test]
fn a_blind_rst_or_fin_does_not_close_a_live_flow() {
    if !privileged("a_blind_rst_or_fin_does_not_close_a_live_flow") {
        return;
    }
    // Closing flows go after a second: a flow wrongly closed dies in the test's time.
    let mut p = programs_for(&plan_with("tcp_closing_timeout = 1"));
    const SRV: u32 = 7_000_000;
    const CLI: u32 = 1_000;
    // A masqueraded flow (the peer D is outside) and a published one (the client D is).
    let handshake = |p: &mut TestRunPrograms, m: u16, c: u16| {
        for (prog, frame) in [
            (UPLINK_OUT, tcp_at(Ip::new(WEB, D), m, 80, TCP_SYN, CLI)),
            (
                UPLINK_IN,
                tcp_at(Ip::new(D, U), 80, m, TCP_SYN | TCP_ACK, SRV),
            ),
            (UPLINK_OUT, tcp_at(Ip::new(WEB, D), m, 80, TCP_ACK, CLI + 1)),
            (UPLINK_IN, tcp_at(Ip::new(D, U), c, 8080, TCP_SYN, CLI)),
            (
                UPLINK_OUT,
                tcp_at(Ip::new(WEB, D), 80, c, TCP_SYN | TCP_ACK, SRV),
            ),
            (UPLINK_IN, tcp_at(Ip::new(D, U), c, 8080, TCP_ACK, CLI + 1)),
        ] {
            assert_eq!(p.run(prog, &frame).unwrap().0, TCX_NEXT);
        }
    };
    handshake(&mut p, 44_000, 45_000);
    handshake(&mut p, 44_001, 45_001);
    // Blind: a RST and a FIN from D's address, far from where either flow is.
    for (flags, seq) in [(0x04, 0x4000_0000u32), (0x11, 0x9000_0000)] {
        p.run(UPLINK_IN, &tcp_at(Ip::new(D, U), 80, 44_000, flags, seq))
            .unwrap();
        p.run(UPLINK_IN, &tcp_at(Ip::new(D, U), 45_000, 8080, flags, seq))
            .unwrap();
    }
    // In the window: a real RST, from the peer of the second pair.
    p.run(UPLINK_IN, &tcp_at(Ip::new(D, U), 80, 44_001, 0x04, SRV + 1))
        .unwrap();
    p.run(
        UPLINK_IN,
        &tcp_at(Ip::new(D, U), 45_001, 8080, 0x04, CLI + 1),
    )
    .unwrap();
    // An idle gap longer than the closing lifetime.
    std::thread::sleep(std::time::Duration::from_millis(1_300));
    let (_, out) = p
        .run(
            UPLINK_IN,
            &tcp_at(Ip::new(D, U), 80, 44_000, TCP_ACK, SRV + 1),
        )
        .unwrap();
    assert_eq!(checked(&out).dst(), WEB, "the masqueraded flow lives");
    let (_, out) = p
        .run(
            UPLINK_IN,
            &tcp_at(Ip::new(D, U), 45_000, 8080, TCP_ACK, CLI + 1),
        )
        .unwrap();
    assert_eq!(checked(&out).dst(), WEB, "the published flow lives");
    // The flows that were really reset are gone: no translation for their leftovers.
    let (_, out) = p
        .run(
            UPLINK_IN,
            &tcp_at(Ip::new(D, U), 80, 44_001, TCP_ACK, SRV + 1),
        )
        .unwrap();
    assert_eq!(checked(&out).dst(), U, "the reset masqueraded flow expired");
    let (verdict, _) = p
        .run(
            UPLINK_IN,
            &tcp_at(Ip::new(D, U), 45_001, 8080, TCP_ACK, CLI + 1),
        )
        .unwrap();
    assert_eq!(verdict, TCX_NEXT);
    let (_, out) = p
        .run(
            UPLINK_OUT,
            &tcp_at(Ip::new(WEB, D), 80, 45_001, TCP_ACK, SRV + 1),
        )
        .unwrap();
    assert_eq!(checked(&out).src(), WEB, "the reset published flow expired");
}

// Docker 28's gateway modes and [[routes]] (issue 13). One network per mode, the routed one
// a ptp network, and a never-NAT prefix: R, another host's container.
const NAT_WEB: [u8; 4] = [10, 89, 0, 2];
const NAT_GW: [u8; 4] = [10, 89, 0, 1];
const OPEN: [u8; 4] = [10, 89, 1, 2];
const SRV: [u8; 4] = [10, 89, 2, 2];
const QUIET: [u8; 4] = [10, 89, 2, 3];
const ISO: [u8; 4] = [10, 89, 3, 2];
const ISO_PEER: [u8; 4] = [10, 89, 3, 3];
const R: [u8; 4] = [10, 90, 0, 5];
const ROUTER: [u8; 4] = [198, 51, 100, 1];
const IPPROTO_GRE: u8 = 47;

fn modes_plan() -> Plan {
    let text = r#"
        name = "kt"
        [[networks]]
        name = "npn"
        subnet = "10.89.0.0/24"
        [[networks]]
        name = "npu"
        subnet = "10.89.1.0/24"
        gateway_mode = "nat-unprotected"
        [[networks]]
        name = "npr"
        subnet = "10.89.2.0/24"
        driver = "ptp"
        gateway_mode = "routed"
        [[networks]]
        name = "npi"
        subnet = "10.89.3.0/24"
        gateway_mode = "isolated"
        [[containers]]
        name = "web"
        network = "npn"
        publish = ["8080:80"]
        [[containers]]
        name = "open"
        network = "npu"
        [[containers]]
        name = "srv"
        network = "npr"
        publish = ["80:80", "5353:53/udp", "9000-9002:9000-9002"]
        [[containers]]
        name = "quiet"
        network = "npr"
        [[containers]]
        name = "iso"
        network = "npi"
        [[containers]]
        name = "isopeer"
        network = "npi"
        [[routes]]
        subnet = "10.90.0.0/24"
        via = "203.0.113.12"
        "#;
    let plan = Config::parse(text, "test").unwrap().plan().unwrap();
    for (c, ip) in [
        ("web", NAT_WEB),
        ("open", OPEN),
        ("srv", SRV),
        ("quiet", QUIET),
        ("iso", ISO),
        ("isopeer", ISO_PEER),
    ] {
        assert_eq!(
            plan.container(c).unwrap().ip,
            Some(Ipv4Addr::from(ip)),
            "{c}"
        );
    }
    plan
}

/// Runs `frame` through `prog` and asserts that it passed untouched.
fn passes(p: &mut TestRunPrograms, prog: &str, frame: &[u8], what: &str) {
    let (verdict, out) = p.run(prog, frame).unwrap();
    assert_eq!(verdict, TCX_NEXT, "{what}: passed");
    assert_eq!(out, frame, "{what}: untouched");
}

/// Runs `frame` through `prog` and asserts that it was dropped.
fn dropped(p: &mut TestRunPrograms, prog: &str, frame: &[u8], what: &str) {
    assert_eq!(
        p.run(prog, frame).unwrap().0,
        TC_ACT_SHOT,
        "{what}: dropped"
    );
}

#[test]
fn gateway_modes_decide_what_comes_in_straight_from_outside() {
    if !privileged("gateway_modes_decide_what_comes_in_straight_from_outside") {
        return;
    }
    let mut p = programs_for(&modes_plan());
    let syn = |dst, dport| tcp(Ip::new(D, dst), 5555, dport, TCP_SYN, b"");

    // nat: only the published host port reaches the container; its address does not.
    dropped(
        &mut p,
        UPLINK_IN,
        &syn(NAT_WEB, 80),
        "nat, TCP to the container",
    );
    dropped(
        &mut p,
        UPLINK_IN,
        &udp(Ip::new(D, NAT_WEB), 5555, 53, b"q"),
        "nat, UDP to the container",
    );
    dropped(
        &mut p,
        UPLINK_IN,
        &icmp_echo(Ip::new(D, NAT_WEB), 8, 1, 1),
        "nat, echo request to the container",
    );
    assert_eq!(drops(&p, "direct-routing"), 3);
    let (verdict, out) = p.run(UPLINK_IN, &syn(U, 8080)).unwrap();
    assert_eq!(verdict, TCX_NEXT);
    assert_eq!(
        checked(&out).dst(),
        NAT_WEB,
        "the published port still works"
    );
    passes(
        &mut p,
        UPLINK_IN,
        &syn(NAT_GW, 22),
        "nat, the host's gateway address",
    );

    // nat-unprotected: any port, any protocol.
    passes(&mut p, UPLINK_IN, &syn(OPEN, 22), "nat-unprotected, TCP");
    passes(
        &mut p,
        UPLINK_IN,
        &ipv4_frame(Ip::new(D, OPEN), IPPROTO_GRE, &[0; 8]),
        "nat-unprotected, GRE",
    );

    // routed: the published container ports (host ports ignored, ranges expanded), echo
    // requests, nothing else.
    passes(&mut p, UPLINK_IN, &syn(SRV, 80), "routed, published 80/tcp");
    passes(
        &mut p,
        UPLINK_IN,
        &syn(SRV, 9001),
        "routed, inside 9000-9002",
    );
    passes(
        &mut p,
        UPLINK_IN,
        &udp(Ip::new(D, SRV), 5555, 53, b"q"),
        "routed, published 53/udp",
    );
    passes(
        &mut p,
        UPLINK_IN,
        &icmp_echo(Ip::new(D, QUIET), 8, 7, 1),
        "routed, echo request to a container with nothing published",
    );
    let direct = drops(&p, "direct-routing");
    for (frame, what) in [
        (syn(SRV, 81), "routed, unpublished port"),
        (syn(SRV, 9003), "routed, beyond the range"),
        (syn(SRV, 5353), "routed, the host port of a mapping"),
        (syn(SRV, 53), "routed, 53 is published for UDP only"),
        (syn(QUIET, 80), "routed, a container with nothing published"),
        (
            icmp_echo(Ip::new(D, QUIET), 0, 7, 1),
            "routed, an echo reply nobody asked for",
        ),
        (
            ipv4_frame(Ip::new(D, SRV), IPPROTO_GRE, &[0; 8]),
            "routed, GRE of no flow",
        ),
    ] {
        dropped(&mut p, UPLINK_IN, &frame, what);
    }
    assert_eq!(drops(&p, "direct-routing"), direct + 7);

    // isolated: nothing.
    dropped(&mut p, UPLINK_IN, &syn(ISO, 80), "isolated");
    dropped(
        &mut p,
        UPLINK_IN,
        &icmp_echo(Ip::new(D, ISO), 8, 1, 1),
        "isolated, echo",
    );
    // Its "gateway" is not the host's: no published port answers there.
    dropped(
        &mut p,
        UPLINK_IN,
        &syn([10, 89, 3, 1], 8080),
        "isolated gateway",
    );
    assert_eq!(drops(&p, "isolated-network"), 3);

    // Transit to no container network is not netplane's business.
    let transit = syn([198, 51, 100, 7], 80);
    passes(&mut p, UPLINK_IN, &transit, "transit");
}

#[test]
fn routed_containers_go_out_untranslated_and_their_flows_replies_come_back() {
    if !privileged("routed_containers_go_out_untranslated_and_their_flows_replies_come_back") {
        return;
    }
    let mut p = programs_for(&modes_plan());

    // TCP: a connection the container opens leaves with its own address, at the network's
    // hook (no masquerade taken early) and at the uplink, and its replies come in.
    let syn = tcp(Ip::new(SRV, D), 40000, 443, TCP_SYN, b"");
    passes(&mut p, BRIDGE_IN, &syn, "routed SYN at its network's hook");
    passes(&mut p, UPLINK_OUT, &syn, "routed SYN at the uplink");
    let synack = tcp(Ip::new(D, SRV), 443, 40000, TCP_SYN | TCP_ACK, b"");
    let (verdict, out) = p.run(UPLINK_IN, &synack).unwrap();
    assert_eq!(verdict, TCX_NEXT);
    assert_eq!(out, synack, "the reply comes in untouched");
    passes(
        &mut p,
        UPLINK_OUT,
        &tcp(Ip::new(SRV, D), 40000, 443, TCP_ACK, b"GET"),
        "routed data",
    );
    passes(
        &mut p,
        UPLINK_IN,
        &tcp(Ip::new(D, SRV), 443, 40000, TCP_ACK, b"200"),
        "its reply",
    );
    // Its replies go through the translation stage, whose rewrite is the identity: not
    // counted as translated (netplane_nat_translated_packets_total).
    let translated = p.translated();
    assert!(translated.iter().all(|c| c.packets == 0), "{translated:?}");
    // The same peer on another tuple is not a reply.
    dropped(
        &mut p,
        UPLINK_IN,
        &tcp(Ip::new(D, SRV), 443, 40001, TCP_SYN | TCP_ACK, b""),
        "another tuple",
    );
    dropped(
        &mut p,
        UPLINK_IN,
        &tcp(Ip::new([203, 0, 113, 9], SRV), 443, 40000, TCP_ACK, b""),
        "another peer",
    );

    // UDP and ICMP echo, by port and identifier.
    passes(
        &mut p,
        UPLINK_OUT,
        &udp(Ip::new(QUIET, D), 5000, 53, b"q"),
        "routed UDP out",
    );
    passes(
        &mut p,
        UPLINK_IN,
        &udp(Ip::new(D, QUIET), 53, 5000, b"r"),
        "its reply",
    );
    dropped(
        &mut p,
        UPLINK_IN,
        &udp(Ip::new(D, QUIET), 54, 5000, b"r"),
        "from another port",
    );
    passes(
        &mut p,
        UPLINK_OUT,
        &icmp_echo(Ip::new(QUIET, D), 8, 77, 1),
        "routed ping out",
    );
    passes(
        &mut p,
        UPLINK_IN,
        &icmp_echo(Ip::new(D, QUIET), 0, 77, 1),
        "its echo reply",
    );
    dropped(
        &mut p,
        UPLINK_IN,
        &icmp_echo(Ip::new(D, QUIET), 0, 78, 1),
        "an echo reply of another identifier",
    );
    // Another protocol, by address.
    passes(
        &mut p,
        UPLINK_OUT,
        &ipv4_frame(Ip::new(QUIET, D), IPPROTO_GRE, &[0; 8]),
        "routed GRE out",
    );
    passes(
        &mut p,
        UPLINK_IN,
        &ipv4_frame(Ip::new(D, QUIET), IPPROTO_GRE, &[0; 8]),
        "its GRE back",
    );

    // Answering an echo request from outside opens nothing: the same identifier is still
    // no reply.
    passes(
        &mut p,
        UPLINK_IN,
        &icmp_echo(Ip::new(D, QUIET), 8, 99, 1),
        "an echo request from outside",
    );
    passes(
        &mut p,
        UPLINK_OUT,
        &icmp_echo(Ip::new(QUIET, D), 0, 99, 1),
        "its reply leaves",
    );
    dropped(
        &mut p,
        UPLINK_IN,
        &icmp_echo(Ip::new(D, QUIET), 0, 99, 1),
        "an echo reply to the answered identifier",
    );

    // ICMP errors: about a flow the container opened, or about its published port's, they
    // come in (path MTU discovery); about nothing known, not. An error the container
    // sends leaves untranslated.
    passes(
        &mut p,
        UPLINK_IN,
        &icmp_error(Ip::new(ROUTER, SRV), 3, 4, &syn),
        "frag needed about its own flow",
    );
    let published_reply = tcp(Ip::new(SRV, D), 80, 5555, TCP_SYN | TCP_ACK, b"");
    passes(
        &mut p,
        UPLINK_OUT,
        &published_reply,
        "the published port's reply",
    );
    passes(
        &mut p,
        UPLINK_IN,
        &icmp_error(Ip::new(ROUTER, SRV), 3, 4, &published_reply),
        "frag needed about the published port's reply",
    );
    dropped(
        &mut p,
        UPLINK_IN,
        &icmp_error(
            Ip::new(ROUTER, SRV),
            3,
            4,
            &tcp(Ip::new(SRV, D), 41234, 9, TCP_SYN, b""),
        ),
        "an error about no flow",
    );
    let refused = udp(Ip::new(D, SRV), 6000, 53, b"q");
    passes(
        &mut p,
        UPLINK_OUT,
        &icmp_error(Ip::new(SRV, D), 3, 3, &refused),
        "port unreachable from the container",
    );

    // Nothing of it was translated or refused for want of a translation.
    assert_eq!(drops(&p, "untranslatable"), 0);
    assert_eq!(drops(&p, "tcp-no-syn-new-flow"), 0);
    assert_eq!(drops(&p, "direct-routing"), 6);
}

#[test]
fn routed_flows_are_picked_up_mid_stream() {
    if !privileged("routed_flows_are_picked_up_mid_stream") {
        return;
    }
    let mut p = programs_for(&modes_plan());
    // A connection older than its entry (netplane came up under it): its next segment
    // out tracks it, and the replies come in. A bare reset opens nothing.
    passes(
        &mut p,
        UPLINK_OUT,
        &tcp(Ip::new(SRV, D), 40500, 443, 0x04, b""),
        "a reset leaves",
    );
    dropped(
        &mut p,
        UPLINK_IN,
        &tcp(Ip::new(D, SRV), 443, 40500, TCP_ACK, b""),
        "no flow after a bare reset",
    );
    passes(
        &mut p,
        UPLINK_OUT,
        &tcp(Ip::new(SRV, D), 40501, 443, TCP_ACK, b"more"),
        "mid-stream data leaves",
    );
    passes(
        &mut p,
        UPLINK_IN,
        &tcp(Ip::new(D, SRV), 443, 40501, TCP_ACK, b"ok"),
        "its replies come in",
    );
}

#[test]
fn masquerade_is_for_nat_networks_only() {
    if !privileged("masquerade_is_for_nat_networks_only") {
        return;
    }
    let mut p = programs_for(&modes_plan());
    for (src, what) in [(NAT_WEB, "nat"), (OPEN, "nat-unprotected")] {
        let (verdict, out) = p
            .run(UPLINK_OUT, &tcp(Ip::new(src, D), 42000, 80, TCP_SYN, b""))
            .unwrap();
        assert_eq!(verdict, TCX_NEXT);
        assert_eq!(checked(&out).src(), U, "{what} is masqueraded");
    }
    // A routed network's host port is not published on the host.
    let (verdict, out) = p
        .run(UPLINK_IN, &tcp(Ip::new(D, U), 5555, 80, TCP_SYN, b""))
        .unwrap();
    assert_eq!(verdict, TCX_NEXT);
    assert_eq!(checked(&out).dst(), U, "no DNAT for a routed mapping");
    // A routed container out, a ptp network's containers between them: nothing
    // translated at the network's hook.
    passes(
        &mut p,
        BRIDGE_IN,
        &tcp(Ip::new(SRV, D), 42001, 80, TCP_SYN, b""),
        "routed, out",
    );
    passes(
        &mut p,
        BRIDGE_IN,
        &tcp(Ip::new(SRV, QUIET), 42002, 80, TCP_ACK, b"x"),
        "ptp, between containers of the network",
    );
    assert_eq!(drops(&p, "isolation"), 0);
}

#[test]
fn never_nat_prefixes_are_peers_both_ways() {
    if !privileged("never_nat_prefixes_are_peers_both_ways") {
        return;
    }
    let mut p = programs_for(&modes_plan());
    // Out: never masqueraded, from a nat network's container too, at the network's hook
    // (no masquerade taken early) and at the uplink; a TCP segment of no flow is no
    // trouble (nothing to translate, so nothing to refuse).
    let to_peer = tcp(Ip::new(NAT_WEB, R), 43000, 80, TCP_SYN, b"");
    passes(
        &mut p,
        BRIDGE_IN,
        &to_peer,
        "nat → routed subnet, network hook",
    );
    passes(&mut p, UPLINK_OUT, &to_peer, "nat → routed subnet, uplink");
    passes(
        &mut p,
        UPLINK_OUT,
        &tcp(Ip::new(NAT_WEB, R), 43001, 80, TCP_ACK, b"x"),
        "a segment of no flow",
    );
    passes(
        &mut p,
        UPLINK_OUT,
        &udp(Ip::new(SRV, R), 5000, 53, b"q"),
        "routed → routed subnet",
    );
    passes(
        &mut p,
        UPLINK_OUT,
        &ipv4_frame(Ip::new(NAT_WEB, R), IPPROTO_GRE, &[0; 8]),
        "GRE, untranslated",
    );
    let (_, out) = p
        .run(
            UPLINK_OUT,
            &tcp(Ip::new(NAT_WEB, D), 43002, 80, TCP_SYN, b""),
        )
        .unwrap();
    assert_eq!(checked(&out).src(), U, "the outside is still masqueraded");

    // In: as between containers of one network, whatever the mode; an isolated network
    // stays isolated.
    passes(
        &mut p,
        UPLINK_IN,
        &tcp(Ip::new(R, NAT_WEB), 5555, 80, TCP_SYN, b""),
        "routed subnet → nat container",
    );
    passes(
        &mut p,
        UPLINK_IN,
        &tcp(Ip::new(R, QUIET), 5555, 1234, TCP_SYN, b""),
        "routed subnet → routed container, unpublished port",
    );
    passes(
        &mut p,
        UPLINK_IN,
        &icmp_echo(Ip::new(R, NAT_WEB), 0, 5, 1),
        "routed subnet → nat container, any ICMP",
    );
    // A published host port reached from a routed subnet is translated both ways as from
    // anywhere: its replies are a flow of the port, not a peer's plain traffic.
    let (_, out) = p
        .run(UPLINK_IN, &tcp(Ip::new(R, U), 6000, 8080, TCP_SYN, b""))
        .unwrap();
    assert_eq!(checked(&out).dst(), NAT_WEB, "DNAT from a routed subnet");
    let (_, out) = p
        .run(
            UPLINK_OUT,
            &tcp(Ip::new(NAT_WEB, R), 80, 6000, TCP_SYN | TCP_ACK, b""),
        )
        .unwrap();
    let ip = checked(&out);
    assert_eq!(
        (ip.src(), ip.ports()),
        (U, Some((8080, 6000))),
        "its reply, reverse-DNATed"
    );
    assert_eq!(drops(&p, "direct-routing"), 0);
    dropped(
        &mut p,
        UPLINK_IN,
        &tcp(Ip::new(R, ISO), 5555, 80, TCP_SYN, b""),
        "routed subnet → isolated",
    );
    assert_eq!(drops(&p, "isolated-network"), 1);
    assert_eq!(drops(&p, "tcp-no-syn-new-flow"), 0);
}

#[test]
fn isolated_networks_keep_to_themselves() {
    if !privileged("isolated_networks_keep_to_themselves") {
        return;
    }
    let mut p = programs_for(&modes_plan());
    let from_iso = |dst| tcp(Ip::new(ISO, dst), 44000, 80, TCP_SYN, b"");
    for (dst, what) in [
        (D, "to the outside"),
        (U, "to a host address"),
        ([10, 89, 3, 1], "to its would-be gateway"),
        (NAT_WEB, "to another network"),
        (R, "to a routed subnet"),
    ] {
        dropped(&mut p, BRIDGE_IN, &from_iso(dst), what);
    }
    dropped(
        &mut p,
        BRIDGE_IN,
        &icmp_error(Ip::new(ISO, D), 3, 3, &udp(Ip::new(D, ISO), 1, 2, b"")),
        "an ICMP error out",
    );
    dropped(&mut p, UPLINK_OUT, &from_iso(D), "at the uplink");
    // Into it: from the host (the bridge's egress), and from another network.
    dropped(
        &mut p,
        BRIDGE_OUT,
        &tcp(Ip::new(U, ISO), 44001, 80, TCP_SYN, b""),
        "from the host",
    );
    assert_eq!(drops(&p, "isolated-network"), 8);
    dropped(
        &mut p,
        BRIDGE_IN,
        &tcp(Ip::new(NAT_WEB, ISO), 44002, 80, TCP_SYN, b""),
        "from another network",
    );
    assert_eq!(drops(&p, "isolation"), 1);
    // The host's packets to other networks go on.
    passes(
        &mut p,
        BRIDGE_OUT,
        &tcp(Ip::new(U, NAT_WEB), 44003, 80, TCP_SYN, b""),
        "host → nat container",
    );
}

#[test]
fn the_replies_of_a_direct_flow_into_a_nat_unprotected_container_leave_untranslated() {
    if !privileged(
        "the_replies_of_a_direct_flow_into_a_nat_unprotected_container_leave_untranslated",
    ) {
        return;
    }
    let mut p = programs_for(&modes_plan());
    // TCP: the handshake's reply and the data leave with the container's own address, at
    // the network's hook (where masquerade is taken early) and at the uplink.
    passes(
        &mut p,
        UPLINK_IN,
        &tcp(Ip::new(D, OPEN), 5555, 22, TCP_SYN, b""),
        "SYN straight to the container",
    );
    let synack = tcp(Ip::new(OPEN, D), 22, 5555, TCP_SYN | TCP_ACK, b"");
    passes(&mut p, BRIDGE_IN, &synack, "its SYN-ACK, network hook");
    passes(&mut p, UPLINK_OUT, &synack, "its SYN-ACK, uplink");
    passes(
        &mut p,
        UPLINK_IN,
        &tcp(Ip::new(D, OPEN), 5555, 22, TCP_ACK, b"ls"),
        "the client's data",
    );
    passes(
        &mut p,
        UPLINK_OUT,
        &tcp(Ip::new(OPEN, D), 22, 5555, TCP_ACK, b"files"),
        "the container's answer",
    );
    // UDP and ICMP echo the same way.
    passes(
        &mut p,
        UPLINK_IN,
        &udp(Ip::new(D, OPEN), 6000, 53, b"q"),
        "a datagram straight to the container",
    );
    passes(
        &mut p,
        UPLINK_OUT,
        &udp(Ip::new(OPEN, D), 53, 6000, b"r"),
        "its answer",
    );
    passes(
        &mut p,
        UPLINK_IN,
        &icmp_echo(Ip::new(D, OPEN), 8, 31, 1),
        "an echo request straight to the container",
    );
    passes(
        &mut p,
        UPLINK_OUT,
        &icmp_echo(Ip::new(OPEN, D), 0, 31, 1),
        "its echo reply",
    );
    passes(
        &mut p,
        UPLINK_IN,
        &ipv4_frame(Ip::new(D, OPEN), IPPROTO_GRE, &[0; 8]),
        "GRE straight to the container",
    );
    passes(
        &mut p,
        UPLINK_OUT,
        &ipv4_frame(Ip::new(OPEN, D), IPPROTO_GRE, &[0; 8]),
        "GRE back",
    );
    // What the container opens itself is masqueraded as ever.
    let (_, out) = p
        .run(UPLINK_OUT, &udp(Ip::new(OPEN, D), 7000, 53, b"q"))
        .unwrap();
    assert_eq!(checked(&out).src(), U, "its own flow is masqueraded");
    assert_eq!(drops(&p, "tcp-no-syn-new-flow"), 0);
}

#[test]
fn a_packet_from_outside_never_takes_over_a_masqueraded_flow_of_a_nat_unprotected_container() {
    if !privileged(
        "a_packet_from_outside_never_takes_over_a_masqueraded_flow_of_a_nat_unprotected_container",
    ) {
        return;
    }
    let mut p = programs_for(&modes_plan());
    let src_out = |p: &mut TestRunPrograms, frame: &[u8]| {
        let (verdict, out) = p.run(UPLINK_OUT, frame).unwrap();
        assert_eq!(verdict, TCX_NEXT);
        checked(&out).src()
    };
    // UDP: the container's query is masqueraded; the same tuple reversed, straight to the
    // container (the peer, or a spoofer), clashes with it and is refused, as nf_conntrack
    // refuses it; the container's next query is still masqueraded.
    let query = udp(Ip::new(OPEN, D), 5000, 53, b"q");
    assert_eq!(src_out(&mut p, &query), U);
    dropped(
        &mut p,
        UPLINK_IN,
        &udp(Ip::new(D, OPEN), 53, 5000, b"r"),
        "UDP straight to the masqueraded tuple",
    );
    assert_eq!(src_out(&mut p, &query), U, "UDP still masqueraded");
    // TCP, a segment of the connection and a SYN alike.
    let syn = tcp(Ip::new(OPEN, D), 40100, 443, TCP_SYN, b"");
    assert_eq!(src_out(&mut p, &syn), U);
    for flags in [TCP_SYN, TCP_ACK] {
        dropped(
            &mut p,
            UPLINK_IN,
            &tcp(Ip::new(D, OPEN), 443, 40100, flags, b""),
            "TCP straight to the masqueraded tuple",
        );
    }
    let data = tcp(Ip::new(OPEN, D), 40100, 443, TCP_ACK, b"x");
    assert_eq!(src_out(&mut p, &data), U, "TCP still masqueraded");
    // ICMP echo: a reply of its identifier straight to the container.
    let ping = icmp_echo(Ip::new(OPEN, D), 8, 44, 1);
    assert_eq!(src_out(&mut p, &ping), U);
    dropped(
        &mut p,
        UPLINK_IN,
        &icmp_echo(Ip::new(D, OPEN), 0, 44, 1),
        "an echo reply straight to the container",
    );
    assert_eq!(src_out(&mut p, &ping), U, "ping still masqueraded");
    // Another protocol, by address.
    let gre = ipv4_frame(Ip::new(OPEN, D), IPPROTO_GRE, &[0; 8]);
    assert_eq!(src_out(&mut p, &gre), U);
    dropped(
        &mut p,
        UPLINK_IN,
        &ipv4_frame(Ip::new(D, OPEN), IPPROTO_GRE, &[0; 8]),
        "GRE straight to the container",
    );
    assert_eq!(src_out(&mut p, &gre), U, "GRE still masqueraded");
    assert_eq!(drops(&p, "ct-insert-failed"), 5);
    // Other tuples still come in straight, as nat-unprotected lets them.
    passes(
        &mut p,
        UPLINK_IN,
        &udp(Ip::new(D, OPEN), 53, 5001, b"r"),
        "another port",
    );
}

#[test]
fn icmp_errors_about_traffic_to_never_nat_prefixes_come_in() {
    if !privileged("icmp_errors_about_traffic_to_never_nat_prefixes_come_in") {
        return;
    }
    // The via of the route: the other host, whose address is in no never-NAT prefix.
    const VIA: [u8; 4] = [203, 0, 113, 12];
    let mut p = programs_for(&modes_plan());
    // Path MTU discovery between hosts: "fragmentation needed" about what a container of
    // any mode sent a peer, from the other host or a router on the way.
    for (src, what) in [(NAT_WEB, "nat"), (OPEN, "nat-unprotected"), (SRV, "routed")] {
        let to_peer = tcp(Ip::new(src, R), 43100, 80, TCP_SYN, b"");
        passes(&mut p, UPLINK_OUT, &to_peer, what);
        for from in [VIA, ROUTER] {
            passes(
                &mut p,
                UPLINK_IN,
                &icmp_error(Ip::new(from, src), 3, 4, &to_peer),
                what,
            );
        }
    }
    // Not about the container it goes to: as any error about no flow.
    dropped(
        &mut p,
        UPLINK_IN,
        &icmp_error(
            Ip::new(VIA, NAT_WEB),
            3,
            4,
            &tcp(Ip::new(PEER, R), 43100, 80, TCP_SYN, b""),
        ),
        "about another address",
    );
    assert_eq!(drops(&p, "direct-routing"), 1);
    // An isolated network stays isolated.
    dropped(
        &mut p,
        UPLINK_IN,
        &icmp_error(
            Ip::new(VIA, ISO),
            3,
            4,
            &tcp(Ip::new(ISO, R), 43100, 80, TCP_SYN, b""),
        ),
        "to an isolated container",
    );
    assert_eq!(drops(&p, "isolated-network"), 1);
}

/// The identifier of the ICMP query an ICMP error frame quotes.
fn quoted_icmp_id(frame: &[u8]) -> u16 {
    let ip = checked(frame);
    let q = &ip.payload[8..];
    assert_eq!(q[9], 1, "an ICMP quote");
    let ihl = usize::from(q[0] & 0xf) * 4;
    u16::from_be_bytes([q[ihl + 4], q[ihl + 5]])
}

#[test]
fn icmp_errors_quoting_an_echo_request_find_its_flow() {
    if !privileged("icmp_errors_quoting_an_echo_request_find_its_flow") {
        return;
    }
    // A routed container's ping (traceroute's time exceeded): its flow's entry lets the
    // error in, as it does the echo reply.
    let mut p = programs_for(&modes_plan());
    let ping = icmp_echo(Ip::new(QUIET, D), 8, 77, 1);
    passes(&mut p, UPLINK_OUT, &ping, "routed ping out");
    passes(
        &mut p,
        UPLINK_IN,
        &icmp_error(Ip::new(ROUTER, QUIET), 11, 0, &ping),
        "time exceeded about the routed ping",
    );
    dropped(
        &mut p,
        UPLINK_IN,
        &icmp_error(
            Ip::new(ROUTER, QUIET),
            11,
            0,
            &icmp_echo(Ip::new(QUIET, D), 8, 78, 1),
        ),
        "about a ping of another identifier",
    );

    // A masqueraded ping: the error is translated back, the identifier too when the
    // flow could not keep its own.
    let mut p = programs();
    let (_, first) = p
        .run(UPLINK_OUT, &icmp_echo(Ip::new(WEB, D), 8, 77, 1))
        .unwrap();
    let (_, second) = p
        .run(UPLINK_OUT, &icmp_echo(Ip::new(PEER, D), 8, 77, 1))
        .unwrap();
    let id = quoted_icmp_id(&icmp_error(Ip::new(ROUTER, U), 11, 0, &second));
    assert_ne!(id, 77, "the second ping got another identifier");
    for (sent, container) in [(first, WEB), (second, PEER)] {
        let (verdict, out) = p
            .run(UPLINK_IN, &icmp_error(Ip::new(ROUTER, U), 11, 0, &sent))
            .unwrap();
        assert_eq!(verdict, TCX_NEXT);
        assert_eq!(
            (checked(&out).src(), checked(&out).dst()),
            (ROUTER, container)
        );
        let (src, dst, _) = quote(&out);
        assert_eq!((src, dst), (container, D));
        assert_eq!(quoted_icmp_id(&out), 77, "the container's identifier");
    }
}

#[test]
fn an_icmp_error_about_a_routed_flow_reaches_only_its_container() {
    if !privileged("an_icmp_error_about_a_routed_flow_reaches_only_its_container") {
        return;
    }
    let mut p = programs_for(&modes_plan());
    let syn = tcp(Ip::new(SRV, D), 40000, 443, TCP_SYN, b"");
    passes(&mut p, UPLINK_OUT, &syn, "routed SYN");
    passes(
        &mut p,
        UPLINK_IN,
        &icmp_error(Ip::new(ROUTER, SRV), 3, 4, &syn),
        "to the flow's container",
    );
    for to in [QUIET, NAT_WEB, OPEN] {
        let verdict = p
            .run(UPLINK_IN, &icmp_error(Ip::new(ROUTER, to), 3, 4, &syn))
            .unwrap()
            .0;
        if to == OPEN {
            assert_eq!(verdict, TCX_NEXT, "nat-unprotected lets anything in");
        } else {
            assert_eq!(verdict, TC_ACT_SHOT, "to another container");
        }
    }
    assert_eq!(drops(&p, "direct-routing"), 2);
}

#[test]
fn rewriting_the_networks_never_leaves_a_container_unknown() {
    if !privileged("rewriting_the_networks_never_leaves_a_container_unknown") {
        return;
    }
    // `up` with a network more, then less (and the others' order changed, so that an id
    // by position would move), over and over, while a nat container's packets run: every
    // one is masqueraded, and the isolated network's stay in.
    let with = modes_plan();
    let mut without = modes_plan();
    without.networks.retain(|n| n.name != "npu");
    without.containers.retain(|c| c.network != "npu");
    without.networks.reverse();
    let host = HostContext {
        uplink: "up0".into(),
        uplink_index: 0,
        uplink_addr: Ipv4Addr::from(U),
        local_addrs: vec![Ipv4Addr::from(U)],
        uplink_addr6: None,
        local_addrs6: Vec::new(),
        links: Vec::new(),
        touched: None,
    };
    let mut p = programs_for(&with);
    let mut maps = p.take_maps().unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            for _ in 0..300 {
                maps.program(&without, &host, Some(&with)).unwrap();
                maps.program(&with, &host, Some(&without)).unwrap();
            }
            done.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        let mut sport = 20000u16;
        let mut runs = 0;
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            sport = sport.wrapping_add(1).max(20000);
            let (verdict, out) = p
                .run(UPLINK_OUT, &udp(Ip::new(NAT_WEB, D), sport, 53, b"q"))
                .unwrap();
            assert_eq!(verdict, TCX_NEXT);
            assert_eq!(checked(&out).src(), U, "masqueraded, run {runs}");
            dropped(
                &mut p,
                BRIDGE_OUT,
                &tcp(Ip::new(U, ISO), 44001, 80, TCP_SYN, b""),
                "into the isolated network",
            );
            runs += 1;
        }
    });
}

// The container's own hook (issue 17): netplane_from_container at a bridge network's host
// veth, and the way into containers. These run in a namespace of their own, whose devices
// and routes give the short way its next hops: the FIB lookups of a test run are the
// running thread's namespace's, and a test run's packet comes in on its loopback (ifindex
// 1), which the endpoints map takes for container web's host veth.

const FROM_CONTAINER: &str = "netplane_from_container";
const FROM_CONTAINER6: &str = "netplane_from_container6";
const TC_ACT_REDIRECT: i32 = 7;
/// The bridge's MAC, the containers' gateway's: the destination of the frames that
/// netplane_tests::packet crafts, as of what a container sends its gateway to route.
const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 2];
/// A MAC that is not the gateway's: another container's, as the bridge switches it.
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];
/// Container peer's host veth: none in the test's namespace (its packets never come in on
/// the test run's loopback).
const PEER_VETH: u32 = 1000;
const U6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x113, 0, 0, 0, 0, 1);
const D6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x113, 0, 0, 0, 0, 2);
const WEB6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x89, 0, 0, 0, 0, 2);
const PEER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x89, 0, 0, 0, 0, 3);

/// The plan of the hook's tests: TWO_NETWORKS with npa dual-stack, web publishing port
/// 8080, and `ebpf` (TOML lines of `[ebpf]`).
fn hook_plan(ebpf: &str) -> Plan {
    let text = format!(
        r#"
        name = "kth"
        [[networks]]
        name = "npa"
        subnet = "10.89.0.0/24"
        subnet6 = "2001:db8:89::/64"
        [[networks]]
        name = "npb"
        subnet = "10.89.1.0/24"
        [[containers]]
        name = "web"
        network = "npa"
        publish = ["8080:80"]
        [[containers]]
        name = "peer"
        network = "npa"
        [[containers]]
        name = "other"
        network = "npb"
        [ebpf]
        {ebpf}
        "#
    );
    let plan = Config::parse(&text, "test").unwrap().plan().unwrap();
    let c = |name: &str| plan.container(name).unwrap();
    assert_eq!(
        (c("web").ip, c("peer").ip, c("web").ip6, c("peer").ip6),
        (
            Some(Ipv4Addr::from(WEB)),
            Some(Ipv4Addr::from(PEER)),
            Some(WEB6),
            Some(PEER6)
        )
    );
    plan
}

/// A namespace with what the short way needs: the uplink up0 (U, U6, forwarding on, D and
/// D6 on its link) and network npa's bridge (its gateway, MAC [`GW_MAC`]), no ports.
struct ShortWayHost {
    ns: Netns,
    uplink: u32,
    bridge: u32,
    _sandbox: Sandbox,
}

impl ShortWayHost {
    fn new() -> ShortWayHost {
        let mut sandbox = Sandbox::new();
        let ns = sandbox.netns("hook");
        for key in ["all", "default"] {
            ns.sysctl(&format!("net.ipv6.conf.{key}.disable_ipv6"), "0");
        }
        ns.sysctl("net.ipv4.ip_forward", "1");
        ns.sysctl("net.ipv6.conf.all.forwarding", "1");
        ns.sh(&[
            "ip", "link", "add", "up0", "type", "veth", "peer", "name", "up1",
        ]);
        ns.sh(&[
            "ip",
            "link",
            "add",
            "npa",
            "address",
            "02:00:00:00:00:02",
            "type",
            "bridge",
        ]);
        ns.sh(&["ip", "addr", "add", "203.0.113.1/24", "dev", "up0"]);
        ns.sh(&[
            "ip",
            "-6",
            "addr",
            "add",
            "2001:db8:113::1/64",
            "dev",
            "up0",
            "nodad",
        ]);
        ns.sh(&["ip", "addr", "add", "10.89.0.1/24", "dev", "npa"]);
        for dev in ["up0", "up1", "npa"] {
            ns.sh(&["ip", "link", "set", dev, "up"]);
        }
        let index = |dev: &str| -> u32 {
            let out = ns.sh(&["ip", "-o", "link", "show", "dev", dev]);
            out.split(':').next().unwrap().trim().parse().unwrap()
        };
        ShortWayHost {
            uplink: index("up0"),
            bridge: index("npa"),
            ns,
            _sandbox: sandbox,
        }
    }

    /// The host `plan`'s maps are programmed for: web's host veth is the test run's
    /// loopback, peer's one that no test run comes in on.
    fn context(&self, plan: &Plan) -> HostContext {
        let mut host = netplane_tests::testrun::host(plan, Ipv4Addr::from(U), Some(U6));
        host.uplink_index = self.uplink;
        let link = |index, name: &str, mac| Link {
            index,
            name: name.to_owned(),
            up: true,
            master: None,
            mac: Some(mac),
            mtu: Some(1500),
        };
        let veth = |c: &str| plan.container(c).unwrap().host_veth.clone();
        host.links = vec![
            link(1, &veth("web"), [0x02, 0, 0, 0, 0, 0x11]),
            link(PEER_VETH, &veth("peer"), [0x02, 0, 0, 0, 0, 0x12]),
            link(self.bridge, "npa", GW_MAC),
        ];
        host
    }

    /// Loads the programs for `plan` and runs `f` on them in this namespace.
    fn run<R: Send>(
        &self,
        plan: &Plan,
        f: impl FnOnce(&mut TestRunPrograms, &HostContext) -> R + Send,
    ) -> R {
        let host = self.context(plan);
        self.ns.enter(|| {
            let mut p = TestRunPrograms::load(plan, &host).expect("load the NAT programs");
            f(&mut p, &host)
        })
    }
}

/// IPv4 `frame` with TTL `ttl`, its header checksum updated.
fn with_ttl(mut frame: Vec<u8>, ttl: u8) -> Vec<u8> {
    frame[14 + 8] = ttl;
    frame[14 + 10..14 + 12].fill(0);
    let sum = frame[14..34]
        .chunks(2)
        .fold(0u32, |s, w| s + u32::from(u16::from_be_bytes([w[0], w[1]])));
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = !((sum & 0xffff) + (sum >> 16)) as u16;
    frame[14 + 10..14 + 12].copy_from_slice(&sum.to_be_bytes());
    frame
}

/// `frame` with destination MAC `mac`.
fn to_mac(mut frame: Vec<u8>, mac: [u8; 6]) -> Vec<u8> {
    frame[..6].copy_from_slice(&mac);
    frame
}

#[test]
fn a_container_s_packets_of_known_flows_leave_from_its_own_hook() {
    if !privileged("a_container_s_packets_of_known_flows_leave_from_its_own_hook") {
        return;
    }
    let host = ShortWayHost::new();
    host.run(&hook_plan(""), |p, _| {
        let fc = |p: &mut TestRunPrograms, frame: &[u8]| p.run(FROM_CONTAINER, frame).unwrap();
        // A new flow is the bridge's (the port search, the entry): untouched here.
        let syn = tcp(Ip::new(WEB, D), 40000, 80, TCP_SYN, b"");
        assert_eq!(fc(p, &syn), (TCX_NEXT, syn.clone()), "a SYN goes on");
        assert_eq!(p.run(UPLINK_OUT, &syn).unwrap().0, TCX_NEXT);
        let synack = tcp(Ip::new(D, U), 80, 40000, TCP_SYN | TCP_ACK, b"");
        assert_eq!(p.run(UPLINK_IN, &synack).unwrap().0, TC_ACT_REDIRECT);

        // The flow's data: masqueraded here, and out to the uplink's next hop.
        let before = p.forwarded()[fwd::FROM_CONTAINER as usize];
        let data = tcp(Ip::new(WEB, D), 40000, 80, TCP_ACK, b"hello");
        let (verdict, out) = fc(p, &data);
        assert_eq!(verdict, TC_ACT_REDIRECT, "a known flow takes the short way");
        let ip = checked(&out);
        assert_eq!(
            (ip.src(), ip.dst(), ip.ports()),
            (U, D, Some((40000, 80))),
            "masqueraded"
        );
        assert_eq!(ip.header[8], 63, "forwarded: TTL 64 - 1");
        assert_eq!(p.forwarded()[fwd::FROM_CONTAINER as usize], before + 1);
        // TTL 1 (traceroute's first hop): untouched, for the host to answer with its
        // time exceeded to the container's own address.
        let last_hop = with_ttl(data.clone(), 1);
        checked(&last_hop);
        assert_eq!(fc(p, &last_hop), (TCX_NEXT, last_hop.clone()), "TTL 1");
        assert_eq!(p.forwarded()[fwd::FROM_CONTAINER as usize], before + 1);

        // Another container's address, from web's veth: not web's to send.
        let psyn = tcp(Ip::new(PEER, D), 40002, 80, TCP_SYN, b"");
        assert_eq!(p.run(UPLINK_OUT, &psyn).unwrap().0, TCX_NEXT);
        let psynack = tcp(Ip::new(D, U), 80, 40002, TCP_SYN | TCP_ACK, b"");
        assert_eq!(p.run(UPLINK_IN, &psynack).unwrap().0, TC_ACT_REDIRECT);
        let spoofed = tcp(Ip::new(PEER, D), 40002, 80, TCP_ACK, b"spoofed");
        assert_eq!(fc(p, &spoofed), (TCX_NEXT, spoofed.clone()), "spoofed");
        // To a peer's MAC (the bridge switches it), to a host address (hairpin), to
        // another network (isolation, the bridge's to count): all on into the bridge.
        let to_peer = to_mac(data.clone(), PEER_MAC);
        assert_eq!(fc(p, &to_peer), (TCX_NEXT, to_peer.clone()), "switched");
        let hairpin = tcp(Ip::new(WEB, U), 40003, 8080, TCP_ACK, b"x");
        assert_eq!(fc(p, &hairpin), (TCX_NEXT, hairpin.clone()), "hairpin");
        let isolated = tcp(Ip::new(WEB, OTHER), 40004, 80, TCP_ACK, b"x");
        assert_eq!(fc(p, &isolated), (TCX_NEXT, isolated.clone()), "isolated");
        assert_eq!(drops(p, "isolation"), 0, "no drop counted here");
        assert_eq!(p.forwarded()[fwd::FROM_CONTAINER as usize], before + 1);

        // A flow whose own port was taken (by peer's flow to the same peer port): its
        // port is the one masquerade's cache remembers.
        let taken = tcp(Ip::new(PEER, D), 40030, 80, TCP_SYN, b"");
        assert_eq!(p.run(UPLINK_OUT, &taken).unwrap().0, TCX_NEXT);
        let syn = tcp(Ip::new(WEB, D), 40030, 80, TCP_SYN, b"");
        let (_, out) = p.run(UPLINK_OUT, &syn).unwrap();
        let port = checked(&out).ports().unwrap().0;
        assert_ne!(port, 40030, "another port");
        let synack = tcp(Ip::new(D, U), 80, port, TCP_SYN | TCP_ACK, b"");
        assert_eq!(p.run(UPLINK_IN, &synack).unwrap().0, TC_ACT_REDIRECT);
        let data = tcp(Ip::new(WEB, D), 40030, 80, TCP_ACK, b"hello");
        let (verdict, out) = fc(p, &data);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(checked(&out).ports(), Some((port, 80)), "its port");
        assert_eq!(p.forwarded()[fwd::FROM_CONTAINER as usize], before + 2);

        // A published port's replies: reverse DNAT here.
        let client = tcp(Ip::new(D, U), 5555, 8080, TCP_SYN, b"");
        assert_eq!(p.run(UPLINK_IN, &client).unwrap().0, TC_ACT_REDIRECT);
        let reply = tcp(Ip::new(WEB, D), 80, 5555, TCP_SYN | TCP_ACK, b"");
        let (verdict, out) = fc(p, &reply);
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let ip = checked(&out);
        assert_eq!((ip.src(), ip.ports()), (U, Some((8080, 5555))));
        assert_eq!(p.forwarded()[fwd::FROM_CONTAINER as usize], before + 3);
    });
}

#[test]
fn the_container_s_own_hook_is_a_runtime_switch() {
    if !privileged("the_container_s_own_hook_is_a_runtime_switch") {
        return;
    }
    let host = ShortWayHost::new();
    let off = hook_plan("from_container = false");
    let on = hook_plan("");
    host.run(&off, |p, ctx| {
        let syn = tcp(Ip::new(WEB, D), 40010, 80, TCP_SYN, b"");
        assert_eq!(p.run(UPLINK_OUT, &syn).unwrap().0, TCX_NEXT);
        let synack = tcp(Ip::new(D, U), 80, 40010, TCP_SYN | TCP_ACK, b"");
        p.run(UPLINK_IN, &synack).unwrap();
        let data = tcp(Ip::new(WEB, D), 40010, 80, TCP_ACK, b"hello");
        assert_eq!(
            p.run(FROM_CONTAINER, &data).unwrap(),
            (TCX_NEXT, data.clone())
        );
        // Switched on as `up` does it: the config map, no program loaded again.
        let mut maps = p.take_maps().unwrap();
        maps.program(&on, ctx, Some(&off)).unwrap();
        let before = p.forwarded()[fwd::FROM_CONTAINER as usize];
        assert_eq!(p.run(FROM_CONTAINER, &data).unwrap().0, TC_ACT_REDIRECT);
        assert_eq!(p.forwarded()[fwd::FROM_CONTAINER as usize], before + 1);
    });
}

#[test]
fn peer_delivery_into_containers_is_a_runtime_switch() {
    if !privileged("peer_delivery_into_containers_is_a_runtime_switch") {
        return;
    }
    let host = ShortWayHost::new();
    let plan = |way: &str| hook_plan(&format!("into_container = \"{way}\""));
    let (veth, peer, peer_all) = (plan("veth"), plan("peer"), plan("peer-all"));
    let web_mac = peer.container("web").unwrap().mac;
    host.run(&peer, |p, ctx| {
        let counts = |p: &TestRunPrograms| {
            let n = p.forwarded();
            (
                n[fwd::INTO_CONTAINER as usize],
                n[fwd::INTO_CONTAINER_PEER as usize],
            )
        };
        // A published port's client: its SYN, then data, into the container's end.
        let from_client = |flags, data: &[u8]| tcp(Ip::new(D, U), 5556, 8080, flags, data);
        let (into, into_peer) = counts(p);
        let (verdict, out) = p.run(UPLINK_IN, &from_client(TCP_SYN, b"")).unwrap();
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(out[..6], web_mac, "addressed to the container");
        let ip = checked(&out);
        assert_eq!((ip.dst(), ip.ports()), (WEB, Some((5556, 80))));
        assert_eq!(counts(p), (into, into_peer + 1), "by bpf_redirect_peer");
        let reply = tcp(Ip::new(WEB, D), 80, 5556, TCP_SYN | TCP_ACK, b"");
        assert_eq!(p.run(FROM_CONTAINER, &reply).unwrap().0, TC_ACT_REDIRECT);
        assert_eq!(
            p.run(UPLINK_IN, &from_client(TCP_ACK, b"GET /")).unwrap().0,
            TC_ACT_REDIRECT
        );
        assert_eq!(counts(p), (into, into_peer + 2));
        // A pure ACK through the bridge (routed to npa, bpf_redirect_neigh).
        let ack = from_client(TCP_ACK, b"");
        let (verdict, out) = p.run(UPLINK_IN, &ack).unwrap();
        assert_eq!(verdict, TC_ACT_REDIRECT);
        assert_eq!(checked(&out).dst(), WEB);
        assert_eq!(
            counts(p),
            (into + 1, into_peer + 2),
            "a pure ACK: the bridge"
        );

        // peer-all: pure ACKs too; veth: everything to the host veth. No load.
        let mut maps = p.take_maps().unwrap();
        maps.program(&peer_all, ctx, Some(&peer)).unwrap();
        assert_eq!(p.run(UPLINK_IN, &ack).unwrap().0, TC_ACT_REDIRECT);
        assert_eq!(
            counts(p),
            (into + 1, into_peer + 3),
            "peer-all: the ACK too"
        );
        maps.program(&veth, ctx, Some(&peer_all)).unwrap();
        let data = from_client(TCP_ACK, b"more");
        assert_eq!(p.run(UPLINK_IN, &data).unwrap().0, TC_ACT_REDIRECT);
        assert_eq!(counts(p), (into + 2, into_peer + 3), "veth: bpf_redirect");
    });
}

#[test]
fn a_container_s_packets_of_known_ipv6_flows_leave_from_its_own_hook() {
    if !privileged("a_container_s_packets_of_known_ipv6_flows_leave_from_its_own_hook") {
        return;
    }
    let host = ShortWayHost::new();
    host.run(&hook_plan(""), |p, _| {
        let syn = tcp6(Ip6::new(WEB6, D6), 40020, 80, TCP_SYN, b"");
        assert_eq!(
            p.run(FROM_CONTAINER6, &syn).unwrap(),
            (TCX_NEXT, syn.clone())
        );
        assert_eq!(p.run("netplane_uplink_egress6", &syn).unwrap().0, TCX_NEXT);
        let synack = tcp6(Ip6::new(D6, U6), 80, 40020, TCP_SYN | TCP_ACK, b"");
        p.run("netplane_uplink_ingress6", &synack).unwrap();
        // The IPv4 program passes IPv6 on, and the other way round.
        let data = tcp6(Ip6::new(WEB6, D6), 40020, 80, TCP_ACK, b"hello");
        assert_eq!(
            p.run(FROM_CONTAINER, &data).unwrap(),
            (TCX_NEXT, data.clone())
        );
        let v4 = tcp(Ip::new(WEB, D), 40021, 80, TCP_ACK, b"x");
        assert_eq!(p.run(FROM_CONTAINER6, &v4).unwrap(), (TCX_NEXT, v4.clone()));

        let before = p.forwarded()[fwd::FROM_CONTAINER as usize];
        let (verdict, out) = p.run(FROM_CONTAINER6, &data).unwrap();
        assert_eq!(verdict, TC_ACT_REDIRECT);
        let ip = parse_ethernet6(&out).unwrap();
        assert_eq!(ip.l4_checksum_ok(), Some(true), "TCP checksum");
        assert_eq!(
            (
                Ipv6Addr::from(ip.src()),
                Ipv6Addr::from(ip.dst()),
                ip.ports()
            ),
            (U6, D6, Some((40020, 80)))
        );
        assert_eq!(out[14 + 7], 63, "hop limit 64 - 1");
        assert_eq!(p.forwarded()[fwd::FROM_CONTAINER as usize], before + 1);

        // Peer's flow, and web sending into it with peer's address.
        let psyn = tcp6(Ip6::new(PEER6, D6), 40022, 80, TCP_SYN, b"");
        assert_eq!(p.run("netplane_uplink_egress6", &psyn).unwrap().0, TCX_NEXT);
        let psynack = tcp6(Ip6::new(D6, U6), 80, 40022, TCP_SYN | TCP_ACK, b"");
        p.run("netplane_uplink_ingress6", &psynack).unwrap();
        let spoofed = tcp6(Ip6::new(PEER6, D6), 40022, 80, TCP_ACK, b"hello");
        assert_eq!(
            p.run(FROM_CONTAINER6, &spoofed).unwrap(),
            (TCX_NEXT, spoofed.clone())
        );
    });
}
