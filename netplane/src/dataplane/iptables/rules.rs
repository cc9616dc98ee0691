//! What netplane's chains hold for a plan: the one place that decides the rules of each
//! network, from how its traffic is matched (its driver: [`Scope`]) and what the host does
//! with it (its gateway mode, Docker 28's semantics).
//!
//! - `nat`: masquerade out, published host ports DNATed in; forwarded traffic from outside
//!   straight to a container address is dropped unless nf_conntrack says the flow was
//!   DNATed (a published port) or is a reply (RELATED,ESTABLISHED). Docker 28 gets the same
//!   with a raw-table drop per container address plus a filter drop after the per-port
//!   accepts; the conntrack state says it in one rule, and lets through what raw cannot
//!   tell apart before conntrack runs: ICMP errors about a container's own flows to peers.
//!   The price: the drop sits in FORWARD, so a rule that another tool (or another
//!   instance) inserted above netplane's jump and that accepts the packet wins over it.
//! - `nat-unprotected`: as `nat`, and everything forwarded in is accepted.
//! - `routed`: no NAT and no host port; in, only replies, the (address, port, protocol) of
//!   the containers' `publish` entries and ICMP echo requests; out, everything, untranslated
//!   (Docker's DOCKER chain: per-port accepts, `-p icmp`, then a drop).
//! - `isolated`: nothing forwarded in or out, only between its own containers.
//!
//! `[[routes]]` subnets are peers: never masqueraded to, and forwarded into every local
//! network that is not isolated, before any gateway mode's filter. Isolation between local
//! networks stays: only DNATed (published) flows cross.
//!
//! Every rule is written in `iptables-save`'s own order (`-s -d -i -o`, then matches), so
//! a rule reads the same here, in the unit tests and in a dump of the host.

use std::collections::BTreeSet;
use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;

use super::{TABLES, chain, chains_of};
use crate::config::{Container, Driver, GatewayMode, Network, Plan, PortMapping};

/// The host veths netplane creates: `vnp<hash>` (`config::HOST_VETH_PREFIX`; a test
/// checks that the two agree).
/// Matched only together with a ptp network's subnet, which no other instance on the
/// host can have (`up` refuses a subnet overlapping an address already on the host, and
/// a ptp network's gateway sits on each of its host veths), so another instance's veths
/// never match.
const HOST_VETHS: &str = "vnp+";

/// The match part of a rule: the fields that iptables-save prints first, in its order.
/// Each holds a whole fragment (`-s 10.0.0.0/24`, `! -o np0`), so negations compose.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Match {
    src: Option<String>,
    dst: Option<String>,
    iif: Option<String>,
    oif: Option<String>,
}

impl Match {
    fn src(mut self, net: impl fmt::Display) -> Match {
        self.src = Some(format!("-s {net}"));
        self
    }

    fn dst(mut self, net: impl fmt::Display) -> Match {
        self.dst = Some(format!("-d {net}"));
        self
    }

    fn not_dst(mut self, net: impl fmt::Display) -> Match {
        self.dst = Some(format!("! -d {net}"));
        self
    }

    fn iif(mut self, dev: &str) -> Match {
        self.iif = Some(format!("-i {dev}"));
        self
    }

    fn oif(mut self, dev: &str) -> Match {
        self.oif = Some(format!("-o {dev}"));
        self
    }

    fn not_oif(mut self, dev: &str) -> Match {
        self.oif = Some(format!("! -o {dev}"));
        self
    }

    /// Both matches at once. They never constrain the same field: a "from" scope sets
    /// the source side, a "to" scope the destination side.
    fn and(self, other: Match) -> Match {
        let pick = |a: Option<String>, b: Option<String>| {
            debug_assert!(a.is_none() || b.is_none(), "{a:?} and {b:?} on one field");
            a.or(b)
        };
        Match {
            src: pick(self.src, other.src),
            dst: pick(self.dst, other.dst),
            iif: pick(self.iif, other.iif),
            oif: pick(self.oif, other.oif),
        }
    }
}

impl fmt::Display for Match {
    /// Each present field followed by a space, so `-A CHAIN {match}-j X` reads right.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for part in [&self.src, &self.dst, &self.iif, &self.oif]
            .into_iter()
            .flatten()
        {
            write!(f, "{part} ")?;
        }
        Ok(())
    }
}

