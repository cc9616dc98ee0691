//! The eBPF NAT programs for IPv6 (NAT66) in the kernel, on crafted packets
//! (BPF_PROG_TEST_RUN): what they write, the checksums they leave, path MTU discovery's
//! Packet Too Big translated back, and neighbour discovery left alone.
#![expect(
    unused_crate_dependencies,
    reason = "an integration test sees every dependency of the harness crate; its library target is where an unused one shows"
)]

use std::net::{Ipv4Addr, Ipv6Addr};

use netplane::config::{Config, Plan};
use netplane::dataplane::ebpf::TestRunPrograms;
use netplane_common::csum;
use netplane_common::packet::{IPPROTO_TCP, IPPROTO_UDP};
use netplane_common::packet6::{Fragment, IPPROTO_ICMPV6, IPV6_HLEN, Ipv6, next, parse_ethernet6};
use netplane_tests::packet::{
    Fragment6, IPV6_MIN_MTU, Ip, Ip6, TCP_ACK, TCP_SYN, icmp_echo, icmp6, icmp6_echo, icmp6_error,
    ipv6_frame, tcp, tcp6, udp, udp6, udp6_datagram,
};
use netplane_tests::privileged;

const U4: [u8; 4] = [203, 0, 113, 1];
const U6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x113, 0, 0, 0, 0, 1);

const UPLINK_IN: &str = "netplane_uplink_ingress6";
const UPLINK_OUT: &str = "netplane_uplink_egress6";
const BRIDGE_IN: &str = "netplane_bridge_ingress6";
const BRIDGE_OUT: &str = "netplane_bridge_egress6";
const PROGRAMS6: [&str; 4] = [UPLINK_IN, UPLINK_OUT, BRIDGE_IN, BRIDGE_OUT];
const PROGRAMS4: [&str; 4] = [
    "netplane_uplink_ingress",
    "netplane_uplink_egress",
    "netplane_bridge_ingress",
    "netplane_bridge_egress",
];
const TCX_NEXT: i32 = -1;
const TC_ACT_SHOT: i32 = 2;

/// The outside: a peer of the containers' flows, and the client of published ports.
const D6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x113, 0, 0, 0, 0, 2);
/// A router between the host and the peer, with a smaller link.
const ROUTER: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x113, 0, 0, 0, 0, 0xfe);
/// Network npa's gateway6, and its containers web (which publishes) and peer.
const GW: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x89, 0, 0, 0, 0, 1);
const WEB: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x89, 0, 0, 0, 0, 2);
const PEER: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x89, 0, 0, 0, 0, 3);
/// Packet Too Big, and the MTU it reports: IPv6's minimum.
const PACKET_TOO_BIG: u8 = 2;
const MTU: u32 = IPV6_MIN_MTU as u32;

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
    let ip6 = |name: &str| plan.containers.iter().find(|c| c.name == name).unwrap().ip6;
    assert_eq!(
        (ip6("web"), ip6("peer")),
        (Some(WEB), Some(PEER)),
        "the addresses the tests use"
    );
    let host = netplane_tests::testrun::host(&plan, Ipv4Addr::from(U4), Some(U6));
    TestRunPrograms::load(&plan, &host).expect("load the NAT programs, IPv6 ones included")
}

#[test]
fn the_ipv6_programs_pass_the_verifier() {
    if !privileged("the_ipv6_programs_pass_the_verifier") {
        return;
    }
    let _p = programs();
}

/// The IPv6 packet of `frame`, its upper-layer checksum (TCP, UDP or ICMPv6, over the IPv6
/// pseudo-header) verified as a receiver would: a fragment's cannot be, alone.
fn checked(frame: &[u8]) -> Ipv6<'_> {
    let ip = parse_ethernet6(frame).expect("an IPv6 frame");
    if ip.fragment.is_none() {
        assert_eq!(
            ip.l4_checksum_ok(),
            Some(true),
            "upper-layer checksum of {:?} → {:?}",
            Ipv6Addr::from(ip.src()),
            Ipv6Addr::from(ip.dst())
        );
    }
    ip
}

/// Source and destination of an IPv6 packet.
fn addrs(ip: &Ipv6<'_>) -> (Ipv6Addr, Ipv6Addr) {
    (ip.src().into(), ip.dst().into())
}

/// The identifier of an ICMPv6 echo message.
fn echo_id(ip: &Ipv6<'_>) -> u16 {
    let m = ip.l4();
    u16::from_be_bytes([m[4], m[5]])
}

fn drops(p: &TestRunPrograms, reason: &str) -> u64 {
    p.drops()
        .into_iter()
        .find(|(r, _)| *r == reason)
        .map(|(_, n)| n)
        .unwrap()
}

/// Runs `frame` through `prog`, which must let it go on (TCX_NEXT); returns it as it left.
fn through(p: &mut TestRunPrograms, prog: &str, frame: &[u8]) -> Vec<u8> {
    let (verdict, out) = p.run(prog, frame).unwrap();
    assert_eq!(verdict, TCX_NEXT, "verdict of {prog}");
    out
}

