//! The container's own hook end to end (issue 17): `netplane_from_container` on each bridge
//! port, in a running eBPF instance. A container's packets of translated flows leave from
//! its host veth for the uplink, past the bridge, and arrive translated with right
//! checksums; the hook's links come and go with the containers (one load, a link per
//! container), and each bridge port holds a static FDB entry for its container's MAC; the
//! ways into containers (`[ebpf] into_container`) switch without a load.
//!
//! The world is nat.rs's: an "outside" namespace (203.0.113.2) with no route to any
//! container subnet, a host namespace running netplane with uplink 203.0.113.1.
#![expect(
    unused_crate_dependencies,
    reason = "an integration test sees every dependency of the harness crate; its library target is where an unused one shows"
)]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aya::maps::{Map, MapData, PerCpuArray};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{SchedClassifier, TcAttachType, TestRun, TestRunOptions};
use netplane::dataplane::ebpf::PIN_ROOT;
use netplane_common::nat::{forwarded, maps};
use netplane_tests::cni_plugin::Direct;
use netplane_tests::host::{
    Host, Instance, OUTSIDE_IP, OUTSIDE_IP6, Server, UPLINK_IP, UPLINK_IP6, client, tcp_exchange,
    udp_exchange,
};
use netplane_tests::packet::{Ip, TCP_ACK, TCP_SYN, tcp};
use netplane_tests::{Netns, privileged};

const HOOK: &str = "netplane_from_container";
const TC_ACT_REDIRECT: u32 = 7;

/// Two bridge networks, npa dual-stack.
const NETWORKS: &str = r#"
mode = "ebpf"
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
publish = ["8080:80", "5353:53/udp"]
[[containers]]
name = "other"
network = "npb"
"#;

/// A third container, for the tests that add and remove one.
const PEER: &str = r#"
[[containers]]
name = "peer"
network = "npa"
"#;

/// The config: [`NETWORKS`], `more` containers, and `[ebpf]` lines `ebpf`.
fn config(more: &str, ebpf: &str) -> String {
    format!("{NETWORKS}{more}\n[ebpf]\n{ebpf}\n")
}

fn up(more: &str, ebpf: &str) -> Host {
    let h = Host::new().with_ipv6();
    h.write_config(&config(more, ebpf));
    h.netplane_ok(&["up"]);
    h
}

/// Where instance `name` pins.
fn pins(name: &str) -> PathBuf {
    Path::new(PIN_ROOT).join(name)
}

/// [`forwarded`] slot `slot` of instance `name`, summed over CPUs: read from its pinned
/// map (`status` reports two of the slots).
fn forwarded_in(name: &str, slot: u32) -> u64 {
    let data = MapData::from_pin(pins(name).join(maps::FORWARDED)).expect("NP_FORWARDED pinned");
    let counts = PerCpuArray::<_, u64>::try_from(Map::from_map_data(data).unwrap()).unwrap();
    counts.get(&slot, 0).unwrap().iter().sum()
}

fn fwd(h: &Instance, slot: u32) -> u64 {
    forwarded_in(h.name(), slot)
}

/// The pin of the hook's link on host veth `veth`.
fn link_pin(name: &str, veth: &str) -> PathBuf {
    pins(name).join(format!("link_{HOOK}_{veth}"))
}

/// The id of the program that the link pinned at `pin` runs.
fn link_program(pin: &Path) -> u32 {
    let link = FdLink::from(PinnedLink::from_pin(pin).expect("a pinned link"));
    link.info().unwrap().program_id()
}

/// The id of program `prog` as instance `name` pinned it, and the pin's inode (a load
/// pins anew).
fn pinned_program(name: &str, prog: &str) -> (u32, u64) {
    let path = pins(name).join(format!("prog_{prog}"));
    let id = SchedClassifier::from_pin(&path)
        .expect("the program is pinned")
        .info()
        .unwrap()
        .id();
    (id, std::fs::metadata(&path).unwrap().ino())
}

