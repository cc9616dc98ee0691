//! Two of anything (issue 12, items 7, 8 and 13): two `up`s (or an `up` and a `down`) of
//! one instance at once, two instances in one network namespace sharing its
//! `ip_forward`, and a UDP client that keeps its source port while the container behind
//! the published port is re-created elsewhere.

use std::process::Output;

use netplane_tests::host::{
    Host, OUTSIDE_IP, Server, UPLINK_IP, client, netplane_bin, tcp_exchange, udp_exchange,
};
use netplane_tests::{each_mode, privileged};

/// One network, a published TCP and UDP port, and a second container.
const ONE_NETWORK: &str = r#"
[[networks]]
name = "npa"
subnet = "10.89.0.0/24"
[[containers]]
name = "web"
network = "npa"
publish = ["8080:80", "5353:53/udp"]
[[containers]]
name = "peer"
network = "npa"
"#;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs `netplane VERB -c <config>` for every verb at once, in the host namespace, and
/// returns their outputs in order.
fn at_once(h: &Host, verbs: &[&str]) -> Vec<Output> {
    let bin = netplane_bin();
    let children: Vec<_> = verbs
        .iter()
        .map(|verb| {
            h.host.spawn(&[
                bin.to_str().unwrap(),
                verb,
                "-c",
                h.config_path().to_str().unwrap(),
            ])
        })
        .collect();
    children
        .into_iter()
        .map(|c| c.wait_with_output().expect("wait for netplane"))
        .collect()
}

/// Each run either succeeded or lost the race for the instance's lock, saying so; and
/// at least one succeeded.
fn assert_succeeded_or_waited_clearly(verbs: &[&str], outs: &[Output]) {
    for (verb, out) in verbs.iter().zip(outs) {
        let err = text(&out.stderr);
        assert!(
            out.status.success() || err.contains("is busy"),
            "netplane {verb} (one of {verbs:?} at once) failed without a lock message:\n{}{err}",
            text(&out.stdout)
        );
    }
    assert!(
        outs.iter().any(|o| o.status.success()),
        "every one of {verbs:?} failed"
    );
}

/// `status --json` of the instance (which exits non-zero when it lists a problem).
fn status(h: &Host) -> serde_json::Value {
    let out = h.netplane(&["status", "--json"]);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "status --json: {e}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        )
    })
}

/// The instance is up, `status` finds nothing wrong and every container present, and
/// traffic flows both ways through the NAT.
fn assert_healthy(h: &Host, context: &str) {
    let s = status(h);
    assert_eq!(s["up"], true, "{context}: not up: {s}");
    assert_eq!(s["problems"], serde_json::json!([]), "{context}: {s}");
    for c in s["containers"].as_array().expect("containers") {
        assert_eq!(c["present"], true, "{context}: {c}");
    }
    let answer = tcp_exchange(
        &h.outside,
        "0.0.0.0:7000",
        &h.container("peer"),
        &format!("{OUTSIDE_IP}:7000"),
        "masq",
    );
    assert_eq!(answer, format!("masq from {UPLINK_IP}"), "{context}");
    let answer = tcp_exchange(
        &h.container("web"),
        "0.0.0.0:80",
        &h.outside,
        &format!("{UPLINK_IP}:8080"),
        "published",
    );
    assert_eq!(answer, format!("published from {OUTSIDE_IP}"), "{context}");
}

