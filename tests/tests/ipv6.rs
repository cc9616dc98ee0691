//! Dual-stack networks end to end: NAT66 in both modes (eBPF, and ip6tables in
//! iptables mode), on both drivers, in a world whose uplink carries 2001:db8:113::1/64 and
//! whose outside (2001:db8:113::2) has no route to the containers' prefix.
#![expect(
    unused_crate_dependencies,
    reason = "an integration test sees every dependency of the harness crate; its library target is where an unused one shows"
)]

use netplane_tests::host::{
    Host, OUTSIDE_IP6, Server, UPLINK_IP6, client, pings, tcp_exchange, udp_exchange,
};
use netplane_tests::privileged;

const DUAL: &str = r#"
[[networks]]
name = "npa"
subnet = "10.89.0.0/24"
subnet6 = "2001:db8:89::/64"
[[containers]]
name = "web"
network = "npa"
publish = ["8080:80", "[::]:5353:53/udp", "0.0.0.0:8082:80"]
[[containers]]
name = "client"
network = "npa"
[[networks]]
name = "npb"
subnet = "10.89.1.0/24"
subnet6 = "2001:db8:90::/64"
[[containers]]
name = "other"
network = "npb"
"#;

/// [`DUAL`] with its networks on `driver`.
fn dual(driver: &str) -> String {
    DUAL.replace("subnet6 = ", &format!("driver = \"{driver}\"\nsubnet6 = "))
}

/// The modes that translate IPv6.
const MODES: [&str; 2] = ["ebpf", "iptables"];

/// [`DUAL`] in `mode` on `driver`; in eBPF mode web also publishes 8081 on [::1], which
/// iptables mode refuses (IPv6 has no route_localnet).
fn dual_in(mode: &str, driver: &str) -> String {
    let mut config = format!("mode = \"{mode}\"\n{}", dual(driver));
    if mode == "ebpf" {
        config = config.replace(
            "\"0.0.0.0:8082:80\"]",
            "\"0.0.0.0:8082:80\", \"[::1]:8081:80\"]",
        );
    }
    config
}

#[test]
fn masquerade_and_published_ports_over_ipv6_in_both_modes() {
    if !privileged("ipv6::masquerade_and_publish") {
        return;
    }
    for mode in MODES {
        for driver in netplane_tests::DRIVERS {
            eprintln!("mode {mode}, driver {driver}");
            masquerade_and_publish(mode, driver);
        }
    }
}