#[test]
fn masquerade_over_ipv6_and_its_replies_keep_checksums_right() {
    if !privileged("masquerade_over_ipv6_and_its_replies_keep_checksums_right") {
        return;
    }
    let mut p = programs();
    // TCP: the SYN leaves from the uplink's address, source port kept; the frame is the
    // one the uplink would have sent itself, byte for byte (its checksum too).
    let out = through(
        &mut p,
        UPLINK_OUT,
        &tcp6(Ip6::new(WEB, D6), 40000, 80, TCP_SYN, b""),
    );
    let ip = checked(&out);
    assert_eq!((addrs(&ip), ip.ports()), ((U6, D6), Some((40000, 80))));
    assert_eq!(out, tcp6(Ip6::new(U6, D6), 40000, 80, TCP_SYN, b""));
    let out = through(
        &mut p,
        UPLINK_IN,
        &tcp6(Ip6::new(D6, U6), 80, 40000, TCP_SYN | TCP_ACK, b""),
    );
    let ip = checked(&out);
    assert_eq!(
        (addrs(&ip), ip.ports()),
        ((D6, WEB), Some((80, 40000))),
        "the reply goes back to the container"
    );
    assert_eq!(
        out,
        tcp6(Ip6::new(D6, WEB), 80, 40000, TCP_SYN | TCP_ACK, b"")
    );

    // UDP.
    let out = through(
        &mut p,
        UPLINK_OUT,
        &udp6(Ip6::new(WEB, D6), 5000, 53, b"query"),
    );
    let ip = checked(&out);
    assert_eq!((addrs(&ip), ip.ports()), ((U6, D6), Some((5000, 53))));
    let out = through(
        &mut p,
        UPLINK_IN,
        &udp6(Ip6::new(D6, U6), 53, 5000, b"answer"),
    );
    let ip = checked(&out);
    assert_eq!((addrs(&ip), ip.ports()), ((D6, WEB), Some((53, 5000))));
    assert_eq!(out, udp6(Ip6::new(D6, WEB), 53, 5000, b"answer"));

    // ICMPv6 echo (the identifier is the port). Its checksum covers a pseudo-header, as
    // TCP's and UDP's do, unlike ICMP's.
    let out = through(
        &mut p,
        UPLINK_OUT,
        &icmp6_echo(Ip6::new(WEB, D6), 128, 77, 1),
    );
    let ip = checked(&out);
    assert_eq!((addrs(&ip), echo_id(&ip)), ((U6, D6), 77));
    let out = through(&mut p, UPLINK_IN, &icmp6_echo(Ip6::new(D6, U6), 129, 77, 1));
    let ip = checked(&out);
    assert_eq!((addrs(&ip), echo_id(&ip)), ((D6, WEB), 77));
    assert_eq!(out, icmp6_echo(Ip6::new(D6, WEB), 129, 77, 1));
}

#[test]
fn published_ports_over_ipv6_are_translated_both_ways() {
    if !privileged("published_ports_over_ipv6_are_translated_both_ways") {
        return;
    }
    let mut p = programs();
    let out = through(
        &mut p,
        UPLINK_IN,
        &tcp6(Ip6::new(D6, U6), 5555, 8080, TCP_SYN, b""),
    );
    let ip = checked(&out);
    assert_eq!(
        (addrs(&ip), ip.ports()),
        ((D6, WEB), Some((5555, 80))),
        "DNAT keeps the client"
    );
    assert_eq!(out, tcp6(Ip6::new(D6, WEB), 5555, 80, TCP_SYN, b""));
    let out = through(
        &mut p,
        UPLINK_OUT,
        &tcp6(Ip6::new(WEB, D6), 80, 5555, TCP_SYN | TCP_ACK, b""),
    );
    let ip = checked(&out);
    assert_eq!(
        (addrs(&ip), ip.ports()),
        ((U6, D6), Some((8080, 5555))),
        "the reply leaves from the published address"
    );
    assert_eq!(
        out,
        tcp6(Ip6::new(U6, D6), 8080, 5555, TCP_SYN | TCP_ACK, b"")
    );

    // UDP, 5353 → 53.
    let out = through(&mut p, UPLINK_IN, &udp6(Ip6::new(D6, U6), 6000, 5353, b"q"));
    let ip = checked(&out);
    assert_eq!((addrs(&ip), ip.ports()), ((D6, WEB), Some((6000, 53))));
    let out = through(&mut p, UPLINK_OUT, &udp6(Ip6::new(WEB, D6), 53, 6000, b"r"));
    let ip = checked(&out);
    assert_eq!((addrs(&ip), ip.ports()), ((U6, D6), Some((5353, 6000))));

    // An unpublished port is left alone.
    let frame = tcp6(Ip6::new(D6, U6), 5556, 8090, TCP_SYN, b"");
    assert_eq!(p.run(UPLINK_IN, &frame).unwrap(), (TCX_NEXT, frame));
    // A port published on [::1] is for host processes: a packet that arrives on a
    // device addressed to it is an attack (moby#45610).
    let crafted = tcp6(
        Ip6::new(PEER, Ipv6Addr::LOCALHOST),
        5002,
        8081,
        TCP_SYN,
        b"",
    );
    assert_eq!(p.run(BRIDGE_IN, &crafted).unwrap().0, TC_ACT_SHOT);
    assert_eq!(drops(&p, "loopback-guard"), 1);
}