/// How rules find one network's forwarded traffic. A bridge network's packets cross its
/// bridge device. A ptp network has no device of its own: its containers sit behind one
/// host veth each, all carrying the gateway, so its packets are found by its subnet (and
/// on the way out, by the host veths they come from, so a packet from the uplink with a
/// forged container source is not "from the network").
struct Scope<'a> {
    net: &'a Network,
    /// The IPv6 ruleset's view (ip6tables): the network's subnet6 and addresses.
    v6: bool,
}

impl Scope<'_> {
    /// The network's subnet in this family (a [`family_view`] has only networks that
    /// have one).
    fn subnet(&self) -> String {
        self.net
            .subnet_of(self.v6)
            .map(|s| s.to_string())
            .unwrap_or_default()
    }

    /// Forwarded out of one of the network's containers.
    fn from(&self) -> Match {
        match self.net.driver {
            Driver::Bridge => Match::default().iif(&self.net.name),
            Driver::Ptp => Match::default().src(self.subnet()).iif(HOST_VETHS),
        }
    }

    /// Forwarded towards the network. For ptp, every address of the subnet, also one no
    /// container has (its packets would follow the default route out: dropped, not leaked).
    fn to(&self) -> Match {
        match self.net.driver {
            Driver::Bridge => Match::default().oif(&self.net.name),
            Driver::Ptp => Match::default().dst(self.subnet()),
        }
    }

    /// Forwarded anywhere but into the network: what masquerade translates.
    fn not_to(&self) -> Match {
        match self.net.driver {
            Driver::Bridge => Match::default().not_oif(&self.net.name),
            Driver::Ptp => Match::default().not_dst(self.subnet()),
        }
    }

    /// Between two of its containers: bridged on a bridge (seen here only with
    /// br_netfilter), routed by the host on ptp (always seen here).
    fn within(&self) -> Match {
        match self.net.driver {
            Driver::Bridge => self.from().oif(&self.net.name),
            Driver::Ptp => self.from().dst(self.subnet()).oif(HOST_VETHS),
        }
    }

    /// Forwarded to container `c` of the network at its address `ip`: on its bridge, or
    /// on its own host veth.
    fn to_container(&self, c: &Container, ip: IpAddr) -> Match {
        let dst = Match::default().dst(IpNet::from(ip));
        match self.net.driver {
            Driver::Bridge => dst.oif(&self.net.name),
            Driver::Ptp => dst.oif(&c.host_veth),
        }
    }
}

/// The published ports that the host translates: those of containers on `nat` and
/// `nat-unprotected` networks (a routed network's `publish` opens container ports by
/// direct routing, and takes no host port; an isolated network publishes nothing).
pub fn dnat_mappings(plan: &Plan) -> impl Iterator<Item = (&Container, &PortMapping)> {
    dnat_mappings_of(plan, false)
}

/// [`dnat_mappings`] of one family: those on that family's host addresses of containers
/// that have an address of it.
pub(super) fn dnat_mappings_of(
    plan: &Plan,
    v6: bool,
) -> impl Iterator<Item = (&Container, &PortMapping)> {
    plan.containers
        .iter()
        .filter(|c| {
            plan.network(&c.network)
                .is_some_and(|n| n.gateway_mode.nat())
        })
        .filter(move |c| c.ip_of(v6).is_some())
        .flat_map(|c| c.publish.iter().map(move |m| (c, m)))
        .filter(move |(_, m)| if v6 { m.on_v6() } else { m.on_v4() })
}

/// The contents of netplane's chains for `plan`, as `iptables-restore` input (declaring a
/// chain in a `--noflush` batch creates it or flushes it): those of its networks with a
/// subnet (IPv4). Pure, so unit-tested.
pub fn ruleset(plan: &Plan) -> String {
    rules_of(&family_view(plan, false), false)
}

/// The IPv6 counterpart of [`ruleset`], as `ip6tables-restore` input: the same chains
/// for the networks' subnet6 and the IPv6 `[[routes]]` (Docker's rules with ip6tables
/// enabled). No `[::1]` publishing (refused: IPv6 has no `route_localnet`), so no `raw`
/// drop and no loopback SNAT; DNAT leaves link-local clients alone, as Docker does
/// (`! -s fe80::/10`).
pub fn ruleset6(plan: &Plan) -> String {
    rules_of(&family_view(plan, true), true)
}

/// `plan` as the ruleset of one family (IPv6 when `v6`) sees it: only the networks that
/// have a subnet of that family, their containers, and the routes of that family.
fn family_view(plan: &Plan, v6: bool) -> Plan {
    let mut view = plan.clone();
    view.networks.retain(|n| n.subnet_of(v6).is_some());
    view.containers
        .retain(|c| c.ip_of(v6).is_some() && view.networks.iter().any(|n| n.name == c.network));
    view.routes
        .retain(|r| matches!(r.subnet, IpNet::V6(_)) == v6);
    view
}