/// The links of the hook instance `name` has pinned, by device.
fn hook_links(name: &str) -> Vec<String> {
    let prefix = format!("link_{HOOK}_");
    let mut v: Vec<String> = std::fs::read_dir(pins(name))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_prefix(&prefix).map(str::to_owned)
        })
        .collect();
    v.sort();
    v
}

/// The FDB line of `mac` in `host`'s bridge `bridge`, if any.
fn fdb_entry(host: &Netns, bridge: &str, mac: &str) -> Option<String> {
    host.sh(&["bridge", "fdb", "show", "br", bridge])
        .lines()
        .find(|l| l.starts_with(mac))
        .map(str::to_owned)
}

/// Frames of a capture (`nptest capture` lines) from `src_prefix`, each with both
/// checksums right; returns their protocols.
fn checked_frames(capture: &str, src_prefix: &str) -> Vec<String> {
    let mut protos = Vec::new();
    for line in capture.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if let [src, _, proto, ip, l4] = f[..]
            && src.starts_with(src_prefix)
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
fn translated_flows_leave_from_the_container_s_own_hook() {
    if !privileged("translated_flows_leave_from_the_container_s_own_hook") {
        return;
    }
    let h = up("", "");
    let name = h.name().to_owned();
    let web = h.container("web");
    // The container keeps TX checksum offload (its packets reach the hook as
    // CHECKSUM_PARTIAL); the uplink checksums in software, so the wire shows what the
    // rewrite left (see nat.rs's checksums test).
    h.host.sh(&["ethtool", "-K", "up0", "tx", "off"]);
    h.outside.sh(&["ethtool", "-K", "eth0", "tx", "off"]);
    let capture = Server::start(&h.outside, &["capture", "eth0", "2500"]);
    let (hook, bridge) = (
        fwd(&h, forwarded::FROM_CONTAINER),
        fwd(&h, forwarded::OUT_OF_CONTAINER),
    );
    let out = tcp_exchange(
        &h.outside,
        "0.0.0.0:7000",
        &web,
        &format!("{OUTSIDE_IP}:7000"),
        "masq",
    );
    assert_eq!(out, format!("masq from {UPLINK_IP}"), "masquerade");
    let masq = fwd(&h, forwarded::FROM_CONTAINER) - hook;
    let udp = udp_exchange(
        &h.outside,
        "0.0.0.0:7001",
        &web,
        &format!("{OUTSIDE_IP}:7001"),
        300,
        None,
    );
    assert_eq!(udp.unwrap(), format!("300 bytes from {UPLINK_IP}"));
    let answer = tcp_exchange(
        &web,
        "0.0.0.0:80",
        &h.outside,
        &format!("{UPLINK_IP}:8080"),
        "published",
    );
    assert_eq!(answer, format!("published from {OUTSIDE_IP}"));
    let published = fwd(&h, forwarded::FROM_CONTAINER) - hook - masq;
    // A connection's packets after its SYN (ACK, data, FIN, ACK) and a published port's
    // replies from its SYN-ACK on: at the hook, none at the bridge.
    assert!(masq >= 3, "masquerade: {masq} at the hook");
    assert!(published >= 3, "published: {published} at the hook");
    assert_eq!(
        fwd(&h, forwarded::OUT_OF_CONTAINER),
        bridge,
        "nothing left for the bridge's short way"
    );
    let protos = checked_frames(&capture.output(), UPLINK_IP);
    assert!(
        protos.iter().filter(|p| *p == "6").count() >= 6,
        "TCP from the uplink: {protos:?}"
    );
    assert!(protos.iter().any(|p| p == "17"), "UDP: {protos:?}");

    // IPv6 takes its own program.
    let before = fwd(&h, forwarded::FROM_CONTAINER);
    let out = tcp_exchange(
        &h.outside,
        "[::]:7002",
        &web,
        &format!("[{OUTSIDE_IP6}]:7002"),
        "masq6",
    );
    assert_eq!(out, format!("masq6 from {UPLINK_IP6}"));
    assert!(
        fwd(&h, forwarded::FROM_CONTAINER) >= before + 3,
        "IPv6 at the hook"
    );

    // Each bridge port: its link, of the one pinned program, and a static FDB entry.
    let veths = [h.host_veth("web"), h.host_veth("other")];
    let mut want: Vec<String> = veths.to_vec();
    want.sort();
    assert_eq!(hook_links(&name), want);
    let (prog, _) = pinned_program(&name, HOOK);
    for veth in &veths {
        assert_eq!(link_program(&link_pin(&name, veth)), prog, "{veth}");
    }
    for (c, bridge) in [("web", "npa"), ("other", "npb")] {
        let mac = h.container(c).mac("eth0");
        let line = fdb_entry(&h.host, bridge, &mac)
            .unwrap_or_else(|| panic!("no FDB entry for {c}'s {mac}"));
        let veth = h.host_veth(c);
        assert!(
            line.contains(&format!("dev {veth} ")) && line.contains(" static"),
            "{line}"
        );
        // Static, not `permanent`: that would make the bridge take the MAC for its own.
        assert!(!line.contains("permanent"), "{line}");
    }
    assert_eq!(h.status()["problems"], serde_json::json!([]));
}

#[test]
fn the_hook_s_links_come_and_go_with_the_containers() {
    if !privileged("the_hook_s_links_come_and_go_with_the_containers") {
        return;
    }
    let h = up(PEER, "");
    let name = h.name().to_owned();
    let (web, peer) = (h.host_veth("web"), h.host_veth("peer"));
    assert!(link_pin(&name, &peer).exists());
    let program = pinned_program(&name, HOOK);

    // The container goes (config change + up): its link's pin goes; nothing is loaded.
    h.write_config(&config("", ""));
    h.netplane_ok(&["up"]);
    assert!(!link_pin(&name, &peer).exists(), "peer's link unpinned");
    assert!(link_pin(&name, &web).exists());
    // ... and comes back, a link from the same pinned program.
    h.write_config(&config(PEER, ""));
    let report = h.netplane_ok(&["up"]);
    let peer = h.host_veth("peer");
    assert!(
        report.contains(&format!("{HOOK} attached to {peer}")),
        "{report}"
    );
    assert_eq!(link_program(&link_pin(&name, &peer)), program.0);
    assert_eq!(pinned_program(&name, HOOK), program, "no load");
    let mac = h.container("peer").mac("eth0");
    assert!(fdb_entry(&h.host, "npa", &mac).is_some_and(|l| l.contains(" static")));

    // Off: no link, and packets of known flows cross the bridge again; the program stays
    // pinned. On again: links from that pin.
    h.write_config(&config(PEER, "from_container = false"));
    h.netplane_ok(&["up"]);
    let any_hook_link = std::fs::read_dir(pins(&name)).unwrap().flatten().any(|e| {
        e.file_name()
            .to_string_lossy()
            .starts_with(&format!("link_{HOOK}"))
    });
    assert!(
        !any_hook_link,
        "from_container = false: no link of either family"
    );
    let (hook, bridge) = (
        fwd(&h, forwarded::FROM_CONTAINER),
        fwd(&h, forwarded::OUT_OF_CONTAINER),
    );
    let out = tcp_exchange(
        &h.outside,
        "0.0.0.0:7000",
        &h.container("web"),
        &format!("{OUTSIDE_IP}:7000"),
        "off",
    );
    assert_eq!(out, format!("off from {UPLINK_IP}"));
    assert_eq!(fwd(&h, forwarded::FROM_CONTAINER), hook);
    assert!(fwd(&h, forwarded::OUT_OF_CONTAINER) >= bridge + 3);
    h.write_config(&config(PEER, ""));
    h.netplane_ok(&["up"]);
    assert_eq!(hook_links(&name).len(), 3);
    assert_eq!(pinned_program(&name, HOOK), program, "no load");

    h.netplane_ok(&["down"]);
    assert!(!pins(&name).exists(), "down leaves no pin");
}

#[test]
fn into_container_switches_between_the_veth_and_the_peer_without_a_load() {
    if !privileged("into_container_switches_between_the_veth_and_the_peer_without_a_load") {
        return;
    }
    let h = up("", "into_container = \"peer\"");
    let web = h.container("web");
    let programs = pinned_program(h.name(), "netplane_uplink_ingress");
    let exchange = |msg: &str| {
        let answer = tcp_exchange(
            &web,
            "0.0.0.0:80",
            &h.outside,
            &format!("{UPLINK_IP}:8080"),
            msg,
        );
        assert_eq!(answer, format!("{msg} from {OUTSIDE_IP}"));
        let masq = tcp_exchange(
            &h.outside,
            "0.0.0.0:7000",
            &web,
            &format!("{OUTSIDE_IP}:7000"),
            msg,
        );
        assert_eq!(masq, format!("{msg} from {UPLINK_IP}"));
    };
    // 16 MiB each way (full-sized GSO packets and small ones): every byte arrives.
    let bulk = |way: &str| {
        for (receiver, listen, sender, target) in [
            (&web, "0.0.0.0:80", &h.outside, format!("{UPLINK_IP}:8080")),
            (
                &h.outside,
                "0.0.0.0:7003",
                &web,
                format!("{OUTSIDE_IP}:7003"),
            ),
        ] {
            let sink = Server::start(receiver, &["sink-tcp", listen]);
            client(sender, &["bulk-tcp", &target, "16"]).unwrap();
            assert_eq!(
                sink.output().trim(),
                (16u64 << 20).to_string(),
                "{way}: bytes to {target}"
            );
        }
    };
    let counts = || {
        (
            fwd(&h, forwarded::INTO_CONTAINER),
            fwd(&h, forwarded::INTO_CONTAINER_PEER),
        )
    };
    let (veth, peer) = counts();
    exchange("peer");
    let (veth2, peer2) = counts();
    bulk("peer");
    // SYN, data, FIN of the published flow; SYN-ACK, data, FIN of the masqueraded one.
    assert!(
        peer2 >= peer + 4,
        "into the container's end: {}",
        peer2 - peer
    );
    // Pure ACKs cross the bridge (routed there, counted as the veth way's).
    assert!(veth2 > veth, "pure ACKs through the bridge");

    for (way, slot) in [
        ("veth", forwarded::INTO_CONTAINER),
        ("peer-all", forwarded::INTO_CONTAINER_PEER),
    ] {
        h.write_config(&config("", &format!("into_container = \"{way}\"")));
        let report = h.netplane_ok(&["up"]);
        assert!(!report.contains("programs replaced"), "{report}");
        let (v, p) = counts();
        exchange(way);
        let (v2, p2) = counts();
        let (mine, theirs) = if slot == forwarded::INTO_CONTAINER {
            (v2 - v, p2 - p)
        } else {
            (p2 - p, v2 - v)
        };
        assert!(mine >= 6, "{way}: {mine} its way");
        assert_eq!(theirs, 0, "{way}: none the other way");
        bulk(way);
    }
    assert_eq!(
        pinned_program(h.name(), "netplane_uplink_ingress"),
        programs,
        "no program loaded again"
    );
}

#[test]
fn a_cni_add_links_the_hook_without_a_load_and_del_unlinks_it() {
    if !privileged("a_cni_add_links_the_hook_without_a_load_and_del_unlinks_it") {
        return;
    }
    let mut h = Host::new();
    let d = Direct::new(&h.sandbox, &h.host, "a", 41, "ebpf");
    let conf = d.conf("1.1.0", &[]);
    let name = d.net.instance();
    let (c1, c2) = (h.sandbox.netns("c1"), h.sandbox.netns("c2"));
    let add = |id: &str, ns: &Netns| -> String {
        let r = d.invoke("ADD", id, &ns.path(), "eth0", &conf);
        r.result()["interfaces"][1]["name"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let veth1 = add("ctr1", &c1);
    let program = pinned_program(&name, HOOK);
    assert_eq!(link_program(&link_pin(&name, &veth1)), program.0);
    let veth2 = add("ctr2", &c2);
    assert_eq!(link_program(&link_pin(&name, &veth2)), program.0);
    assert_eq!(
        pinned_program(&name, HOOK),
        program,
        "the second ADD loaded nothing"
    );
    let mac = c2.mac("eth0");
    let line = fdb_entry(&d.net.host, &d.net.bridge, &mac).expect("an FDB entry for ctr2");
    assert!(
        line.contains(&format!("dev {veth2} ")) && line.contains(" static"),
        "{line}"
    );

    // Masquerade from the CNI container, at its hook.
    let before = forwarded_in(&name, forwarded::FROM_CONTAINER);
    let out = tcp_exchange(
        &h.outside,
        "0.0.0.0:7000",
        &c2,
        &format!("{OUTSIDE_IP}:7000"),
        "cni",
    );
    assert_eq!(out, format!("cni from {UPLINK_IP}"));
    assert!(forwarded_in(&name, forwarded::FROM_CONTAINER) >= before + 3);

    let r = d.invoke("DEL", "ctr2", &c2.path(), "eth0", &conf);
    assert!(r.ok, "DEL: {} {}", r.json, r.stderr);
    assert!(!link_pin(&name, &veth2).exists(), "DEL unpins its link");
    assert!(link_pin(&name, &veth1).exists());
    assert_eq!(d.net.status()["problems"], serde_json::json!([]));
    let r = d.invoke("DEL", "ctr1", &c1.path(), "eth0", &conf);
    assert!(r.ok, "DEL: {} {}", r.json, r.stderr);
    assert!(!link_pin(&name, &veth1).exists());
    h.renew();
}

/// The test run's context: a `struct __sk_buff` up to `ifindex` (offset 40), which
/// BPF_PROG_TEST_RUN takes as the device the packet came in on (bpf_prog_test_run_skb()).
fn on_device(ifindex: u32) -> [u8; 44] {
    let mut skb = [0u8; 44];
    skb[40..].copy_from_slice(&ifindex.to_ne_bytes());
    skb
}

/// The average ns of `runs` runs of program `prog` (pinned by instance `name`) on `frame`
/// coming in on `ifindex`, each on the frame as crafted (a run with `repeat` would run
/// again on the packet it translated), as the kernel times them; and the verdict.
fn ns_per_run(name: &str, prog: &str, frame: &[u8], ifindex: u32, runs: u32) -> (f64, u32) {
    let p = SchedClassifier::from_pin(pins(name).join(format!("prog_{prog}"))).unwrap();
    let ctx = on_device(ifindex);
    let (mut total, mut verdict) = (Duration::ZERO, 0);
    let mut out = vec![0u8; frame.len() + 256];
    for _ in 0..runs {
        let r = p
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ..TestRunOptions::new()
            })
            .unwrap();
        total += r.duration;
        verdict = r.return_value;
    }
    (total.as_nanos() as f64 / f64::from(runs), verdict)
}

/// Not a check of behaviour: what a known flow's data segment costs at the hook and at the
/// bridge (printed; `--nocapture`), measured on the pinned programs and maps of a running
/// instance, with the flow live.
#[test]
fn what_a_known_flow_costs_at_the_hook_and_at_the_bridge() {
    if !privileged("what_a_known_flow_costs_at_the_hook_and_at_the_bridge") {
        return;
    }
    let h = up("", "");
    let web = h.container("web");
    let _echo = Server::start(&h.outside, &["echo-tcp", "0.0.0.0:7000"]);
    let mut held = web.spawn(&[
        netplane_tests::host::nptest_bin().to_str().unwrap(),
        "hold-tcp",
        &format!("{OUTSIDE_IP}:7000"),
        "4",
        "1000",
    ]);
    // The connection, once hold-tcp has made it.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let sport: u16 = loop {
        let ss = web.sh(&["ss", "-tnH", "state", "established"]);
        let port = ss
            .split_whitespace()
            .find_map(|w| w.strip_prefix("10.89.0.2:"))
            .and_then(|p| p.parse().ok());
        match port {
            Some(p) => break p,
            None if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            None => panic!("no connection after 5 s in {ss}"),
        }
    };
    // A data segment of the flow, from web's MAC to its gateway's (the bridge's), as the
    // hook and the bridge's ingress both see it.
    let mut frame = tcp(
        Ip::new([10, 89, 0, 2], [203, 0, 113, 2]),
        sport,
        7000,
        TCP_ACK,
        &[b'x'; 64],
    );
    let mac = |s: &str| -> Vec<u8> {
        s.split(':')
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    };
    frame[..6].copy_from_slice(&mac(&h.host.mac("npa")));
    frame[6..12].copy_from_slice(&mac(&web.mac("eth0")));
    let index = |dev: &str| -> u32 {
        let out = h.host.sh(&["ip", "-o", "link", "show", "dev", dev]);
        out.split(':').next().unwrap().trim().parse().unwrap()
    };
    let (veth, bridge) = (index(&h.host_veth("web")), index("npa"));
    // What the hook costs the packets it passes on: a new flow's SYN, and a packet to
    // another container of the bridge (to its MAC).
    let mut syn = tcp(
        Ip::new([10, 89, 0, 2], [203, 0, 113, 2]),
        sport.wrapping_add(1),
        7000,
        TCP_SYN,
        b"",
    );
    syn[..12].copy_from_slice(&frame[..12]);
    let mut east_west = frame.clone();
    east_west[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
    let name = h.name().to_owned();
    let runs = 10_000;
    let (at_hook, at_bridge, syn_at_hook, east_west_at_hook) = h.host.enter(|| {
        // Warm: the route cache, the flow's entry.
        ns_per_run(&name, HOOK, &frame, veth, 100);
        ns_per_run(&name, "netplane_bridge_ingress", &frame, bridge, 100);
        (
            ns_per_run(&name, HOOK, &frame, veth, runs),
            ns_per_run(&name, "netplane_bridge_ingress", &frame, bridge, runs),
            ns_per_run(&name, HOOK, &syn, veth, runs),
            ns_per_run(&name, HOOK, &east_west, veth, runs),
        )
    });
    let _ = held.wait();
    println!(
        "known flow's data segment, {runs} runs: {HOOK} {:.0} ns/run, netplane_bridge_ingress {:.0} ns/run; \
         passed on by {HOOK}: a SYN {:.0} ns/run, to another container's MAC {:.0} ns/run",
        at_hook.0, at_bridge.0, syn_at_hook.0, east_west_at_hook.0
    );
    assert_eq!(
        at_hook.1, TC_ACT_REDIRECT,
        "the hook takes it the short way"
    );
    assert_eq!(at_bridge.1, TC_ACT_REDIRECT, "so does the bridge");
    let tcx_next = u32::MAX;
    assert_eq!((syn_at_hook.1, east_west_at_hook.1), (tcx_next, tcx_next));
}

/// The hook routes as the kernel routes what the bridge receives: from the container's
/// gateway device (the bridge), not from its host veth. A policy rule on the bridge
/// (`ip rule add iif npa lookup 100`) sends web's packets to the outside's address by
/// another device; a masqueraded flow's packets then go that way, and the hook redirects
/// none of them to the uplink.
#[test]
fn the_hook_routes_as_the_kernel_routes_from_the_bridge() {
    if !privileged("the_hook_routes_as_the_kernel_routes_from_the_bridge") {
        return;
    }
    let mut h = Host::new().with_ipv6();
    h.write_config(&config("", ""));
    h.netplane_ok(&["up"]);
    // A second way out of the host: side0 (198.51.100.1) ↔ the side namespace's eth0.
    let side = h.sandbox.netns("side");
    h.sandbox.veth(
        &h.host,
        "side0",
        "198.51.100.1/24",
        &side,
        "eth0",
        "198.51.100.2/24",
    );
    let web = h.container("web");
    let target = format!("{OUTSIDE_IP}:7001");
    // One datagram of one flow (source port 40123) to a server started for it.
    let send = |what: &str| {
        udp_exchange(&h.outside, "0.0.0.0:7001", &web, &target, 100, Some(40123))
            .map_err(|e| format!("{what}: {e}"))
    };
    // The flow, made by its first datagram; its second takes the hook.
    assert_eq!(
        send("first").unwrap(),
        format!("100 bytes from {UPLINK_IP}")
    );
    let before = fwd(&h, forwarded::FROM_CONTAINER);
    assert_eq!(
        send("second").unwrap(),
        format!("100 bytes from {UPLINK_IP}")
    );
    assert!(
        fwd(&h, forwarded::FROM_CONTAINER) > before,
        "without the rule, the flow's packets take the hook"
    );

    // What the bridge receives from the containers now goes by side0.
    h.host.sh(&[
        "ip",
        "route",
        "add",
        &format!("{OUTSIDE_IP}/32"),
        "via",
        "198.51.100.2",
        "dev",
        "side0",
        "table",
        "100",
    ]);
    h.host
        .sh(&["ip", "rule", "add", "iif", "npa", "lookup", "100"]);
    // The programs' route cache (per destination and device, crate forward.rs's
    // ROUTE_TTL: 954 ticks of 2^20 ns, 1.0 s) still holds the uplink: wait it out.
    std::thread::sleep(Duration::from_millis(1200));
    let hook = fwd(&h, forwarded::FROM_CONTAINER);
    let capture = Server::start(&side, &["capture", "eth0", "2500"]);
    // No answer comes back (the side namespace routes nothing on).
    assert!(send("third").is_err(), "the datagram went by side0");
    assert_eq!(
        fwd(&h, forwarded::FROM_CONTAINER),
        hook,
        "the hook redirected none to the uplink"
    );
    // As it left the container: the hook passed it on, and the bridge's program does not
    // translate what leaves by another device than the uplink.
    let seen = capture.output();
    assert!(
        seen.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1)
                .is_some_and(|dst| dst.starts_with(&format!("{OUTSIDE_IP}:")))
                && f.get(2) == Some(&"17")
        }),
        "the flow's datagram arrived by side0, as the kernel routes it: {seen}"
    );
}

