//! `netplane up` / `down` / `status` / `exec` end to end, in sandboxed namespaces.
#![expect(
    unused_crate_dependencies,
    reason = "an integration test sees every dependency of the harness crate; its library target is where an unused one shows"
)]

use netplane_tests::host::{Host, UPLINK, netplane_bin, pings, tcp_exchange};
use netplane_tests::privileged;

const CONTAINERS: &str = r#"
[[containers]]
name = "c1"
network = "npa"
publish = ["8080:80"]
[[containers]]
name = "c2"
network = "npa"
[[containers]]
name = "c3"
network = "npa"
ip = "10.89.0.50"
[[containers]]
name = "d1"
network = "npb"
"#;

/// Three containers on one network and one on the other.
fn three_and_one() -> String {
    format!(
        "mode = \"ebpf\"\n{}{CONTAINERS}",
        netplane_tests::TWO_NETWORKS
    )
}

fn message() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    format!("hello-{}-{}", std::process::id(), t.subsec_nanos())
}

/// The names of the links in the host namespace.
fn host_links(h: &Host) -> Vec<String> {
    h.host
        .links()
        .iter()
        .map(|l| l.ifname().to_owned())
        .collect()
}

fn netns_of(h: &Host) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.starts_with(&format!("{}-", h.name()))
                && !n.ends_with("-host")
                && !n.ends_with("-out")
        })
        .collect()
}

