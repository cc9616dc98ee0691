//! The programs' observability in the kernel, on crafted packets (BPF_PROG_TEST_RUN): drop
//! counters by where they happened, translated packets, masquerade's port allocations,
//! the monitor's events (only while asked for, never lost packets), and the object with
//! aya-log's debug logs.
#![expect(
    unused_crate_dependencies,
    reason = "an integration test sees every dependency of the harness crate; its library target is where an unused one shows"
)]

use std::net::{Ipv4Addr, Ipv6Addr};

use netplane::config::{Config, Plan};
use netplane::dataplane::ebpf::TestRunPrograms;
use netplane::dataplane::ebpf::testrun::instruction_counts;
use netplane_common::counters::Counters;
use netplane_common::nat::{DropReason, kind};
use netplane_common::observe::{
    Dir, Event, Hook, Tuple, drop_slot, event_kind, monitor, nat_stat, path_slot,
};
use netplane_common::packet::IPPROTO_TCP;
use netplane_tests::packet::{Ip, Ip6, TCP_ACK, TCP_SYN, tcp, tcp6};
use netplane_tests::privileged;

const UPLINK_IN: &str = "netplane_uplink_ingress";
const UPLINK_OUT: &str = "netplane_uplink_egress";
const BRIDGE_IN: &str = "netplane_bridge_ingress";
const BRIDGE_OUT: &str = "netplane_bridge_egress";
const TCX_NEXT: i32 = -1;
const TC_ACT_SHOT: i32 = 2;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;

const U: [u8; 4] = [203, 0, 113, 1];
const D: [u8; 4] = [203, 0, 113, 2];
const WEB: [u8; 4] = [10, 89, 0, 2];
const PEER: [u8; 4] = [10, 89, 0, 3];
const OTHER: [u8; 4] = [10, 89, 1, 2];

/// The containers of nat_programs.rs, with `conntrack` settings (TOML lines).
fn plan_with(conntrack: &str) -> Plan {
    let containers = r#"
        [[containers]]
        name = "web"
        network = "npa"
        publish = ["8080:80"]
        [[containers]]
        name = "peer"
        network = "npa"
        [[containers]]
        name = "other"
        network = "npb"
        "#;
    let text = format!(
        "name = \"ktm\"\n{}{containers}\n[conntrack]\n{conntrack}\n",
        netplane_tests::TWO_NETWORKS
    );
    Config::parse(&text, "test").unwrap().plan().unwrap()
}

/// The programs with maps programmed for `plan`, on a host whose uplink has address U.
fn programs_for(plan: &Plan) -> TestRunPrograms {
    let host = netplane_tests::testrun::host(plan, Ipv4Addr::from(U), None);
    TestRunPrograms::load(plan, &host).expect("load the NAT programs")
}

fn programs() -> TestRunPrograms {
    programs_for(&plan_with(""))
}

/// Where an IPv4 stage runs.
fn at(hook: Hook, dir: Dir) -> u32 {
    path_slot(false, hook, dir)
}

