//! Docker 28's gateway modes on one host, seen from outside by a neighbour that routes the
//! container subnets to the host (as a remote host with a static route would): what
//! reaches a container directly, what reaches it through a published host port, and with
//! which source address its own connections leave. Every mode, both drivers (an isolated
//! network needs a bridge: the config refuses ptp + isolated).
//!
//! The multi-host world of seed 004 is in `multihost.rs`; this is the single-host matrix.
#![expect(
    unused_crate_dependencies,
    reason = "an integration test sees every dependency of the harness crate; its library target is where an unused one shows"
)]

use netplane_tests::host::{Host, OUTSIDE_IP, Server, UPLINK_IP, client, pings};
use netplane_tests::{Netns, each_mode_and_driver};

const WEB: &str = "10.89.0.2";

/// The one network (`npa`, 10.89.0.0/24) of `driver` in `gateway_mode`, with `web`
/// publishing 8080:80 (nothing on an isolated network, which may publish nothing).
fn config(mode: &str, driver: &str, gateway_mode: &str) -> String {
    let publish = if gateway_mode == "isolated" {
        "[]"
    } else {
        "[\"8080:80\"]"
    };
    format!(
        "mode = \"{mode}\"\n[[networks]]\nname = \"npa\"\nsubnet = \"10.89.0.0/24\"\n\
         driver = \"{driver}\"\ngateway_mode = \"{gateway_mode}\"\n\
         [[containers]]\nname = \"web\"\nnetwork = \"npa\"\npublish = {publish}\n"
    )
}

/// Whether a TCP connection from `from` to `target` is refused (nobody answers within
/// nptest's timeout, or a reset).
fn refused(from: &Netns, target: &str) -> bool {
    client(from, &["send-tcp", target, "x"]).is_err()
}

/// What the outside sees of the container, in one gateway mode: direct connections to a
/// published container port (80) and an unpublished one (81), ping, the published host
/// port, and the source of the container's own connection out. The slow checks (those
/// that wait for a timeout) run at once.
#[derive(Debug, PartialEq)]
struct Seen {
    direct_published: bool,
    direct_unpublished: bool,
    ping: bool,
    host_port: bool,
    /// The address the outside's server saw the container's connection come from, if it
    /// came.
    out_from: Option<String>,
}

fn look(h: &Host) -> Seen {
    let web = h.container("web");
    let _servers = [
        Server::start(&web, &["serve-tcp", "0.0.0.0:80", "100"]),
        Server::start(&web, &["serve-tcp", "0.0.0.0:81", "100"]),
    ];
    let _out = Server::start(&h.outside, &["serve-tcp", "0.0.0.0:7000", "100"]);
    std::thread::scope(|s| {
        let direct_published = s.spawn(|| !refused(&h.outside, &format!("{WEB}:80")));
        let direct_unpublished = s.spawn(|| !refused(&h.outside, &format!("{WEB}:81")));
        let ping = s.spawn(|| pings(&h.outside, WEB));
        let host_port = s.spawn(|| !refused(&h.outside, &format!("{UPLINK_IP}:8080")));
        let out_from = s.spawn(|| {
            client(&web, &["send-tcp", &format!("{OUTSIDE_IP}:7000"), "out"])
                .ok()
                .and_then(|a| a.strip_prefix("out from ").map(str::to_owned))
        });
        Seen {
            direct_published: direct_published.join().unwrap(),
            direct_unpublished: direct_unpublished.join().unwrap(),
            ping: ping.join().unwrap(),
            host_port: host_port.join().unwrap(),
            out_from: out_from.join().unwrap(),
        }
    })
}

