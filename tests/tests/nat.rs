//! The end-to-end NAT suite: what "works" means for a data plane. Every test runs against
//! each mode in `netplane_tests::MODES`, on bridge networks and on ptp networks
//! (`netplane_tests::DRIVERS`: published ports, masquerade, hairpin, 127.0.0.1 publishing
//! and isolation behave the same without a bridge); a mode's own checks (counters, the
//! agent) come on top.
//!
//! The world: an "outside" namespace (203.0.113.2, TEST-NET-3) with no route to any
//! container subnet, so a reply reaches a container only if the host translated it; a host
//! namespace running netplane with uplink 203.0.113.1; two networks of one driver.
#![expect(
    unused_crate_dependencies,
    reason = "an integration test sees every dependency of the harness crate; its library target is where an unused one shows"
)]

use netplane_tests::host::{
    Host, OUTSIDE_IP, Server, UPLINK_IP, client, pings, tcp_exchange, udp_exchange,
};
use netplane_tests::{Netns, each_mode_and_driver};

const CONTAINERS: &str = r#"
[[containers]]
name = "web"
network = "npa"
publish = ["8080:80", "127.0.0.1:8081:80", "203.0.113.3:8082:80", "5353:53/udp", "9000-9002:7000-7002"]
[[containers]]
name = "peer"
network = "npa"
[[containers]]
name = "other"
network = "npb"
"#;
const WEB: &str = "10.89.0.2";

/// The two networks, of `driver`, and their containers.
fn networks(driver: &str) -> String {
    format!("{}{CONTAINERS}", netplane_tests::two_networks(driver))
}

/// A second uplink address, for ports published on one host address only.
const SECOND_IP: &str = "203.0.113.3";

/// A host with the two networks of `driver` up in `mode`.
fn up(mode: &str, driver: &str) -> Host {
    let h = Host::new();
    h.host.sh(&[
        "ip",
        "addr",
        "add",
        &format!("{SECOND_IP}/24"),
        "dev",
        "up0",
    ]);
    h.write_config(&format!("mode = \"{mode}\"\n{}", networks(driver)));
    h.netplane_ok(&["up"]);
    h
}

fn tcp_fails(from: &Netns, target: &str) -> bool {
    client(from, &["send-tcp", target, "x"]).is_err()
}

/// A counter of the data plane from `status --json`: the number at `pointer` (RFC 6901)
/// under `dataplane_health`, such as `/drops/loopback-guard`.
fn dataplane_counter(h: &Host, pointer: &str) -> u64 {
    let status: serde_json::Value =
        serde_json::from_str(&h.netplane_ok(&["status", "--json"])).unwrap();
    status["dataplane_health"]
        .pointer(pointer)
        .and_then(serde_json::Value::as_u64)
        .unwrap_or_else(|| panic!("no counter {pointer} in {status}"))
}

/// Packets the data plane dropped because they were sent to a 127.0.0.1-published port
/// from outside `lo`.
fn loopback_guard_drops(mode: &str, h: &Host) -> u64 {
    match mode {
        "iptables" => h
            .host
            .sh(&["iptables", "-t", "raw", "-L", "-v", "-x", "-n"])
            .lines()
            .filter(|l| l.contains("DROP") && l.contains("127.0.0.1"))
            .map(|l| l.split_whitespace().next().unwrap().parse::<u64>().unwrap())
            .sum(),
        "ebpf" => dataplane_counter(h, "/drops/loopback-guard"),
        other => panic!("no loopback-guard counter for mode {other}"),
    }
}