fn masquerade_and_publish(mode: &str, driver: &str) {
    let h = Host::new().with_ipv6();
    h.write_config(&dual_in(mode, driver));
    h.netplane_ok(&["up"]);
    let (web, client) = (h.container("web"), h.container("client"));
    // Masquerade, TCP and UDP: the outside sees the uplink's IPv6 address, which is the
    // only way back (it has no route to 2001:db8:89::/64).
    let out = format!("[{OUTSIDE_IP6}]:7000");
    let seen = tcp_exchange(&h.outside, "[::]:7000", &client, &out, "out");
    assert!(seen.ends_with(&format!("from {UPLINK_IP6}")), "{seen}");
    let seen = udp_exchange(&h.outside, "[::]:7000", &client, &out, 300, None);
    assert_eq!(seen.unwrap(), format!("300 bytes from {UPLINK_IP6}"));
    assert!(pings(&client, OUTSIDE_IP6), "ICMPv6 echo, masqueraded");
    // Published TCP (both families) and UDP ([::] only): the server sees the real client.
    let seen = tcp_exchange(
        &web,
        "[::]:80",
        &h.outside,
        &format!("[{UPLINK_IP6}]:8080"),
        "in",
    );
    assert!(seen.ends_with(&format!("from {OUTSIDE_IP6}")), "{seen}");
    let seen = udp_exchange(
        &web,
        "[::]:53",
        &h.outside,
        &format!("[{UPLINK_IP6}]:5353"),
        200,
        None,
    );
    assert_eq!(seen.unwrap(), format!("200 bytes from {OUTSIDE_IP6}"));
    // The same host port over IPv4 still works; 0.0.0.0:8082 is IPv4's only.
    let seen = tcp_exchange(&web, "0.0.0.0:80", &h.outside, "203.0.113.1:8080", "in4");
    assert!(seen.ends_with("from 203.0.113.2"), "{seen}");
    let refused = netplane_tests::host::client(
        &h.outside,
        &["send-tcp", &format!("[{UPLINK_IP6}]:8082"), "x"],
    );
    assert!(
        refused.is_err(),
        "8082 is published on IPv4 only: {refused:?}"
    );
    if mode == "iptables" {
        // From the host to [::1]: not translated (it could not be answered), so refused at
        // once, as before netplane, and a client falls back to 127.0.0.1.
        let local = netplane_tests::host::client(&h.host, &["send-tcp", "[::1]:8080", "x"]);
        assert!(
            local.as_ref().is_err_and(|e| e.contains("refused")),
            "{local:?}"
        );
    } else {
        // eBPF mode serves host processes at the socket layer: [::1] reaches the port
        // published on every address and the one published on [::1] alone, from a source
        // that can leave the host (the network's gateway6), with no userland proxy.
        for port in [8080, 8081] {
            let seen = tcp_exchange(&web, "[::]:80", &h.host, &format!("[::1]:{port}"), "lo");
            assert_eq!(seen, "lo from 2001:db8:89::1", "[::1]:{port}");
        }
        // ... and the [::1]-only port is not reachable from outside.
        let _server = Server::start(&web, &["serve-tcp", "[::]:80"]);
        let outside = netplane_tests::host::client(
            &h.outside,
            &["send-tcp", &format!("[{UPLINK_IP6}]:8081"), "x"],
        );
        assert!(
            outside.is_err(),
            "[::1]:8081 reached from outside: {outside:?}"
        );
    }
    // From the host itself, to its own IPv6 address.
    let seen = tcp_exchange(
        &web,
        "[::]:80",
        &h.host,
        &format!("[{UPLINK_IP6}]:8080"),
        "host",
    );
    assert!(seen.contains("from "), "{seen}");
    // Hairpin: the container reaches its own published port through the host's address;
    // the reply comes back through the host (SNAT to gateway6).
    let seen = tcp_exchange(
        &web,
        "[::]:80",
        &web,
        &format!("[{UPLINK_IP6}]:8080"),
        "self",
    );
    assert!(seen.ends_with("from 2001:db8:89::1"), "{seen}");
    // Isolation: another network reaches the container's published port, never its
    // address.
    let other = h.container("other");
    let seen = tcp_exchange(
        &web,
        "[::]:80",
        &other,
        &format!("[{UPLINK_IP6}]:8080"),
        "pub",
    );
    assert!(seen.contains("from "), "{seen}");
    let direct = netplane_tests::host::client(&other, &["send-tcp", "[2001:db8:89::2]:80", "x"]);
    assert!(direct.is_err(), "isolated: {direct:?}");
    // status shows both families.
    let status = h.status();
    assert_eq!(status["networks"][0]["subnet6"], "2001:db8:89::/64");
    assert_eq!(status["containers"][0]["ip6"], "2001:db8:89::2");
    // A UDP port re-published to another container: the same client's next datagram
    // reaches the new one (its stale IPv6 conntrack entry is flushed).
    let target = format!("[{UPLINK_IP6}]:5353");
    let first = udp_exchange(&web, "[::]:53", &h.outside, &target, 100, Some(40000));
    assert_eq!(first.unwrap(), format!("100 bytes from {OUTSIDE_IP6}"));
    h.write_config(&format!(
        "mode = \"{mode}\"\n{}",
        dual(driver)
            .replace(
                "publish = [\"8080:80\", \"[::]:5353:53/udp\", \"0.0.0.0:8082:80\"]",
                ""
            )
            .replace(
                "name = \"client\"\nnetwork = \"npa\"",
                "name = \"client\"\nnetwork = \"npa\"\npublish = [\"[::]:5353:53/udp\"]"
            )
    ));
    h.netplane_ok(&["up"]);
    let again = udp_exchange(&client, "[::]:53", &h.outside, &target, 101, Some(40000));
    assert_eq!(again.unwrap(), format!("101 bytes from {OUTSIDE_IP6}"));
    // iptables mode's rules are netplane's own, in ip6tables, and go with `down`; eBPF
    // mode has none.
    let saved = h.host.sh(&["ip6tables-save"]);
    if mode == "iptables" {
        assert!(
            saved.contains("-j MASQUERADE") && saved.contains("NETPLANE-DNAT"),
            "{saved}"
        );
    } else {
        assert!(!saved.contains("NETPLANE"), "{saved}");
    }
    assert!(h.status()["problems"].as_array().unwrap().is_empty());
    h.netplane_ok(&["down"]);
    let saved = h.host.sh(&["ip6tables-save"]);
    assert!(!saved.contains("NETPLANE"), "{saved}");
}

