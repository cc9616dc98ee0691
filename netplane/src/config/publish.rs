//! Published ports in Docker's `-p` syntax:
//! `[hostIP:]hostPort[-end]:containerPort[-end][/tcp|/udp]`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::RangeInclusive;

use serde::{Deserialize, Serialize};

const SYNTAX: &str =
    "expected [hostIP:]hostPort[-end]:containerPort[-end][/tcp|/udp], e.g. \"8080:80/tcp\"";

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    /// The IP protocol number, as carried in the IPv4 header (and keyed on by the NAT).
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// The address families a mapping publishes on, as Docker's `-p` decides them: without a
/// host address, both (on a dual-stack network); `0.0.0.0:` IPv4 only; `[::]:` IPv6
/// only; a literal address, its own.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    #[default]
    Both,
    V4,
    V6,
}

/// One `-p` entry: `count` consecutive host ports forwarded to as many container ports.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PortMapping {
    /// The IPv4 host address; `None` = all of them (also what `0.0.0.0` means).
    pub host_ip: Option<Ipv4Addr>,
    /// The IPv6 host address (`[2001:db8::1]:`); `None` = all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip6: Option<Ipv6Addr>,
    #[serde(default)]
    pub family: Family,
    /// First host port.
    pub host_port: u16,
    /// First container port.
    pub container_port: u16,
    /// 1 for a single port, the range length otherwise.
    pub count: u16,
    pub proto: Proto,
    /// The text as written, so messages and status can quote the user.
    pub spec: String,
}

impl PortMapping {
    /// Parses one spec. `Err` is the reason only; the caller knows the field and value.
    pub fn parse(spec: &str) -> Result<PortMapping, String> {
        let (addr_ports, proto) = match spec.rsplit_once('/') {
            Some((rest, proto)) => (rest, parse_proto(proto)?),
            None => (spec, Proto::Tcp),
        };
        // From the right, so that whatever precedes the two ports (even an IPv6
        // address full of colons) lands in the host-IP part.
        let mut parts = addr_ports.rsplitn(3, ':');
        let container = parts.next().unwrap_or_default();
        let (host, (family, host_ip, host_ip6)) = match (parts.next(), parts.next()) {
            (None, _) => {
                return Err(if parse_range(container).is_ok() {
                    "a host port is required (hostPort:containerPort)".to_owned()
                } else {
                    SYNTAX.to_owned()
                });
            }
            (Some(host), None) => (host, (Family::Both, None, None)),
            (Some(host), Some(ip)) => (host, parse_host_ip(ip)?),
        };
        if host.is_empty() {
            return Err("a host port is required (hostPort:containerPort)".to_owned());
        }
        let (host_port, host_count) = parse_range(host)?;
        let (container_port, container_count) = parse_range(container)?;
        if host_count != container_count {
            return Err(format!(
                "host {} has {} but container {} has {}",
                describe(host_port, host_count),
                ports(host_count),
                describe(container_port, container_count),
                ports(container_count),
            ));
        }
        Ok(PortMapping {
            host_ip,
            host_ip6,
            family,
            host_port,
            container_port,
            count: host_count,
            proto,
            spec: spec.to_owned(),
        })
    }

    pub fn host_ports(&self) -> RangeInclusive<u16> {
        span(self.host_port, self.count)
    }

    pub fn container_ports(&self) -> RangeInclusive<u16> {
        span(self.container_port, self.count)
    }

    /// (host_port, container_port) pairs, one per port.
    pub fn pairs(&self) -> impl Iterator<Item = (u16, u16)> + '_ {
        self.host_ports().zip(self.container_ports())
    }

    /// Whether it publishes on IPv4 host addresses.
    pub fn on_v4(&self) -> bool {
        self.family != Family::V6
    }

    /// Whether it publishes on IPv6 host addresses (of a dual-stack network).
    pub fn on_v6(&self) -> bool {
        self.family != Family::V4
    }

    /// Whether both would claim the same host socket: same protocol, intersecting host
    /// ports, and in a family both publish on, the same host address or either one
    /// listening on all addresses.
    pub fn overlaps(&self, other: &PortMapping) -> bool {
        let (a, b) = (self.host_ports(), other.host_ports());
        fn same<T: PartialEq>(x: Option<T>, y: Option<T>) -> bool {
            match (x, y) {
                (Some(x), Some(y)) => x == y,
                _ => true,
            }
        }
        let v4 = self.on_v4() && other.on_v4() && same(self.host_ip, other.host_ip);
        let v6 = self.on_v6() && other.on_v6() && same(self.host_ip6, other.host_ip6);
        self.proto == other.proto && a.start() <= b.end() && b.start() <= a.end() && (v4 || v6)
    }
}

