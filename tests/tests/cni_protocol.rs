//! netplane-cni through the CNI protocol itself (tests/src/cni_plugin.rs): the result of
//! ADD, the cases of DEL that the reference plugins leak in, CHECK, GC, STATUS, VERSION,
//! failures that must leave nothing, and concurrent ADDs and DELs. Real runtimes drive it
//! in tests/tests/cni.rs.
#![expect(
    unused_crate_dependencies,
    reason = "an integration test sees every dependency of the harness crate; its library target is where an unused one shows"
)]

use netplane_tests::cni_plugin::Direct;
use netplane_tests::host::{Host, OUTSIDE_IP, UPLINK_IP, tcp_exchange, udp_exchange};
use netplane_tests::http::{promtool_check, sample, scrape};
use netplane_tests::{each_mode, privileged};
use serde_json::{Value, json};

const V: &str = "1.0.0";

/// `ip -o -4 addr` of `ifname` in `ns`, and its routes.
fn inside(ns: &netplane_tests::Netns, ifname: &str) -> (String, String) {
    (
        ns.sh(&["ip", "-o", "-4", "addr", "show", "dev", ifname]),
        ns.sh(&["ip", "route"]),
    )
}

#[test]
fn version_answers_every_supported_version() {
    if !privileged("cni_protocol::version") {
        return;
    }
    let mut h = Host::new();
    let d = Direct::new(&h.sandbox, &h.host, "v", 40, "ebpf");
    let r = d.invoke("VERSION", "", "", "", &json!({"cniVersion": "1.1.0"}));
    let versions: Vec<&str> = r.result()["supportedVersions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for v in ["0.4.0", "1.0.0", "1.1.0"] {
        assert!(versions.contains(&v), "{v} missing from {versions:?}");
    }
    // A version it does not speak is code 1, and nothing is touched.
    let mut conf = d.conf(V, &[]);
    conf["cniVersion"] = "2.0.0".into();
    let c = h.sandbox.netns("c");
    let r = d.invoke("ADD", "bad", &c.path(), "eth0", &conf);
    assert_eq!(r.code(), 1, "{}", r.json);
    assert!(d.leases().is_empty());
    // An unknown command is an invalid environment (code 4).
    assert_eq!(d.invoke("FROB", "x", "", "eth0", &d.conf(V, &[])).code(), 4);
}