/// An event's tuple of IPv4 `src:sport → dst:dport`.
fn tuple(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Tuple {
    let mut t = Tuple {
        sport: sport.to_be(),
        dport: dport.to_be(),
        ..Tuple::default()
    };
    t.saddr[..4].copy_from_slice(&src);
    t.daddr[..4].copy_from_slice(&dst);
    t
}

/// Runs `frame` through `program`, expecting `verdict`.
fn run(p: &mut TestRunPrograms, program: &str, frame: &[u8], verdict: i32) {
    let (got, _) = p.run(program, frame).unwrap();
    assert_eq!(got, verdict, "{program}");
}

/// The two drops the issue names, from a container: into another network (isolation, at
/// the network's ingress), and a TCP segment without SYN of no flow (at the uplink's
/// egress).
fn isolation() -> Vec<u8> {
    tcp(Ip::new(OTHER, WEB), 5000, 80, TCP_SYN, b"")
}

fn no_syn() -> Vec<u8> {
    tcp(Ip::new(WEB, D), 40100, 80, TCP_ACK, b"late")
}

#[test]
fn without_a_monitor_drops_are_counted_where_they_happen_and_nothing_is_written() {
    if !privileged("without_a_monitor_drops_are_counted_where_they_happen_and_nothing_is_written") {
        return;
    }
    let mut p = programs();
    let (iso, late) = (isolation(), no_syn());
    run(&mut p, BRIDGE_IN, &iso, TC_ACT_SHOT);
    run(&mut p, UPLINK_OUT, &late, TC_ACT_SHOT);
    let counted = |len: usize| Counters {
        packets: 1,
        bytes: len as u64,
    };
    assert_eq!(
        p.drop_slots(),
        vec![
            (
                drop_slot(
                    at(Hook::Uplink, Dir::Egress),
                    DropReason::TcpNoSynNewFlow as u32
                ),
                counted(late.len())
            ),
            (
                drop_slot(
                    at(Hook::Network, Dir::Ingress),
                    DropReason::Isolation as u32
                ),
                counted(iso.len())
            ),
        ],
        "one packet each, of the frame's length, where it was dropped"
    );
    // The reader of `status` sees them by reason.
    let by_reason = p.drops();
    assert!(by_reason.contains(&("isolation", 1)));
    assert!(by_reason.contains(&("tcp-no-syn-new-flow", 1)));
    // A flow too: nothing reaches the ring buffer with the monitor off.
    run(
        &mut p,
        UPLINK_OUT,
        &tcp(Ip::new(WEB, D), 40000, 80, TCP_SYN, b""),
        TCX_NEXT,
    );
    assert_eq!(p.events().unwrap(), Vec::new(), "the monitor flag is off");
    assert_eq!(p.events_lost(), 0);
}

#[test]
fn a_drop_monitor_gets_one_event_per_drop_with_its_place_reason_and_tuple() {
    if !privileged("a_drop_monitor_gets_one_event_per_drop_with_its_place_reason_and_tuple") {
        return;
    }
    let mut p = programs();
    p.set_monitor(monitor::DROP).unwrap();
    let iso = isolation();
    run(&mut p, BRIDGE_IN, &iso, TC_ACT_SHOT);
    // A new flow is no drop: nothing for this monitor.
    run(
        &mut p,
        UPLINK_OUT,
        &tcp(Ip::new(WEB, D), 40000, 80, TCP_SYN, b""),
        TCX_NEXT,
    );
    let events = p.events().unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    let e = events[0];
    let want = tuple(OTHER, 5000, WEB, 80);
    assert_eq!(
        (e.kind, e.reason, e.hook, e.dir, e.family, e.proto),
        (
            event_kind::DROP,
            DropReason::Isolation as u8,
            Hook::Network as u8,
            Dir::Ingress as u8,
            4,
            IPPROTO_TCP
        )
    );
    assert_eq!((e.orig, e.xlat), (want, want));
    assert_eq!((e.verdict, e.len as usize), (TC_ACT_SHOT, iso.len()));
    assert_ne!(e.ts_ns, 0);

    run(&mut p, UPLINK_OUT, &no_syn(), TC_ACT_SHOT);
    let events = p.events().unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        (events[0].reason, events[0].hook, events[0].dir),
        (
            DropReason::TcpNoSynNewFlow as u8,
            Hook::Uplink as u8,
            Dir::Egress as u8
        )
    );
    assert_eq!(events[0].orig, tuple(WEB, 40100, D, 80));

    // Off again: nothing more.
    p.set_monitor(0).unwrap();
    run(&mut p, BRIDGE_IN, &iso, TC_ACT_SHOT);
    assert_eq!(p.events().unwrap(), Vec::new());
}

/// The events of one packet through `program` (which lets it pass: on, or redirected
/// the short way into its container).
fn events_of(p: &mut TestRunPrograms, program: &str, frame: &[u8]) -> Vec<Event> {
    let (verdict, _) = p.run(program, frame).unwrap();
    assert_ne!(verdict, TC_ACT_SHOT, "{program}");
    p.events().unwrap()
}

