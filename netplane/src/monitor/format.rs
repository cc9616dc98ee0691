//! One line per event, as `cilium monitor` prints them: time, what happened, where (hook,
//! interface, direction), the protocol and the 5-tuple before and after translation. Or
//! one JSON object per line, with stable field names. Pure: the time and the interface
//! names come from the caller, so the lines are tested on hand-made events.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use netplane_common::nat::{DropReason, kind, seen};
use netplane_common::observe::{Event, Tuple, event_kind};
use serde::Serialize;
use serde_json::json;

/// What the caller knows of an event beyond the event itself.
pub(super) struct Context<'a> {
    /// When it happened, on the wall clock: nanoseconds since the Unix epoch.
    pub(super) unix_ns: u64,
    /// The interface's name (of [`Event::ifindex`]), if it still exists.
    pub(super) ifname: Option<&'a str>,
    /// The local time of day, `HH:MM:SS.uuuuuu`, for the text line.
    pub(super) time_of_day: &'a str,
}

fn proto_name(p: u8) -> String {
    match p {
        6 => "tcp".into(),
        17 => "udp".into(),
        1 => "icmp".into(),
        58 => "icmpv6".into(),
        n => format!("proto-{n}"),
    }
}

/// Whether the protocol has ports (else [`Tuple::sport`] is an ICMP query's id).
fn has_ports(proto: u8) -> bool {
    matches!(proto, 6 | 17)
}

fn addr(a: &[u8; 16], family: u8) -> IpAddr {
    if family == 6 {
        IpAddr::V6(Ipv6Addr::from(*a))
    } else {
        IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
    }
}

/// `src → dst` as `netplane conntrack` writes it: `addr:port`, `[addr]:port`, or the
/// addresses and an ICMP id.
fn tuple(t: &Tuple, family: u8, proto: u8) -> String {
    let (s, d) = (addr(&t.saddr, family), addr(&t.daddr, family));
    let (sp, dp) = (u16::from_be(t.sport), u16::from_be(t.dport));
    if has_ports(proto) {
        format!("{} → {}", SocketAddr::new(s, sp), SocketAddr::new(d, dp))
    } else if matches!(proto, 1 | 58) {
        format!("{s} → {d} id {sp}")
    } else {
        format!("{s} → {d}")
    }
}

/// A tuple of [`JsonEvent`]: the ports of TCP and UDP, the id of an ICMP query.
#[derive(Serialize)]
struct JsonTuple {
    saddr: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    sport: Option<u16>,
    daddr: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    dport: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u16>,
}

fn tuple_json(t: &Tuple, family: u8, proto: u8) -> JsonTuple {
    let (sp, dp) = (u16::from_be(t.sport), u16::from_be(t.dport));
    let ports = has_ports(proto);
    JsonTuple {
        saddr: addr(&t.saddr, family).to_string(),
        sport: ports.then_some(sp),
        daddr: addr(&t.daddr, family).to_string(),
        dport: ports.then_some(dp),
        id: matches!(proto, 1 | 58).then_some(sp),
    }
}

fn reason_name(r: u8) -> String {
    DropReason::ALL
        .get(usize::from(r))
        .map_or_else(|| format!("reason-{r}"), |r| r.name().to_owned())
}

fn hook_name(h: u8) -> &'static str {
    match h {
        0 => "uplink",
        1 => "network",
        _ => "hook?",
    }
}

fn dir_name(d: u8) -> &'static str {
    match d {
        0 => "ingress",
        1 => "egress",
        _ => "direction?",
    }
}

/// A flow's state from its TCP flags, as `netplane conntrack` shows it; other protocols
/// are `NEW` until a reply passed.
fn state_name(proto: u8, s: u8) -> &'static str {
    match (proto, s) {
        (6, s) if s & (seen::FIN | seen::RST) != 0 => "CLOSING",
        (6, s) if s & seen::ACK != 0 => "ESTABLISHED",
        (6, _) => "SYN_SENT",
        (_, s) if s & seen::REPLIED != 0 => "REPLIED",
        _ => "NEW",
    }
}

/// The flags of [`seen`] that say a flow's state, lower case.
fn seen_flags(s: u8) -> Vec<&'static str> {
    [
        (seen::SYN, "syn"),
        (seen::ACK, "ack"),
        (seen::FIN, "fin"),
        (seen::RST, "rst"),
        (seen::REPLIED, "replied"),
    ]
    .into_iter()
    .filter(|(bit, _)| s & bit != 0)
    .map(|(_, n)| n)
    .collect()
}