#[test]
fn add_check_del_and_the_result() {
    each_mode("cni_protocol::add_check_del", |mode| {
        let mut h = Host::new();
        let d = Direct::new(&h.sandbox, &h.host, "a", 41, mode);
        let c1 = h.sandbox.netns("c1");
        let ports = [(8080, 80, "tcp", ""), (5353, 53, "udp", "")];
        for version in ["0.4.0", V, "1.1.0"] {
            let mut conf = d.conf(version, &ports);
            conf["mtu"] = json!(1400);
            let r = d.invoke("ADD", "ctr1", &c1.path(), "eth0", &conf);
            let res = r.result().clone();
            // interfaces: the bridge, the host veth, the container's with its sandbox;
            // the address names the container's interface by index.
            let ifs = res["interfaces"].as_array().unwrap();
            assert_eq!(ifs[0]["name"], json!(d.net.bridge));
            assert!(ifs[1]["name"].as_str().unwrap().starts_with("vnp"), "{res}");
            assert_eq!(ifs[2]["name"], json!("eth0"));
            assert_eq!(ifs[2]["sandbox"], json!(c1.path()));
            let ip = &res["ips"][0];
            assert_eq!(ip["interface"], json!(2));
            assert_eq!(ip["gateway"], json!(d.net.gateway));
            let addr = ip["address"].as_str().unwrap().to_owned();
            assert!(
                addr.starts_with("10.89.41.") && addr.ends_with("/24"),
                "{addr}"
            );
            assert_eq!(ip.get("version").is_some(), version == "0.4.0", "{res}");
            assert!(
                res["routes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|r| r["dst"] == "0.0.0.0/0")
            );
            assert_eq!(res["cniVersion"], json!(version));
            // What the result says is what exists.
            // The bridge plugin's `mtu`: both veth ends and the bridge.
            let veth = ifs[1]["name"].as_str().unwrap();
            for (ns, dev) in [
                (&c1, "eth0"),
                (&d.net.host, veth),
                (&d.net.host, d.net.bridge.as_str()),
            ] {
                let link = ns.sh(&["ip", "-o", "link", "show", "dev", dev]);
                assert!(link.contains(" mtu 1400 "), "{link}");
            }
            let (a, routes) = inside(&c1, "eth0");
            assert!(a.contains(&addr), "{a}");
            assert!(
                routes.contains(&format!("default via {}", d.net.gateway)),
                "{routes}"
            );
            assert_eq!(d.leases().len(), 1);

            // CHECK with the ADD's result passes.
            let mut with_prev = conf.clone();
            with_prev["prevResult"] = res.clone();
            let r = d.invoke("CHECK", "ctr1", &c1.path(), "eth0", &with_prev);
            assert!(r.ok, "CHECK: {} {}", r.json, r.stderr);
            // The same ADD again: eth0 is taken, code 4, and no second lease.
            let r = d.invoke("ADD", "ctr1", &c1.path(), "eth0", &conf);
            assert_eq!(r.code(), 4, "{}", r.json);
            assert_eq!(d.leases().len(), 1);

            // CHECK finds a broken route, ...
            c1.sh(&["ip", "route", "del", "default"]);
            let r = d.invoke("CHECK", "ctr1", &c1.path(), "eth0", &with_prev);
            assert!(
                r.json["msg"].as_str().unwrap().contains("default route"),
                "{}",
                r.json
            );
            c1.sh(&["ip", "route", "add", "default", "via", &d.net.gateway]);
            assert!(d.invoke("CHECK", "ctr1", &c1.path(), "eth0", &with_prev).ok);
            // ... port mappings that differ from the runtime's, ...
            let mut other = with_prev.clone();
            other["runtimeConfig"]["portMappings"][0]["hostPort"] = json!(8090);
            let r = d.invoke("CHECK", "ctr1", &c1.path(), "eth0", &other);
            assert!(
                r.json["msg"].as_str().unwrap().contains("port mappings"),
                "{}",
                r.json
            );
            // ... and a published port missing from the data plane.
            remove_published_port(&d, mode, 8080);
            let r = d.invoke("CHECK", "ctr1", &c1.path(), "eth0", &with_prev);
            assert!(
                r.json["msg"].as_str().unwrap().contains("8080"),
                "{}",
                r.json
            );

            // DEL removes the veth, the lease and the ports; again, it still succeeds.
            let veth = ifs[1]["name"].as_str().unwrap().to_owned();
            for _ in 0..2 {
                let r = d.invoke("DEL", "ctr1", &c1.path(), "eth0", &with_prev);
                assert!(r.ok, "DEL: {} {}", r.json, r.stderr);
            }
            assert!(!d.net.host_veths().contains(&veth));
            assert!(d.leases().is_empty());
            assert!(
                c1.sh(&["ip", "-o", "link"])
                    .lines()
                    .all(|l| !l.contains("eth0"))
            );
            let status = d.net.status();
            assert_eq!(status["containers"], json!([]), "{status}");
        }
        h.renew();
    });
}

/// Takes host port `port` out of what the data plane programmed, behind netplane's back.
fn remove_published_port(d: &Direct, mode: &str, port: u16) {
    if mode == "iptables" {
        let saved = d.net.host.sh(&["iptables-save", "-t", "nat"]);
        let rule = saved
            .lines()
            .find(|l| l.starts_with("-A NETPLANE-DNAT") && l.contains(&format!("--dport {port} ")))
            .unwrap_or_else(|| panic!("no DNAT rule for {port}: {saved}"));
        let mut args = vec!["iptables", "-t", "nat", "-D"];
        args.extend(rule.trim_start_matches("-A ").split_whitespace());
        d.net.host.sh(&args);
    } else {
        use aya::maps::{HashMap, MapData};
        use netplane_common::nat::{Backend, PortKey, maps};
        let pin = std::path::Path::new(netplane::dataplane::ebpf::PIN_ROOT)
            .join(d.net.instance())
            .join(maps::PUBLISHED);
        let mut m: HashMap<MapData, PortKey, Backend> =
            HashMap::try_from(aya::maps::Map::HashMap(MapData::from_pin(&pin).unwrap())).unwrap();
        let key = m
            .keys()
            .filter_map(Result::ok)
            .find(|k| u16::from_be(k.port) == port)
            .expect("the port's entry");
        m.remove(&key).unwrap();
    }
}

#[test]
fn del_when_the_netns_is_gone_or_empty_and_without_prev_result() {
    each_mode("cni_protocol::del_cases", |mode| {
        let mut h = Host::new();
        let d = Direct::new(&h.sandbox, &h.host, "d", 42, mode);
        let (c1, c2) = (h.sandbox.netns("c1"), h.sandbox.netns("c2"));
        let conf1 = d.conf(V, &[(8081, 80, "tcp", ""), (5354, 53, "udp", "")]);
        let conf2 = d.conf(V, &[(8082, 80, "tcp", "127.0.0.1")]);
        assert!(d.invoke("ADD", "ctr1", &c1.path(), "eth0", &conf1).ok);
        assert!(d.invoke("ADD", "ctr2", &c2.path(), "eth0", &conf2).ok);
        assert_eq!(d.leases().len(), 2);
        assert_eq!(d.net.host_veths().len(), 2);
        // The namespace is gone before DEL (the runtime's container died with it).
        let path1 = c1.path();
        let del = std::process::Command::new("ip")
            .args(["netns", "del"])
            .arg(path1.rsplit('/').next().unwrap())
            .status();
        assert!(del.is_ok_and(|s| s.success()));
        let r = d.invoke("DEL", "ctr1", &path1, "eth0", &conf1);
        assert!(r.ok, "{} {}", r.json, r.stderr);
        // An empty CNI_NETNS and no prevResult (containerd's `ctr run --rm`).
        let r = d.invoke("DEL", "ctr2", "", "eth0", &conf2);
        assert!(r.ok, "{} {}", r.json, r.stderr);
        assert!(d.leases().is_empty());
        assert!(d.net.host_veths().is_empty());
        let status = d.net.status();
        assert_eq!(status["containers"], json!([]), "{status}");
        if mode == "iptables" {
            let saved = d.net.host.sh(&["iptables-save", "-t", "nat"]);
            assert!(!saved.contains("--to-destination 10.89.42."), "{saved}");
        } else {
            assert_eq!(map_entries(&status, "NP_PUBLISHED"), 0, "{status}");
            assert_eq!(map_entries(&status, "NP_ENDPOINTS"), 0, "{status}");
        }
        // DEL of what never was, and of a network that is not up, succeed too.
        assert!(d.invoke("DEL", "never", "", "eth0", &conf1).ok);
        let other = Direct::new(&h.sandbox, &h.host, "dx", 43, mode);
        assert!(
            other
                .invoke("DEL", "never", "", "eth0", &other.conf(V, &[]))
                .ok
        );
        h.renew();
    });
}

fn map_entries(status: &Value, map: &str) -> u64 {
    status["dataplane_health"]["maps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == map)
        .map_or_else(
            || panic!("no map {map}: {status}"),
            |m| m["entries"].as_u64().unwrap(),
        )
}

#[test]
fn a_failed_add_leaks_nothing() {
    each_mode("cni_protocol::failed_add", |mode| {
        let mut h = Host::new();
        let d = Direct::new(&h.sandbox, &h.host, "f", 44, mode);
        let (c1, c2) = (h.sandbox.netns("c1"), h.sandbox.netns("c2"));
        assert!(
            d.invoke(
                "ADD",
                "ctr1",
                &c1.path(),
                "eth0",
                &d.conf(V, &[(8083, 80, "tcp", "")])
            )
            .ok
        );
        let before = (
            d.leases(),
            d.net.host_veths(),
            d.net.status()["containers"].clone(),
        );
        // The same host port for another container: refused after the lease was taken.
        let r = d.invoke(
            "ADD",
            "ctr2",
            &c2.path(),
            "eth0",
            &d.conf(V, &[(8083, 81, "tcp", "")]),
        );
        assert_eq!(r.code(), 7, "{}", r.json);
        assert!(
            r.json["msg"]
                .as_str()
                .unwrap()
                .starts_with("runtimeConfig.portMappings[0] = \"8083:81/tcp\": host port 8083"),
            "{}",
            r.json
        );
        // An SCTP mapping: refused before anything is taken.
        let r = d.invoke(
            "ADD",
            "ctr2",
            &c2.path(),
            "eth0",
            &d.conf(V, &[(9, 9, "sctp", "")]),
        );
        assert_eq!(r.code(), 2, "{}", r.json);
        assert_eq!(
            (
                d.leases(),
                d.net.host_veths(),
                d.net.status()["containers"].clone()
            ),
            before
        );
        assert!(
            c2.sh(&["ip", "-o", "link"])
                .lines()
                .all(|l| !l.contains("eth0"))
        );
        h.renew();
    });
}

#[test]
fn concurrent_adds_and_dels() {
    each_mode("cni_protocol::concurrent", |mode| {
        let mut h = Host::new();
        let d = Direct::new(&h.sandbox, &h.host, "p", 45, mode);
        let nss: Vec<_> = (0..8).map(|i| h.sandbox.netns(&format!("c{i}"))).collect();
        let confs: Vec<Value> = (0..8u16)
            .map(|i| d.conf(V, &[(8100 + i, 80, "tcp", "")]))
            .collect();
        let run = |cmd: &str| {
            std::thread::scope(|s| {
                let handles: Vec<_> = nss
                    .iter()
                    .zip(&confs)
                    .enumerate()
                    .map(|(i, (ns, conf))| {
                        let d = &d;
                        let cmd = cmd.to_owned();
                        s.spawn(move || {
                            d.invoke(&cmd, &format!("ctr{i}"), &ns.path(), "eth0", conf)
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap())
                    .collect::<Vec<_>>()
            })
        };
        let adds = run("ADD");
        let mut ips: Vec<String> = adds
            .iter()
            .map(|r| r.result()["ips"][0]["address"].as_str().unwrap().to_owned())
            .collect();
        ips.sort();
        ips.dedup();
        assert_eq!(ips.len(), 8, "{ips:?}");
        let status = d.net.status();
        assert_eq!(status["containers"].as_array().unwrap().len(), 8);
        if mode == "ebpf" {
            // Each ADD wrote its own container's endpoint, and kept the others'.
            assert_eq!(map_entries(&status, "NP_ENDPOINTS"), 8, "{status}");
        }
        // Every container reaches the next one: all eight are wired.
        for (i, ns) in nss.iter().enumerate() {
            let peer = ips[(i + 1) % 8].split('/').next().unwrap().to_owned();
            let out = ns.run(&["ping", "-c1", "-W2", &peer]);
            assert!(out.status.success(), "{} → {peer}: {out:?}", ns.path());
        }
        for r in run("DEL") {
            assert!(r.ok, "{} {}", r.json, r.stderr);
        }
        assert!(d.leases().is_empty());
        assert!(d.net.host_veths().is_empty());
        assert_eq!(d.net.status()["containers"], json!([]));
        h.renew();
    });
}

#[test]
fn gc_removes_attachments_the_runtime_no_longer_has() {
    if !privileged("cni_protocol::gc") {
        return;
    }
    let mut h = Host::new();
    let d = Direct::new(&h.sandbox, &h.host, "g", 46, "ebpf");
    let nss: Vec<_> = (0..3).map(|i| h.sandbox.netns(&format!("c{i}"))).collect();
    for (i, ns) in nss.iter().enumerate() {
        let conf = d.conf("1.1.0", &[(8200 + i as u16, 80, "tcp", "")]);
        assert!(
            d.invoke("ADD", &format!("ctr{i}"), &ns.path(), "eth0", &conf)
                .ok
        );
    }
    let mut conf = d.conf("1.1.0", &[]);
    conf["cni.dev/valid-attachments"] = json!([{"containerID": "ctr0", "ifname": "eth0"}]);
    let r = d.invoke("GC", "", "", "", &conf);
    assert!(r.ok, "{} {}", r.json, r.stderr);
    let status = d.net.status();
    let left: Vec<&str> = status["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["attachment"]["container_id"].as_str().unwrap())
        .collect();
    assert_eq!(left, ["ctr0"]);
    assert_eq!(d.leases().len(), 1);
    assert_eq!(d.net.host_veths().len(), 1);
    assert_eq!(map_entries(&status, "NP_PUBLISHED"), 1, "{status}");
    // The one it kept still works: it reaches the outside.
    let out = nss[0].run(&["ping", "-c1", "-W2", "203.0.113.2"]);
    assert!(out.status.success(), "{out:?}");
    // GC without the list would remove everything: it is refused.
    let r = d.invoke("GC", "", "", "", &d.conf("1.1.0", &[]));
    assert_eq!(r.code(), 7, "{}", r.json);
    assert_eq!(d.leases().len(), 1);
}

#[test]
fn status_says_whether_add_can_be_served() {
    if !privileged("cni_protocol::status") {
        return;
    }
    let h = Host::new();
    for mode in ["ebpf", "iptables"] {
        let d = Direct::new(&h.sandbox, &h.host, &format!("s{mode}"), 47, mode);
        let r = d.invoke("STATUS", "", "", "", &d.conf("1.1.0", &[]));
        assert!(r.ok, "{} {}", r.json, r.stderr);
        // Without its IPAM plugin on CNI_PATH, no ADD could succeed: code 50.
        let r = d.invoke_with_path("STATUS", "", "", "", &d.conf("1.1.0", &[]), "/nonexistent");
        assert_eq!(r.code(), 50, "{}", r.json);
        assert!(
            r.json["msg"].as_str().unwrap().contains("host-local"),
            "{}",
            r.json
        );
    }
}

#[test]
fn a_cni_network_beside_a_netplane_up_instance() {
    each_mode("cni_protocol::beside_up", |mode| {
        let mut h = Host::new();
        h.write_config(&format!(
            "mode = \"{mode}\"\n{}\n[[containers]]\nname = \"web\"\nnetwork = \"npa\"\npublish = [\"8080:80\"]\n",
            netplane_tests::TWO_NETWORKS
        ));
        h.netplane_ok(&["up"]);
        let d = Direct::new(&h.sandbox, &h.host, "b", 48, mode);
        let c1 = h.sandbox.netns("c1");
        let ports = [(8090, 80, "tcp", ""), (5390, 53, "udp", "")];
        let res = d.invoke("ADD", "ctr1", &c1.path(), "eth0", &d.conf(V, &ports));
        let ip = res.result()["ips"][0]["address"].as_str().unwrap();
        let ip = ip.split('/').next().unwrap().to_owned();
        let programs = pinned_programs(&d);
        assert_eq!(programs.is_empty(), mode == "iptables", "{programs:?}");
        let web = h.container("web");
        // Both masquerade to the uplink's address, and both publish, each its own port:
        // the remote client is seen as itself.
        for (ns, port) in [(&c1, "8090"), (&web, "8080")] {
            let seen = tcp_exchange(&h.outside, "0.0.0.0:7000", ns, "203.0.113.2:7000", "out");
            assert!(seen.ends_with(&format!("from {UPLINK_IP}")), "{seen}");
            let seen = tcp_exchange(
                ns,
                "0.0.0.0:80",
                &h.outside,
                &format!("{UPLINK_IP}:{port}"),
                "in",
            );
            assert!(seen.ends_with(&format!("from {OUTSIDE_IP}")), "{seen}");
        }
        // UDP to the CNI container's port, from a fixed client port; then the container
        // is replaced by another that publishes the same port: the same client's next
        // datagram reaches the new one (no stale conntrack entry, plugins#553).
        let target = format!("{UPLINK_IP}:5390");
        let first = udp_exchange(&c1, "0.0.0.0:53", &h.outside, &target, 100, Some(40000));
        assert_eq!(first.unwrap(), format!("100 bytes from {OUTSIDE_IP}"));
        assert!(
            d.invoke("DEL", "ctr1", &c1.path(), "eth0", &d.conf(V, &ports))
                .ok
        );
        let c2 = h.sandbox.netns("c2");
        let res = d.invoke("ADD", "ctr2", &c2.path(), "eth0", &d.conf(V, &ports));
        let ip2 = res.result()["ips"][0]["address"].as_str().unwrap();
        assert_ne!(
            ip2.split('/').next().unwrap(),
            ip,
            "a new address for the new container"
        );
        // Neither the DEL nor the second ADD loaded a program: the pins are the first ADD's.
        assert_eq!(pinned_programs(&d), programs);
        let again = udp_exchange(&c2, "0.0.0.0:53", &h.outside, &target, 101, Some(40000));
        assert_eq!(again.unwrap(), format!("101 bytes from {OUTSIDE_IP}"));
        // Each instance is whole and healthy, in `status` by config and by name.
        assert_eq!(h.status()["containers"].as_array().unwrap().len(), 1);
        let cni = d.net.status();
        assert_eq!(cni["containers"].as_array().unwrap().len(), 1);
        assert_eq!(cni["problems"], json!([]), "{cni}");
        h.netplane_ok(&["status"]);
        d.net.netplane_ok(&["status"]);
        // `list` names both, each with its container.
        let out = h.host.run(&[
            netplane_tests::host::netplane_bin().to_str().unwrap(),
            "list",
            "--json",
        ]);
        let list: Value = serde_json::from_slice(&out.stdout).unwrap();
        for name in [h.name().to_owned(), d.net.instance()] {
            let row = list
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["name"] == json!(name));
            assert_eq!(
                row.map(|r| r["containers"].clone()),
                Some(json!(1)),
                "{name}: {list}"
            );
        }
        h.renew();
    });
}

/// The eBPF programs the network pinned, by name, with their pins' inodes (a load pins
/// anew); empty in iptables mode.
fn pinned_programs(d: &Direct) -> Vec<(String, u64)> {
    use std::os::unix::fs::MetadataExt;
    let dir = std::path::Path::new(netplane::dataplane::ebpf::PIN_ROOT).join(d.net.instance());
    let mut progs: Vec<(String, u64)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("prog_"))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().ino(),
            )
        })
        .collect();
    progs.sort();
    progs
}

#[test]
fn a_dead_attachment_is_swept_and_a_del_the_host_refuses_keeps_the_lease() {
    if !privileged("cni_protocol::dead_attachment") {
        return;
    }
    let mut h = Host::new();
    let d = Direct::new(&h.sandbox, &h.host, "z", 49, "ebpf");
    let (c1, c2, c3) = (
        h.sandbox.netns("c1"),
        h.sandbox.netns("c2"),
        h.sandbox.netns("c3"),
    );
    let port = |p: u16| d.conf(V, &[(p, 80, "tcp", "")]);
    assert!(d.invoke("ADD", "ctr1", &c1.path(), "eth0", &port(8300)).ok);
    assert!(d.invoke("ADD", "ctr2", &c2.path(), "eth0", &port(8301)).ok);
    // ctr1's namespace goes without a DEL (the runtime crashed): its veth pair goes with
    // it, and the next ADD finds it dead: its port and lease are free again.
    let path1 = c1.path();
    let del = std::process::Command::new("ip")
        .args(["netns", "del", path1.rsplit('/').next().unwrap()])
        .status();
    assert!(del.is_ok_and(|s| s.success()));
    // The kernel destroys a namespace, and its veths, asynchronously (cleanup_net runs
    // from a workqueue): the host veth of ctr1 goes a moment after `ip netns del`.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while d.net.host_veths().len() > 1 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(
        d.net.host_veths().len(),
        1,
        "ctr1's host veth went with its netns"
    );
    let r = d.invoke("ADD", "ctr3", &c3.path(), "eth0", &port(8300));
    assert!(r.ok, "{} {}", r.json, r.stderr);
    assert_eq!(d.leases().len(), 2, "ctr1's lease went back");
    let ids: Vec<String> = d.net.status()["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["attachment"]["container_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["ctr2", "ctr3"]);
    // Without a default route (and no `uplink` in the conf) the data plane cannot be
    // updated: DEL fails with code 11 and keeps the lease, so that the address is not
    // handed out again while a map entry may still lead to it; its veth goes.
    d.net.host.sh(&["ip", "route", "del", "default"]);
    let r = d.invoke("DEL", "ctr2", &c2.path(), "eth0", &port(8301));
    assert_eq!(r.code(), 11, "{}", r.json);
    assert_eq!(d.leases().len(), 2);
    // STATUS says so too.
    assert_eq!(
        d.invoke("STATUS", "", "", "", &d.conf("1.1.0", &[])).code(),
        50
    );
    // Once the host is back, the next command finishes the job.
    d.net
        .host
        .sh(&["ip", "route", "add", "default", "via", OUTSIDE_IP]);
    let r = d.invoke("DEL", "ctr3", &c3.path(), "eth0", &port(8300));
    assert!(r.ok, "{} {}", r.json, r.stderr);
    assert!(d.leases().is_empty());
    assert_eq!(d.net.status()["containers"], json!([]));
    assert_eq!(map_entries(&d.net.status(), "NP_PUBLISHED"), 0);
}