fn rules_of(plan: &Plan, v6: bool) -> String {
    let chains = Chains {
        raw: chain("RAW", &plan.name),
        dnat: chain("DNAT", &plan.name),
        masq: chain("MASQ", &plan.name),
        fwd: chain("FWD", &plan.name),
        v6,
    };
    let rules = [
        ("raw", chains.raw(plan)),
        ("nat", [chains.dnat(plan), chains.masq(plan)].concat()),
        ("filter", chains.fwd(plan)),
    ];
    let mut out = String::new();
    for table in TABLES {
        writeln!(out, "*{table}").unwrap();
        for c in chains_of(table, &plan.name) {
            writeln!(out, ":{c} - [0:0]").unwrap();
        }
        for (_, lines) in rules.iter().filter(|(t, _)| *t == table) {
            for r in lines {
                writeln!(out, "{r}").unwrap();
            }
        }
        writeln!(out, "COMMIT").unwrap();
    }
    out
}

/// The chain names of one instance; each method gives one chain's rules, in order.
struct Chains {
    raw: String,
    dnat: String,
    masq: String,
    fwd: String,
    /// The ip6tables ruleset (see [`ruleset6`]).
    v6: bool,
}

impl Chains {
    /// `raw`: packets to 127.0.0.1-published ports that did not arrive on `lo`
    /// (moby#45610: a neighbour routing 127.0.0.1 to us; `route_localnet` lets the DNATed
    /// flow out, and would let this in too).
    fn raw(&self, plan: &Plan) -> Vec<String> {
        let raw = &self.raw;
        let mut rules = Vec::new();
        if self.v6 {
            // A ptp container's IPv6 packets: IPv6 has no rp_filter sysctl (what keeps a
            // ptp container to its own IPv4 address), so the rpfilter match does its job:
            // a source the host would not route back out of that veth is dropped.
            if plan.networks.iter().any(|n| n.driver == Driver::Ptp) {
                rules.push(format!(
                    "-A {raw} -i {HOST_VETHS} -m rpfilter --invert -j DROP"
                ));
            }
            return rules;
        }
        for (_, m) in dnat_mappings(plan).filter(|(_, m)| m.host_ip == Some(Ipv4Addr::LOCALHOST)) {
            let proto = m.proto;
            for hp in m.host_ports() {
                rules.push(format!(
                    "-A {raw} -d 127.0.0.1/32 ! -i lo -p {proto} -m {proto} --dport {hp} -j DROP"
                ));
            }
        }
        rules
    }

    /// `nat`, from PREROUTING and OUTPUT for local destinations: one DNAT per published
    /// host port, so remote hosts, host processes and containers (hairpin) all reach it.
    fn dnat(&self, plan: &Plan) -> Vec<String> {
        let dnat = &self.dnat;
        let mut rules = Vec::new();
        if self.v6 && dnat_mappings_of(plan, true).next().is_some() {
            // The OUTPUT jump is for local destinations, and ::1 is one: DNATed, a
            // connection to [::1]:port would keep its ::1 source, which the container
            // drops (no route_localnet in IPv6), and hang instead of being refused.
            // Docker's jump leaves ::1 out (`! -d ::1/128`).
            rules.push(format!("-A {dnat} -d ::1/128 -j RETURN"));
        }
        for (c, m) in dnat_mappings_of(plan, self.v6) {
            let proto = m.proto;
            let (dst, to) = match c.ip_of(self.v6) {
                Some(IpAddr::V6(ip6)) => (
                    m.host_ip6
                        .map(|ip| format!("-d {ip}/128 "))
                        .unwrap_or_default()
                        + "! -s fe80::/10 ",
                    format!("[{ip6}]"),
                ),
                Some(IpAddr::V4(ip)) => (
                    m.host_ip
                        .map(|ip| format!("-d {ip}/32 "))
                        .unwrap_or_default(),
                    ip.to_string(),
                ),
                None => continue,
            };
            // One rule per port: a DNAT range would pick any port of the range, not the
            // matching one (what Docker does too).
            for (hp, cp) in m.pairs() {
                rules.push(format!(
                    "-A {dnat} {}-p {proto} -m {proto} --dport {hp} -j DNAT --to-destination {to}:{cp}",
                    order_src_first(&dst),
                ));
            }
        }
        rules
    }