#[test]
fn a_flow_monitor_gets_new_flows_and_state_changes_never_every_packet() {
    if !privileged("a_flow_monitor_gets_new_flows_and_state_changes_never_every_packet") {
        return;
    }
    let mut p = programs();
    p.set_monitor(monitor::FLOW).unwrap();
    let out = |flags, data: &[u8]| tcp(Ip::new(WEB, D), 40000, 80, flags, data);
    let back = |flags| tcp(Ip::new(D, U), 80, 40000, flags, b"");

    let syn = out(TCP_SYN, b"");
    let new = events_of(&mut p, UPLINK_OUT, &syn);
    assert_eq!(new.len(), 1, "{new:?}");
    let e = new[0];
    assert_eq!(
        (e.kind, e.ct_kind, e.hook, e.dir, e.proto),
        (
            event_kind::FLOW_NEW,
            kind::MASQUERADE,
            Hook::Uplink as u8,
            Dir::Egress as u8,
            IPPROTO_TCP
        )
    );
    assert_eq!(e.orig, tuple(WEB, 40000, D, 80), "the container's tuple");
    assert_eq!(e.xlat, tuple(U, 40000, D, 80), "masqueraded to the uplink");
    assert_eq!((e.verdict, e.len as usize), (TCX_NEXT, syn.len()));

    let synack = events_of(&mut p, UPLINK_IN, &back(TCP_SYN | TCP_ACK));
    assert_eq!(synack.len(), 1, "{synack:?}");
    assert_eq!(
        (synack[0].kind, synack[0].hook, synack[0].dir),
        (
            event_kind::FLOW_STATE,
            Hook::Uplink as u8,
            Dir::Ingress as u8
        )
    );
    assert_eq!(synack[0].orig, tuple(D, 80, U, 40000));
    assert_eq!(
        synack[0].xlat,
        tuple(D, 80, WEB, 40000),
        "back to the container"
    );

    // The handshake's last packet may assure the flow (a state change); the data after
    // it changes nothing.
    events_of(&mut p, UPLINK_OUT, &out(TCP_ACK, b""));
    for i in 0..10u8 {
        let quiet = events_of(&mut p, UPLINK_OUT, &out(TCP_ACK | TCP_PSH, &[i; 100]));
        assert_eq!(quiet, Vec::new(), "data segment {i}");
        let quiet = events_of(&mut p, UPLINK_IN, &back(TCP_ACK));
        assert_eq!(quiet, Vec::new(), "its ACK {i}");
    }

    let fin = events_of(&mut p, UPLINK_OUT, &out(TCP_FIN | TCP_ACK, b""));
    assert_eq!(fin.len(), 1, "{fin:?}");
    assert_eq!(fin[0].kind, event_kind::FLOW_STATE);
    assert_ne!(fin[0].seen & netplane_common::nat::seen::FIN, 0);
    assert_eq!(p.events_lost(), 0);
}

#[test]
fn a_full_ring_buffer_loses_events_never_packets() {
    if !privileged("a_full_ring_buffer_loses_events_never_packets") {
        return;
    }
    let mut p = programs();
    p.set_monitor(monitor::ALL).unwrap();
    // 256 KiB hold ~2,300 events of 104 bytes (and their 8-byte headers); nobody reads.
    let iso = isolation();
    const FLOOD: u64 = 3_000;
    for _ in 0..FLOOD {
        run(&mut p, BRIDGE_IN, &iso, TC_ACT_SHOT);
    }
    assert!(p.events_lost() > 0, "the ring buffer filled up");
    assert_eq!(
        p.drop_slots(),
        vec![(
            drop_slot(
                at(Hook::Network, Dir::Ingress),
                DropReason::Isolation as u32
            ),
            Counters {
                packets: FLOOD,
                bytes: FLOOD * iso.len() as u64
            }
        )],
        "every drop counted, whatever the events"
    );
    // A packet that passes still passes, translated, with nowhere to write its event.
    let lost = p.events_lost();
    let (verdict, out) = p
        .run(UPLINK_OUT, &tcp(Ip::new(WEB, D), 40000, 80, TCP_SYN, b""))
        .unwrap();
    assert_eq!(verdict, TCX_NEXT);
    assert_eq!(&out[14 + 12..14 + 16], &U, "masqueraded");
    assert_eq!(p.events_lost(), lost + 1);
    // Read, the buffer takes events again.
    let events = p.events().unwrap();
    assert!(
        events.len() as u64 + lost == FLOOD,
        "{} + {lost}",
        events.len()
    );
    run(&mut p, BRIDGE_IN, &iso, TC_ACT_SHOT);
    assert_eq!(p.events().unwrap().len(), 1);
}