/// What an ICMPv6 error quotes, as `frame` carries it: the quoted packet's bytes (no
/// parse: it is cut short, as errors quote), and its addresses and ports.
struct Quoted {
    bytes: Vec<u8>,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    sport: u16,
    dport: u16,
}

/// The ICMPv6 error of `frame` (its checksum checked): type, code, the 32-bit field
/// after the checksum (Packet Too Big's MTU), and what it quotes (after a fragment
/// header, when the quoted packet has one).
fn icmp6_error_of(frame: &[u8]) -> (u8, u8, u32, Quoted) {
    let ip = checked(frame);
    assert_eq!(ip.protocol, IPPROTO_ICMPV6, "an ICMPv6 message");
    let m = ip.l4();
    let q = &m[8..];
    let l4 = IPV6_HLEN + if q[6] == next::FRAGMENT { 8 } else { 0 };
    let word = |at: usize| u16::from_be_bytes([q[at], q[at + 1]]);
    let quoted = Quoted {
        bytes: q.to_vec(),
        src: <[u8; 16]>::try_from(&q[8..24]).unwrap().into(),
        dst: <[u8; 16]>::try_from(&q[24..40]).unwrap().into(),
        sport: word(l4),
        dport: word(l4 + 2),
    };
    let param = u32::from_be_bytes(m[4..8].try_into().unwrap());
    (m[0], m[1], param, quoted)
}

/// The quote an error about `packet` (a frame as it was on this side of the NAT) must
/// carry once translated back: `packet`'s IPv6 packet, cut as [`icmp6_error`] cuts it,
/// with the quoted upper-layer checksum (`csum_at` bytes past the fixed header) of
/// `on_the_wire` (the translated packet the error was about), which the translation
/// leaves as it is (receivers read the ports only: tcp_v6_err(), __udp6_lib_err()).
fn quote_of(packet: &[u8], on_the_wire: &[u8], csum_at: usize, len: usize) -> Vec<u8> {
    let mut q = packet[14..14 + len].to_vec();
    let at = IPV6_HLEN + csum_at;
    q[at..at + 2].copy_from_slice(&on_the_wire[14 + at..14 + at + 2]);
    q
}