    /// `nat`, from POSTROUTING: what is translated on the way out.
    fn masq(&self, plan: &Plan) -> Vec<String> {
        let masq = &self.masq;
        // Routed subnets first: other hosts' containers see ours by their own addresses.
        // (Only local subnets are ever translated here, and NAT is decided on a flow's
        // first packet, so the destination alone covers both directions.)
        let mut rules: Vec<String> = plan
            .routes
            .iter()
            .map(|r| format!("-A {masq} -d {} -j RETURN", r.subnet))
            .collect();
        for n in plan.networks.iter().filter(|n| n.gateway_mode.nat()) {
            let scope = Scope {
                net: n,
                v6: self.v6,
            };
            let gw = n
                .gateway_of(self.v6)
                .map(|g| g.to_string())
                .unwrap_or_default();
            let src = Match::default().src(scope.subnet());
            // Out of the network: the address of the device it leaves by.
            rules.push(format!(
                "-A {masq} {}-j MASQUERADE",
                src.clone().and(scope.not_to())
            ));
            // Hairpin: a container reaching a published port of its own network comes
            // back through the host, so the reply must too. From the gateway, as
            // Docker's MASQUERADE on the bridge gives (a ptp network's host veths all
            // carry it).
            rules.push(format!(
                "-A {masq} {}-m conntrack --ctstate DNAT -j SNAT --to-source {gw}",
                src.and(scope.to())
            ));
            // Host → 127.0.0.1:port: a loopback source cannot leave the host.
            if self.v6 {
                continue;
            }
            rules.push(format!(
                "-A {masq} {}-j SNAT --to-source {gw}",
                Match::default().src("127.0.0.0/8").and(scope.to())
            ));
        }
        rules
    }