#[test]
fn ebpf_mode_refuses_a_nat_subnet6_when_the_uplink_has_no_global_ipv6_address() {
    if !privileged("ipv6::ebpf_refuses") {
        return;
    }
    // Without with_ipv6(): the uplink has no IPv6 address to masquerade to.
    let h = Host::new();
    refused(
        &h,
        &format!("mode = \"ebpf\"\n{DUAL}"),
        "uplink \"up0\" has none",
    );
}

/// `up` of `config` fails, naming the first network's subnet6 and `why`, and builds
/// nothing.
fn refused(h: &Host, config: &str, why: &str) {
    h.write_config(config);
    let out = h.netplane(&["up"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("networks[0].subnet6")
            && err.contains("2001:db8:89::/64")
            && err.contains(why),
        "{err}"
    );
    assert!(
        !h.host.sh(&["ip", "-o", "link"]).contains("npa"),
        "nothing built"
    );
}

/// The NAT suite's other cases over IPv6, in both modes: a port range, a datagram
/// fragmented at its source (IPv6 routers never fragment), 2×1000 sequential
/// connections both ways, and an established connection across a re-run of `up`.
#[test]
fn ranges_fragments_many_connections_and_a_rerun_over_ipv6_in_both_modes() {
    if !privileged("ipv6::more") {
        return;
    }
    for mode in MODES {
        eprintln!("mode {mode}");
        ranges_fragments_many_connections_and_a_rerun(mode);
    }
}

fn ranges_fragments_many_connections_and_a_rerun(mode: &str) {
    let h = Host::new().with_ipv6();
    h.write_config(&format!(
        "mode = \"{mode}\"\n{}",
        DUAL.replace("\"0.0.0.0:8082:80\"", "\"[::]:9000-9002:7000-7002\"")
    ));
    h.netplane_ok(&["up"]);
    let web = h.container("web");
    // Each port of the range goes to its own container port.
    for (hp, cp) in [(9000, 7000), (9002, 7002)] {
        let seen = tcp_exchange(
            &web,
            &format!("[::]:{cp}"),
            &h.outside,
            &format!("[{UPLINK_IP6}]:{hp}"),
            "range",
        );
        assert!(
            seen.ends_with(&format!("from {OUTSIDE_IP6}")),
            "{hp}: {seen}"
        );
    }
    // 3,000 bytes over a 1,500-byte link: three fragments (reassembled by conntrack
    // before the DNAT in iptables mode; the later ones following the first's translation
    // in eBPF mode), and the reply comes back.
    let seen = udp_exchange(
        &web,
        "[::]:53",
        &h.outside,
        &format!("[{UPLINK_IP6}]:5353"),
        3000,
        None,
    );
    assert_eq!(seen.unwrap(), format!("3000 bytes from {OUTSIDE_IP6}"));
    // 1,000 short connections each way.
    for (server, listen, from, target) in [
        (&web, "[::]:80", &h.outside, format!("[{UPLINK_IP6}]:8080")),
        (
            &h.outside,
            "[::]:7000",
            &web,
            format!("[{OUTSIDE_IP6}]:7000"),
        ),
    ] {
        let srv = Server::start(server, &["serve-tcp", listen, "1000"]);
        if let Err(e) = client(from, &["send-tcp", &target, "many", "1000"]) {
            panic!("{target}: {e}");
        }
        assert!(srv.finish(), "the server answered all 1000");
    }
    // One connection, 20 lines 100 ms apart, while `up` runs again.
    let _echo = Server::start(&web, &["echo-tcp", "[::]:80"]);
    let bin = netplane_tests::host::nptest_bin();
    let held = h.outside.spawn(&[
        bin.to_str().unwrap(),
        "hold-tcp",
        &format!("[{UPLINK_IP6}]:8080"),
        "20",
        "100",
    ]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    h.netplane_ok(&["up"]);
    let out = held.wait_with_output().unwrap();
    assert!(out.status.success(), "the connection broke: {out:?}");
}

/// Veth does not verify checksums: what the NAT wrote is checked on the wire, with TX
/// checksum offload off so that every frame carries its final checksum. Masqueraded and
/// published flows over IPv6, TCP and UDP: the outside and the container receive only
/// frames whose L4 checksum (over the rewritten addresses) is right.
#[test]
fn ipv6_checksums_on_the_wire_in_both_modes() {
    if !privileged("ipv6::checksums") {
        return;
    }
    for mode in MODES {
        eprintln!("mode {mode}");
        checksums_on_the_wire(mode);
    }
}

fn checksums_on_the_wire(mode: &str) {
    let h = Host::new().with_ipv6();
    h.write_config(&format!("mode = \"{mode}\"\n{}", dual("bridge")));
    h.netplane_ok(&["up"]);
    let web = h.container("web");
    let veth = h.host_veth("web");
    for dev in ["up0", veth.as_str()] {
        h.host.sh(&["ethtool", "-K", dev, "tx", "off"]);
    }
    h.outside.sh(&["ethtool", "-K", "eth0", "tx", "off"]);
    let at_outside = Server::start(&h.outside, &["capture", "eth0", "2000"]);
    let at_web = Server::start(&web, &["capture", "eth0", "2000"]);
    let out = format!("[{OUTSIDE_IP6}]:7000");
    tcp_exchange(&h.outside, "[::]:7000", &web, &out, "masq");
    udp_exchange(
        &h.outside,
        "[::]:7001",
        &web,
        &format!("[{OUTSIDE_IP6}]:7001"),
        300,
        None,
    )
    .unwrap();
    tcp_exchange(
        &web,
        "[::]:80",
        &h.outside,
        &format!("[{UPLINK_IP6}]:8080"),
        "pub",
    );
    udp_exchange(
        &web,
        "[::]:53",
        &h.outside,
        &format!("[{UPLINK_IP6}]:5353"),
        300,
        None,
    )
    .unwrap();
    for (at, seen) in [("outside", at_outside.output()), ("web", at_web.output())] {
        let v6: Vec<&str> = seen.lines().filter(|l| l.starts_with('[')).collect();
        // Both protocols, both directions of translation, were seen here.
        assert!(v6.iter().any(|l| l.contains(" 6 ")), "{at}: no TCP: {seen}");
        assert!(
            v6.iter().any(|l| l.contains(" 17 ")),
            "{at}: no UDP: {seen}"
        );
        for l in &v6 {
            assert!(l.ends_with("l4=ok"), "{at}: {l}");
        }
        // What arrives outside comes from the uplink's address (masquerade, and the
        // published port's replies); what arrives in the container, to its own.
        let want = if at == "outside" {
            UPLINK_IP6
        } else {
            "2001:db8:89::2"
        };
        assert!(
            v6.iter().all(|l| l.contains(&format!("[{want}]:"))),
            "{at}: {seen}"
        );
    }
}

/// A subnet6 that the host already routes (another instance's ptp cover, another tool's
/// network) is refused before anything changes, naming the field and the route.
#[test]
fn a_subnet6_the_host_already_routes_is_refused() {
    if !privileged("ipv6::subnet6_taken") {
        return;
    }
    let h = Host::new().with_ipv6();
    h.host.sh(&[
        "ip",
        "-6",
        "route",
        "add",
        "blackhole",
        "2001:db8:89::/64",
        "proto",
        "static",
    ]);
    refused(
        &h,
        &format!("mode = \"iptables\"\n{}", dual("bridge")),
        "does not own",
    );
    // The route is still there, untouched.
    assert!(
        h.host
            .sh(&["ip", "-6", "route"])
            .contains("blackhole 2001:db8:89::/64")
    );
}

/// The far side of a router with a small link ([`path_mtu_discovery_through_nat66`]):
/// the router's (the outside's) end, and the far server's.
const FAR_ROUTER_IP6: &str = "2001:db8:114::1";
const FAR_IP6: &str = "2001:db8:114::2";

/// IPv6 routers never fragment (RFC 8200, 5): a sender learns of a smaller link on the
/// way only from the router's Packet Too Big (RFC 8201), which a NAT must translate back
/// to the container, or every full-sized segment is lost and the connection stalls. The
/// outside routes to a "far" namespace over a link whose router end has an MTU of 1280
/// while the far end keeps 1500: the far server advertises an MSS of 1440, and only the
/// router knows better. A container uploads 4 MiB to it, masqueraded, in both modes.
#[test]
fn path_mtu_discovery_through_nat66_in_both_modes() {
    if !privileged("ipv6::pmtud") {
        return;
    }
    // The kernel's translation (nf_nat's ICMPv6 errors) first: the baseline.
    for mode in ["iptables", "ebpf"] {
        eprintln!("mode {mode}");
        path_mtu_discovery_through_nat66(mode);
    }
}

fn path_mtu_discovery_through_nat66(mode: &str) {
    let mut h = Host::new().with_ipv6();
    let far = h.sandbox.netns("far");
    // The cable, made in the outside (no name ever exists in the root namespace).
    h.outside.sh(&[
        "ip", "link", "add", "far0", "type", "veth", "peer", "name", "eth0", "netns", &far.name,
    ]);
    for (ns, dev, addr, mtu) in [
        (&h.outside, "far0", FAR_ROUTER_IP6, "1280"),
        (&far, "eth0", FAR_IP6, "1500"),
    ] {
        ns.sh(&["ip", "link", "set", dev, "mtu", mtu, "up"]);
        netplane_tests::host::add_ip6(ns, dev, &format!("{addr}/64"));
    }
    h.outside.sysctl("net.ipv6.conf.all.forwarding", "1");
    far.sh(&[
        "ip",
        "-6",
        "route",
        "add",
        "2001:db8:113::/64",
        "via",
        FAR_ROUTER_IP6,
    ]);
    // (The host's IPv6 default route already goes via the outside.)
    h.write_config(&format!("mode = \"{mode}\"\n{}", dual("bridge")));
    h.netplane_ok(&["up"]);
    let c = h.container("client");
    let pmtu = || c.sh(&["ip", "-6", "route", "get", FAR_IP6]);
    assert!(!pmtu().contains(" mtu "), "{mode}: no PMTU yet: {}", pmtu());

    let sink = Server::start(&far, &["sink-tcp", "[::]:7000"]);
    let sent = client(&c, &["bulk-tcp", &format!("[{FAR_IP6}]:7000"), "4"]);
    let received = sink.output();
    let (too_big_out, too_big_in) = (
        snmp6(&h.outside, "Icmp6OutPktTooBigs"),
        snmp6(&c, "Icmp6InPktTooBigs"),
    );
    let why = format!(
        "{mode}: router sent {too_big_out} Packet Too Big, the container got {too_big_in}; \
         route: {}",
        pmtu().trim()
    );
    eprintln!("{why}");
    assert!(sent.is_ok(), "the upload stalled: {sent:?}; {why}");
    assert_eq!(
        received.trim(),
        (4u64 << 20).to_string(),
        "bytes the far server received; {why}"
    );
    assert!(
        too_big_out > 0,
        "the router's link was never too small; {why}"
    );
    assert!(too_big_in > 0, "{why}");
    // The container's route cache learned the path's MTU: the error reached it,
    // translated back to its address and its flow.
    assert!(pmtu().contains(" mtu 1280 "), "{why}");
}

/// A counter of the IPv6 MIB of namespace `ns` (/proc/net/snmp6 is the reader's
/// namespace's).
fn snmp6(ns: &netplane_tests::Netns, counter: &str) -> u64 {
    let mib = ns.sh(&["cat", "/proc/net/snmp6"]);
    mib.lines()
        .find_map(|l| {
            let (name, value) = l.split_once(char::is_whitespace)?;
            (name == counter).then(|| value.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("no {counter} in {mib}"))
}

/// A dual-stack socket of a host process reaches IPv4 published ports through IPv4-mapped
/// addresses (`::ffff:203.0.113.1`), in eBPF mode: its connect runs connect6 (never
/// connect4), and its unconnected UDP runs sendmsg4 going out and recvmsg6 coming back,
/// whose answer must show the address the process sent to (a resolver drops any other).
#[test]
fn a_dual_stack_socket_reaches_ipv4_published_ports_by_mapped_addresses() {
    if !privileged("ipv6::mapped") {
        return;
    }
    let h = Host::new().with_ipv6();
    h.write_config(&format!(
        "mode = \"ebpf\"\n{}",
        DUAL.replace(
            "\"0.0.0.0:8082:80\"]",
            "\"0.0.0.0:8082:80\", \"0.0.0.0:5300:53/udp\"]"
        )
    ));
    h.netplane_ok(&["up"]);
    let web = h.container("web");
    // TCP: the server sees the host's uplink address, which the client's socket was
    // bound to, as for a plain IPv4 connect.
    let seen = tcp_exchange(
        &web,
        "0.0.0.0:80",
        &h.host,
        "[::ffff:203.0.113.1]:8082",
        "m",
    );
    assert_eq!(seen, "m from 203.0.113.1");
    // UDP, unconnected: the answer comes from the mapped address sent to.
    let _server = Server::start(&web, &["serve-udp", "0.0.0.0:53"]);
    let bin = netplane_tests::host::nptest_bin();
    let out = h.host.run(&[
        "env",
        "NPTEST_EXPECT_SOURCE=1",
        bin.to_str().unwrap(),
        "send-udp",
        "[::ffff:203.0.113.1]:5300",
        "64",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("64 bytes from "),
        "{out:?}"
    );
}