/// The TC verdict's name (include/uapi/linux/bpf.h, `enum tcx_action_base`): `next`
/// (TCX_NEXT, the kernel's path goes on), `ok` (TCX_PASS), `drop`, `redirect` (straight
/// to a device, the programs' short way).
fn verdict_name(v: i32) -> String {
    match v {
        -1 => "next".into(),
        0 => "ok".into(),
        2 => "drop".into(),
        3 => "pipe".into(),
        7 => "redirect".into(),
        n => n.to_string(),
    }
}

/// `name(index)`, or `if(index)` for an interface gone since.
fn interface(ev: &Event, ifname: Option<&str>) -> String {
    format!("{}({})", ifname.unwrap_or("if"), ev.ifindex)
}

/// The text line of `ev`:
/// `TIME DROP isolation  network npa(5) ingress  tcp 10.89.0.2:40000 → 10.89.1.2:80`, or
/// `TIME FLOW new masquerade  uplink up0(2) egress  tcp A → B ⇒ A' → B'  next`.
pub(super) fn line(ev: &Event, cx: &Context) -> String {
    let what = match ev.kind {
        event_kind::DROP => format!("DROP {}", reason_name(ev.reason)),
        event_kind::FLOW_NEW => format!("FLOW new {}", kind::name(ev.ct_kind)),
        event_kind::FLOW_STATE => format!(
            "FLOW state {} {} [{}]",
            kind::name(ev.ct_kind),
            state_name(ev.proto, ev.seen),
            seen_flags(ev.seen).join(",")
        ),
        k => format!("EVENT kind-{k}"),
    };
    let mut out = format!(
        "{} {what}  {} {} {}  {} {}",
        cx.time_of_day,
        hook_name(ev.hook),
        interface(ev, cx.ifname),
        dir_name(ev.dir),
        proto_name(ev.proto),
        tuple(&ev.orig, ev.family, ev.proto),
    );
    if ev.xlat != ev.orig {
        out.push_str(" ⇒ ");
        out.push_str(&tuple(&ev.xlat, ev.family, ev.proto));
    }
    if ev.kind != event_kind::DROP {
        out.push_str("  ");
        out.push_str(&verdict_name(ev.verdict));
    }
    out
}

/// One event as JSON, its fields in this order (their names are the interface).
#[derive(Serialize)]
struct JsonEvent<'a> {
    /// `drop` or `flow` (and `lost`, see [`lost_json`]).
    #[serde(rename = "type")]
    type_: &'static str,
    /// RFC 3339, UTC.
    time: String,
    /// Since the epoch.
    time_ns: u64,
    /// `drop`, `new` or `state`.
    event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// A flow's: its conntrack kind, state, and TCP flags seen.
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seen: Option<Vec<&'static str>>,
    hook: &'static str,
    /// `null` for an interface gone since.
    interface: Option<&'a str>,
    ifindex: u32,
    direction: &'static str,
    /// `ipv4` or `ipv6`.
    family: &'static str,
    protocol: String,
    length: u32,
    verdict: String,
    original: JsonTuple,
    translated: JsonTuple,
    translated_changed: bool,
}

/// The JSON line of `ev`: see [`JsonEvent`] for the fields.
pub(super) fn json(ev: &Event, cx: &Context) -> String {
    let drop = ev.kind == event_kind::DROP;
    let line = JsonEvent {
        type_: if drop { "drop" } else { "flow" },
        time: rfc3339(cx.unix_ns),
        time_ns: cx.unix_ns,
        event: match ev.kind {
            event_kind::DROP => "drop",
            event_kind::FLOW_NEW => "new",
            event_kind::FLOW_STATE => "state",
            _ => "unknown",
        },
        reason: drop.then(|| reason_name(ev.reason)),
        kind: (!drop).then(|| kind::name(ev.ct_kind)),
        state: (!drop).then(|| state_name(ev.proto, ev.seen)),
        seen: (!drop).then(|| seen_flags(ev.seen)),
        hook: hook_name(ev.hook),
        interface: cx.ifname,
        ifindex: ev.ifindex,
        direction: dir_name(ev.dir),
        family: if ev.family == 6 { "ipv6" } else { "ipv4" },
        protocol: proto_name(ev.proto),
        length: ev.len,
        verdict: verdict_name(ev.verdict),
        original: tuple_json(&ev.orig, ev.family, ev.proto),
        translated: tuple_json(&ev.xlat, ev.family, ev.proto),
        translated_changed: ev.xlat != ev.orig,
    };
    serde_json::to_string(&line).expect("an event serializes")
}