#[test]
fn translations_are_counted_per_hook_and_direction() {
    if !privileged("translations_are_counted_per_hook_and_direction") {
        return;
    }
    let mut p = programs();
    let syn = tcp(Ip::new(WEB, D), 40000, 80, TCP_SYN, b"");
    let synack = tcp(Ip::new(D, U), 80, 40000, TCP_SYN | TCP_ACK, b"");
    run(&mut p, UPLINK_OUT, &syn, TCX_NEXT);
    assert_ne!(p.run(UPLINK_IN, &synack).unwrap().0, TC_ACT_SHOT);
    // Hairpin: a container to its network's published port, DNAT at the network's
    // ingress, SNAT to the gateway at its egress.
    let hairpin = tcp(Ip::new(PEER, U), 5001, 8080, TCP_SYN, b"");
    let (verdict, dnat) = p.run(BRIDGE_IN, &hairpin).unwrap();
    assert_eq!(verdict, TCX_NEXT);
    // (From the bridge, as the host forwards it: any interface but the uplink's.)
    let (verdict, _) = p.run_forwarded(BRIDGE_OUT, &dnat, 7).unwrap();
    assert_eq!(verdict, TCX_NEXT);
    // Untranslated: nothing counted.
    run(
        &mut p,
        UPLINK_IN,
        &tcp(Ip::new(D, U), 80, 49999, TCP_ACK, b""),
        TCX_NEXT,
    );

    let one = |len: usize| Counters {
        packets: 1,
        bytes: len as u64,
    };
    let mut want = vec![Counters::default(); 8];
    want[at(Hook::Uplink, Dir::Egress) as usize] = one(syn.len());
    want[at(Hook::Uplink, Dir::Ingress) as usize] = one(synack.len());
    want[at(Hook::Network, Dir::Ingress) as usize] = one(hairpin.len());
    want[at(Hook::Network, Dir::Egress) as usize] = one(dnat.len());
    assert_eq!(p.translated(), want);
}

#[test]
fn port_allocations_count_own_ports_searches_retries_and_failures() {
    if !privileged("port_allocations_count_own_ports_searches_retries_and_failures") {
        return;
    }
    let syn = |src, sport| tcp(Ip::new(src, D), sport, 80, TCP_SYN, b"");
    let stat = |p: &TestRunPrograms, s: u32| p.nat_stats()[s as usize];

    // Own port, then a search (the own port is taken by the first flow).
    let mut p = programs();
    run(&mut p, UPLINK_OUT, &syn(WEB, 41000), TCX_NEXT);
    run(&mut p, UPLINK_OUT, &syn(PEER, 41000), TCX_NEXT);
    assert_eq!(stat(&p, nat_stat::OWN), 1);
    assert_eq!(stat(&p, nat_stat::SEARCHED), 1);
    assert_eq!(stat(&p, nat_stat::FAILED), 0);

    // A range of two ports, both taken by flows on their own ports: the search tries
    // both, and fails.
    let mut p = programs_for(&plan_with("nat_port_range = [41000, 41001]"));
    run(&mut p, UPLINK_OUT, &syn(WEB, 41000), TCX_NEXT);
    run(&mut p, UPLINK_OUT, &syn(WEB, 41001), TCX_NEXT);
    run(&mut p, UPLINK_OUT, &syn(PEER, 41000), TC_ACT_SHOT);
    assert_eq!(stat(&p, nat_stat::OWN), 2);
    assert_eq!(stat(&p, nat_stat::RETRIES), 2, "both ports tried");
    assert_eq!(stat(&p, nat_stat::FAILED), 1);
    assert_eq!(stat(&p, nat_stat::SEARCHED), 0);
    assert!(p.drops().contains(&("nat-port-exhausted", 1)));
    assert!(
        p.nat_stats()[nat_stat::V6 as usize..]
            .iter()
            .all(|n| *n == 0),
        "IPv4's slots"
    );
}

