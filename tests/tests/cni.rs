//! End-to-end: real Podman and containerd containers on netplane-cni, in each mode of
//! `netplane_tests::MODES`. The runtimes run in the sandbox's host namespace with their own
//! config, storage and CNI dirs (`netplane_tests::cni`); the outside namespace
//! (203.0.113.2) has no route to the container subnet, so a reply reaches a container only
//! if the host translated it. Every server answers `<message> from <the client address it
//! saw>`, so each check proves both that the bytes arrived and who they came from.
#![expect(
    unused_crate_dependencies,
    reason = "an integration test sees every dependency of the harness crate; its library target is where an unused one shows"
)]

use netplane_tests::cni::{CniNetwork, Containerd, CtrRun, Podman};
use netplane_tests::each_mode;
use netplane_tests::host::{Host, OUTSIDE_IP, Server, UPLINK_IP, client};
use serde_json::Value;

/// What `web` publishes: TCP and UDP on every host address, and TCP on 127.0.0.1 only.
const WEB_PORTS: &[&str] = &["8080:80", "5353:53/udp", "127.0.0.1:8081:80"];
/// The same, as `netplane status` shows a container's publish specs.
const WEB_PUBLISH: &[&str] = &["8080:80/tcp", "5353:53/udp", "127.0.0.1:8081:80/tcp"];

/// A sandboxed host with one CNI network of netplane-cni in `mode` and a runtime `R` on
/// it. Fields drop in order: the runtime's containers go (their DELs run) before the
/// host's namespaces (and the instance's `down`).
struct World<R> {
    runtime: R,
    net: CniNetwork,
    h: Host,
}

impl World<Podman> {
    /// Podman, with network 10.89.7.0/24.
    fn podman(mode: &str) -> Self {
        let h = Host::new();
        let net = CniNetwork::new(&h.sandbox, &h.host, "c", 7, mode);
        let runtime = Podman::new(&h.sandbox, &h.host);
        runtime.add_network(&net);
        World { runtime, net, h }
    }
}

impl World<Containerd> {
    /// containerd, with network 10.89.8.0/24.
    fn containerd(mode: &str) -> Self {
        let h = Host::new();
        let net = CniNetwork::new(&h.sandbox, &h.host, "c", 8, mode);
        let runtime = Containerd::start(&h.sandbox, &h.host);
        runtime.add_network(&net);
        World { runtime, net, h }
    }
}

impl<R> World<R> {
    /// The container attached with `ip`, in `status --json` of the network's instance.
    fn attached(&self, ip: &str) -> Option<Value> {
        self.net.status()["containers"]
            .as_array()?
            .iter()
            .find(|c| c["ip"] == ip)
            .cloned()
    }

    /// Whether the host namespace has a link named `ifname`.
    fn has_link(&self, ifname: &str) -> bool {
        self.h.host.links().iter().any(|l| l.ifname() == ifname)
    }

    /// The port mappings the data plane holds: DNAT rules (iptables), entries of the
    /// published-ports map (eBPF).
    fn port_mappings(&self) -> u64 {
        let status = self.net.status();
        let health = &status["dataplane_health"];
        let n = match self.net.mode.as_str() {
            "iptables" => health["dnat_rules"].as_u64(),
            _ => health["maps"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|m| m["name"] == "NP_PUBLISHED")
                .and_then(|m| m["entries"].as_u64()),
        };
        n.unwrap_or_else(|| panic!("no port mapping count in {status}"))
    }

    /// The end of every test: `netplane down` of the network's instance succeeds, and
    /// neither a host veth of netplane's nor the bridge is left in the host namespace.
    fn down(&self) {
        self.net.netplane_ok(&["down"]);
        assert_eq!(
            self.net.host_veths(),
            Vec::<String>::new(),
            "vnp* links left"
        );
        assert!(!self.has_link(&self.net.bridge), "the bridge is left");
    }
}