/// `"metrics"` in the network configuration: the agent that ADD starts is `netplane-cni`
/// itself, with the metrics' arguments, and it serves them.
#[test]
fn an_add_with_metrics_starts_an_agent_that_serves_them() {
    each_mode("cni_protocol::metrics", |mode| {
        let mut h = Host::new();
        let d = Direct::new(&h.sandbox, &h.host, &format!("m{mode}"), 50, mode);
        let c1 = h.sandbox.netns("c1");
        let mut conf = d.conf(V, &[(8400, 80, "tcp", "")]);
        conf["metrics"] = json!({"listen": "127.0.0.1:9975"});
        let r = d.invoke("ADD", "ctr1", &c1.path(), "eth0", &conf);
        assert!(r.ok, "{} {}", r.json, r.stderr);
        let body = scrape(&d.net.host, "127.0.0.1:9975");
        let (ok, lint) = promtool_check(&body);
        assert!(ok, "{lint}");
        assert_eq!(
            sample(&body, "netplane_build_info", &[("mode", mode)]),
            Some(1.0),
            "{body}"
        );
        let agent = &d.net.status()["dataplane_health"]["agent"];
        assert_eq!(agent["running"], true, "{agent}");
        assert_eq!(agent["metrics"]["listen"], "127.0.0.1:9975", "{agent}");
        // A later ADD keeps that agent: same executable, same arguments.
        let pid = agent["pid"].clone();
        let c2 = h.sandbox.netns("c2");
        let mut conf2 = d.conf(V, &[]);
        conf2["metrics"] = conf["metrics"].clone();
        let r = d.invoke("ADD", "ctr2", &c2.path(), "eth0", &conf2);
        assert!(r.ok, "{} {}", r.json, r.stderr);
        assert_eq!(d.net.status()["dataplane_health"]["agent"]["pid"], pid);
        for (id, ns, conf) in [("ctr1", &c1, &conf), ("ctr2", &c2, &conf2)] {
            let r = d.invoke("DEL", id, &ns.path(), "eth0", conf);
            assert!(r.ok, "{} {}", r.json, r.stderr);
        }
    });
}