#[test]
fn packet_too_big_is_translated_back_with_the_quoted_header_rewritten() {
    if !privileged("packet_too_big_is_translated_back_with_the_quoted_header_rewritten") {
        return;
    }
    let mut p = programs();
    // A masqueraded connection, web:40000 → D6:80; then a full-sized segment (1440 bytes
    // of data, 1500 bytes of IPv6) that a router on the way cannot forward on its
    // 1280-byte link: the router's Packet Too Big quotes the segment as it left the
    // uplink (U6:40000 → D6:80), as much as fits in 1280 bytes.
    through(
        &mut p,
        UPLINK_OUT,
        &tcp6(Ip6::new(WEB, D6), 40000, 80, TCP_SYN, b""),
    );
    through(
        &mut p,
        UPLINK_IN,
        &tcp6(Ip6::new(D6, U6), 80, 40000, TCP_SYN | TCP_ACK, b""),
    );
    let segment = tcp6(Ip6::new(WEB, D6), 40000, 80, TCP_ACK, &[0x5a; 1440]);
    let sent = through(&mut p, UPLINK_OUT, &segment);
    assert_eq!(addrs(&checked(&sent)), (U6, D6));
    let ptb = icmp6_error(Ip6::new(ROUTER, U6), PACKET_TOO_BIG, 0, MTU, &sent);
    assert_eq!(ptb.len(), 14 + IPV6_MIN_MTU);
    let out = through(&mut p, UPLINK_IN, &ptb);
    assert_eq!(out.len(), ptb.len());
    assert_eq!(addrs(&checked(&out)), (ROUTER, WEB), "to the container");
    let (ty, code, mtu, q) = icmp6_error_of(&out);
    assert_eq!(
        (ty, code, mtu),
        (PACKET_TOO_BIG, 0, MTU),
        "the MTU untouched"
    );
    assert_eq!(
        (q.src, q.sport, q.dst, q.dport),
        (WEB, 40000, D6, 80),
        "the quote is the container's segment"
    );
    let cut = IPV6_MIN_MTU - IPV6_HLEN - 8;
    assert_eq!(
        q.bytes,
        quote_of(&segment, &sent, 16, cut),
        "the quote, byte for byte"
    );

    // Another container's connection to the same peer and port, from the same port: it
    // leaves from another port, and the error about it gets both its address and its
    // port back (the ICMPv6 checksum takes the port's change too).
    through(
        &mut p,
        UPLINK_OUT,
        &tcp6(Ip6::new(PEER, D6), 40000, 80, TCP_SYN, b""),
    );
    let segment = tcp6(Ip6::new(PEER, D6), 40000, 80, TCP_ACK, &[0x3c; 1440]);
    let sent = through(&mut p, UPLINK_OUT, &segment);
    let (sport, _) = checked(&sent).ports().unwrap();
    assert_ne!(sport, 40000, "the second flow got a port of its own");
    let out = through(
        &mut p,
        UPLINK_IN,
        &icmp6_error(Ip6::new(ROUTER, U6), PACKET_TOO_BIG, 0, MTU, &sent),
    );
    assert_eq!(addrs(&checked(&out)), (ROUTER, PEER));
    let (_, _, mtu, q) = icmp6_error_of(&out);
    assert_eq!(mtu, MTU);
    assert_eq!((q.src, q.sport, q.dst, q.dport), (PEER, 40000, D6, 80));
    assert_eq!(q.bytes, quote_of(&segment, &sent, 16, cut));

    // A big ping (the identifier is its port): the same.
    let ping = |from| {
        let mut body = vec![0, 78, 0, 1];
        body.extend_from_slice(&[0xee; 1400]);
        icmp6(Ip6::new(from, D6), 128, 0, &body)
    };
    through(&mut p, UPLINK_OUT, &ping(WEB));
    let sent = through(&mut p, UPLINK_OUT, &ping(PEER));
    assert_ne!(echo_id(&checked(&sent)), 78, "the second ping's identifier");
    let out = through(
        &mut p,
        UPLINK_IN,
        &icmp6_error(Ip6::new(ROUTER, U6), PACKET_TOO_BIG, 0, MTU, &sent),
    );
    assert_eq!(addrs(&checked(&out)), (ROUTER, PEER));
    let (_, _, mtu, q) = icmp6_error_of(&out);
    assert_eq!((mtu, q.src, q.dst), (MTU, PEER, D6));
    assert_eq!(q.bytes, quote_of(&ping(PEER), &sent, 2, cut));

    // A published port's reply: D6:5555 → [U6]:8080 reached web:80, whose data left as
    // [U6]:8080 → D6:5555. The router's error about it goes to web, quoting web:80.
    through(
        &mut p,
        UPLINK_IN,
        &tcp6(Ip6::new(D6, U6), 5555, 8080, TCP_SYN, b""),
    );
    through(
        &mut p,
        UPLINK_OUT,
        &tcp6(Ip6::new(WEB, D6), 80, 5555, TCP_SYN | TCP_ACK, b""),
    );
    through(
        &mut p,
        UPLINK_IN,
        &tcp6(Ip6::new(D6, U6), 5555, 8080, TCP_ACK, b""),
    );
    let reply = tcp6(Ip6::new(WEB, D6), 80, 5555, TCP_ACK, &[0xa5; 1440]);
    let sent = through(&mut p, UPLINK_OUT, &reply);
    assert_eq!(
        (addrs(&checked(&sent)), checked(&sent).ports()),
        ((U6, D6), Some((8080, 5555)))
    );
    let out = through(
        &mut p,
        UPLINK_IN,
        &icmp6_error(Ip6::new(ROUTER, U6), PACKET_TOO_BIG, 0, MTU, &sent),
    );
    assert_eq!(addrs(&checked(&out)), (ROUTER, WEB));
    let (ty, _, mtu, q) = icmp6_error_of(&out);
    assert_eq!((ty, mtu), (PACKET_TOO_BIG, MTU));
    assert_eq!((q.src, q.sport, q.dst, q.dport), (WEB, 80, D6, 5555));
    assert_eq!(q.bytes, quote_of(&reply, &sent, 16, cut));

    // The other way (icmp::to_outside): the errors that leave through the uplink about
    // what came in translated. The host forwards into a container network with a
    // smaller MTU: its own Packet Too Big (from U6) quotes the packet as it forwarded
    // it, to web; the client must see it quote what it sent, to [U6]:8080 ...
    let inbound = tcp6(Ip6::new(D6, WEB), 5555, 80, TCP_ACK, &[0x11; 1440]);
    let out = through(
        &mut p,
        UPLINK_OUT,
        &icmp6_error(Ip6::new(U6, D6), PACKET_TOO_BIG, 0, MTU, &inbound),
    );
    assert_eq!(addrs(&checked(&out)), (U6, D6), "the host's own address");
    let (ty, _, mtu, q) = icmp6_error_of(&out);
    assert_eq!((ty, mtu), (PACKET_TOO_BIG, MTU));
    assert_eq!((q.src, q.sport, q.dst, q.dport), (D6, 5555, U6, 8080));
    // ... and, about a masqueraded flow's reply, what the peer sent, to [U6]:40000.
    let inbound = tcp6(Ip6::new(D6, WEB), 80, 40000, TCP_ACK, &[0x22; 1440]);
    let out = through(
        &mut p,
        UPLINK_OUT,
        &icmp6_error(Ip6::new(U6, D6), PACKET_TOO_BIG, 0, MTU, &inbound),
    );
    assert_eq!(addrs(&checked(&out)), (U6, D6));
    let (_, _, mtu, q) = icmp6_error_of(&out);
    assert_eq!(mtu, MTU);
    assert_eq!((q.src, q.sport, q.dst, q.dport), (D6, 80, U6, 40000));
    // A container's own error (port unreachable about a datagram to the published UDP
    // port) leaves from the published address.
    let datagram = through(&mut p, UPLINK_IN, &udp6(Ip6::new(D6, U6), 6000, 5353, b"q"));
    let out = through(
        &mut p,
        UPLINK_OUT,
        &icmp6_error(Ip6::new(WEB, D6), 1, 4, 0, &datagram),
    );
    assert_eq!(addrs(&checked(&out)), (U6, D6));
    let (ty, code, _, q) = icmp6_error_of(&out);
    assert_eq!((ty, code), (1, 4));
    assert_eq!((q.src, q.sport, q.dst, q.dport), (D6, 6000, U6, 5353));
    // A container's error about no flow of ours would leave with its address: dropped.
    let stray = tcp6(Ip6::new(D6, WEB), 9999, 9999, TCP_SYN, b"");
    let err = icmp6_error(Ip6::new(WEB, D6), 1, 4, 0, &stray);
    assert_eq!(p.run(UPLINK_OUT, &err).unwrap().0, TC_ACT_SHOT);
    assert_eq!(drops(&p, "untranslatable"), 1);

    // An error about a flow nobody translated passes as it is.
    let foreign = tcp6(Ip6::new(U6, D6), 1234, 4321, TCP_SYN, b"");
    let err = icmp6_error(Ip6::new(ROUTER, U6), PACKET_TOO_BIG, 0, MTU, &foreign);
    assert_eq!(p.run(UPLINK_IN, &err).unwrap(), (TCX_NEXT, err));
}