#[test]
fn podman_containers_get_addresses_nat_and_published_ports() {
    each_mode(
        "podman_containers_get_addresses_nat_and_published_ports",
        |mode| {
            let w = World::podman(mode);
            let (p, net, h) = (&w.runtime, &w.net, &w.h);
            let web = p.run_servers("web", net, WEB_PORTS);
            let peer = p.run_servers("peer", net, &[]);
            if std::env::var_os("PANIC_NOW").is_some() {
                panic!("deliberate");
            }
            let gw = &net.gateway;

            // Inside the container: its address on eth0 and its default route.
            let addr = p.exec("web", &["ip", "-4", "-o", "addr", "show", "dev", "eth0"]);
            let addr = String::from_utf8_lossy(&addr.stdout);
            assert!(web.ip.starts_with("10.89.7."), "address {}", web.ip);
            assert!(addr.contains(&format!("inet {}/24", web.ip)), "{addr}");
            let routes = p.exec("web", &["ip", "-4", "route"]);
            let routes = String::from_utf8_lossy(&routes.stdout);
            assert!(
                routes.contains(&format!("default via {gw} dev eth0")),
                "{routes}"
            );
            // netplane's record of it: the runtime's netns and interface, a host veth,
            // the port mappings.
            let c = w.attached(&web.ip).expect("web in status");
            let netns = format!("/run/netns/{}", web.netns.name);
            assert_eq!(c["netns"], netns.as_str(), "{c}");
            assert_eq!(c["container_veth"], "eth0", "{c}");
            assert_eq!(c["attachment"]["container_id"], web.id.as_str(), "{c}");
            assert_eq!(c["attachment"]["ifname"], "eth0", "{c}");
            assert_eq!(c["attachment"]["netns"], netns.as_str(), "{c}");
            let veth = c["host_veth"].as_str().unwrap();
            assert!(veth.starts_with("vnp") && w.has_link(veth), "{c}");
            let mut publish: Vec<&str> = c["publish"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_str().unwrap())
                .collect();
            publish.sort();
            let mut expected = WEB_PUBLISH.to_vec();
            expected.sort();
            assert_eq!(publish, expected, "{c}");

            // Container ↔ container on the network, untranslated.
            let c2c = p.nptest("peer", &["send-tcp", &format!("{}:80", web.ip), "c2c"]);
            assert_eq!(c2c.unwrap(), format!("c2c from {}", peer.ip));
            let c2c = p.nptest("peer", &["send-udp", &format!("{}:53", web.ip), "100"]);
            assert_eq!(c2c.unwrap(), format!("100 bytes from {}", peer.ip));

            // Masquerade: the outside sees the uplink's address, for TCP and UDP.
            let _tcp = Server::start(&h.outside, &["serve-tcp", "0.0.0.0:7000"]);
            let masq = p.nptest("web", &["send-tcp", &format!("{OUTSIDE_IP}:7000"), "masq"]);
            assert_eq!(masq.unwrap(), format!("masq from {UPLINK_IP}"), "TCP");
            let _udp = Server::start(&h.outside, &["serve-udp", "0.0.0.0:7001"]);
            let masq = p.nptest("web", &["send-udp", &format!("{OUTSIDE_IP}:7001"), "200"]);
            assert_eq!(masq.unwrap(), format!("200 bytes from {UPLINK_IP}"), "UDP");

            // Published ports from outside: the server sees the real client.
            let uplink = |port: u16| format!("{UPLINK_IP}:{port}");
            let answer = client(&h.outside, &["send-tcp", &uplink(8080), "in"]);
            assert_eq!(answer.unwrap(), format!("in from {OUTSIDE_IP}"), "TCP");
            let answer = client(&h.outside, &["send-udp", &uplink(5353), "64"]);
            assert_eq!(
                answer.unwrap(),
                format!("64 bytes from {OUTSIDE_IP}"),
                "UDP"
            );

            // From the host, on its uplink address and on 127.0.0.1 (with a source
            // address that can leave the host: the network's gateway).
            let answer = client(&h.host, &["send-tcp", &uplink(8080), "up"]);
            assert_eq!(answer.unwrap(), format!("up from {UPLINK_IP}"));
            let answer = client(&h.host, &["send-tcp", "127.0.0.1:8081", "lo"]);
            assert_eq!(answer.unwrap(), format!("lo from {gw}"));
            // The 127.0.0.1 mapping is not reachable from outside.
            assert!(
                client(&h.outside, &["send-tcp", &uplink(8081), "x"]).is_err(),
                "127.0.0.1-only port reached from outside"
            );

            // Hairpin: a container reaches its own published port, and a peer reaches it,
            // through the host's uplink address; the replies come back through the host.
            let answer = p.nptest("web", &["send-tcp", &uplink(8080), "self"]);
            assert_eq!(answer.unwrap(), format!("self from {gw}"));
            let answer = p.nptest("peer", &["send-tcp", &uplink(8080), "peer"]);
            assert_eq!(answer.unwrap(), format!("peer from {gw}"));

            p.rm("web");
            p.rm("peer");
            w.down();
        },
    );
}