#[test]
fn a_second_interface_leaves_the_first_ones_default_route() {
    if !privileged("cni_protocol::second_interface") {
        return;
    }
    let mut h = Host::new();
    let a = Direct::new(&h.sandbox, &h.host, "i", 50, "ebpf");
    let b = Direct::new(&h.sandbox, &h.host, "j", 51, "ebpf");
    let c = h.sandbox.netns("c");
    assert!(
        a.invoke("ADD", "ctr", &c.path(), "eth0", &a.conf(V, &[]))
            .ok
    );
    let before = c.sh(&["ip", "route", "show", "default"]);
    assert!(before.contains("dev eth0"), "{before}");
    // eth1 on a network with a gateway: the default route stays on eth0, and the result
    // does not claim one.
    let r = b.invoke("ADD", "ctr", &c.path(), "eth1", &b.conf(V, &[]));
    let routes = r.result()["routes"].as_array().unwrap().clone();
    assert!(routes.iter().all(|r| r["dst"] != "0.0.0.0/0"), "{routes:?}");
    assert_eq!(c.sh(&["ip", "route", "show", "default"]), before);
    // CHECK of eth1 with that result passes.
    let mut conf = b.conf(V, &[]);
    conf["prevResult"] = r.result().clone();
    let r = b.invoke("CHECK", "ctr", &c.path(), "eth1", &conf);
    assert!(r.ok, "{} {}", r.json, r.stderr);
    // Port mappings on a network that does not translate host ports are refused.
    let mut routed = a.conf(V, &[(8400, 80, "tcp", "")]);
    routed["ipMasq"] = json!(false);
    let c2 = h.sandbox.netns("c2");
    assert_eq!(
        a.invoke("ADD", "ctr2", &c2.path(), "eth0", &routed).code(),
        2
    );
    assert!(
        b.invoke("DEL", "ctr", &c.path(), "eth1", &b.conf(V, &[]))
            .ok
    );
    assert!(
        a.invoke("DEL", "ctr", &c.path(), "eth0", &a.conf(V, &[]))
            .ok
    );
}