impl fmt::Display for PortMapping {
    /// The canonical form, `[ip:]8080[-8085]:80[-85]/tcp`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.family, self.host_ip, self.host_ip6) {
            (_, Some(ip), _) => write!(f, "{ip}:")?,
            (_, _, Some(ip)) => write!(f, "[{ip}]:")?,
            (Family::V4, ..) => f.write_str("0.0.0.0:")?,
            (Family::V6, ..) => f.write_str("[::]:")?,
            (Family::Both, ..) => {}
        }
        write_range(f, self.host_ports())?;
        f.write_str(":")?;
        write_range(f, self.container_ports())?;
        write!(f, "/{}", self.proto)
    }
}

/// Saturating so that a deserialized mapping with a nonsensical `count` cannot panic.
fn span(start: u16, count: u16) -> RangeInclusive<u16> {
    start..=start.saturating_add(count.saturating_sub(1))
}

fn write_range(f: &mut fmt::Formatter<'_>, range: RangeInclusive<u16>) -> fmt::Result {
    if range.start() == range.end() {
        write!(f, "{}", range.start())
    } else {
        write!(f, "{}-{}", range.start(), range.end())
    }
}

fn describe(start: u16, count: u16) -> String {
    let range = span(start, count);
    if count == 1 {
        format!("port {start}")
    } else {
        format!("range {}-{}", range.start(), range.end())
    }
}

fn ports(count: u16) -> String {
    if count == 1 {
        "1 port".to_owned()
    } else {
        format!("{count} ports")
    }
}

fn parse_proto(s: &str) -> Result<Proto, String> {
    match s.to_ascii_lowercase().as_str() {
        "tcp" => Ok(Proto::Tcp),
        "udp" => Ok(Proto::Udp),
        _ => Err(format!(
            "unsupported protocol {s:?}; only tcp and udp are supported"
        )),
    }
}

/// The host address part: its family, and the address unless it is unspecified
/// (`0.0.0.0`, `[::]`: every address of that family).
type HostPart = (Family, Option<Ipv4Addr>, Option<Ipv6Addr>);

fn parse_host_ip(s: &str) -> Result<HostPart, String> {
    let bare = s
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(s);
    match bare.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) if ip.is_unspecified() => Ok((Family::V4, None, None)),
        Ok(IpAddr::V4(ip)) => Ok((Family::V4, Some(ip), None)),
        Ok(IpAddr::V6(ip)) if ip.is_unspecified() => Ok((Family::V6, None, None)),
        Ok(IpAddr::V6(ip)) => Ok((Family::V6, None, Some(ip))),
        Err(_) => Err(format!("host IP {s:?} is not an IP address; {SYNTAX}")),
    }
}

/// `N` or `N-M`, as (first port, number of ports).
fn parse_range(s: &str) -> Result<(u16, u16), String> {
    let (start, end) = match s.split_once('-') {
        Some((start, end)) => (parse_port(start)?, parse_port(end)?),
        None => {
            let port = parse_port(s)?;
            (port, port)
        }
    };
    if end < start {
        return Err(format!("port range {s} ends before it starts"));
    }
    Ok((start, end - start + 1))
}