    /// `filter`, first in FORWARD. In order: traffic within a network; isolated
    /// networks; isolation between networks (published flows excepted); routed subnets'
    /// peers; then per network, what may come in by its gateway mode, and what goes out.
    /// Netplane never changes FORWARD's policy, and works whether it is ACCEPT or DROP.
    fn fwd(&self, plan: &Plan) -> Vec<String> {
        let fwd = &self.fwd;
        let scopes: Vec<Scope> = plan
            .networks
            .iter()
            .map(|net| Scope { net, v6: self.v6 })
            .collect();
        let (isolated, open): (Vec<&Scope>, Vec<&Scope>) = scopes
            .iter()
            .partition(|s| s.net.gateway_mode == GatewayMode::Isolated);
        let mut rules = Vec::new();
        let mut add = |m: Match, verdict: &str| rules.push(format!("-A {fwd} {m}{verdict}"));

        for s in &scopes {
            add(s.within(), "-j ACCEPT");
        }
        for s in &isolated {
            add(s.from(), "-j DROP");
            add(s.to(), "-j DROP");
            // Its subnet has no route here (no gateway address): a packet for it would
            // follow the default route, and has no business anywhere.
            let subnet = Match::default().dst(s.subnet());
            if s.to() != subnet {
                add(subnet, "-j DROP");
            }
        }
        for a in &open {
            for b in open.iter().filter(|b| b.net.name != a.net.name) {
                add(
                    a.from().and(b.to()),
                    "-m conntrack ! --ctstate DNAT -j DROP",
                );
            }
        }
        for r in &plan.routes {
            for s in &open {
                add(Match::default().src(r.subnet).and(s.to()), "-j ACCEPT");
            }
        }
        for s in &open {
            let to = s.to();
            add(
                to.clone(),
                "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            );
            match s.net.gateway_mode {
                GatewayMode::Nat => {
                    add(to.clone(), "-m conntrack --ctstate DNAT -j ACCEPT");
                    add(to, "-j DROP");
                }
                GatewayMode::NatUnprotected => add(to, "-j ACCEPT"),
                GatewayMode::Routed => {
                    for (c, ip, port) in routed_ports(plan, s.net, self.v6) {
                        add(s.to_container(c, ip), &format!("{port} -j ACCEPT"));
                    }
                    add(
                        to.clone(),
                        if self.v6 {
                            "-p ipv6-icmp -m icmp6 --icmpv6-type 128 -j ACCEPT"
                        } else {
                            "-p icmp -m icmp --icmp-type 8 -j ACCEPT"
                        },
                    );
                    add(to, "-j DROP");
                }
                // Not in `open`: its drops come before any accept, above.
                GatewayMode::Isolated => {}
            }
            add(s.from(), "-j ACCEPT");
        }
        rules
    }
}

/// A rule's address matches in iptables-save's order: `-s` before `-d` (the DNAT of IPv6
/// adds `! -s fe80::/10` after an optional `-d`).
fn order_src_first(m: &str) -> String {
    match m.split_once("! -s ") {
        Some((d, rest)) => format!("! -s {rest}{d}"),
        None => m.to_owned(),
    }
}

/// A routed network's open container ports: `-p proto -m proto --dport port[:last]`
/// per container with an address of the family (and that address), each once.
fn routed_ports<'a>(
    plan: &'a Plan,
    net: &Network,
    v6: bool,
) -> Vec<(&'a Container, IpAddr, String)> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (c, ip) in plan
        .containers
        .iter()
        .filter(|c| c.network == net.name)
        .filter_map(|c| Some((c, c.ip_of(v6)?)))
    {
        for m in c
            .publish
            .iter()
            .filter(|m| if v6 { m.on_v6() } else { m.on_v4() })
        {
            let (first, last) = (*m.container_ports().start(), *m.container_ports().end());
            if !seen.insert((ip, m.proto.number(), first, last)) {
                continue;
            }
            let ports = if first == last {
                first.to_string()
            } else {
                format!("{first}:{last}")
            };
            let proto = m.proto;
            out.push((c, ip, format!("-p {proto} -m {proto} --dport {ports}")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::dataplane::iptables::{tag, test_plan as two};

    fn plan(toml: &str) -> Plan {
        Config::parse(
            &format!("name = \"t\"\nmode = \"iptables\"\n{toml}"),
            "test",
        )
        .unwrap()
        .plan()
        .unwrap()
    }

    const PUBLISH: &str = r#""8080:80", "127.0.0.1:8081:80", "5353:53/udp", "9000-9001:7000-7001""#;

    fn has(r: &str, want: &[String]) {
        for w in want {
            assert!(r.lines().any(|l| l == w), "missing {w}\n{r}");
        }
    }

    /// The rules of one chain kind, without the `-A CHAIN ` prefix.
    fn chain_rules(r: &str, kind: &str) -> Vec<String> {
        let prefix = format!("-A NETPLANE-{kind}-{} ", tag("t"));
        r.lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn a_dual_stack_network_gets_ip6tables_rules_for_its_ipv6_mappings() {
        let p = crate::config::testutil::dual_stack(&[
            "8080:80",
            "[::]:8081:80/udp",
            "0.0.0.0:8082:80",
            "[2001:db8:113::1]:8083:80",
        ]);
        let (r4, r6, t) = (ruleset(&p), ruleset6(&p), tag("t"));
        // Docker's -p families: no address is both; 0.0.0.0 IPv4 only; [::] and a literal
        // IPv6 address IPv6 only. Link-local clients are not translated.
        assert_eq!(
            chain_rules(&r6, "DNAT"),
            [
                // ::1 is local, but a DNATed [::1] client could never be answered.
                "-d ::1/128 -j RETURN",
                "! -s fe80::/10 -p tcp -m tcp --dport 8080 -j DNAT --to-destination [2001:db8:89::2]:80",
                "! -s fe80::/10 -p udp -m udp --dport 8081 -j DNAT --to-destination [2001:db8:89::2]:80",
                "! -s fe80::/10 -d 2001:db8:113::1/128 -p tcp -m tcp --dport 8083 -j DNAT --to-destination [2001:db8:89::2]:80",
            ]
        );
        let dnat4 = chain_rules(&r4, "DNAT");
        assert!(
            dnat4.iter().any(|r| r.contains("--dport 8082 ")),
            "{dnat4:?}"
        );
        assert!(
            !dnat4
                .iter()
                .any(|r| r.contains("--dport 8081 ") || r.contains("--dport 8083 "))
        );
        assert_eq!(
            chain_rules(&r6, "MASQ"),
            [
                "-s 2001:db8:89::/64 ! -o npa -j MASQUERADE",
                "-s 2001:db8:89::/64 -o npa -m conntrack --ctstate DNAT -j SNAT --to-source 2001:db8:89::1",
            ]
        );
        // The IPv4-only network has no IPv6 rules; no raw drop (no [::1] publishing).
        assert!(
            !r6.contains("npb") && chain_rules(&r6, "RAW").is_empty(),
            "{r6}"
        );
        assert_eq!(
            chain_rules(&r6, "FWD"),
            [
                "-i npa -o npa -j ACCEPT",
                "-o npa -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                "-o npa -m conntrack --ctstate DNAT -j ACCEPT",
                "-o npa -j DROP",
                "-i npa -j ACCEPT",
            ]
        );
        assert!(r6.contains(&format!(":NETPLANE-FWD-{t} - [0:0]")));
    }

    #[test]
    fn an_ipv6_only_network_and_ipv6_routes_are_in_the_ip6tables_rules_only() {
        let p = crate::config::testutil::ipv6_only_and_routes();
        let (r4, r6) = (ruleset(&p), ruleset6(&p));
        // IPv4: the IPv4 network and route only.
        assert!(!r4.contains("np6") && !r4.contains("2001:db8"), "{r4}");
        assert_eq!(
            chain_rules(&r4, "DNAT"),
            ["-p tcp -m tcp --dport 9090 -j DNAT --to-destination 10.89.4.2:90"]
        );
        // IPv6: the IPv6-only network, its published port and the IPv6 route, which is
        // never masqueraded and a peer of the network, as an IPv4 route is in IPv4.
        assert!(!r6.contains("np4") && !r6.contains("10.0.2.0"), "{r6}");
        assert_eq!(
            chain_rules(&r6, "DNAT")[1..],
            [
                "! -s fe80::/10 -p tcp -m tcp --dport 8080 -j DNAT --to-destination [2001:db8:6::2]:80"
            ]
        );
        assert_eq!(
            chain_rules(&r6, "MASQ"),
            [
                "-d 2001:db8:2::/64 -j RETURN",
                "-s 2001:db8:6::/64 ! -o np6 -j MASQUERADE",
                "-s 2001:db8:6::/64 -o np6 -m conntrack --ctstate DNAT -j SNAT --to-source 2001:db8:6::1",
            ]
        );
        let fwd6 = chain_rules(&r6, "FWD");
        let peer = fwd6
            .iter()
            .position(|l| l == "-s 2001:db8:2::/64 -o np6 -j ACCEPT")
            .unwrap_or_else(|| panic!("{fwd6:#?}"));
        assert!(peer < fwd6.iter().position(|l| l == "-o np6 -j DROP").unwrap());
        assert_eq!(chain_rules(&r4, "MASQ")[0], "-d 10.0.2.0/24 -j RETURN");
    }

    #[test]
    fn a_bridge_network_in_nat_mode() {
        let r = ruleset(&two("bridge", "nat", PUBLISH));
        let t = tag("t");
        has(
            &r,
            &[
                format!(
                    "-A NETPLANE-DNAT-{t} -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.89.0.2:80"
                ),
                format!(
                    "-A NETPLANE-DNAT-{t} -d 127.0.0.1/32 -p tcp -m tcp --dport 8081 -j DNAT --to-destination 10.89.0.2:80"
                ),
                format!(
                    "-A NETPLANE-DNAT-{t} -p udp -m udp --dport 5353 -j DNAT --to-destination 10.89.0.2:53"
                ),
                format!(
                    "-A NETPLANE-DNAT-{t} -p tcp -m tcp --dport 9001 -j DNAT --to-destination 10.89.0.2:7001"
                ),
                format!(
                    "-A NETPLANE-RAW-{t} -d 127.0.0.1/32 ! -i lo -p tcp -m tcp --dport 8081 -j DROP"
                ),
            ],
        );
        assert_eq!(
            chain_rules(&r, "MASQ")[..3],
            [
                "-s 10.89.0.0/24 ! -o npa -j MASQUERADE",
                "-s 10.89.0.0/24 -o npa -m conntrack --ctstate DNAT -j SNAT --to-source 10.89.0.1",
                "-s 127.0.0.0/8 -o npa -j SNAT --to-source 10.89.0.1",
            ]
        );
        assert_eq!(
            chain_rules(&r, "FWD"),
            [
                "-i npa -o npa -j ACCEPT",
                "-i npb -o npb -j ACCEPT",
                "-i npa -o npb -m conntrack ! --ctstate DNAT -j DROP",
                "-i npb -o npa -m conntrack ! --ctstate DNAT -j DROP",
                "-o npa -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                // Direct routing from outside: only published (DNATed) flows and replies.
                "-o npa -m conntrack --ctstate DNAT -j ACCEPT",
                "-o npa -j DROP",
                "-i npa -j ACCEPT",
                "-o npb -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                "-o npb -m conntrack --ctstate DNAT -j ACCEPT",
                "-o npb -j DROP",
                "-i npb -j ACCEPT",
            ]
        );
        // Only the loopback-bound port gets the moby#45610 drop.
        assert_eq!(chain_rules(&r, "RAW").len(), 1);
        // Each table is declared, committed, and declares only netplane's chains.
        assert_eq!(r.matches("COMMIT").count(), 3);
        assert!(
            r.lines()
                .filter(|l| l.starts_with(':'))
                .all(|l| l.starts_with(":NETPLANE-"))
        );
    }

    #[test]
    fn a_ptp_network_matches_its_subnet_and_host_veths() {
        let p = two("ptp", "nat", PUBLISH);
        let r = ruleset(&p);
        // The translations are the bridge's.
        assert_eq!(
            chain_rules(&r, "DNAT"),
            chain_rules(&ruleset(&two("bridge", "nat", PUBLISH)), "DNAT")
        );
        assert_eq!(
            chain_rules(&r, "MASQ")[..3],
            [
                // Between two containers of the network (routed by the host): untouched.
                "-s 10.89.0.0/24 ! -d 10.89.0.0/24 -j MASQUERADE",
                "-s 10.89.0.0/24 -d 10.89.0.0/24 -m conntrack --ctstate DNAT -j SNAT --to-source 10.89.0.1",
                "-s 127.0.0.0/8 -d 10.89.0.0/24 -j SNAT --to-source 10.89.0.1",
            ]
        );
        let fwd = chain_rules(&r, "FWD");
        assert_eq!(
            fwd[..4],
            [
                "-s 10.89.0.0/24 -d 10.89.0.0/24 -i vnp+ -o vnp+ -j ACCEPT",
                "-s 10.89.1.0/24 -d 10.89.1.0/24 -i vnp+ -o vnp+ -j ACCEPT",
                "-s 10.89.0.0/24 -d 10.89.1.0/24 -i vnp+ -m conntrack ! --ctstate DNAT -j DROP",
                "-s 10.89.1.0/24 -d 10.89.0.0/24 -i vnp+ -m conntrack ! --ctstate DNAT -j DROP",
            ]
        );
        has(
            &fwd.join("\n"),
            &[
                "-d 10.89.0.0/24 -m conntrack --ctstate DNAT -j ACCEPT".into(),
                "-d 10.89.0.0/24 -j DROP".into(),
                "-s 10.89.0.0/24 -i vnp+ -j ACCEPT".into(),
            ],
        );
        // Every host veth of the plan is one that `vnp+` matches.
        assert_eq!(HOST_VETHS, format!("{}+", crate::config::HOST_VETH_PREFIX));
        assert!(
            p.containers
                .iter()
                .all(|c| c.host_veth.starts_with(crate::config::HOST_VETH_PREFIX))
        );
    }

    #[test]
    fn nat_unprotected_accepts_direct_routing() {
        let r = ruleset(&two("bridge", "nat-unprotected", PUBLISH));
        let fwd = chain_rules(&r, "FWD");
        assert!(fwd.contains(&"-o npa -j ACCEPT".to_owned()), "{fwd:#?}");
        assert!(!fwd.contains(&"-o npa -j DROP".to_owned()));
        // Still NAT: masquerade and the published ports.
        assert_eq!(chain_rules(&r, "DNAT").len(), 5);
        assert!(chain_rules(&r, "MASQ").contains(&"-s 10.89.0.0/24 ! -o npa -j MASQUERADE".into()));
    }

    #[test]
    fn routed_opens_the_published_container_ports_and_translates_nothing() {
        let publish = r#""8080:80", "8081:80", "5353:53/udp", "9000-9001:7000-7001""#;
        for driver in ["bridge", "ptp"] {
            let p = two(driver, "routed", publish);
            let r = ruleset(&p);
            assert!(chain_rules(&r, "DNAT").is_empty(), "no host port is opened");
            assert!(chain_rules(&r, "RAW").is_empty());
            assert!(
                !chain_rules(&r, "MASQ")
                    .iter()
                    .any(|l| l.contains("10.89.0.0/24")),
                "npa is not translated"
            );
            let web = p.container("web").unwrap();
            let to_web = match driver {
                "bridge" => "-d 10.89.0.2/32 -o npa".to_owned(),
                _ => format!("-d 10.89.0.2/32 -o {}", web.host_veth),
            };
            let to_net = match driver {
                "bridge" => "-o npa",
                _ => "-d 10.89.0.0/24",
            };
            let fwd = chain_rules(&r, "FWD");
            let start = fwd
                .iter()
                .position(|l| l.starts_with(to_net) && l.contains("RELATED"))
                .unwrap();
            assert_eq!(
                fwd[start + 1..start + 6],
                [
                    // 8080:80 and 8081:80 name one container port: one rule.
                    format!("{to_web} -p tcp -m tcp --dport 80 -j ACCEPT"),
                    format!("{to_web} -p udp -m udp --dport 53 -j ACCEPT"),
                    format!("{to_web} -p tcp -m tcp --dport 7000:7001 -j ACCEPT"),
                    format!("{to_net} -p icmp -m icmp --icmp-type 8 -j ACCEPT"),
                    format!("{to_net} -j DROP"),
                ],
                "{driver}"
            );
        }
    }

    #[test]
    fn an_isolated_network_forwards_nothing_in_or_out() {
        let r = ruleset(&two("bridge", "isolated", ""));
        let fwd = chain_rules(&r, "FWD");
        assert_eq!(
            fwd[..5],
            [
                "-i npa -o npa -j ACCEPT",
                "-i npb -o npb -j ACCEPT",
                "-i npa -j DROP",
                "-o npa -j DROP",
                "-d 10.89.0.0/24 -j DROP",
            ]
        );
        assert!(
            !fwd[5..].iter().any(|l| l.contains("npa")),
            "nothing else names it: {fwd:#?}"
        );
        assert!(!chain_rules(&r, "MASQ").iter().any(|l| l.contains("npa")));
    }

    #[test]
    fn routed_subnets_are_peers_never_masqueraded() {
        let mut p = two("ptp", "routed", r#""8080:80""#);
        let routes = plan(
            r#"
            [[networks]]
            name = "x"
            subnet = "10.89.0.0/24"
            [[routes]]
            subnet = "10.90.0.0/24"
            via = "192.0.2.12"
            [[routes]]
            subnet = "10.91.0.0/24"
            via = "192.0.2.13"
            "#,
        )
        .routes;
        p.routes = routes;
        let r = ruleset(&p);
        let masq = chain_rules(&r, "MASQ");
        assert_eq!(
            masq[..2],
            ["-d 10.90.0.0/24 -j RETURN", "-d 10.91.0.0/24 -j RETURN"],
            "before any masquerade"
        );
        let fwd = chain_rules(&r, "FWD");
        let peer = |route: &str, net: &str| {
            fwd.iter()
                .position(|l| *l == format!("-s {route} -d {net} -j ACCEPT"))
                .unwrap_or_else(|| panic!("no peer rule {route} → {net}: {fwd:#?}"))
        };
        // Before the routed filter and the nat-mode drop of either network.
        let first_drop = fwd
            .iter()
            .position(|l| l.ends_with("-j DROP") && !l.contains("ctstate"))
            .unwrap();
        for route in ["10.90.0.0/24", "10.91.0.0/24"] {
            for net in ["10.89.0.0/24", "10.89.1.0/24"] {
                assert!(peer(route, net) < first_drop);
            }
        }
    }

    #[test]
    fn every_ruleset_declares_every_chain_so_applying_it_replaces_the_old_one() {
        // `up` with another gateway mode, driver or container set converges because the
        // batch declares (flushes) each chain before refilling it: nothing of the old
        // rules can stay behind, whatever the new ones are.
        let t = tag("t");
        let declared: Vec<String> = ["RAW", "DNAT", "MASQ", "FWD"]
            .iter()
            .map(|k| format!(":NETPLANE-{k}-{t} - [0:0]"))
            .collect();
        for (driver, mode, publish) in [
            ("bridge", "nat", r#""8080:80""#),
            ("ptp", "nat", r#""8080:80""#),
            ("ptp", "nat-unprotected", r#""8080:80""#),
            ("ptp", "routed", r#""8080:80""#),
            ("bridge", "isolated", ""),
        ] {
            let r = ruleset(&two(driver, mode, publish));
            has(&r, &declared);
            assert_eq!(r, ruleset(&two(driver, mode, publish)), "deterministic");
            // Each rule lands in the table of its chain.
            for (table, kinds) in [
                ("raw", &["RAW"][..]),
                ("nat", &["DNAT", "MASQ"]),
                ("filter", &["FWD"]),
            ] {
                let section = r.split(&format!("*{table}\n")).nth(1).unwrap();
                let section = section.split("COMMIT").next().unwrap();
                assert!(
                    section
                        .lines()
                        .filter(|l| l.starts_with("-A "))
                        .all(|l| kinds
                            .iter()
                            .any(|k| l.starts_with(&format!("-A NETPLANE-{k}-")))),
                    "{driver} {mode} {table}:\n{section}"
                );
            }
        }
    }
}