#[test]
fn dual_stack_leases_in_both_modes() {
    if !privileged("cni_protocol::dual_stack") {
        return;
    }
    let mut h = Host::new().with_ipv6();
    let c1 = h.sandbox.netns("c1");
    for (mode, n) in [("iptables", 52), ("ebpf", 53)] {
        let d = Direct::new(&h.sandbox, &h.host, &format!("6{mode}"), n, mode);
        // host-local with two ranges hands out one address of each family.
        let mut conf = d.conf(V, &[(8500, 80, "tcp", "")]);
        let subnet6 = format!("2001:db8:{n}::/64");
        conf["ipam"]["ranges"] = json!([[{"subnet": d.net.subnet}], [{"subnet": subnet6}]]);
        let r = d.invoke("ADD", "ctr6", &c1.path(), "eth0", &conf);
        let res = r.result().clone();
        let ips: Vec<&str> = res["ips"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["address"].as_str().unwrap())
            .collect();
        assert_eq!(
            ips,
            [format!("10.89.{n}.2/24"), format!("2001:db8:{n}::2/64")],
            "{res}"
        );
        assert_eq!(res["ips"][1]["gateway"], json!(format!("2001:db8:{n}::1")));
        assert!(
            res["routes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["dst"] == "::/0"),
            "{res}"
        );
        // The container goes out over IPv6, masqueraded to the uplink's address.
        let seen = tcp_exchange(&h.outside, "[::]:7000", &c1, "[2001:db8:113::2]:7000", "v6");
        assert!(seen.ends_with("from 2001:db8:113::1"), "{seen}");
        // and its published port answers over IPv6 too, seeing the real client.
        let seen = tcp_exchange(&c1, "[::]:80", &h.outside, "[2001:db8:113::1]:8500", "in6");
        assert!(seen.ends_with("from 2001:db8:113::2"), "{seen}");
        // CHECK passes, and sees the IPv6 address go.
        let mut with_prev = conf.clone();
        with_prev["prevResult"] = res.clone();
        let r = d.invoke("CHECK", "ctr6", &c1.path(), "eth0", &with_prev);
        assert!(r.ok, "{} {}", r.json, r.stderr);
        let addr6 = format!("2001:db8:{n}::2/64");
        c1.sh(&["ip", "-6", "addr", "del", &addr6, "dev", "eth0"]);
        let r = d.invoke("CHECK", "ctr6", &c1.path(), "eth0", &with_prev);
        assert!(
            r.json["msg"].as_str().unwrap().contains(&addr6),
            "{}",
            r.json
        );
        assert!(d.invoke("DEL", "ctr6", &c1.path(), "eth0", &conf).ok);
        assert!(d.leases().is_empty());
        let saved = h.host.sh(&["ip6tables-save", "-t", "nat"]);
        assert!(!saved.contains(&format!("2001:db8:{n}::2")), "{saved}");
    }
}