/// Both objects load, every program of each; the default one's programs have no log code
/// (the debug object's, loaded at debug level, are longer). Prints the counts
/// (`-- --nocapture`): the evidence that the default object's programs are today's.
#[test]
fn both_objects_load_and_only_the_debug_one_logs() {
    if !privileged("both_objects_load_and_only_the_debug_one_logs") {
        return;
    }
    let plain = instruction_counts(false).expect("load every program of the default object");
    let debug = instruction_counts(true).expect("load every program of the debug object");
    for (name, xlated, verified) in plain.iter().chain(&debug) {
        println!("{name} xlated={xlated} verified={verified}");
    }
    assert_eq!(plain.len(), debug.len());
    let xlated = |counts: &[(String, u32, u32)], name: &str| {
        counts.iter().find(|c| c.0 == name).map(|c| c.1).unwrap()
    };
    // The sites: drops at every stage's tail, new masqueraded flows.
    for name in [UPLINK_OUT, BRIDGE_IN] {
        assert!(
            xlated(&debug, name) > xlated(&plain, name),
            "{name}: the debug object's log sites are live at debug level"
        );
    }
    // Programs without a site are the same.
    assert_eq!(
        xlated(&debug, "netplane_count_ingress"),
        xlated(&plain, "netplane_count_ingress")
    );
}

/// The IPv6 side of the test plan: network npa's container web, npb's other, the uplink
/// U6 and a peer outside D6.
const U6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x113, 0, 0, 0, 0, 1);
const D6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x113, 0, 0, 0, 0, 2);
const WEB6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x89, 0, 0, 0, 0, 2);
const OTHER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x8a, 0, 0, 0, 0, 2);

/// The programs of a dual-stack plan (the IPv6 ones loaded too).
fn programs6() -> TestRunPrograms {
    let text = r#"
name = "ktm6"
[[networks]]
name = "npa"
subnet = "10.89.0.0/24"
subnet6 = "2001:db8:89::/64"
[[networks]]
name = "npb"
subnet = "10.89.1.0/24"
subnet6 = "2001:db8:8a::/64"
[[containers]]
name = "web"
network = "npa"
[[containers]]
name = "other"
network = "npb"
"#;
    let plan = Config::parse(text, "test").unwrap().plan().unwrap();
    let ip6 = |name: &str| plan.containers.iter().find(|c| c.name == name).unwrap().ip6;
    assert_eq!((ip6("web"), ip6("other")), (Some(WEB6), Some(OTHER6)));
    let host = netplane_tests::testrun::host(&plan, Ipv4Addr::from(U), Some(U6));
    TestRunPrograms::load(&plan, &host).expect("load the NAT programs, IPv6 ones included")
}

/// An event's tuple of IPv6 `src:sport → dst:dport`.
fn tuple6(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16) -> Tuple {
    Tuple {
        saddr: src.octets(),
        daddr: dst.octets(),
        sport: sport.to_be(),
        dport: dport.to_be(),
    }
}

