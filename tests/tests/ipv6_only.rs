//! IPv6-only networks (a `subnet6` and no `subnet`) and IPv6 `[[routes]]`, end to end in
//! both modes: masquerade and a published port over IPv6 with no IPv4 in the container,
//! `status --json` without IPv4 fields, `down` leaving the host as before, bad input
//! refused before anything changes, an IPv6-only CNI lease, and two hosts whose containers
//! reach each other by their own IPv6 addresses through IPv6 routes.
#![expect(
    unused_crate_dependencies,
    reason = "an integration test sees every dependency of the harness crate; its library target is where an unused one shows"
)]

use netplane_tests::cni_plugin::Direct;
use netplane_tests::host::{
    Host, Instance, OUTSIDE_IP6, Server, Snapshot, UPLINK_IP, UPLINK_IP6, client, tcp_exchange,
};
use netplane_tests::multihost::{A_IP6, A_SUBNET6, B_IP6, B_SUBNET6, NODE02_IP6, World};
use netplane_tests::{Netns, each_mode, each_mode_and_driver};
use serde_json::json;

/// An IPv6-only network: `web` publishes 8080 (no host address: IPv6 only, the network
/// having no IPv4), `client` nothing.
const V6_ONLY: &str = r#"
[[networks]]
name = "np6"
subnet6 = "2001:db8:89::/64"
[[containers]]
name = "web"
network = "np6"
publish = ["8080:80"]
[[containers]]
name = "client"
network = "np6"
"#;
const WEB: &str = "2001:db8:89::2";
const GATEWAY6: &str = "2001:db8:89::1";

/// What the host holds of IPv6 that `up` may change, beside [`Snapshot`]'s IPv4 view:
/// addresses, routes of every table, and netplane's ip6tables lines. Link-local ones
/// aside: the kernel's, and "tentative" for a while after the sandbox made them.
fn snapshot6(i: &Instance) -> [Vec<String>; 3] {
    let ns = &i.host;
    let lines = |args: &[&str], keep: &dyn Fn(&str) -> bool| -> Vec<String> {
        ns.sh(args)
            .lines()
            .filter(|l| keep(l))
            .map(str::to_owned)
            .collect()
    };
    let global = |l: &str| !l.contains("fe80:");
    [
        lines(&["ip", "-o", "-6", "addr", "show"], &global),
        lines(&["ip", "-6", "route", "show", "table", "all"], &global),
        lines(&["ip6tables-save"], &|l| l.contains("NETPLANE")),
    ]
}

/// Both snapshots of `i`.
fn snapshots(i: &Instance) -> (Snapshot, [Vec<String>; 3]) {
    (i.snapshot(), snapshot6(i))
}

/// Asserts that `i` is as `before` (both snapshots), saying what differs.
fn unchanged(i: &Instance, before: &(Snapshot, [Vec<String>; 3]), what: &str) {
    let after = snapshots(i);
    assert!(
        after.0 == before.0,
        "{what}: {}",
        before.0.diff(&after.0).join("\n")
    );
    assert_eq!(
        after.1, before.1,
        "{what}: IPv6 addresses, routes, ip6tables"
    );
}