/// A link pinned under `…_new` by an `up` killed between pinning it and renaming it over
/// its place runs on its device for as long as the pin holds it: the next `up` removes
/// that pin (and a program's), and the extra link goes with it.
#[test]
fn up_removes_the_new_pins_a_killed_up_left() {
    if !privileged("up_removes_the_new_pins_a_killed_up_left") {
        return;
    }
    let h = up("", "");
    let name = h.name().to_owned();
    let veth = h.host_veth("web");
    let (link_new, prog_new) = (
        PathBuf::from(format!("{}_new", link_pin(&name, &veth).display())),
        pins(&name).join(format!("prog_{HOOK}_new")),
    );
    let on_veth = || {
        h.host.enter(|| {
            SchedClassifier::query_tcx(&veth, TcAttachType::Egress)
                .unwrap()
                .1
                .len()
        })
    };
    let before = on_veth();
    // At the veth's egress, where the plan puts none (a program runs once per hook).
    h.host.enter(|| {
        let mut p = SchedClassifier::from_pin(pins(&name).join(format!("prog_{HOOK}"))).unwrap();
        let id = p.attach(&veth, TcAttachType::Egress).unwrap();
        let link: FdLink = p.take_link(id).unwrap().try_into().unwrap();
        link.pin(&link_new).unwrap();
        p.pin(&prog_new).unwrap();
    });
    assert_eq!(on_veth(), before + 1, "the leftover link runs");
    let report = h.netplane_ok(&["up"]);
    assert!(!link_new.exists(), "{report}");
    assert!(!prog_new.exists(), "{report}");
    assert!(report.contains("interrupted up"), "{report}");
    assert_eq!(on_veth(), before, "the leftover link went with its pin");
    assert_eq!(h.status()["problems"], serde_json::json!([]));
}