/// A container's UDP datagram bigger than the path's MTU leaves fragmented at its source
/// (routers never fragment): a router with a smaller link answers its first fragment,
/// the only one with the ports, with a Packet Too Big whose quote has the fragment header
/// between the IPv6 header and UDP's. Translated back, the container's stack learns the
/// path's MTU (udpv6_err() finds its socket by the quoted ports) and fragments its next
/// datagram to fit; untranslated, the error goes to the host, and every datagram of that
/// size is lost for good. iptables mode translates it (nf_conntrack walks the quote's
/// extension headers: the error is RELATED to the flow).
#[test]
fn packet_too_big_about_a_first_fragment_is_translated_back() {
    if !privileged("packet_too_big_about_a_first_fragment_is_translated_back") {
        return;
    }
    let mut p = programs();
    let ip = Ip6::new(WEB, D6);
    let data: Vec<u8> = (0..3000).map(|i| (i % 251) as u8).collect();
    let datagram = udp6_datagram(&ip, 5000, 53, &data, true);
    // As Linux fragments for a 1500-byte link: 1448 bytes of the datagram in the first.
    let first = ipv6_frame(
        Ip6 {
            fragment: Some(Fragment6 {
                offset: 0,
                more: true,
                id: 0x0707_0707,
            }),
            ..ip
        },
        IPPROTO_UDP,
        &datagram[..1448],
    );
    let sent = through(&mut p, UPLINK_OUT, &first);
    assert_eq!(
        (addrs(&checked(&sent)), checked(&sent).ports()),
        ((U6, D6), Some((5000, 53)))
    );
    let ptb = icmp6_error(Ip6::new(ROUTER, U6), PACKET_TOO_BIG, 0, MTU, &sent);
    let out = through(&mut p, UPLINK_IN, &ptb);
    assert_eq!(
        addrs(&checked(&out)),
        (ROUTER, WEB),
        "the error about the container's first fragment goes to the container"
    );
    let (ty, _, mtu, q) = icmp6_error_of(&out);
    assert_eq!((ty, mtu), (PACKET_TOO_BIG, MTU));
    assert_eq!((q.src, q.sport, q.dst, q.dport), (WEB, 5000, D6, 53));
    let cut = IPV6_MIN_MTU - IPV6_HLEN - 8;
    assert_eq!(q.bytes, quote_of(&first, &sent, 8 + 6, cut));
}

/// A neighbour discovery option: source (1) or target (2) link-layer address.
fn lladdr_option(kind: u8) -> Vec<u8> {
    vec![kind, 1, 0x02, 0, 0, 0, 0, 9]
}

/// Ethernet + IPv6 + a neighbour discovery message (RFC 4861) of type `ty`, hop limit
/// 255 as the RFC requires, `body` after the checksum.
fn ndp(src: Ipv6Addr, dst: Ipv6Addr, ty: u8, body: &[u8]) -> Vec<u8> {
    let ip = Ip6 {
        hop_limit: 255,
        ..Ip6::new(src, dst)
    };
    icmp6(ip, ty, 0, body)
}

fn neighbour_solicitation(src: Ipv6Addr, dst: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    let mut body = vec![0; 4];
    body.extend_from_slice(&target.octets());
    // A solicitation from the unspecified address (duplicate address detection) carries
    // no source link-layer address.
    if !src.is_unspecified() {
        body.extend(lladdr_option(1));
    }
    ndp(src, dst, 135, &body)
}