#[test]
fn ipv6_drops_translations_and_events_say_their_family() {
    if !privileged("ipv6_drops_translations_and_events_say_their_family") {
        return;
    }
    let mut p = programs6();
    p.set_monitor(monitor::ALL).unwrap();
    let iso = tcp6(Ip6::new(OTHER6, WEB6), 5000, 80, TCP_SYN, b"");
    run(&mut p, "netplane_bridge_ingress6", &iso, TC_ACT_SHOT);
    let path = path_slot(true, Hook::Network, Dir::Ingress);
    assert_eq!(
        p.drop_slots(),
        vec![(
            drop_slot(path, DropReason::Isolation as u32),
            Counters {
                packets: 1,
                bytes: iso.len() as u64
            }
        )]
    );
    let syn = tcp6(Ip6::new(WEB6, D6), 40000, 80, TCP_SYN, b"");
    run(&mut p, "netplane_uplink_egress6", &syn, TCX_NEXT);
    let events = p.events().unwrap();
    assert_eq!(events.len(), 2, "{events:?}");
    let (drop, new) = (events[0], events[1]);
    assert_eq!(
        (drop.kind, drop.family, drop.reason),
        (event_kind::DROP, 6, DropReason::Isolation as u8)
    );
    assert_eq!(drop.orig, tuple6(OTHER6, 5000, WEB6, 80));
    assert_eq!(
        (new.kind, new.family, new.ct_kind, new.hook, new.dir),
        (
            event_kind::FLOW_NEW,
            6,
            kind::MASQUERADE,
            Hook::Uplink as u8,
            Dir::Egress as u8
        )
    );
    assert_eq!(new.orig, tuple6(WEB6, 40000, D6, 80));
    assert_eq!(new.xlat, tuple6(U6, 40000, D6, 80));
    let mut want = vec![Counters::default(); 8];
    want[path_slot(true, Hook::Uplink, Dir::Egress) as usize] = Counters {
        packets: 1,
        bytes: syn.len() as u64,
    };
    assert_eq!(p.translated(), want);
    assert_eq!(p.nat_stats()[(nat_stat::V6 + nat_stat::OWN) as usize], 1);
}

/// The id of the program in link `link` of instance `h`, and the names of its maps.
fn linked_program(h: &netplane_tests::host::Host, link: &str) -> (u32, Vec<String>) {
    use aya::programs::links::{FdLink, PinnedLink};
    let pin = std::path::Path::new(netplane::dataplane::ebpf::PIN_ROOT)
        .join(h.name())
        .join(link);
    let link = FdLink::from(PinnedLink::from_pin(&pin).expect("the link is pinned"));
    let id = link.info().unwrap().program_id();
    let program = aya::programs::loaded_programs()
        .flatten()
        .find(|p| p.id() == id)
        .expect("the linked program is loaded");
    let maps = program
        .map_ids()
        .unwrap()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| aya::maps::MapInfo::from_id(m).ok())
        .filter_map(|m| m.name_as_str().map(str::to_owned))
        .collect();
    (id, maps)
}

/// `[ebpf] debug_datapath` (`up --debug-datapath`) swaps the programs for the debug
/// object's, which log into aya-log's ring buffer; turned off, the default object's come
/// back. Either change reloads, though the binary is the same.
#[test]
fn debug_datapath_swaps_the_object_both_ways() {
    if !privileged("debug_datapath_swaps_the_object_both_ways") {
        return;
    }
    const LINK: &str = "link_netplane_uplink_egress_up0";
    let config = |debug: bool| {
        format!(
            "mode = \"ebpf\"\n[ebpf]\ndebug_datapath = {debug}\n{}",
            netplane_tests::TWO_NETWORKS
        )
    };
    let h = netplane_tests::host::Host::new();
    h.write_config(&config(false));
    h.netplane_ok(&["up"]);
    let (plain, maps) = linked_program(&h, LINK);
    assert!(maps.iter().any(|m| m == "NP_EVENTS"), "{maps:?}");
    assert!(!maps.iter().any(|m| m == "AYA_LOGS"), "{maps:?}");

    h.write_config(&config(true));
    h.netplane_ok(&["up"]);
    let (debug, maps) = linked_program(&h, LINK);
    assert_ne!(debug, plain, "another program in the link");
    assert!(maps.iter().any(|m| m == "AYA_LOGS"), "{maps:?}");

    // The same again: nothing to load.
    h.netplane_ok(&["up"]);
    assert_eq!(linked_program(&h, LINK).0, debug);

    h.write_config(&config(false));
    h.netplane_ok(&["up"]);
    let (back, maps) = linked_program(&h, LINK);
    assert_ne!(back, debug);
    assert!(!maps.iter().any(|m| m == "AYA_LOGS"), "{maps:?}");
    h.netplane_ok(&["down"]);
}