/// The IPv6 hook goes only on the ports of networks with a subnet6: npb is IPv4-only.
#[test]
fn the_ipv6_hook_is_linked_only_on_ports_of_dual_stack_networks() {
    if !privileged("the_ipv6_hook_is_linked_only_on_ports_of_dual_stack_networks") {
        return;
    }
    let h = up("", "");
    let name = h.name().to_owned();
    let (web, other) = (h.host_veth("web"), h.host_veth("other"));
    let link6 = |veth: &str| pins(&name).join(format!("link_{HOOK}6_{veth}"));
    assert!(link6(&web).exists(), "npa is dual-stack");
    assert!(!link6(&other).exists(), "npb is IPv4-only");
    let programs = |veth: &str| {
        h.host.enter(|| {
            SchedClassifier::query_tcx(veth, TcAttachType::Ingress)
                .unwrap()
                .1
                .len()
        })
    };
    assert_eq!((programs(&web), programs(&other)), (2, 1));
    // other's own hook still takes its IPv4 flows.
    let before = fwd(&h, forwarded::FROM_CONTAINER);
    let out = tcp_exchange(
        &h.outside,
        "0.0.0.0:7000",
        &h.container("other"),
        &format!("{OUTSIDE_IP}:7000"),
        "v4",
    );
    assert_eq!(out, format!("v4 from {UPLINK_IP}"));
    assert!(fwd(&h, forwarded::FROM_CONTAINER) >= before + 3);
    assert_eq!(h.status()["problems"], serde_json::json!([]));
}