/// The TTLs of the echo replies `from` gets for `count` pings of `ip`.
fn reply_ttls(from: &Netns, ip: &str, count: u32) -> Vec<u32> {
    from.sh(&["ping", "-c", &count.to_string(), "-i", "0.2", "-W", "1", ip])
        .lines()
        .filter_map(|l| {
            l.split("ttl=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// iptables-save without its comment lines and counters, for comparing rule sets.
fn rules(ns: &Netns) -> String {
    ns.sh(&["iptables-save"])
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(" [").next().unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn masquerade_container_to_outside() {
    each_mode_and_driver("masquerade_container_to_outside", |mode, driver| {
        let h = up(mode, driver);
        let web = h.container("web");
        let msg = format!("masq-{mode}");
        let answer = tcp_exchange(
            &h.outside,
            "0.0.0.0:7000",
            &web,
            &format!("{OUTSIDE_IP}:7000"),
            &msg,
        );
        assert_eq!(
            answer,
            format!("{msg} from {UPLINK_IP}"),
            "TCP: the outside sees the uplink address"
        );
        let answer = udp_exchange(
            &h.outside,
            "0.0.0.0:7001",
            &web,
            &format!("{OUTSIDE_IP}:7001"),
            100,
            None,
        );
        assert_eq!(
            answer.unwrap(),
            format!("100 bytes from {UPLINK_IP}"),
            "UDP"
        );
        // The outside has no route back to 10.89.0.0/24: only a translated echo returns.
        assert!(pings(&web, OUTSIDE_IP), "ICMP echo");
        assert!(
            pings(&h.container("other"), OUTSIDE_IP),
            "ICMP echo from the second network"
        );
        // One router between them: the host decrements the TTL once each way, whether the
        // kernel forwards or the eBPF fast path does (after the first echo, which opens
        // the flow through the kernel's path).
        let forwarded = |h: &Host| {
            (
                dataplane_counter(h, "/fast_forwarded/into_containers"),
                out_of_containers(h),
            )
        };
        let forwarded_before = (mode == "ebpf").then(|| forwarded(&h));
        assert_eq!(
            reply_ttls(&web, OUTSIDE_IP, 4),
            [63; 4],
            "TTL of the replies"
        );
        if let Some((into, out)) = forwarded_before {
            // The 4 replies took the short way into the container; echo requests 2–4 the
            // short way out (the first opened the flow through the kernel's path).
            let (into_now, out_now) = forwarded(&h);
            assert!(into_now - into >= 4, "into containers: {}", into_now - into);
            assert!(out_now - out >= 3, "out: {}", out_now - out);
        }
        if mode == "ebpf" {
            // All of that crossed the host without a firewall rule or a kernel conntrack
            // entry: the translation is the programs' alone.
            assert_eq!(
                h.host.sh(&["nft", "list", "ruleset"]).trim(),
                "",
                "no nftables/iptables rule"
            );
            let ct = h.host.run(&["conntrack", "-L"]);
            assert!(
                String::from_utf8_lossy(&ct.stderr).contains(" 0 flow entries"),
                "nf_conntrack unused"
            );
        }
    });
}

#[test]
fn published_ports_from_outside() {
    each_mode_and_driver("published_ports_from_outside", |mode, driver| {
        let h = up(mode, driver);
        let web = h.container("web");
        let answer = tcp_exchange(
            &web,
            "0.0.0.0:80",
            &h.outside,
            &format!("{UPLINK_IP}:8080"),
            "in",
        );
        assert_eq!(
            answer,
            format!("in from {OUTSIDE_IP}"),
            "the server sees the real client"
        );
        let answer = udp_exchange(
            &web,
            "0.0.0.0:53",
            &h.outside,
            &format!("{UPLINK_IP}:5353"),
            64,
            None,
        );
        assert_eq!(
            answer.unwrap(),
            format!("64 bytes from {OUTSIDE_IP}"),
            "UDP"
        );
        // A port range maps port to port: host 9001 is container 7001.
        let answer = tcp_exchange(
            &web,
            "0.0.0.0:7001",
            &h.outside,
            &format!("{UPLINK_IP}:9001"),
            "range",
        );
        assert_eq!(answer, format!("range from {OUTSIDE_IP}"));
        // A 4000-byte datagram crosses as IP fragments, and arrives whole.
        let answer = udp_exchange(
            &web,
            "0.0.0.0:53",
            &h.outside,
            &format!("{UPLINK_IP}:5353"),
            4000,
            None,
        );
        assert_eq!(
            answer.unwrap(),
            format!("4000 bytes from {OUTSIDE_IP}"),
            "fragmented UDP"
        );
        // A port published on one host address answers on that address only.
        let answer = tcp_exchange(
            &web,
            "0.0.0.0:80",
            &h.outside,
            &format!("{SECOND_IP}:8082"),
            "bound",
        );
        assert_eq!(answer, format!("bound from {OUTSIDE_IP}"));
        let _server = Server::start(&web, &["serve-tcp", "0.0.0.0:80"]);
        assert!(
            tcp_fails(&h.outside, &format!("{UPLINK_IP}:8082")),
            "bound port answered on another address"
        );
        // Ports that are not published stay closed.
        assert!(tcp_fails(&h.outside, &format!("{UPLINK_IP}:8090")));
    });
}

/// Frames of a capture (`nptest capture` lines) that match `pred`, each checked: both
/// checksums right. Returns the protocols seen.
fn checked_frames(capture: &str, pred: impl Fn(&str, &str) -> bool) -> Vec<String> {
    let mut protos = Vec::new();
    for line in capture.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if let [src, dst, proto, ip, l4] = f[..]
            && pred(src, dst)
        {
            assert_eq!(
                (ip, l4),
                ("ip=ok", "l4=ok"),
                "bad checksum on the wire: {line}"
            );
            protos.push(proto.to_owned());
        }
    }
    protos
}

#[test]
fn checksums_on_the_wire_are_right_both_ways() {
    each_mode_and_driver(
        "checksums_on_the_wire_are_right_both_ways",
        |mode, driver| {
            let h = up(mode, driver);
            let web = h.container("web");
            // Containers keep TX checksum offload, so their packets cross the host as
            // CHECKSUM_PARTIAL (only the pseudo-header sum in the field), the case a rewrite
            // gets wrong without BPF_F_PSEUDO_HDR. The host's own devices checksum in software
            // when they transmit (skb_checksum_help()), so the wire shows the result; veth
            // alone would carry partial checksums that nobody verifies. The outside sends full
            // checksums, as packets from a NIC have them.
            let status: serde_json::Value =
                serde_json::from_str(&h.netplane_ok(&["status", "--json"])).unwrap();
            let web_veth = status["containers"][0]["host_veth"]
                .as_str()
                .unwrap()
                .to_owned();
            for dev in ["up0", web_veth.as_str()] {
                h.host.sh(&["ethtool", "-K", dev, "tx", "off"]);
            }
            h.outside.sh(&["ethtool", "-K", "eth0", "tx", "off"]);
            let at_outside = Server::start(&h.outside, &["capture", "eth0", "2500"]);
            let at_web = Server::start(&web, &["capture", "eth0", "2500"]);
            tcp_exchange(
                &h.outside,
                "0.0.0.0:7000",
                &web,
                &format!("{OUTSIDE_IP}:7000"),
                "masq",
            );
            udp_exchange(
                &h.outside,
                "0.0.0.0:7001",
                &web,
                &format!("{OUTSIDE_IP}:7001"),
                300,
                None,
            )
            .unwrap();
            tcp_exchange(
                &web,
                "0.0.0.0:80",
                &h.outside,
                &format!("{UPLINK_IP}:8080"),
                "published",
            );
            udp_exchange(
                &web,
                "0.0.0.0:53",
                &h.outside,
                &format!("{UPLINK_IP}:5353"),
                300,
                None,
            )
            .unwrap();
            // From the other network to the published port: partial checksums, both addresses
            // rewritten on the bridges (DNAT, and SNAT to the web network's gateway).
            let other = h.container("other");
            tcp_exchange(
                &web,
                "0.0.0.0:80",
                &other,
                &format!("{UPLINK_IP}:8080"),
                "hairpin",
            );
            udp_exchange(
                &web,
                "0.0.0.0:53",
                &other,
                &format!("{UPLINK_IP}:5353"),
                300,
                None,
            )
            .unwrap();
            let at_web = at_web.output();
            // Source rewritten (masquerade, and the replies of the published port) ...
            let rewritten_src =
                checked_frames(&at_outside.output(), |src, _| src.starts_with(UPLINK_IP));
            // ... and destination rewritten (DNAT, and the replies to masquerade) ...
            let rewritten_dst = checked_frames(&at_web, |src, dst| {
                src.starts_with(OUTSIDE_IP) && dst.starts_with(WEB)
            });
            // ... and both, from partial checksums.
            let rewritten_both = checked_frames(&at_web, |src, dst| {
                src.starts_with("10.89.0.1:") && dst.starts_with(WEB)
            });
            for (what, protos) in [
                ("source", rewritten_src),
                ("destination", rewritten_dst),
                ("hairpin", rewritten_both),
            ] {
                assert!(
                    protos.iter().filter(|p| *p == "6").count() >= 3,
                    "{what}-rewritten TCP seen: {protos:?}"
                );
                assert!(
                    protos.iter().any(|p| p == "17"),
                    "{what}-rewritten UDP seen: {protos:?}"
                );
            }
        },
    );
}

/// Segments TCP in namespace `ns` had to queue out of order (TcpExt TCPOFOQueue).
fn out_of_order(ns: &Netns) -> u64 {
    let netstat = ns.sh(&["cat", "/proc/net/netstat"]);
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    let i = names
        .split_whitespace()
        .position(|n| n == "TCPOFOQueue")
        .expect("TCPOFOQueue in /proc/net/netstat");
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

/// Packets `dev` in namespace `ns` has received and sent.
fn link_packets(ns: &Netns, dev: &str) -> (u64, u64) {
    let out = ns.sh(&["ip", "-s", "-j", "link", "show", dev]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let stats = &v[0]["stats64"];
    (
        stats["rx"]["packets"].as_u64().unwrap(),
        stats["tx"]["packets"].as_u64().unwrap(),
    )
}

/// Packets the eBPF data plane sent the short way out of containers: at a network's
/// ingress, or at a bridge network's container's own hook (`netplane_from_container`):
/// `status`'s `fast_forwarded/out_of_containers` counts both.
fn out_of_containers(h: &Host) -> u64 {
    dataplane_counter(h, "/fast_forwarded/out_of_containers")
}

#[test]
fn bulk_streams_arrive_in_order() {
    each_mode_and_driver("bulk_streams_arrive_in_order", |mode, driver| {
        let h = up(mode, driver);
        let web = h.container("web");
        // 64 MiB each way: full-sized GSO packets and small ones in one flow. In eBPF mode
        // they must all take the short way, or the small ones would overtake the big ones
        // queued on the kernel's path.
        for (receiver, listen, sender, target) in [
            (&web, "0.0.0.0:80", &h.outside, format!("{UPLINK_IP}:8080")),
            (
                &h.outside,
                "0.0.0.0:7003",
                &web,
                format!("{OUTSIDE_IP}:7003"),
            ),
        ] {
            let before = out_of_order(receiver);
            let sink = Server::start(receiver, &["sink-tcp", listen]);
            let (web_rx, up0_tx) = (link_packets(&web, "eth0").0, link_packets(&h.host, "up0").1);
            let bridge_tx = (driver == "bridge").then(|| link_packets(&h.host, "npa").1);
            let fwd = (mode == "ebpf").then(|| {
                (
                    dataplane_counter(&h, "/fast_forwarded/into_containers"),
                    out_of_containers(&h),
                )
            });
            client(sender, &["bulk-tcp", &target, "64"]).unwrap();
            assert_eq!(
                sink.output().trim(),
                (64u64 << 20).to_string(),
                "bytes to {target}"
            );
            assert_eq!(
                out_of_order(receiver) - before,
                0,
                "segments reordered to {target}"
            );
            if let Some((into, out)) = fwd {
                // Every packet into the container came the short way (the web end's
                // device counts them all, and ARP), out of the uplink all but the flow's
                // first: a few packets of slack, where a mistake would be most of them.
                let web_rx = link_packets(&web, "eth0").0 - web_rx;
                let up0_tx = link_packets(&h.host, "up0").1 - up0_tx;
                let into = dataplane_counter(&h, "/fast_forwarded/into_containers") - into;
                let out = out_of_containers(&h) - out;
                assert!(
                    into + 5 >= web_rx,
                    "into the container: {into} of {web_rx} packets"
                );
                assert!(out + 5 >= up0_tx, "out of the uplink: {out} of {up0_tx}");
                // Into the container, data goes past the bridge, onto the host veth;
                // pure ACKs (all that enters it while it sends) cross the bridge, as the
                // kernel's forwarding would take them (netplane-ebpf's forward.rs says why).
                // Bridge only: a ptp network has no bridge device to count them on (its
                // host veth is the only way in, whichever way a packet took).
                let Some(bridge_tx) = bridge_tx else { continue };
                let bridge_tx = link_packets(&h.host, "npa").1 - bridge_tx;
                if std::ptr::eq(receiver, &web) {
                    assert!(bridge_tx <= 5, "{bridge_tx} of {web_rx} crossed the bridge");
                } else {
                    assert!(
                        bridge_tx + 5 >= web_rx,
                        "ACKs: {bridge_tx} of {web_rx} crossed the bridge"
                    );
                }
            }
        }
    });
}

#[test]
fn icmp_errors_reach_the_sockets_they_are_about() {
    each_mode_and_driver(
        "icmp_errors_reach_the_sockets_they_are_about",
        |mode, driver| {
            let h = up(mode, driver);
            let web = h.container("web");
            // Nothing listens behind the published UDP port: the container's "port
            // unreachable" quotes the translated datagram, and reaches the outside's socket
            // only if the quote is translated back.
            let refused =
                |from: &Netns, target: &str| client(from, &["probe-udp", target]).unwrap();
            assert_eq!(refused(&h.outside, &format!("{UPLINK_IP}:5353")), "refused");
            // And the other way, for a masqueraded flow.
            assert_eq!(refused(&web, &format!("{OUTSIDE_IP}:7009")), "refused");
            // (With a listener, the same probes are answered.)
            let _server = Server::start(&web, &["serve-udp", "0.0.0.0:53"]);
            assert_eq!(
                refused(&h.outside, &format!("{UPLINK_IP}:5353")),
                "answered"
            );
        },
    );
}

#[test]
fn established_connections_survive_up_and_the_agent() {
    each_mode_and_driver(
        "established_connections_survive_up_and_the_agent",
        |mode, driver| {
            let h = up(mode, driver);
            let web = h.container("web");
            let _server = Server::start(&web, &["echo-tcp", "0.0.0.0:80"]);
            // 40 lines, 100 ms apart, on one connection through the published port.
            let bin = netplane_tests::host::nptest_bin();
            let client = h.outside.spawn(&[
                bin.to_str().unwrap(),
                "hold-tcp",
                &format!("{UPLINK_IP}:8080"),
                "40",
                "100",
            ]);
            std::thread::sleep(std::time::Duration::from_millis(500));
            h.netplane_ok(&["up"]);
            if mode == "ebpf" {
                // The agent dies; the pinned data plane does not.
                let status: serde_json::Value =
                    serde_json::from_str(&h.netplane_ok(&["status", "--json"])).unwrap();
                let pid = status["dataplane_health"]["agent_pid"]
                    .as_u64()
                    .expect("an agent runs in eBPF mode");
                h.host.sh(&["kill", "-9", &pid.to_string()]);
                std::thread::sleep(std::time::Duration::from_millis(500));
                let flows = h.netplane_ok(&["conntrack"]);
                assert!(
                    flows.contains("ESTABLISHED") && flows.contains(":8080"),
                    "{flows}"
                );
            }
            h.netplane_ok(&["up"]);
            let out = client.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "the connection broke: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        },
    );
}

#[test]
fn published_ports_from_the_host() {
    each_mode_and_driver("published_ports_from_the_host", |mode, driver| {
        let h = up(mode, driver);
        let web = h.container("web");
        let answer = tcp_exchange(
            &web,
            "0.0.0.0:80",
            &h.host,
            &format!("{UPLINK_IP}:8080"),
            "up",
        );
        assert_eq!(answer, format!("up from {UPLINK_IP}"));
        // 127.0.0.1-published: reachable from host processes, with a source that can leave
        // the host (the gateway of the container's network).
        let answer = tcp_exchange(&web, "0.0.0.0:80", &h.host, "127.0.0.1:8081", "lo");
        assert_eq!(answer, "lo from 10.89.0.1");
        // ... but not from outside, nor through the uplink address.
        let _server = Server::start(&web, &["serve-tcp", "0.0.0.0:80"]);
        assert!(
            tcp_fails(&h.outside, &format!("{UPLINK_IP}:8081")),
            "127.0.0.1-only port reached from outside"
        );
        // moby#45610: a neighbour that routes 127.0.0.1 to the host (here a container that
        // rewrote its own routes) is dropped before it reaches the loopback-bound port.
        let evil = h.container("peer");
        evil.sh(&[
            "ip",
            "route",
            "del",
            "local",
            "127.0.0.0/8",
            "dev",
            "lo",
            "table",
            "local",
        ]);
        evil.sh(&[
            "ip",
            "route",
            "del",
            "local",
            "127.0.0.1",
            "dev",
            "lo",
            "table",
            "local",
        ]);
        evil.sysctl("net.ipv4.conf.all.route_localnet", "1");
        // `onlink`: on a ptp network the container's address is a /32, so the gateway is
        // on no connected prefix (its own default route says onlink too).
        evil.sh(&[
            "ip",
            "route",
            "add",
            "127.0.0.1/32",
            "via",
            "10.89.0.1",
            "dev",
            "eth0",
            "onlink",
        ]);
        let dropped_before = loopback_guard_drops(mode, &h);
        assert!(
            tcp_fails(&evil, "127.0.0.1:8081"),
            "127.0.0.1-only port reached through a crafted route"
        );
        assert!(
            loopback_guard_drops(mode, &h) > dropped_before,
            "the attempt was dropped by the guard"
        );
    });
}

#[test]
fn hairpin_to_a_peer_and_to_itself() {
    each_mode_and_driver("hairpin_to_a_peer_and_to_itself", |mode, driver| {
        let h = up(mode, driver);
        let (web, peer) = (h.container("web"), h.container("peer"));
        let answer = tcp_exchange(
            &web,
            "0.0.0.0:80",
            &peer,
            &format!("{UPLINK_IP}:8080"),
            "peer",
        );
        assert_eq!(
            answer, "peer from 10.89.0.1",
            "replies come back through the host"
        );
        let answer = tcp_exchange(
            &web,
            "0.0.0.0:80",
            &web,
            &format!("{UPLINK_IP}:8080"),
            "self",
        );
        assert_eq!(answer, "self from 10.89.0.1");
    });
}

#[test]
fn networks_are_isolated_but_published_ports_are_reachable() {
    each_mode_and_driver(
        "networks_are_isolated_but_published_ports_are_reachable",
        |mode, driver| {
            let h = up(mode, driver);
            let (web, other) = (h.container("web"), h.container("other"));
            assert!(!pings(&other, WEB), "ping across networks");
            assert!(
                !pings(&web, "10.89.1.2"),
                "ping across networks, the other way"
            );
            let server = Server::start(&web, &["serve-tcp", "0.0.0.0:80"]);
            assert!(
                tcp_fails(&other, &format!("{WEB}:80")),
                "TCP across networks"
            );
            drop(server);
            let answer = tcp_exchange(
                &web,
                "0.0.0.0:80",
                &other,
                &format!("{UPLINK_IP}:8080"),
                "cross",
            );
            assert!(answer.starts_with("cross from 10.89."), "{answer}");
        },
    );
}

#[test]
fn a_thousand_short_connections_without_a_failure() {
    each_mode_and_driver(
        "a_thousand_short_connections_without_a_failure",
        |mode, driver| {
            let h = up(mode, driver);
            let web = h.container("web");
            for (server, listen, from, target) in [
                (&web, "0.0.0.0:80", &h.outside, format!("{UPLINK_IP}:8080")),
                (
                    &h.outside,
                    "0.0.0.0:7000",
                    &web,
                    format!("{OUTSIDE_IP}:7000"),
                ),
            ] {
                let srv = Server::start(server, &["serve-tcp", listen, "1000"]);
                if let Err(e) = client(from, &["send-tcp", &target, "many", "1000"]) {
                    panic!("{target}: {e}");
                }
                assert!(srv.finish(), "the server answered all 1000");
            }
        },
    );
}

#[test]
fn a_newly_published_udp_port_is_not_blackholed_by_old_conntrack_entries() {
    each_mode_and_driver(
        "a_newly_published_udp_port_is_not_blackholed",
        |mode, driver| {
            let h = up(mode, driver);
            let config = format!(
                "mode = \"{mode}\"\n{}",
                networks(driver).replace(", \"5353:53/udp\"", "")
            );
            h.write_config(&config);
            h.netplane_ok(&["up"]);
            let web = h.container("web");
            // A client keeps sending from one source port while the port is not published:
            // the host has a conntrack entry for the flow without NAT.
            let target = format!("{UPLINK_IP}:5353");
            assert!(
                udp_exchange(&web, "0.0.0.0:53", &h.outside, &target, 10, Some(40000)).is_err()
            );
            h.write_config(&format!("mode = \"{mode}\"\n{}", networks(driver)));
            h.netplane_ok(&["up"]);
            let answer = udp_exchange(&web, "0.0.0.0:53", &h.outside, &target, 10, Some(40000));
            assert_eq!(
                answer.unwrap(),
                format!("10 bytes from {OUTSIDE_IP}"),
                "the same flow now reaches the container"
            );
        },
    );
}

#[test]
fn down_restores_the_firewall_exactly_and_rejects_bad_input_unchanged() {
    each_mode_and_driver("down_restores_the_firewall_exactly", |mode, driver| {
        let h = Host::new();
        // Another tool's rules, in every table netplane uses: they must survive untouched.
        for rule in [
            "-t nat -A POSTROUTING -s 192.0.2.0/24 -j MASQUERADE",
            "-t nat -A PREROUTING -p tcp --dport 2222 -j DNAT --to-destination 192.0.2.9:22",
            "-t filter -A FORWARD -s 198.51.100.0/24 -j ACCEPT",
            "-t raw -A PREROUTING -s 198.51.100.7 -j NOTRACK",
        ] {
            let mut args = vec!["iptables"];
            args.extend(rule.split(' '));
            h.host.sh(&args);
        }
        let before = rules(&h.host);

        // Bad input: a host port published twice. Rejected, nothing changed.
        h.write_config(&format!(
            "mode = \"{mode}\"\n{}",
            networks(driver).replace(
                "publish = [\"8080:80\"",
                "publish = [\"8080:80\", \"8080:81\""
            )
        ));
        let out = h.netplane(&["up"]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("8080:81"));
        assert_eq!(rules(&h.host), before);

        h.write_config(&format!("mode = \"{mode}\"\n{}", networks(driver)));
        h.netplane_ok(&["up"]);
        match mode {
            "iptables" => assert_ne!(rules(&h.host), before, "iptables mode adds its rules"),
            _ => assert_eq!(rules(&h.host), before, "{mode} mode adds no iptables rule"),
        }
        let status = h.netplane_ok(&["status", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&status).unwrap();
        assert_eq!(v["dataplane_health"]["healthy"], true, "{status}");
        h.netplane_ok(&["down"]);
        assert_eq!(
            rules(&h.host),
            before,
            "down removes exactly netplane's rules"
        );
    });
}