fn neighbour_advertisement(src: Ipv6Addr, dst: Ipv6Addr, target: Ipv6Addr, flags: u8) -> Vec<u8> {
    let mut body = vec![flags, 0, 0, 0];
    body.extend_from_slice(&target.octets());
    body.extend(lladdr_option(2));
    ndp(src, dst, 136, &body)
}

fn router_solicitation(src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
    let mut body = vec![0; 4];
    if !src.is_unspecified() {
        body.extend(lladdr_option(1));
    }
    ndp(src, dst, 133, &body)
}

/// A router advertisement with a prefix information option for 2001:db8:89::/64.
fn router_advertisement(src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
    // Hop limit 64, no flags, router lifetime 1800 s, reachable time and retransmit
    // timer unspecified.
    let mut body = vec![64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0];
    body.extend(lladdr_option(1));
    // Prefix information: length 64, on-link and autonomous, lifetimes 1 day and 1 hour.
    body.extend_from_slice(&[3, 4, 64, 0xc0]);
    body.extend_from_slice(&86_400u32.to_be_bytes());
    body.extend_from_slice(&3_600u32.to_be_bytes());
    body.extend_from_slice(&[0; 4]);
    body.extend_from_slice(&Ipv6Addr::new(0x2001, 0xdb8, 0x89, 0, 0, 0, 0, 0).octets());
    ndp(src, dst, 134, &body)
}

/// The solicited-node multicast address of `a` (RFC 4291, 2.7.1).
fn solicited_node(a: Ipv6Addr) -> Ipv6Addr {
    let o = a.octets();
    Ipv6Addr::from([
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, o[13], o[14], o[15],
    ])
}

#[test]
fn neighbour_discovery_passes_untouched_and_a_container_s_never_leaves_the_uplink() {
    if !privileged("neighbour_discovery") {
        return;
    }
    let mut p = programs();
    // Flows between the same addresses exist: a masqueraded one and a published one.
    through(
        &mut p,
        UPLINK_OUT,
        &tcp6(Ip6::new(WEB, D6), 40000, 80, TCP_SYN, b""),
    );
    through(
        &mut p,
        UPLINK_IN,
        &tcp6(Ip6::new(D6, U6), 5555, 8080, TCP_SYN, b""),
    );
    let any = Ipv6Addr::UNSPECIFIED;
    let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let all_routers = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
    let ll = |n| Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, n);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "NS for duplicate address detection (:: → web's solicited-node address)",
            neighbour_solicitation(any, solicited_node(WEB), WEB),
        ),
        (
            "NS resolving the uplink's address (global → solicited-node)",
            neighbour_solicitation(D6, solicited_node(U6), U6),
        ),
        (
            "NS resolving the gateway (web → solicited-node)",
            neighbour_solicitation(WEB, solicited_node(GW), GW),
        ),
        (
            "NS link-local → solicited-node",
            neighbour_solicitation(ll(2), solicited_node(U6), U6),
        ),
        (
            "NS for reachability, global → global (outside → uplink)",
            neighbour_solicitation(D6, U6, U6),
        ),
        (
            "NS for reachability, global → global (web → gateway)",
            neighbour_solicitation(WEB, GW, GW),
        ),
        (
            "NS for reachability, link-local → link-local",
            neighbour_solicitation(ll(2), ll(1), ll(1)),
        ),
        (
            "NA solicited, global → global (uplink → outside)",
            neighbour_advertisement(U6, D6, U6, 0x60),
        ),
        (
            "NA solicited, global → global (gateway → web)",
            neighbour_advertisement(GW, WEB, GW, 0xe0),
        ),
        (
            "NA solicited, link-local → link-local",
            neighbour_advertisement(ll(1), ll(2), ll(1), 0xe0),
        ),
        (
            "NA unsolicited, link-local → all nodes",
            neighbour_advertisement(ll(1), all_nodes, U6, 0x20),
        ),
        (
            "NA unsolicited, global → all nodes",
            neighbour_advertisement(U6, all_nodes, U6, 0x20),
        ),
        ("RS :: → all routers", router_solicitation(any, all_routers)),
        (
            "RS link-local → all routers",
            router_solicitation(ll(2), all_routers),
        ),
        (
            "RS global → all routers",
            router_solicitation(WEB, all_routers),
        ),
        (
            "RS global → global (web → gateway)",
            router_solicitation(WEB, GW),
        ),
        (
            "RA link-local → all nodes",
            router_advertisement(ll(1), all_nodes),
        ),
        (
            "RA link-local → global (web)",
            router_advertisement(ll(1), WEB),
        ),
        // Invalid as received (RFC 4861, 6.1.2: an RA's source is link-local), but
        // netplane is not the one to judge it.
        (
            "RA global → global (gateway → web)",
            router_advertisement(GW, WEB),
        ),
        ("RA global → all nodes", router_advertisement(D6, all_nodes)),
    ];
    let global =
        |a: Ipv6Addr| !(a.is_unspecified() || a.is_multicast() || a.is_unicast_link_local());
    let (mut untranslatable, mut direct) = (0, 0);
    for (what, frame) in cases {
        let (src, dst) = addrs(&checked(&frame));
        for prog in PROGRAMS6.iter().chain(&PROGRAMS4) {
            let got = p
                .run(prog, &frame)
                .unwrap_or_else(|e| panic!("{what} through {prog}: {e}"));
            // Between global addresses neighbour discovery is a packet like any other: none
            // leaves through the uplink with an address of a container network (its
            // gateway's included, as for IPv4), and one from outside straight to a
            // container's address meets its network's gateway mode (nat: refused).
            // Everything else passes as it came.
            let from_network = src == WEB || src == GW;
            let out = global(src) && global(dst) && *prog == UPLINK_OUT && from_network;
            let into = global(src) && global(dst) && *prog == UPLINK_IN && dst == WEB;
            if out || into {
                assert_eq!(got.0, TC_ACT_SHOT, "{what} through {prog}");
                untranslatable += u64::from(out);
                direct += u64::from(into);
            } else {
                assert_eq!(got, (TCX_NEXT, frame.clone()), "{what} through {prog}");
            }
        }
    }
    assert!(
        untranslatable > 0 && direct > 0,
        "both refusals were exercised"
    );
    assert_eq!(drops(&p, "untranslatable"), untranslatable);
    assert_eq!(drops(&p, "direct-routing"), direct);
    let others: Vec<_> = p
        .drops()
        .into_iter()
        .filter(|(r, n)| *n > 0 && !matches!(*r, "untranslatable" | "direct-routing"))
        .collect();
    assert!(others.is_empty(), "{others:?}");
}