fn parse_port(s: &str) -> Result<u16, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{s:?} is not a port number; {SYNTAX}"));
    }
    match s.parse::<u16>() {
        Ok(0) => Err("port 0 is not a valid port".to_owned()),
        Ok(port) => Ok(port),
        // All digits, so the only way to fail is being too large.
        Err(_) => Err(format!("{s} is above 65535")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(spec: &str) -> PortMapping {
        PortMapping::parse(spec).unwrap_or_else(|e| panic!("{spec:?}: {e}"))
    }

    fn reason(spec: &str) -> String {
        match PortMapping::parse(spec) {
            Ok(m) => panic!("{spec:?} parsed as {m:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn single_tcp_port() {
        let m = parse("8080:80/tcp");
        assert_eq!(
            m,
            PortMapping {
                host_ip: None,
                host_ip6: None,
                family: Family::Both,
                host_port: 8080,
                container_port: 80,
                count: 1,
                proto: Proto::Tcp,
                spec: "8080:80/tcp".into(),
            }
        );
        assert_eq!(m.to_string(), "8080:80/tcp");
        assert_eq!(m.pairs().collect::<Vec<_>>(), [(8080, 80)]);
    }

    #[test]
    fn tcp_is_the_default_and_host_ip_is_kept() {
        let m = parse("127.0.0.1:8081:80");
        assert_eq!(m.host_ip, Some(Ipv4Addr::LOCALHOST));
        assert_eq!((m.host_port, m.container_port, m.count), (8081, 80, 1));
        assert_eq!(m.proto, Proto::Tcp);
        assert_eq!(m.to_string(), "127.0.0.1:8081:80/tcp");
        assert_eq!(m.spec, "127.0.0.1:8081:80");
    }

    #[test]
    fn udp() {
        let m = parse("5353:53/udp");
        assert_eq!(m.proto, Proto::Udp);
        assert_eq!((m.host_port, m.container_port), (5353, 53));
        assert_eq!(m.to_string(), "5353:53/udp");
    }

    #[test]
    fn protocol_is_case_insensitive() {
        assert_eq!(parse("53:53/UDP").proto, Proto::Udp);
        assert_eq!(parse("80:80/Tcp").proto, Proto::Tcp);
    }

    #[test]
    fn unspecified_host_ip_means_all_addresses_of_its_family() {
        // Docker's -p: no address is both families; 0.0.0.0 IPv4 only; [::] IPv6 only.
        let m = parse("0.0.0.0:8080:80");
        assert_eq!((m.host_ip, m.family), (None, Family::V4));
        assert_eq!(m.to_string(), "0.0.0.0:8080:80/tcp");
        let m = parse("[::]:8080:80");
        assert_eq!(
            (m.host_ip6, m.family, m.on_v4(), m.on_v6()),
            (None, Family::V6, false, true)
        );
        assert_eq!(m.to_string(), "[::]:8080:80/tcp");
        let m = parse("8080:80");
        assert_eq!((m.family, m.on_v4(), m.on_v6()), (Family::Both, true, true));
    }

    #[test]
    fn ipv6_host_addresses_pin_their_family() {
        let m = parse("[2001:db8:113::1]:8082:80/udp");
        assert_eq!(m.host_ip6, Some("2001:db8:113::1".parse().unwrap()));
        assert_eq!(
            (m.family, m.proto, m.host_port),
            (Family::V6, Proto::Udp, 8082)
        );
        assert_eq!(m.to_string(), "[2001:db8:113::1]:8082:80/udp");
        assert_eq!(
            parse("[::1]:8081:80").host_ip6,
            Some(std::net::Ipv6Addr::LOCALHOST)
        );
        // Different families never clash; the same port on both does.
        assert!(!parse("0.0.0.0:80:80").overlaps(&parse("[::]:80:81")));
        assert!(parse("80:80").overlaps(&parse("[::1]:80:81")));
        assert!(!parse("[::1]:80:80").overlaps(&parse("[2001:db8::1]:80:81")));
    }

    #[test]
    fn ranges() {
        let m = parse("9000-9005:9000-9005/tcp");
        assert_eq!((m.host_port, m.container_port, m.count), (9000, 9000, 6));
        assert_eq!(m.host_ports(), 9000..=9005);
        assert_eq!(m.to_string(), "9000-9005:9000-9005/tcp");

        let m = parse("10.0.0.1:8000-8002:80-82/udp");
        assert_eq!(
            m.pairs().collect::<Vec<_>>(),
            [(8000, 80), (8001, 81), (8002, 82)]
        );
        assert_eq!(m.to_string(), "10.0.0.1:8000-8002:80-82/udp");
    }

    #[test]
    fn ports_at_the_top_of_the_range() {
        let m = parse("65535:65535");
        assert_eq!(m.pairs().collect::<Vec<_>>(), [(65535, 65535)]);
        let m = parse("1-65535:1-65535");
        assert_eq!(m.count, 65535);
        assert_eq!(m.pairs().last(), Some((65535, 65535)));
    }

    #[test]
    fn port_zero_is_rejected() {
        assert_eq!(reason("0:80"), "port 0 is not a valid port");
        assert_eq!(reason("80:0"), "port 0 is not a valid port");
    }

    #[test]
    fn ports_above_65535_are_rejected() {
        assert_eq!(reason("70000:80"), "70000 is above 65535");
        assert_eq!(
            reason("80:99999999999999999999"),
            "99999999999999999999 is above 65535"
        );
    }

    #[test]
    fn a_bare_container_port_is_rejected() {
        assert_eq!(
            reason("80"),
            "a host port is required (hostPort:containerPort)"
        );
        assert_eq!(
            reason("80/udp"),
            "a host port is required (hostPort:containerPort)"
        );
        assert_eq!(
            reason("127.0.0.1::80"),
            "a host port is required (hostPort:containerPort)"
        );
    }

    #[test]
    fn only_tcp_and_udp() {
        let r = reason("8080:80/sctp");
        assert!(r.contains("\"sctp\"") && r.contains("tcp and udp"), "{r}");
    }

    #[test]
    fn a_host_ip_must_be_an_address() {
        assert!(
            reason("[nope]:80:80").contains("not an IP address"),
            "{}",
            reason("[nope]:80:80")
        );
    }

    #[test]
    fn mismatched_ranges() {
        assert_eq!(
            reason("9000-9005:9000-9003"),
            "host range 9000-9005 has 6 ports but container range 9000-9003 has 4 ports"
        );
        assert_eq!(
            reason("8000-8001:80"),
            "host range 8000-8001 has 2 ports but container port 80 has 1 port"
        );
    }

    #[test]
    fn backwards_range() {
        assert_eq!(
            reason("9005-9000:80-85"),
            "port range 9005-9000 ends before it starts"
        );
    }

    #[test]
    fn garbage_shows_the_syntax() {
        for spec in [
            "",
            "http",
            "a:b",
            "80:",
            ":80",
            "8080:80:90:100",
            "80-:80",
            "1.2.3:80:80",
        ] {
            assert!(
                reason(spec).contains("hostPort"),
                "{spec:?}: {}",
                reason(spec)
            );
        }
    }

    #[test]
    fn overlap_rules() {
        let overlaps = |a: &str, b: &str| {
            let (a, b) = (parse(a), parse(b));
            assert_eq!(a.overlaps(&b), b.overlaps(&a), "overlap must be symmetric");
            a.overlaps(&b)
        };
        assert!(overlaps("8080:80", "8080:81"));
        assert!(
            !overlaps("8080:80/tcp", "8080:80/udp"),
            "same port, different proto"
        );
        assert!(
            overlaps("127.0.0.1:8080:80", "8080:80"),
            "specific vs all addresses"
        );
        assert!(!overlaps("127.0.0.1:8080:80", "127.0.0.2:8080:80"));
        assert!(overlaps("127.0.0.1:8080:80", "127.0.0.1:8080:80"));
        assert!(overlaps("9000-9005:9000-9005", "9005:80"), "range end");
        assert!(
            overlaps("9000-9005:9000-9005", "8990-9000:1-11"),
            "range start"
        );
        assert!(!overlaps("9000-9005:9000-9005", "9006:80"));
        assert!(!overlaps("9000-9005:9000-9005", "8999:80"));
    }

    #[test]
    fn protocol_numbers() {
        assert_eq!(Proto::Tcp.number(), 6);
        assert_eq!(Proto::Udp.number(), 17);
        assert_eq!(Proto::Udp.to_string(), "udp");
    }

    #[test]
    fn serde_round_trip() {
        let m = parse("127.0.0.1:9000-9001:80-81/udp");
        let json = serde_json::to_string(&m).expect("serialize");
        assert!(json.contains("\"proto\":\"udp\""), "{json}");
        let back: PortMapping = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, m);
    }
}