/// Item 7: `up` takes a lock per instance, so a second `up` at the same time waits for the
/// first (or fails saying why) instead of both building, and one rolling back what the
/// other uses. `down` takes it too.
#[test]
fn concurrent_up_and_down_of_one_instance_leave_it_whole() {
    each_mode("concurrent_up_and_down_of_one_instance", |mode| {
        let h = Host::new();
        h.write_config(&format!("mode = \"{mode}\"\n{ONE_NETWORK}"));
        for round in 1..=3 {
            let verbs = ["up", "up"];
            let outs = at_once(&h, &verbs);
            assert_succeeded_or_waited_clearly(&verbs, &outs);
            assert_healthy(&h, &format!("{mode}: after two ups at once, round {round}"));
            h.netplane_ok(&["down"]);
        }
        h.netplane_ok(&["up"]);
        for round in 1..=2 {
            let verbs = ["down", "up"];
            let outs = at_once(&h, &verbs);
            assert_succeeded_or_waited_clearly(&verbs, &outs);
            // Whichever ran last decided: either up and whole, or down and gone.
            let context = format!("{mode}: after down and up at once, round {round}");
            if status(&h)["up"] == true {
                assert_healthy(&h, &context);
            } else {
                for c in ["web", "peer"] {
                    assert!(
                        !netplane::netns::exists(&h.container(c).name),
                        "{context}: down won, but container {c} is left"
                    );
                }
            }
            h.netplane_ok(&["up"]);
            assert_healthy(&h, &format!("{context}, then up"));
        }
    });
}

/// Item 7: while another process holds the instance's lock, `up` waits, and after its
/// timeout fails with a message that says so, having changed nothing.
#[test]
fn up_gives_up_clearly_while_the_instance_is_locked() {
    if !privileged("up_gives_up_clearly_while_the_instance_is_locked") {
        return;
    }
    let h = Host::new();
    h.write_config(&format!("mode = \"iptables\"\n{ONE_NETWORK}"));
    let held = netplane::lock::InstanceLock::acquire(h.name(), "test").expect("take the lock");
    let bin = netplane_bin();
    let out = h.host.run(&[
        "env",
        "NETPLANE_LOCK_TIMEOUT=1",
        bin.to_str().unwrap(),
        "up",
        "-c",
        h.config_path().to_str().unwrap(),
    ]);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "up ran under a held lock");
    assert!(
        err.contains(&format!("instance {} is busy", h.name())) && err.contains("test"),
        "the error names the instance and the holder: {err}"
    );
    assert!(
        !netplane::netns::exists(&h.container("web").name),
        "up changed something"
    );
    drop(held);
    h.netplane_ok(&["up"]);
    assert_healthy(&h, "up after the lock was released");
}

/// A second instance in the same host namespace, with a config file of its own; its
/// `down` runs on drop (the sandbox only knows the instance named after it), and its
/// container namespaces (`<sandbox>-b-…`) go with the sandbox.
struct SecondInstance<'h> {
    host: &'h Host,
    name: String,
    config: std::path::PathBuf,
}

impl<'h> SecondInstance<'h> {
    fn new(host: &'h Host, body: &str) -> Self {
        let name = format!("{}-b", host.name());
        let config = std::env::temp_dir().join(format!("{name}.toml"));
        host.sandbox.owns_file(config.clone());
        std::fs::write(&config, format!("name = \"{name}\"\n{body}")).expect("write config");
        SecondInstance { host, name, config }
    }

    fn netplane_ok(&self, verb: &str) {
        let bin = netplane_bin();
        let out = self.host.host.run(&[
            bin.to_str().unwrap(),
            verb,
            "-c",
            self.config.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "netplane {verb} of {}: {}{}",
            self.name,
            text(&out.stdout),
            text(&out.stderr)
        );
    }
}

impl Drop for SecondInstance<'_> {
    fn drop(&mut self) {
        let bin = netplane_bin();
        let _ = self.host.host.run(&[
            bin.to_str().unwrap(),
            "down",
            "-c",
            self.config.to_str().unwrap(),
        ]);
    }
}

