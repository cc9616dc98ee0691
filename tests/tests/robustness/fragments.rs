//! Fragments that arrive before their first fragment (issue 12, item 12).
//!
//! iptables mode reassembles before NAT (nf_conntrack's defrag at PREROUTING), so a
//! datagram whose fragments came in any order arrives whole. eBPF mode translates at TC
//! ingress, before any reassembly: a later fragment that comes first carries no ports and
//! has no translation to follow, so it goes on untranslated into the host's reassembly
//! queue, and the datagram can no longer complete. Its first fragment is then dropped
//! with the reason `fragment-reordered`, counted, not sent on in vain. The README's
//! "Fragments" says why nothing after the kernel's reassembly can translate it instead.

use netplane_tests::each_mode;
use netplane_tests::host::{Host, OUTSIDE_IP, Server, UPLINK_IP, client};

#[test]
fn reordered_fragments_to_a_published_port() {
    each_mode("reordered_fragments_to_a_published_port", |mode| {
        let h = Host::new();
        h.write_config(&format!(
            "mode = \"{mode}\"\n{}\n[[containers]]\nname = \"web\"\nnetwork = \"npa\"\npublish = [\"5353:53/udp\"]\n",
            netplane_tests::TWO_NETWORKS
        ));
        h.netplane_ok(&["up"]);
        let _server = Server::start(&h.container("web"), &["serve-udp", "0.0.0.0:53", "3"]);
        let target = format!("{UPLINK_IP}:5353");
        let send = |order: &str| client(&h.outside, &["send-fragments", &target, "2500", order]);
        let whole = format!("2500 bytes from {OUTSIDE_IP}");

        // In order: whole, in both modes, with the client's own address.
        assert_eq!(send("in-order").as_deref(), Ok(whole.as_str()), "{mode}");
        let reversed = send("reversed");
        if mode == "ebpf" {
            assert!(
                reversed.is_err(),
                "a reordered datagram cannot complete: {reversed:?}"
            );
            assert_eq!(
                h.drops("fragment-reordered"),
                1,
                "the lost datagram is counted"
            );
        } else {
            assert_eq!(
                reversed.as_deref(),
                Ok(whole.as_str()),
                "{mode} reassembles first"
            );
        }
        // Whatever came before, the next datagram in order arrives whole.
        assert_eq!(send("in-order").as_deref(), Ok(whole.as_str()), "{mode}");
    });
}