#[test]
fn an_ipv6_only_network_in_both_modes_on_both_drivers() {
    each_mode_and_driver("ipv6_only::network", |mode, driver| {
        let h = Host::new().with_ipv6();
        let before = snapshots(&h);
        let config = V6_ONLY.replace("subnet6 = ", &format!("driver = \"{driver}\"\nsubnet6 = "));
        h.write_config(&format!("mode = \"{mode}\"\n{config}"));
        h.netplane_ok(&["up"]);
        let (web, client_ns) = (h.container("web"), h.container("client"));
        // No IPv4 in the container, not even a default route.
        let inet = web.sh(&["ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
        assert!(inet.is_empty(), "{inet}");
        assert!(web.sh(&["ip", "-4", "route"]).is_empty());
        // Masquerade: the outside, which has no route to the container prefix, sees the
        // uplink's IPv6 address.
        let seen = tcp_exchange(
            &h.outside,
            "[::]:7000",
            &client_ns,
            &format!("[{OUTSIDE_IP6}]:7000"),
            "out",
        );
        assert!(seen.ends_with(&format!("from {UPLINK_IP6}")), "{seen}");
        // The published port: the server sees the real client.
        let target = format!("[{UPLINK_IP6}]:8080");
        let seen = tcp_exchange(&web, "[::]:80", &h.outside, &target, "in");
        assert!(seen.ends_with(&format!("from {OUTSIDE_IP6}")), "{seen}");
        // Hairpin: through the host's address and back, from the gateway6 (on the bridge,
        // or on every host veth of a ptp network).
        let seen = tcp_exchange(&web, "[::]:80", &web, &target, "self");
        assert!(seen.ends_with(&format!("from {GATEWAY6}")), "{seen}");
        // Published on IPv6 only: the uplink's IPv4 address does not forward 8080.
        let _server = Server::start(&web, &["serve-tcp", "[::]:80"]);
        let v4 = client(&h.outside, &["send-tcp", &format!("{UPLINK_IP}:8080"), "x"]);
        assert!(v4.is_err(), "8080 answered over IPv4: {v4:?}");
        // status: no IPv4 for the network nor its containers.
        let status = h.status();
        let (net, c) = (&status["networks"][0], &status["containers"][0]);
        assert!(net.get("subnet").is_none(), "{net}");
        assert_eq!(
            (&net["subnet6"], &net["gateway6"], &net["gateway"]),
            (&json!("2001:db8:89::/64"), &json!(GATEWAY6), &json!(null)),
            "{net}"
        );
        assert!(c.get("ip").is_none(), "{c}");
        assert_eq!(c["ip6"], WEB, "{c}");
        assert!(
            status["problems"].as_array().unwrap().is_empty(),
            "{status}"
        );
        // down leaves the host as before, in both families.
        h.netplane_ok(&["down"]);
        unchanged(&h, &before, "after down");
    });
}

#[test]
fn bad_ipv6_only_input_is_refused_and_changes_nothing() {
    each_mode("ipv6_only::bad_input", |mode| {
        let h = Host::new().with_ipv6();
        let before = snapshots(&h);
        for (body, field, value) in [
            (
                V6_ONLY.replace("subnet6 = \"2001:db8:89::/64\"\n", ""),
                "networks[0].name",
                "np6",
            ),
            (
                V6_ONLY.replace("\"8080:80\"", "\"0.0.0.0:8080:80\""),
                "containers[0].publish[0]",
                "0.0.0.0:8080:80",
            ),
        ] {
            h.write_config(&format!("mode = \"{mode}\"\n{body}"));
            let out = h.netplane(&["up"]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "accepted:\n{body}");
            assert!(
                err.contains(&format!("{field} = \"{value}\"")),
                "the error should name {field} = {value:?}: {err}"
            );
            unchanged(&h, &before, &format!("a refused up of\n{body}"));
        }
    });
}

#[test]
fn an_ipv6_only_cni_lease_in_both_modes() {
    each_mode("ipv6_only::cni", |mode| {
        let mut h = Host::new().with_ipv6();
        let c1 = h.sandbox.netns("c1");
        let d = Direct::new(&h.sandbox, &h.host, "v6", 60, mode);
        // host-local with one IPv6 range: an IPv6-only lease.
        let mut conf = d.conf("1.0.0", &[(8500, 80, "tcp", "")]);
        conf["ipam"]["ranges"] = json!([[{"subnet": "2001:db8:60::/64"}]]);
        conf["ipam"]["routes"] = json!([{"dst": "::/0"}]);
        let r = d.invoke("ADD", "ctr6", &c1.path(), "eth0", &conf);
        let res = r.result().clone();
        assert_eq!(
            res["ips"],
            json!([{"address": "2001:db8:60::2/64", "gateway": "2001:db8:60::1", "interface": 2}]),
            "{res}"
        );
        // Out, masqueraded; in, through the published port, seeing the real client.
        let seen = tcp_exchange(
            &h.outside,
            "[::]:7000",
            &c1,
            &format!("[{OUTSIDE_IP6}]:7000"),
            "v6",
        );
        assert!(seen.ends_with(&format!("from {UPLINK_IP6}")), "{seen}");
        let seen = tcp_exchange(
            &c1,
            "[::]:80",
            &h.outside,
            &format!("[{UPLINK_IP6}]:8500"),
            "in6",
        );
        assert!(seen.ends_with(&format!("from {OUTSIDE_IP6}")), "{seen}");
        let status = d.net.status();
        assert!(status["networks"][0].get("subnet").is_none(), "{status}");
        let mut with_prev = conf.clone();
        with_prev["prevResult"] = res.clone();
        let r = d.invoke("CHECK", "ctr6", &c1.path(), "eth0", &with_prev);
        assert!(r.ok, "{} {}", r.json, r.stderr);
        assert!(d.invoke("DEL", "ctr6", &c1.path(), "eth0", &conf).ok);
        assert!(d.leases().is_empty());
    });
}

/// One host's config (without `mode`): an IPv6-only network `name` on `subnet6`, with
/// container `c`, and an IPv6 route to the other host's subnet `other` via its underlay
/// address `via`.
fn routed_host(name: &str, subnet6: &str, c: &str, other: &str, via: &str) -> String {
    format!(
        "[[networks]]\nname = \"{name}\"\nsubnet6 = \"{subnet6}\"\n\
         [[containers]]\nname = \"{c}\"\nnetwork = \"{name}\"\n\
         [[routes]]\nsubnet = \"{other}\"\nvia = \"{via}\"\n"
    )
}

/// The address of the first container of a network on `subnet6` (its `::2`).
fn first_container(subnet6: &str) -> String {
    subnet6.replace("::/64", "::2")
}

/// One TCP exchange; what the server saw, or the client's error.
fn tcp(server: &Netns, from: &Netns, target: &str) -> Result<String, String> {
    let _server = Server::start(server, &["serve-tcp", "[::]:80"]);
    client(from, &["send-tcp", target, "hello"])
}

#[test]
fn ipv6_routes_make_two_hosts_containers_peers_in_both_modes() {
    each_mode("ipv6_only::routes", |mode| {
        let w = World::new().with_ipv6();
        let (a, b) = (&w.a, &w.b);
        let before = (snapshots(a), snapshots(b));
        a.write_config(&format!(
            "mode = \"{mode}\"\n{}",
            routed_host("npa", A_SUBNET6, "web", B_SUBNET6, B_IP6)
        ));
        b.write_config(&format!(
            "mode = \"{mode}\"\n{}",
            routed_host("npb", B_SUBNET6, "app", A_SUBNET6, A_IP6)
        ));
        a.netplane_ok(&["up"]);
        b.netplane_ok(&["up"]);
        let (web, app) = (a.container("web"), b.container("app"));
        let (web6, app6) = (first_container(A_SUBNET6), first_container(B_SUBNET6));
        // Peers both ways, each seeing the other's own address (nat mode on both hosts:
        // only the routed subnet is exempt from masquerade and from the protection
        // against direct routing).
        let seen = tcp(&app, &web, &format!("[{app6}]:80"));
        assert_eq!(seen, Ok(format!("hello from {web6}")), "A's web -> B's app");
        let seen = tcp(&web, &app, &format!("[{web6}]:80"));
        assert_eq!(seen, Ok(format!("hello from {app6}")), "B's app -> A's web");
        // Anything else is masqueraded: node02 sees host A's underlay address.
        let seen = tcp(&w.node02, &web, &format!("[{NODE02_IP6}]:80"));
        assert_eq!(seen, Ok(format!("hello from {A_IP6}")), "A's web -> node02");
        let routes = a.host.sh(&["ip", "-6", "route", "show", B_SUBNET6]);
        assert!(
            routes.contains(&format!("via {B_IP6}")) && routes.contains("proto static"),
            "{routes}"
        );
        a.netplane_ok(&["down"]);
        b.netplane_ok(&["down"]);
        unchanged(a, &before.0, "host A after down");
        unchanged(b, &before.1, "host B after down");
    });
}