/// Item 8: two instances in one network namespace both need `ip_forward`. The first
/// `down` must leave it on for the other, and the last must restore what it was before
/// either came (here 0).
#[test]
fn ip_forward_stays_on_until_the_last_instance_goes() {
    each_mode("ip_forward_stays_on_until_the_last_instance_goes", |mode| {
        let h = Host::new();
        h.host.sysctl("net.ipv4.ip_forward", "0");
        let forward = || h.host.sh(&["sysctl", "-n", "net.ipv4.ip_forward"]);
        h.write_config(&format!("mode = \"{mode}\"\n{ONE_NETWORK}"));
        let second = SecondInstance::new(
            &h,
            &format!(
                "mode = \"{mode}\"\n[[networks]]\nname = \"npc\"\nsubnet = \"10.89.2.0/24\"\n\
                 [[containers]]\nname = \"web\"\nnetwork = \"npc\"\n"
            ),
        );
        h.netplane_ok(&["up"]);
        second.netplane_ok("up");
        assert_eq!(forward().trim(), "1", "{mode}: both up");
        // Turned off under them (by hand here): `status` says so, and `up` mends it.
        h.host.sysctl("net.ipv4.ip_forward", "0");
        let problems = status(&h)["problems"].to_string();
        assert!(
            problems.contains("sysctl net.ipv4.ip_forward is 0; netplane needs 1"),
            "{mode}: {problems}"
        );
        h.netplane_ok(&["up"]);
        assert_eq!(forward().trim(), "1", "{mode}: up mends it");

        h.netplane_ok(&["down"]);
        assert_eq!(
            forward().trim(),
            "1",
            "{mode}: the first down turned forwarding off under the second instance"
        );
        let web_b = netplane_tests::Netns::named(format!("{}-web", second.name));
        let answer = tcp_exchange(
            &h.outside,
            "0.0.0.0:7000",
            &web_b,
            &format!("{OUTSIDE_IP}:7000"),
            "second",
        );
        assert_eq!(
            answer,
            format!("second from {UPLINK_IP}"),
            "{mode}: the second instance masquerades after the first went"
        );

        second.netplane_ok("down");
        assert_eq!(
            forward().trim(),
            "0",
            "{mode}: the last down restores ip_forward as it was before both"
        );
        // And the host-wide record of who holds what forgets them both.
        for f in std::fs::read_dir("/run/netplane/.host")
            .into_iter()
            .flatten()
            .flatten()
        {
            let record = std::fs::read_to_string(f.path()).unwrap_or_default();
            assert!(
                !record.contains(&format!("\"{}\"", h.name())) && !record.contains(&second.name),
                "{mode}: {} still names an instance that went: {record}",
                f.path().display()
            );
        }
    });
}

/// Item 13: a UDP client that keeps one source port while the container behind the
/// published port is re-created at another address. The kernel keeps matching the flow
/// to its conntrack entry, whose DNAT still names the old address (iptables mode), so the
/// datagrams went nowhere until the entry expired, which it never does while the client
/// keeps sending.
#[test]
fn a_udp_client_reaches_a_container_recreated_at_a_new_address() {
    each_mode("a_udp_client_reaches_a_recreated_container", |mode| {
        let h = Host::new();
        let pinned = |ip: &str| {
            ONE_NETWORK.replace(
                "network = \"npa\"\npublish",
                &format!("network = \"npa\"\nip = \"{ip}\"\npublish"),
            )
        };
        h.write_config(&format!("mode = \"{mode}\"\n{}", pinned("10.89.0.10")));
        h.netplane_ok(&["up"]);
        let target = format!("{UPLINK_IP}:5353");
        let web = h.container("web");
        let exchange = || udp_exchange(&web, "0.0.0.0:53", &h.outside, &target, 10, Some(40053));
        assert_eq!(
            exchange().unwrap(),
            format!("10 bytes from {OUTSIDE_IP}"),
            "{mode}: before"
        );

        h.write_config(&format!("mode = \"{mode}\"\n{}", pinned("10.89.0.20")));
        let up = h.netplane_ok(&["up"]);
        assert!(up.contains("10.89.0.20"), "{mode}: web re-created: {up}");
        // A new client port reaches the new container in any case: checked first, so
        // that a failure below is about the stale state of the old flow.
        {
            let _server = Server::start(&web, &["serve-udp", "0.0.0.0:53"]);
            client(&h.outside, &["send-udp", &target, "10", "40054"])
                .unwrap_or_else(|e| panic!("{mode}: from a new client port: {e}"));
        }
        // The client keeps sending from the same port: each datagram refreshes whatever
        // entry it matches, so retries alone never recover from a stale one.
        let answer = (0..3).find_map(|_| exchange().ok());
        assert_eq!(
            answer,
            Some(format!("10 bytes from {OUTSIDE_IP}")),
            "{mode}: the same client port reaches the re-created container"
        );
    });
}
