//! Scraping the agent's `/metrics` as Prometheus would: a plain HTTP/1.1 GET from inside
//! a namespace, the exposition's samples by name and labels, and `promtool check metrics`
//! (which `cargo xtask setup` installs) on it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::Netns;

/// `GET path` on `addr` (ADDR:PORT) from inside `ns`: the status code and the body, or
/// the error of the connection (refused: nothing listens).
pub fn get(ns: &Netns, addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let addr: std::net::SocketAddr = addr.parse().expect("ADDR:PORT");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let response = ns.enter(move || -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(request.as_bytes())?;
        let mut all = Vec::new();
        s.read_to_end(&mut all)?;
        Ok(all)
    })?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP header end in {text:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "a chunked body: {head}"
    );
    Ok((status, body.to_owned()))
}

/// `GET /metrics` on `addr` from inside `ns`, which must answer 200: the exposition.
pub fn scrape(ns: &Netns, addr: &str) -> String {
    match get(ns, addr, "/metrics") {
        Ok((200, body)) => body,
        Ok((code, body)) => panic!("GET http://{addr}/metrics: {code}\n{body}"),
        Err(e) => panic!("GET http://{addr}/metrics in {}: {e}", ns.name),
    }
}

/// The value of the sample of metric `name` whose labels include every one of `labels`
/// (all of them when there are none), summed over the samples that match.
pub fn sample(exposition: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in exposition.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric, set) = match series.split_once('{') {
            Some((m, rest)) => (m, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        let has = |(k, v): &(&str, &str)| {
            set.split(',')
                .any(|pair| pair == format!("{k}=\"{v}\"").as_str())
        };
        if labels.iter().all(has) {
            let v: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
            found = Some(found.unwrap_or(0.0) + v);
        }
    }
    found
}

/// `promtool check metrics` of `exposition`: its exit status's success, and its stderr
/// (where it prints each lint problem).
pub fn promtool_check(exposition: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (run `cargo xtask setup`)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let mut said = String::from_utf8_lossy(&out.stderr).into_owned();
    said.push_str(&String::from_utf8_lossy(&out.stdout));
    (out.status.success(), said)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_found_by_name_and_labels() {
        let text = "# HELP x_total X.\n# TYPE x_total counter\n\
                    x_total{a=\"1\",b=\"2\"} 3\nx_total{a=\"1\",b=\"3\"} 4\ny 5.5\n";
        assert_eq!(sample(text, "x_total", &[("b", "2")]), Some(3.0));
        assert_eq!(sample(text, "x_total", &[("a", "1")]), Some(7.0), "summed");
        assert_eq!(sample(text, "x_total", &[("a", "2")]), None);
        assert_eq!(sample(text, "y", &[]), Some(5.5));
        assert_eq!(sample(text, "x", &[]), None, "whole names only");
    }
}