#[test]
fn podman_rm_removes_everything_and_the_port_serves_the_next_container() {
    each_mode(
        "podman_rm_removes_everything_and_the_port_serves_the_next_container",
        |mode| {
            let w = World::podman(mode);
            let (p, net, h) = (&w.runtime, &w.net, &w.h);
            let uplink = |port: u16| format!("{UPLINK_IP}:{port}");
            let web = p.run_servers("web", net, WEB_PORTS);
            let c = w.attached(&web.ip).expect("web in status");
            let veth = c["host_veth"].as_str().unwrap().to_owned();
            assert_eq!(p.leases(net), [web.ip.as_str()], "host-local's lease");
            assert!(w.port_mappings() > 0, "no port mapping for web");
            // A client that keeps its source port: after this exchange the host has a
            // flow for it, translated to this container.
            let udp = ["send-udp", &uplink(5353), "10", "40000"];
            let answer = client(&h.outside, &udp);
            assert_eq!(answer.unwrap(), format!("10 bytes from {OUTSIDE_IP}"));

            // podman rm: DEL removes the veth, the lease, the port mappings.
            p.rm("web");
            assert!(!w.has_link(&veth), "host veth {veth} left");
            assert_eq!(net.host_veths(), Vec::<String>::new(), "vnp* links left");
            assert_eq!(p.leases(net), Vec::<String>::new(), "lease left");
            let status = net.status();
            assert_eq!(status["containers"], serde_json::json!([]), "{status}");
            assert_eq!(w.port_mappings(), 0, "port mappings left: {status}");
            if mode == "iptables" {
                let rules = h.host.sh(&["iptables-save"]);
                assert!(
                    !rules.contains(&web.ip),
                    "rules of {} left:\n{rules}",
                    web.ip
                );
            }
            assert!(
                client(&h.outside, &["send-tcp", &uplink(8080), "x"]).is_err(),
                "the published port still answers"
            );
            // The client goes on sending while nothing is published: the host now holds
            // a flow of it that is not translated (with iptables, a conntrack entry).
            assert!(
                client(&h.outside, &udp).is_err(),
                "the published UDP port still answers"
            );
            // A runtime may repeat DEL, without a netns: it succeeds.
            let del = p.cni_del(net, &web.id, "");
            assert!(
                del.status.success(),
                "repeated DEL: {}{}",
                String::from_utf8_lossy(&del.stdout),
                String::from_utf8_lossy(&del.stderr)
            );

            // A new container takes the same ports, on another address...
            let next = p.run_servers("next", net, WEB_PORTS);
            assert_ne!(next.ip, web.ip);
            let answer = client(&h.outside, &["send-tcp", &uplink(8080), "again"]);
            assert_eq!(answer.unwrap(), format!("again from {OUTSIDE_IP}"));
            // ... and the client's UDP flow, same source port, reaches it: the flow to
            // the removed container is gone (no blackhole until its conntrack entry
            // would have expired).
            let answer = client(&h.outside, &udp);
            assert_eq!(answer.unwrap(), format!("10 bytes from {OUTSIDE_IP}"));

            p.rm("next");
            w.down();
        },
    );
}

#[test]
fn ctr_run_cni_container_gets_an_address_and_masquerade_and_del_cleans_up() {
    each_mode("ctr_run_cni_container", |mode| {
        let w = World::containerd(mode);
        let (ctrd, net, h) = (&w.runtime, &w.net, &w.h);
        let _tcp = Server::start(&h.outside, &["serve-tcp", "0.0.0.0:7000"]);
        let _udp = Server::start(&h.outside, &["serve-udp", "0.0.0.0:7001"]);
        let script = format!(
            "ip -4 -o addr show dev eth0; ip -4 route; \
             /nptest send-tcp {OUTSIDE_IP}:7000 ctr; /nptest send-udp {OUTSIDE_IP}:7001 50; \
             echo ready; {}",
            CtrRun::HOLD
        );
        let mut run = ctrd.run_cni("box", &script);
        let out = run.read_until("ready");
        if std::env::var_os("PANIC_NOW").is_some() {
            panic!("deliberate");
        }
        let ip = out
            .split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|a| a.strip_suffix("/24"))
            .unwrap_or_else(|| panic!("no address on eth0:\n{out}"))
            .to_owned();
        assert!(ip.starts_with("10.89.8."), "{out}");
        assert!(
            out.contains(&format!("default via {} dev eth0", net.gateway)),
            "{out}"
        );
        assert!(out.contains(&format!("ctr from {UPLINK_IP}")), "TCP: {out}");
        assert!(
            out.contains(&format!("50 bytes from {UPLINK_IP}")),
            "UDP: {out}"
        );
        assert_eq!(ctrd.leases(net), [ip.as_str()], "host-local's lease");
        let c = w.attached(&ip).expect("the container in status");
        let veth = c["host_veth"].as_str().unwrap().to_owned();
        assert!(w.has_link(&veth), "{c}");

        // The container exits; ctr calls DEL with an empty CNI_NETNS.
        run.release();
        let done = run.wait();
        assert!(
            done.status.success(),
            "ctr run: {}\n{}",
            done.status,
            String::from_utf8_lossy(&done.stderr)
        );
        assert!(!w.has_link(&veth), "host veth {veth} left");
        assert!(w.attached(&ip).is_none(), "still attached");
        assert_eq!(net.host_veths(), Vec::<String>::new(), "vnp* links left");
        assert_eq!(ctrd.leases(net), Vec::<String>::new(), "lease left");
        w.down();
    });
}