#[test]
fn fragments_follow_their_first_and_a_zero_udp_checksum_is_dropped() {
    if !privileged("fragments_follow_their_first_and_a_zero_udp_checksum_is_dropped") {
        return;
    }
    let mut p = programs();
    // 3,000 bytes of UDP from web, fragmented at its source (IPv6 routers never
    // fragment): a first fragment with the UDP header and 1,224 bytes of data, and the
    // rest in a later one.
    let ip = Ip6::new(WEB, D6);
    let data: Vec<u8> = (0..3000).map(|i| (i % 251) as u8).collect();
    let datagram = udp6_datagram(&ip, 5000, 53, &data, true);
    let id = 0x1234_5678;
    let fragment = |offset: u16, more| Ip6 {
        fragment: Some(Fragment6 { offset, more, id }),
        ..ip
    };
    let first = ipv6_frame(fragment(0, true), IPPROTO_UDP, &datagram[..1232]);
    let later = ipv6_frame(fragment(1232, false), IPPROTO_UDP, &datagram[1232..]);
    let out_first = through(&mut p, UPLINK_OUT, &first);
    let out_later = through(&mut p, UPLINK_OUT, &later);
    let (f1, f2) = (checked(&out_first), checked(&out_later));
    assert_eq!(
        (addrs(&f1), f1.ports(), f1.fragment),
        (
            (U6, D6),
            Some((5000, 53)),
            Some(Fragment {
                offset: 0,
                more: true,
                id
            })
        ),
        "the first fragment, masqueraded"
    );
    assert_eq!(
        (addrs(&f2), f2.fragment),
        (
            (U6, D6),
            Some(Fragment {
                offset: 1232,
                more: false,
                id
            })
        ),
        "the later one follows it"
    );
    assert_eq!(
        f2.l4(),
        &datagram[1232..],
        "a later fragment's payload is not touched"
    );
    // Reassembled, the datagram's checksum holds over the new pseudo-header.
    let whole = [f1.l4(), f2.l4()].concat();
    assert_eq!(&whole[8..], &datagram[8..], "the data");
    let acc = csum::pseudo_header6(U6.octets(), D6.octets(), IPPROTO_UDP, whole.len() as u32);
    assert_eq!(
        csum::fold(csum::sum(&whole, acc)),
        0xffff,
        "the reassembled datagram's UDP checksum"
    );
    // A later fragment of a datagram whose first was never seen would leave with the
    // container's address: dropped.
    let lone = ipv6_frame(
        Ip6 {
            fragment: Some(Fragment6 {
                offset: 1232,
                more: false,
                id: 0x4242,
            }),
            ..ip
        },
        IPPROTO_UDP,
        &datagram[1232..],
    );
    assert_eq!(p.run(UPLINK_OUT, &lone).unwrap().0, TC_ACT_SHOT);
    assert_eq!(drops(&p, "fragment-unknown"), 1);

    // A UDP checksum of 0 means "none" in IPv4; IPv6 forbids it (RFC 8200, 8.1), and a
    // receiver drops the datagram. From a container it is never translated into
    // something that looks sent: dropped, and counted.
    let zero = ipv6_frame(
        ip,
        IPPROTO_UDP,
        &udp6_datagram(&ip, 5001, 53, b"no checksum", false),
    );
    assert_eq!(drops(&p, "malformed"), 0);
    assert_eq!(p.run(UPLINK_OUT, &zero).unwrap().0, TC_ACT_SHOT);
    assert_eq!(drops(&p, "malformed"), 1);
    // From the outside, to a published port, it is not translated either: it goes on
    // as it is, for the host's stack to drop.
    let ip = Ip6::new(D6, U6);
    let zero = ipv6_frame(
        ip,
        IPPROTO_UDP,
        &udp6_datagram(&ip, 6000, 5353, b"no checksum", false),
    );
    assert_eq!(p.run(UPLINK_IN, &zero).unwrap(), (TCX_NEXT, zero));
}