/// `[ebpf] fast_forward = false` with the short way's switches on: `up` warns that they
/// do nothing, and succeeds; no container gets the hook, nor a static FDB entry.
#[test]
fn up_warns_that_the_short_way_s_switches_are_idle_without_it() {
    if !privileged("up_warns_that_the_short_way_s_switches_are_idle_without_it") {
        return;
    }
    let h = Host::new().with_ipv6();
    h.write_config(&config(
        "",
        "fast_forward = false\ninto_container = \"peer-all\"",
    ));
    let report = h.netplane_ok(&["up"]);
    let warning = report
        .lines()
        .find(|l| l.contains("warning:"))
        .unwrap_or_else(|| panic!("no warning in {report}"));
    for field in ["into_container = \"peer-all\"", "fast_forward = false"] {
        assert!(warning.contains(field), "{warning}");
    }
    assert_eq!(hook_links(h.name()), Vec::<String>::new());
    let mac = h.container("web").mac("eth0");
    assert!(
        fdb_entry(&h.host, "npa", &mac).is_none_or(|l| !l.contains(" static")),
        "no static FDB entry without the hook"
    );
}

/// One-shot datagrams (a resolver's queries, each from its own port): every flow is
/// tracked, in both families, whichever way replies take in (the bench's memory rows send
/// 10,000 such flows and count the entries).
#[test]
fn one_shot_datagrams_each_leave_a_tracked_flow_in_both_families() {
    if !privileged("one_shot_datagrams_each_leave_a_tracked_flow_in_both_families") {
        return;
    }
    use netplane::dataplane::ebpf::{IpFamily, conntrack_entry_count};
    for way in ["veth", "peer"] {
        let h = up("", &format!("into_container = \"{way}\""));
        let web = h.container("web");
        for (family, server, target) in [
            (IpFamily::V4, "0.0.0.0:7001", format!("{OUTSIDE_IP}:7001")),
            (IpFamily::V6, "[::]:7001", format!("[{OUTSIDE_IP6}]:7001")),
        ] {
            let _server = Server::start(&h.outside, &["serve-udp", server, "5"]);
            let before = conntrack_entry_count(h.name(), family);
            let answered = (41000..41005u16)
                .filter(|sport| {
                    client(&web, &["send-udp", &target, "10", &sport.to_string()])
                        .inspect_err(|e| eprintln!("{way} {family:?} {sport}: {e}"))
                        .is_ok()
                })
                .count();
            let tracked = conntrack_entry_count(h.name(), family) - before;
            assert_eq!(
                (tracked, answered),
                (5, 5),
                "{way}, {family:?}: {}",
                h.netplane_ok(&["status"])
            );
        }
    }
}