#[test]
fn containers_reach_each_other_and_the_host() {
    if !privileged("containers_reach_each_other_and_the_host") {
        return;
    }
    let h = Host::new();
    h.write_config(&three_and_one());
    h.netplane_ok(&["up"]);
    let (c1, c2, c3, d1) = (
        h.container("c1"),
        h.container("c2"),
        h.container("c3"),
        h.container("d1"),
    );

    // Addresses: auto in config order after the gateway, explicit ones kept.
    assert!(
        c1.sh(&["ip", "-o", "-4", "addr", "show", "dev", "eth0"])
            .contains("10.89.0.2/24")
    );
    assert!(
        c2.sh(&["ip", "-o", "-4", "addr", "show", "dev", "eth0"])
            .contains("10.89.0.3/24")
    );
    assert!(
        c3.sh(&["ip", "-o", "-4", "addr", "show", "dev", "eth0"])
            .contains("10.89.0.50/24")
    );
    assert!(
        d1.sh(&["ip", "-o", "-4", "addr", "show", "dev", "eth0"])
            .contains("10.89.1.2/24")
    );
    // Docker-style MAC from the IP, and the default route via the gateway.
    assert!(
        c1.sh(&["ip", "-o", "link", "show", "dev", "eth0"])
            .contains("02:42:0a:59:00:02")
    );
    assert!(
        c1.sh(&["ip", "route", "show", "default"])
            .contains("via 10.89.0.1 dev eth0")
    );

    // Container ↔ container on one network: ICMP and TCP, and the server sees the peer.
    assert!(pings(&c1, "10.89.0.3"));
    assert!(pings(&c3, "10.89.0.2"));
    let msg = message();
    assert_eq!(
        tcp_exchange(&c2, "10.89.0.3:80", &c1, "10.89.0.3:80", &msg),
        format!("{msg} from 10.89.0.2")
    );

    // Host ↔ container, both ways, on both networks.
    assert!(pings(&h.host, "10.89.0.50"));
    assert!(pings(&h.host, "10.89.1.2"));
    assert!(pings(&d1, "10.89.1.1"));
    let msg = message();
    assert_eq!(
        tcp_exchange(&c3, "0.0.0.0:9000", &h.host, "10.89.0.50:9000", &msg),
        format!("{msg} from 10.89.0.1")
    );
    let msg = message();
    assert_eq!(
        tcp_exchange(&h.host, "10.89.1.1:9001", &d1, "10.89.1.1:9001", &msg),
        format!("{msg} from 10.89.1.2")
    );

    // status shows what exists, as JSON too.
    let status = h.netplane_ok(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(v["up"], true);
    assert_eq!(v["containers"].as_array().unwrap().len(), 4);
    assert_eq!(v["containers"][0]["ip"], "10.89.0.2");
    assert_eq!(v["containers"][0]["publish"][0], "8080:80/tcp");
    assert_eq!(v["problems"].as_array().unwrap().len(), 0);

    // exec runs in the container's namespace, with a /sys that shows its devices.
    let out = h.netplane(&["exec", "c2", "--", "cat", "/sys/class/net/eth0/address"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "02:42:0a:59:00:03"
    );
}

#[test]
fn up_is_idempotent_and_converges_and_down_leaves_nothing() {
    if !privileged("up_is_idempotent_and_converges_and_down_leaves_nothing") {
        return;
    }
    let h = Host::new();
    let links_before = host_links(&h);
    let forward_before = h.host.sh(&["sysctl", "-n", "net.ipv4.ip_forward"]);
    h.write_config(&three_and_one());
    h.netplane_ok(&["up"]);
    // index, name and bridge of every link: what a recreation would change.
    let identity = || -> Vec<String> {
        h.host
            .links()
            .iter()
            .map(|l| format!("{} {} {}", l.index, l.name, l.master))
            .collect()
    };
    let ifindexes = identity();

    // A second up changes nothing: it says so, and no link was recreated.
    let again = h.netplane_ok(&["up"]);
    assert!(again.contains("nothing to change"), "{again}");
    assert_eq!(identity(), ifindexes);

    // Edit: c2 removed, e1 added, c3 moved to another address.
    h.write_config(
        &three_and_one()
            .replace("name = \"c2\"", "name = \"e1\"")
            .replace("10.89.0.50", "10.89.0.60"),
    );
    h.netplane_ok(&["up"]);
    let mut ns = netns_of(&h);
    ns.sort();
    let p = h.name();
    assert_eq!(
        ns,
        [
            format!("{p}-c1"),
            format!("{p}-c3"),
            format!("{p}-d1"),
            format!("{p}-e1")
        ]
    );
    assert!(
        pings(&h.container("e1"), "10.89.0.60"),
        "e1 reaches c3 at its new address"
    );
    assert!(!pings(&h.host, "10.89.0.50"), "the old address is gone");

    let down = h.netplane_ok(&["down"]);
    assert!(down.contains("down"), "{down}");
    assert!(
        netns_of(&h).is_empty(),
        "namespaces left: {:?}",
        netns_of(&h)
    );
    assert_eq!(
        host_links(&h),
        links_before,
        "only the sandbox's own links remain"
    );
    assert_eq!(
        h.host.sh(&["sysctl", "-n", "net.ipv4.ip_forward"]),
        forward_before,
        "ip_forward restored"
    );
    assert!(
        !std::path::Path::new(&format!("/run/netplane/{p}")).exists(),
        "state removed"
    );
    // down again, with everything gone, still succeeds.
    h.netplane_ok(&["down"]);
}

#[test]
fn bad_input_is_rejected_and_changes_nothing() {
    if !privileged("bad_input_is_rejected_and_changes_nothing") {
        return;
    }
    let h = Host::new();
    let net = "[[networks]]\nname = \"npa\"\nsubnet = \"10.89.0.0/24\"\n";
    let c =
        |extra: &str| format!("{net}[[containers]]\nname = \"c1\"\nnetwork = \"npa\"\n{extra}\n");
    let cases: Vec<(String, &[&str])> =
        vec![
        (
            "[[networks]]\nname = \"npa\"\nsubnet = \"10.89.0.0/33\"\n".into(),
            &["networks[0].subnet", "10.89.0.0/33"],
        ),
        (
            "[[networks]]\nname = \"npa\"\nsubnet = \"10.89.0.0/24\"\ngateway = \"10.90.0.1\"\n"
                .into(),
            &["networks[0].gateway", "10.90.0.1"],
        ),
        (c("ip = \"10.89.5.5\""), &["containers[0].ip", "10.89.5.5"]),
        (
            format!(
                "{}[[containers]]\nname = \"c1\"\nnetwork = \"npa\"\n",
                c("")
            ),
            &["containers[1].name", "c1"],
        ),
        (
            format!(
                "{}[[containers]]\nname = \"c2\"\nnetwork = \"npa\"\nip = \"10.89.0.9\"\n",
                c("ip = \"10.89.0.9\"")
            ),
            &["containers[1].ip", "10.89.0.9"],
        ),
        (
            format!("{net}[[networks]]\nname = \"npb\"\nsubnet = \"10.89.0.128/25\"\n"),
            &["networks[1].subnet", "10.89.0.128/25"],
        ),
        (
            "[[networks]]\nname = \"npa\"\nsubnet = \"203.0.113.0/24\"\n".into(),
            &["networks[0].subnet", "203.0.113.0/24", UPLINK],
        ),
        (
            c("").replace("network = \"npa\"", "network = \"nope\""),
            &["containers[0].network", "nope"],
        ),
        (
            "[[networks]]\nname = \"averyveryverylongbridge\"\nsubnet = \"10.89.0.0/24\"\n".into(),
            &["networks[0].name", "averyveryverylongbridge"],
        ),
        (c("publish = [\"80\"]"), &["containers[0].publish[0]", "80"]),
        (
            c("publish = [\"0:80\"]"),
            &["containers[0].publish[0]", "0:80"],
        ),
        (
            c("publish = [\"70000:80\"]"),
            &["containers[0].publish[0]", "70000:80"],
        ),
        (
            c("publish = [\"8080:80\", \"8080:81/tcp\"]"),
            &["containers[0].publish[1]", "8080:81/tcp"],
        ),
        (
            format!("uplink = \"nosuchif\"\n{net}"),
            &["uplink", "nosuchif"],
        ),
        // A nat network's IPv6 is masqueraded to the uplink's global IPv6 address, which
        // this sandbox's uplink lacks: refused in eBPF mode, naming both.
        (
            format!("{net}subnet6 = \"2001:db8:89::/64\"\n"),
            &["networks[0].subnet6", "2001:db8:89::/64", "uplink \"up0\" has none"],
        ),
        (
            format!("{net}subnet6 = \"2001:db8::/48\"\n"),
            &["networks[0].subnet6", "2001:db8::/48", "/64 to /120"],
        ),
        (
            c("publish = [\"[::1]:8081:80\"]"),
            &["containers[0].publish[0]", "[::1]:8081:80", "no subnet6"],
        ),
    ];
    let links_before = host_links(&h);
    for (body, expect) in cases {
        h.write_config(&body);
        let out = h.netplane(&["up"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "accepted:\n{body}");
        for e in expect {
            assert!(
                err.contains(e),
                "error for\n{body}\nshould name {e:?}; it says: {err}"
            );
        }
        assert!(netns_of(&h).is_empty(), "namespace created for\n{body}");
        assert_eq!(host_links(&h), links_before, "links changed for\n{body}");
        assert!(
            !std::path::Path::new(&format!("/run/netplane/{}", h.name())).exists(),
            "state for\n{body}"
        );
    }

    // Not root: refused before anything happens.
    h.write_config(net);
    let bin = netplane_bin();
    let out = h.host.run(&[
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        bin.to_str().unwrap(),
        "up",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("root"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn down_after_up_was_killed_leaves_nothing() {
    if !privileged("down_after_up_was_killed_leaves_nothing") {
        return;
    }
    let h = Host::new();
    let links_before = host_links(&h);
    let mut body = String::from("[[networks]]\nname = \"npa\"\nsubnet = \"10.89.0.0/24\"\n");
    for i in 0..24 {
        body += &format!("[[containers]]\nname = \"k{i}\"\nnetwork = \"npa\"\n");
    }
    h.write_config(&body);
    // Kill -9 at several points of the run; whatever was done, down undoes it.
    for delay_ms in [5, 40, 120] {
        let bin = netplane_bin();
        let cfg = std::env::temp_dir().join(format!("{}.toml", h.name()));
        let mut child = h
            .host
            .spawn(&[bin.to_str().unwrap(), "up", "-c", cfg.to_str().unwrap()]);
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        h.netplane_ok(&["down"]);
        assert!(
            netns_of(&h).is_empty(),
            "after kill at {delay_ms} ms: {:?}",
            netns_of(&h)
        );
        assert_eq!(host_links(&h), links_before, "after kill at {delay_ms} ms");
    }
}

#[test]
fn a_failure_part_way_rolls_back_and_foreign_objects_are_never_adopted() {
    if !privileged("a_failure_part_way_rolls_back_and_foreign_objects_are_never_adopted") {
        return;
    }
    let h = Host::new();
    let links_before = host_links(&h);
    h.write_config(&three_and_one());
    // Fails after the bridges, c1 and c2 were created: all of it must go again.
    let bin = netplane_bin();
    let cfg = std::env::temp_dir().join(format!("{}.toml", h.name()));
    let out = h.host.run(&[
        "env",
        "NETPLANE_FAIL_BEFORE_CONTAINER=c3",
        bin.to_str().unwrap(),
        "up",
        "-c",
        cfg.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("injected failure before container c3") && err.contains("rolled back"),
        "{err}"
    );
    assert!(netns_of(&h).is_empty(), "left: {:?}", netns_of(&h));
    assert_eq!(host_links(&h), links_before);
    assert!(!std::path::Path::new(&format!("/run/netplane/{}", h.name())).exists());

    // An interface of a bridge's name that netplane did not make (here a veth) is
    // refused and left untouched.
    h.host.sh(&[
        "ip", "link", "add", "npb", "type", "veth", "peer", "name", "npbpeer",
    ]);
    let out = h.netplane(&["up"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("networks[1].name") && err.contains("npb") && err.contains("does not own"),
        "{err}"
    );
    assert!(
        h.host
            .sh(&["ip", "-o", "-4", "addr", "show", "dev", "npb"])
            .is_empty(),
        "no address was added"
    );
    assert!(netns_of(&h).is_empty());
    h.host.sh(&["ip", "link", "del", "npb"]);

    // And then it works.
    h.netplane_ok(&["up"]);
    assert!(pings(&h.container("c1"), "10.89.0.3"));
}

/// `driver = "ptp"`: no bridge; each container a /32 behind its host veth, which holds
/// the gateway as a /32 and the host's route to the container. Containers reach each
/// other and the host through the host's routing, with their own addresses. A ptp
/// network turned into a bridge one (and back) rebuilds its containers.
#[test]
fn ptp_containers_are_routed_by_the_host() {
    if !privileged("ptp_containers_are_routed_by_the_host") {
        return;
    }
    let h = Host::new();
    let config = |driver: &str| {
        format!(
            "mode = \"none\"\n[[networks]]\nname = \"npa\"\nsubnet = \"10.89.0.0/24\"\n\
             driver = \"{driver}\"\n[[containers]]\nname = \"c1\"\nnetwork = \"npa\"\n\
             [[containers]]\nname = \"c2\"\nnetwork = \"npa\"\n"
        )
    };
    h.write_config(&config("ptp"));
    h.netplane_ok(&["up"]);
    let (c1, c2) = (h.container("c1"), h.container("c2"));
    assert!(!host_links(&h).contains(&"npa".to_owned()), "no bridge");
    assert!(
        c1.sh(&["ip", "-o", "-4", "addr", "show", "dev", "eth0"])
            .contains("10.89.0.2/32")
    );
    let default = c1.sh(&["ip", "route", "show", "default"]);
    assert!(
        default.contains("via 10.89.0.1 dev eth0") && default.contains("onlink"),
        "{default}"
    );
    let routes = h.host.sh(&["ip", "route", "show", "10.89.0.3"]);
    assert!(
        routes.contains("scope link") && routes.contains("src 10.89.0.1"),
        "{routes}"
    );
    // The rest of the subnet goes nowhere, not to the default route.
    let cover = h.host.sh(&["ip", "route", "show", "10.89.0.0/24"]);
    assert!(cover.contains("blackhole 10.89.0.0/24"), "{cover}");
    // Strict reverse-path filtering: a container cannot send as another address.
    assert_eq!(
        h.host
            .sh(&[
                "sysctl",
                "-n",
                &format!("net.ipv4.conf.{}.rp_filter", h.host_veth("c1"))
            ])
            .trim(),
        "1"
    );
    // The gateway, a /32 on every host veth of the network.
    let gateways = h.host.sh(&["ip", "-o", "-4", "addr", "show"]);
    assert_eq!(gateways.matches("10.89.0.1/32").count(), 2, "{gateways}");
    assert!(pings(&c1, "10.89.0.3"));
    let msg = message();
    assert_eq!(
        tcp_exchange(&c2, "10.89.0.3:80", &c1, "10.89.0.3:80", &msg),
        format!("{msg} from 10.89.0.2")
    );
    let msg = message();
    assert_eq!(
        tcp_exchange(&h.host, "10.89.0.1:9000", &c2, "10.89.0.1:9000", &msg),
        format!("{msg} from 10.89.0.3")
    );
    let msg = message();
    assert_eq!(
        tcp_exchange(&c1, "0.0.0.0:9001", &h.host, "10.89.0.2:9001", &msg),
        format!("{msg} from 10.89.0.1")
    );
    let status: serde_json::Value =
        serde_json::from_str(&h.netplane_ok(&["status", "--json"])).unwrap();
    assert_eq!(status["networks"][0]["driver"], "ptp");
    assert_eq!(
        status["problems"].as_array().map(Vec::len),
        Some(0),
        "{status}"
    );

    // To a bridge network and back: the containers are rebuilt, and reach each other.
    for driver in ["bridge", "ptp"] {
        h.write_config(&config(driver));
        h.netplane_ok(&["up"]);
        let c1 = h.container("c1");
        let want = if driver == "bridge" {
            "10.89.0.2/24"
        } else {
            "10.89.0.2/32"
        };
        assert!(
            c1.sh(&["ip", "-o", "-4", "addr", "show", "dev", "eth0"])
                .contains(want),
            "{driver}"
        );
        assert!(pings(&c1, "10.89.0.3"), "{driver}");
        assert_eq!(
            host_links(&h).contains(&"npa".to_owned()),
            driver == "bridge",
            "the bridge exists only for a bridge network"
        );
    }
    h.netplane_ok(&["down"]);
    assert!(netns_of(&h).is_empty());
    assert!(
        !h.host
            .sh(&["ip", "-o", "-4", "addr", "show"])
            .contains("10.89.0.1")
    );
    assert!(!h.host.sh(&["ip", "route"]).contains("10.89.0."));
}

/// `gateway_mode = "isolated"`: the bridge has no address and the containers no default
/// route; the network's containers still reach each other.
#[test]
fn an_isolated_network_has_no_gateway() {
    if !privileged("an_isolated_network_has_no_gateway") {
        return;
    }
    let h = Host::new();
    h.write_config(
        "mode = \"none\"\n[[networks]]\nname = \"npa\"\nsubnet = \"10.89.0.0/24\"\n\
         gateway_mode = \"isolated\"\n[[containers]]\nname = \"c1\"\nnetwork = \"npa\"\n\
         [[containers]]\nname = \"c2\"\nnetwork = \"npa\"\n",
    );
    h.netplane_ok(&["up"]);
    let c1 = h.container("c1");
    assert!(
        !h.host
            .sh(&["ip", "-o", "-4", "addr", "show", "dev", "npa"])
            .contains("inet"),
        "no gateway address on the bridge"
    );
    assert_eq!(c1.sh(&["ip", "route", "show", "default"]).trim(), "");
    assert!(pings(&c1, "10.89.0.3"));
    assert!(!pings(&h.host, "10.89.0.2"), "the host has no way in");
    let status: serde_json::Value =
        serde_json::from_str(&h.netplane_ok(&["status", "--json"])).unwrap();
    assert_eq!(status["networks"][0]["gateway"], serde_json::Value::Null);
    assert_eq!(status["networks"][0]["gateway_mode"], "isolated");
    h.netplane_ok(&["down"]);
}

/// `[[routes]]`: a host route per entry, changed and removed with the config, gone after
/// `down`; a `via` off every local link, or a route the host already has, is refused
/// before anything changes.
#[test]
fn routes_to_other_hosts_follow_the_config() {
    if !privileged("routes_to_other_hosts_follow_the_config") {
        return;
    }
    let h = Host::new();
    let config = |routes: &[(&str, &str)]| {
        let mut c = format!("mode = \"none\"\n{}", netplane_tests::TWO_NETWORKS);
        for (subnet, via) in routes {
            c += &format!("[[routes]]\nsubnet = \"{subnet}\"\nvia = \"{via}\"\n");
        }
        c
    };
    let routes = |h: &Host| h.host.sh(&["ip", "route", "show", "proto", "static"]);
    h.write_config(&config(&[
        ("10.0.2.0/24", "203.0.113.12"),
        ("10.0.3.0/24", "203.0.113.13"),
    ]));
    h.netplane_ok(&["up"]);
    let r = routes(&h);
    assert!(
        r.contains("10.0.2.0/24 via 203.0.113.12 dev up0")
            && r.contains("10.0.3.0/24 via 203.0.113.13 dev up0"),
        "{r}"
    );
    h.write_config(&config(&[("10.0.2.0/24", "203.0.113.14")]));
    let out = h.netplane_ok(&["up"]);
    assert!(out.contains("removed route 10.0.3.0/24"), "{out}");
    let r = routes(&h);
    assert!(
        r.contains("10.0.2.0/24 via 203.0.113.14") && !r.contains("10.0.3.0"),
        "{r}"
    );

    // Bad input: named, and nothing changes.
    let before = (routes(&h), host_links(&h));
    h.write_config(&config(&[("10.0.2.0/24", "198.51.100.7")]));
    let out = h.netplane(&["up"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("routes[0].via = \"198.51.100.7\"") && err.contains("not on any local link"),
        "{err}"
    );
    h.host
        .sh(&["ip", "route", "add", "10.0.9.0/24", "via", "203.0.113.2"]);
    h.write_config(&config(&[
        ("10.0.2.0/24", "203.0.113.14"),
        ("10.0.9.0/24", "203.0.113.12"),
    ]));
    let out = h.netplane(&["up"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("routes[1].subnet = \"10.0.9.0/24\"") && err.contains("does not own"),
        "{err}"
    );
    // (A route added by hand is `proto boot`: not among these.)
    assert_eq!((routes(&h), host_links(&h)), before, "nothing changed");
    h.netplane_ok(&["down"]);
    let r = routes(&h);
    assert!(!r.contains("10.0.2.0"), "{r}");
    assert!(
        h.host.sh(&["ip", "route"]).contains("10.0.9.0/24"),
        "a route netplane does not own stays"
    );
}

/// A dual-stack bridge network (mode none: topology only, as IPv6 NAT is not built yet):
/// each container gets its IPv6 address (no DAD: usable at once) and a default route via
/// the bridge's gateway6; IPv6 forwarding is on, the uplink keeps taking router
/// advertisements (accept_ra 1 → 2), the bridge takes none; `down` puts the sysctls back.
#[test]
fn a_dual_stack_network_gives_containers_ipv6() {
    if !privileged("a_dual_stack_network_gives_containers_ipv6") {
        return;
    }
    let h = Host::new();
    let sysctl = |key: &str| h.host.sh(&["sysctl", "-n", key]).trim().to_owned();
    let (fwd, ra) = (
        "net.ipv6.conf.all.forwarding",
        format!("net.ipv6.conf.{UPLINK}.accept_ra"),
    );
    assert_eq!((sysctl(fwd).as_str(), sysctl(&ra).as_str()), ("0", "1"));
    h.write_config(
        "mode = \"none\"\n[[networks]]\nname = \"npa\"\nsubnet = \"10.89.0.0/24\"\n\
         subnet6 = \"2001:db8:89::/64\"\n[[containers]]\nname = \"c1\"\nnetwork = \"npa\"\n\
         [[containers]]\nname = \"c2\"\nnetwork = \"npa\"\nip6 = \"2001:db8:89::50\"\n",
    );
    h.netplane_ok(&["up"]);
    let (c1, c2) = (h.container("c1"), h.container("c2"));
    let addr = c1.sh(&[
        "ip", "-o", "-6", "addr", "show", "dev", "eth0", "scope", "global",
    ]);
    assert!(addr.contains("inet6 2001:db8:89::2/64"), "{addr}");
    assert!(!addr.contains("tentative"), "DAD is off: {addr}");
    assert!(
        c1.sh(&["ip", "-6", "route", "show", "default"])
            .contains("via 2001:db8:89::1 dev eth0"),
        "default route via gateway6"
    );
    let bridge = h.host.sh(&[
        "ip", "-o", "-6", "addr", "show", "dev", "npa", "scope", "global",
    ]);
    assert!(bridge.contains("inet6 2001:db8:89::1/64"), "{bridge}");
    // Container ↔ container, host ↔ container, over IPv6, with TCP: the server sees the
    // client's own address.
    assert!(pings(&c1, "2001:db8:89::50"));
    assert!(pings(&h.host, "2001:db8:89::2"));
    let seen = tcp_exchange(&c2, "[::]:80", &c1, "[2001:db8:89::50]:80", "hi");
    assert!(seen.ends_with("from 2001:db8:89::2"), "{seen}");
    assert_eq!(sysctl(fwd), "1");
    assert_eq!(
        sysctl(&ra),
        "2",
        "the uplink keeps its router advertisements"
    );
    assert_eq!(sysctl("net.ipv6.conf.npa.accept_ra"), "0");
    // Idempotent: a second `up` changes nothing.
    let again = h.netplane_ok(&["up"]);
    assert!(again.contains("nothing to change"), "{again}");
    // Without subnet6 the network is IPv4-only again, and the IPv6 sysctls go back.
    h.write_config(
        "mode = \"none\"\n[[networks]]\nname = \"npa\"\nsubnet = \"10.89.0.0/24\"\n\
         [[containers]]\nname = \"c1\"\nnetwork = \"npa\"\n",
    );
    h.netplane_ok(&["up"]);
    assert_eq!((sysctl(fwd).as_str(), sysctl(&ra).as_str()), ("0", "1"));
    // and the bridge and the container lose their IPv6 addresses and routes.
    let bridge = h.host.sh(&[
        "ip", "-o", "-6", "addr", "show", "dev", "npa", "scope", "global",
    ]);
    assert_eq!(bridge.trim(), "", "gateway6 left on the bridge");
    let c1 = h.container("c1");
    assert_eq!(c1.sh(&["ip", "-6", "route", "show", "default"]).trim(), "");
    h.netplane_ok(&["down"]);
    assert_eq!((sysctl(fwd).as_str(), sysctl(&ra).as_str()), ("0", "1"));
}

/// moby#43466: turning IPv6 forwarding on makes the kernel drop the default routes that
/// router advertisements taught the host (addrconf_fixup_forwarding() purges them on
/// every interface whose accept_ra is not 2). `up` sets the uplink's accept_ra to 2
/// first: the RA-learned default route survives a dual-stack `up`.
#[test]
fn a_default_route_learned_from_router_advertisements_survives_a_dual_stack_up() {
    if !privileged("a_default_route_learned_from_router_advertisements_survives") {
        return;
    }
    let h = Host::new();
    for (ns, dev) in [(&h.host, UPLINK), (&h.outside, "eth0")] {
        // No DAD: the link-local addresses are usable at once.
        ns.sysctl(&format!("net.ipv6.conf.{dev}.accept_dad"), "0");
        ns.sysctl(&format!("net.ipv6.conf.{dev}.disable_ipv6"), "0");
    }
    let ra_route = || {
        h.host
            .sh(&["ip", "-6", "route", "show", "default", "proto", "ra"])
    };
    let bin = netplane_bin().with_file_name("nptest");
    let mut learned = String::new();
    for _ in 0..20 {
        // (The link-local address may take a moment to appear.)
        let _ = h
            .outside
            .run(&[bin.to_str().unwrap(), "send-ra", "eth0", "1800"]);
        std::thread::sleep(std::time::Duration::from_millis(100));
        learned = ra_route();
        if learned.contains("via fe80::") {
            break;
        }
    }
    assert!(
        learned.contains(&format!("dev {UPLINK}")),
        "no RA route: {learned:?}"
    );
    h.write_config(
        "mode = \"none\"\n[[networks]]\nname = \"npa\"\nsubnet = \"10.89.0.0/24\"\n\
         subnet6 = \"2001:db8:89::/64\"\n[[containers]]\nname = \"c1\"\nnetwork = \"npa\"\n",
    );
    h.netplane_ok(&["up"]);
    assert_eq!(
        h.host
            .sh(&["sysctl", "-n", "net.ipv6.conf.all.forwarding"])
            .trim(),
        "1"
    );
    let after = ra_route();
    assert!(after.contains("via fe80::"), "the RA route went: {after:?}");
    h.netplane_ok(&["down"]);
}

/// A dual-stack ptp network: each container's IPv6 address is a /128 with an onlink
/// default route via gateway6, which every host veth carries as a /128 with the host's
/// /128 route to the container; the subnet6 is covered by a blackhole route, owned and
/// removed by `down`.
#[test]
fn a_dual_stack_ptp_network_routes_ipv6_per_container() {
    if !privileged("a_dual_stack_ptp_network_routes_ipv6_per_container") {
        return;
    }
    let h = Host::new();
    h.write_config(
        "mode = \"none\"\n[[networks]]\nname = \"npa\"\nsubnet = \"10.89.0.0/24\"\n\
         driver = \"ptp\"\nsubnet6 = \"2001:db8:89::/64\"\n[[containers]]\nname = \"c1\"\n\
         network = \"npa\"\n[[containers]]\nname = \"c2\"\nnetwork = \"npa\"\n",
    );
    h.netplane_ok(&["up"]);
    let c1 = h.container("c1");
    let addr = c1.sh(&[
        "ip", "-o", "-6", "addr", "show", "dev", "eth0", "scope", "global",
    ]);
    assert!(addr.contains("inet6 2001:db8:89::2/128"), "{addr}");
    let default = c1.sh(&["ip", "-6", "route", "show", "default"]);
    assert!(
        default.contains("via 2001:db8:89::1 dev eth0") && default.contains("onlink"),
        "{default}"
    );
    let veth = h.host_veth("c1");
    let routes = h.host.sh(&["ip", "-6", "route"]);
    assert!(
        routes.contains(&format!("2001:db8:89::2 dev {veth}")),
        "{routes}"
    );
    assert!(routes.contains("blackhole 2001:db8:89::/64"), "{routes}");
    assert!(
        pings(&c1, "2001:db8:89::3"),
        "container ↔ container through the host"
    );
    assert!(pings(&h.host, "2001:db8:89::2"), "host → container");
    let again = h.netplane_ok(&["up"]);
    assert!(again.contains("nothing to change"), "{again}");
    h.netplane_ok(&["down"]);
    assert!(!h.host.sh(&["ip", "-6", "route"]).contains("2001:db8:89"));
}