#[test]
fn each_family_s_programs_leave_the_other_family_alone() {
    if !privileged("each_family_s_programs_leave_the_other_family_alone") {
        return;
    }
    const WEB4: [u8; 4] = [10, 89, 0, 2];
    const D4: [u8; 4] = [203, 0, 113, 2];
    let mut p = programs();
    // Packets each family's programs translate: a masqueraded SYN, a published port's
    // SYN, UDP, an echo request.
    let ipv4 = [
        tcp(Ip::new(WEB4, D4), 40000, 80, TCP_SYN, b""),
        tcp(Ip::new(D4, U4), 5555, 8080, TCP_SYN, b""),
        udp(Ip::new(WEB4, D4), 5000, 53, b"q"),
        icmp_echo(Ip::new(WEB4, D4), 8, 77, 1),
    ];
    let ipv6 = [
        tcp6(Ip6::new(WEB, D6), 40000, 80, TCP_SYN, b""),
        tcp6(Ip6::new(D6, U6), 5555, 8080, TCP_SYN, b""),
        udp6(Ip6::new(WEB, D6), 5000, 53, b"q"),
        icmp6_echo(Ip6::new(WEB, D6), 128, 77, 1),
    ];
    for (frames, programs, what) in [
        (&ipv4, PROGRAMS6, "IPv4 through an IPv6 program"),
        (&ipv6, PROGRAMS4, "IPv6 through an IPv4 program"),
    ] {
        for frame in frames {
            for prog in programs {
                assert_eq!(
                    p.run(prog, frame).unwrap(),
                    (TCX_NEXT, frame.clone()),
                    "{what}: {prog}"
                );
            }
        }
    }
    // Their own family's programs do translate them.
    let out = through(&mut p, PROGRAMS4[1], &ipv4[0]);
    let ip = netplane_common::packet::parse_ethernet(&out).unwrap();
    assert_eq!((ip.src(), ip.ports()), (U4, Some((40000, 80))));
    let out = through(&mut p, UPLINK_OUT, &ipv6[0]);
    let ip = checked(&out);
    assert_eq!((addrs(&ip), ip.ports()), ((U6, D6), Some((40000, 80))));
    assert_eq!(ip.protocol, IPPROTO_TCP);
    let dropped: Vec<_> = p.drops().into_iter().filter(|(_, n)| *n > 0).collect();
    assert!(dropped.is_empty(), "{dropped:?}");
}

/// `frame` (Ethernet + IPv6 + upper layer) with a routing header (segment routing, one
/// segment) between the fixed header and the upper layer, `segments_left` as given.
fn with_routing_header(frame: &[u8], segments_left: u8) -> Vec<u8> {
    const FIXED: usize = 14 + 40;
    let mut f = frame[..FIXED].to_vec();
    let upper = f[14 + 6];
    f[14 + 6] = 43;
    let len = u16::from_be_bytes([f[14 + 4], f[14 + 5]]) + 24;
    f[14 + 4..14 + 6].copy_from_slice(&len.to_be_bytes());
    // Next header, length in 8-octet units past the first 8, type 4, segments left, last
    // entry, flags, tag; then the one segment.
    f.extend_from_slice(&[upper, 2, 4, segments_left, 0, 0, 0, 0]);
    f.extend_from_slice(&Ipv6Addr::new(0x2001, 0xdb8, 0x113, 0, 0, 0, 0, 9).octets());
    f.extend_from_slice(&frame[FIXED..]);
    f
}

#[test]
fn a_routing_header_with_segments_left_is_never_translated() {
    if !privileged("routing_header") {
        return;
    }
    let mut p = programs();
    // The L4 checksum's pseudo-header uses the final destination, which such a packet's
    // is not: a DNAT would leave the checksum wrong, so it is not translated.
    let syn = tcp6(Ip6::new(D6, U6), 5555, 8080, TCP_SYN, b"");
    let routed = with_routing_header(&syn, 1);
    assert_eq!(
        p.run(UPLINK_IN, &routed).unwrap(),
        (TCX_NEXT, routed.clone())
    );
    // From a container, it cannot leave with the container's address: dropped.
    let out = with_routing_header(&tcp6(Ip6::new(WEB, D6), 40000, 80, TCP_SYN, b""), 1);
    let before = drops(&p, "malformed");
    assert_eq!(p.run(UPLINK_OUT, &out).unwrap().0, TC_ACT_SHOT);
    assert_eq!(drops(&p, "malformed"), before + 1);
    // With no segment left, the destination is the final one: translated as usual.
    let last = with_routing_header(&syn, 0);
    let (verdict, translated) = p.run(UPLINK_IN, &last).unwrap();
    assert_ne!(verdict, TC_ACT_SHOT);
    assert_eq!(&translated[14 + 24..14 + 40], &WEB.octets(), "DNAT to web");
}