#[test]
fn what_reaches_a_container_follows_its_gateway_mode() {
    each_mode_and_driver(
        "what_reaches_a_container_follows_its_gateway_mode",
        |mode, driver| {
            let h = Host::new();
            // The neighbour routes the container subnet to the host, as seed 004's node02.
            h.outside
                .sh(&["ip", "route", "add", "10.89.0.0/24", "via", UPLINK_IP]);
            let modes: &[&str] = if driver == "ptp" {
                &["nat", "nat-unprotected", "routed"]
            } else {
                &["nat", "nat-unprotected", "routed", "isolated"]
            };
            // One host, converged from mode to mode by `up`, as a user would change it.
            for gateway_mode in modes {
                h.write_config(&config(mode, driver, gateway_mode));
                h.netplane_ok(&["up"]);
                if mode == "ebpf" {
                    // The flows the last mode admitted went with it: each meets the new
                    // mode's rules as a new flow (as after `conntrack -D`).
                    let flows = h.netplane_ok(&["conntrack", "--json"]);
                    assert!(
                        !flows.contains(WEB),
                        "{driver}, {gateway_mode}: flows of the old mode left:\n{flows}"
                    );
                }
                let seen = look(&h);
                // A UDP flow the container opens, which outlives this mode (TCP flows of
                // `look` close): the next mode's `up` must not leave it behind.
                let _udp = Server::start(&h.outside, &["serve-udp", "0.0.0.0:5300", "1"]);
                let _ = client(
                    &h.container("web"),
                    &["send-udp", &format!("{OUTSIDE_IP}:5300"), "10"],
                );
                let want = match *gateway_mode {
                    // Only the published host port; out masqueraded.
                    "nat" => Seen {
                        direct_published: false,
                        direct_unpublished: false,
                        ping: false,
                        host_port: true,
                        out_from: Some(UPLINK_IP.into()),
                    },
                    // Every container port directly too.
                    "nat-unprotected" => Seen {
                        direct_published: true,
                        direct_unpublished: true,
                        ping: true,
                        host_port: true,
                        out_from: Some(UPLINK_IP.into()),
                    },
                    // No NAT: the published container port and ping directly, no host port,
                    // out with the container's own address.
                    "routed" => Seen {
                        direct_published: true,
                        direct_unpublished: false,
                        ping: true,
                        host_port: false,
                        out_from: Some(WEB.into()),
                    },
                    // Nothing in or out.
                    _ => Seen {
                        direct_published: false,
                        direct_unpublished: false,
                        ping: false,
                        host_port: false,
                        out_from: None,
                    },
                };
                assert_eq!(
                    seen, want,
                    "{mode}, {driver}, gateway_mode = {gateway_mode}"
                );
                // iptables mode lets 127.0.0.1-DNATed packets out of the network's device
                // only while the network publishes host ports (nat modes); the value from
                // before comes back when it stops.
                let device = if driver == "bridge" {
                    "npa".to_owned()
                } else {
                    h.host_veth("web")
                };
                let route_localnet = h.host.sh(&[
                    "sysctl",
                    "-n",
                    &format!("net.ipv4.conf.{device}.route_localnet"),
                ]);
                let nat = matches!(*gateway_mode, "nat" | "nat-unprotected");
                assert_eq!(
                    route_localnet.trim(),
                    if mode == "iptables" && nat { "1" } else { "0" },
                    "{mode}, {driver}, {gateway_mode}: route_localnet on {device}"
                );
                if *gateway_mode == "isolated" {
                    let web = h.container("web");
                    assert_eq!(
                        web.sh(&["ip", "route", "show", "default"]).trim(),
                        "",
                        "the default route went with the gateway"
                    );
                    // A container that makes its own way out through the bridge (the
                    // host routes what reaches it) is still stopped by the data plane.
                    let mac = h.host.mac("npa");
                    web.sh(&[
                        "ip",
                        "neigh",
                        "replace",
                        "10.89.0.1",
                        "lladdr",
                        &mac,
                        "dev",
                        "eth0",
                    ]);
                    web.sh(&[
                        "ip",
                        "route",
                        "add",
                        "default",
                        "via",
                        "10.89.0.1",
                        "dev",
                        "eth0",
                        "onlink",
                    ]);
                    assert_eq!(
                        look(&h).out_from,
                        None,
                        "{mode}: out of an isolated network"
                    );
                }
                if mode == "ebpf" {
                    let drops = h.all_drops();
                    let reason = match *gateway_mode {
                        "nat" | "routed" => Some("direct-routing"),
                        "isolated" => Some("isolated-network"),
                        _ => None,
                    };
                    if let Some(reason) = reason {
                        assert!(
                            drops.get(reason).copied().unwrap_or(0) > 0,
                            "{reason}: {drops:?}"
                        );
                    }
                }
            }
            h.netplane_ok(&["down"]);
        },
    );
}