/// The line that reports events lost to a full ring buffer.
pub(super) fn lost_line(time_of_day: &str, lost: u64, total: u64) -> String {
    format!("{time_of_day} lost {lost} events ({total} since the monitor started)")
}

/// The JSON line of [`lost_line`]: `type` `lost`, `time`, `time_ns`, `events` (since
/// the last report), `total` (since the monitor started).
pub(super) fn lost_json(unix_ns: u64, lost: u64, total: u64) -> String {
    json!({
        "type": "lost",
        "time": rfc3339(unix_ns),
        "time_ns": unix_ns,
        "events": lost,
        "total": total,
    })
    .to_string()
}

/// `YYYY-MM-DDTHH:MM:SS.uuuuuuZ` of nanoseconds since the epoch.
pub(super) fn rfc3339(unix_ns: u64) -> String {
    let secs = unix_ns / 1_000_000_000;
    let micros = (unix_ns % 1_000_000_000) / 1_000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn json_of(ev: &Event, cx: &Context) -> Value {
        serde_json::from_str(&json(ev, cx)).unwrap()
    }

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut out = [0; 16];
        out[..4].copy_from_slice(&a);
        out
    }

    fn t4(s: [u8; 4], sp: u16, d: [u8; 4], dp: u16) -> Tuple {
        Tuple {
            saddr: v4(s),
            daddr: v4(d),
            sport: sp.to_be(),
            dport: dp.to_be(),
        }
    }

    fn cx(ifname: Option<&str>) -> Context<'_> {
        Context {
            unix_ns: 1_764_452_401_123_456_789,
            ifname,
            time_of_day: "21:40:01.123456",
        }
    }

    fn isolation_drop() -> Event {
        let t = t4([10, 89, 0, 2], 40000, [10, 89, 1, 2], 80);
        Event {
            ts_ns: 5,
            ifindex: 5,
            len: 60,
            kind: event_kind::DROP,
            hook: 1,
            dir: 0,
            family: 4,
            reason: DropReason::Isolation as u8,
            proto: 6,
            verdict: 2,
            orig: t,
            xlat: t,
            ..Event::default()
        }
    }

    fn masquerade_new() -> Event {
        Event {
            ts_ns: 5,
            ifindex: 2,
            len: 60,
            kind: event_kind::FLOW_NEW,
            hook: 0,
            dir: 1,
            family: 4,
            ct_kind: kind::MASQUERADE,
            seen: seen::SYN,
            proto: 6,
            verdict: 0,
            orig: t4([10, 89, 0, 2], 40000, [203, 0, 113, 2], 80),
            xlat: t4([203, 0, 113, 1], 40000, [203, 0, 113, 2], 80),
            ..Event::default()
        }
    }

    #[test]
    fn an_ipv4_drop_names_its_reason_place_and_tuple() {
        let ev = isolation_drop();
        assert_eq!(
            line(&ev, &cx(Some("npa"))),
            "21:40:01.123456 DROP isolation  network npa(5) ingress  tcp 10.89.0.2:40000 → 10.89.1.2:80"
        );
        let j = json_of(&ev, &cx(Some("npa")));
        assert_eq!(j["type"], "drop");
        assert_eq!(j["event"], "drop");
        assert_eq!(j["reason"], "isolation");
        assert_eq!(j["interface"], "npa");
        assert_eq!(j["ifindex"], 5);
        assert_eq!(
            (&j["hook"], &j["direction"]),
            (&json!("network"), &json!("ingress"))
        );
        assert_eq!(
            j["original"],
            json!({"saddr": "10.89.0.2", "sport": 40000, "daddr": "10.89.1.2", "dport": 80})
        );
        assert_eq!(j["translated_changed"], false);
        assert_eq!(j["time"], "2025-11-29T21:40:01.123456Z");
        assert!(j.get("kind").is_none());
        // The fields in a fixed order, the type first.
        assert!(
            json(&ev, &cx(Some("npa"))).starts_with(
                "{\"type\":\"drop\",\"time\":\"2025-11-29T21:40:01.123456Z\",\"time_ns\":1764452401123456789,\"event\":\"drop\",\"reason\":\"isolation\",\"hook\""
            ),
            "{}",
            json(&ev, &cx(Some("npa")))
        );
    }

    #[test]
    fn a_new_masqueraded_flow_shows_its_translation() {
        let ev = masquerade_new();
        assert_eq!(
            line(&ev, &cx(Some("up0"))),
            "21:40:01.123456 FLOW new masquerade  uplink up0(2) egress  tcp 10.89.0.2:40000 → 203.0.113.2:80 \
             ⇒ 203.0.113.1:40000 → 203.0.113.2:80  ok"
        );
        let j = json_of(&ev, &cx(Some("up0")));
        assert_eq!((&j["type"], &j["event"]), (&json!("flow"), &json!("new")));
        assert_eq!(j["kind"], "masquerade");
        assert_eq!(j["state"], "SYN_SENT");
        assert_eq!(j["translated"]["saddr"], "203.0.113.1");
        assert_eq!(j["translated_changed"], true);
        assert!(j.get("reason").is_none());
    }

    #[test]
    fn a_state_change_shows_the_state_and_its_flags() {
        let ev = Event {
            kind: event_kind::FLOW_STATE,
            ct_kind: kind::PUBLISHED | kind::REPLY,
            seen: seen::SYN | seen::ACK | seen::REPLIED,
            ..masquerade_new()
        };
        let l = line(&ev, &cx(None));
        assert!(
            l.starts_with(
                "21:40:01.123456 FLOW state published ESTABLISHED [syn,ack,replied]  uplink if(2) egress  tcp "
            ),
            "{l}"
        );
        let j = json_of(&ev, &cx(None));
        assert_eq!(j["event"], "state");
        assert_eq!(j["seen"], json!(["syn", "ack", "replied"]));
        assert_eq!(j["interface"], Value::Null);
        let closing = Event {
            seen: seen::SYN | seen::ACK | seen::FIN,
            ..ev
        };
        assert_eq!(json_of(&closing, &cx(None))["state"], "CLOSING");
    }

    #[test]
    fn ipv6_tuples_are_bracketed_and_icmp_shows_its_id() {
        let a: Ipv6Addr = "2001:db8:89::2".parse().unwrap();
        let b: Ipv6Addr = "2001:db8:113::2".parse().unwrap();
        let c: Ipv6Addr = "2001:db8:113::1".parse().unwrap();
        let ev = Event {
            family: 6,
            orig: Tuple {
                saddr: a.octets(),
                daddr: b.octets(),
                sport: 5555u16.to_be(),
                dport: 53u16.to_be(),
            },
            xlat: Tuple {
                saddr: c.octets(),
                daddr: b.octets(),
                sport: 5555u16.to_be(),
                dport: 53u16.to_be(),
            },
            proto: 17,
            seen: 0,
            ..masquerade_new()
        };
        assert!(
            line(&ev, &cx(Some("up0"))).ends_with(
                "udp [2001:db8:89::2]:5555 → [2001:db8:113::2]:53 ⇒ [2001:db8:113::1]:5555 → [2001:db8:113::2]:53  ok"
            ),
            "{}",
            line(&ev, &cx(Some("up0")))
        );
        let j = json_of(&ev, &cx(Some("up0")));
        assert_eq!(j["family"], "ipv6");
        assert_eq!(j["state"], "NEW");
        assert_eq!(j["original"]["saddr"], "2001:db8:89::2");
        let ping = Event {
            proto: 58,
            kind: event_kind::DROP,
            reason: DropReason::IsolatedNetwork as u8,
            orig: Tuple {
                dport: 0,
                ..ev.orig
            },
            xlat: Tuple {
                dport: 0,
                ..ev.orig
            },
            ..ev
        };
        assert!(
            line(&ping, &cx(Some("up0")))
                .ends_with("DROP isolated-network  uplink up0(2) egress  icmpv6 2001:db8:89::2 → 2001:db8:113::2 id 5555"),
            "{}",
            line(&ping, &cx(Some("up0")))
        );
        assert_eq!(json_of(&ping, &cx(None))["original"]["id"], 5555);
    }

    #[test]
    fn unknown_values_are_shown_not_hidden() {
        let ev = Event {
            reason: 200,
            hook: 9,
            proto: 47,
            ..isolation_drop()
        };
        let l = line(&ev, &cx(None));
        assert!(
            l.contains("DROP reason-200  hook? if(5) ingress  proto-47 10.89.0.2 → 10.89.1.2"),
            "{l}"
        );
    }

    #[test]
    fn lost_events_have_a_line_of_their_own() {
        assert_eq!(
            lost_line("21:40:01.123456", 3, 10),
            "21:40:01.123456 lost 3 events (10 since the monitor started)"
        );
        let j: Value = serde_json::from_str(&lost_json(1_764_452_401_123_456_789, 3, 10)).unwrap();
        assert_eq!(
            (&j["type"], &j["events"], &j["total"]),
            (&json!("lost"), &json!(3), &json!(10))
        );
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339(951_782_400_000_000_000),
            "2000-02-29T00:00:00.000000Z"
        );
    }
}
