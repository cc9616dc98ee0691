//! `netplane-demo` (what `cargo xtask demo` runs): netplane's embedded default, up inside a
//! throwaway sandbox, with each check shown live, then everything torn down.
//!
//! The sandbox is the harness's `Host`: a "host" namespace where netplane runs, its uplink
//! cabled to an "outside" namespace on TEST-NET-3 (203.0.113.0/24). Nothing touches the
//! root namespace. The instance is named after the sandbox (`npdemo<pid>x0`), so that it
//! can never be taken for (and its `down` never remove) a real instance of the default
//! name; the sandbox goes on every exit, Ctrl-C included.
#![expect(
    unused_crate_dependencies,
    reason = "a binary sees every dependency of its package; the library target is where an unused one shows"
)]

use std::io::Write;
use std::process::ExitCode;

use netplane::config::DEFAULT_CONFIG;
use netplane_tests::Netns;
use netplane_tests::host::{Host, OUTSIDE_IP, Server, UPLINK_IP, client};

fn main() -> ExitCode {
    if !netplane::privilege::is_root() {
        eprintln!("error: the demo creates network namespaces: run it as root");
        return ExitCode::FAILURE;
    }
    let h = Host::with_prefix("npdemo");
    let result = demo(&h);
    // `down` here, to show what it removed; the sandbox's removal would run it anyway.
    let out = h.netplane(&["down"]);
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    drop(h);
    println!("sandbox removed: no namespace, link or state left behind");
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn demo(h: &Host) -> Result<(), String> {
    // The embedded default, under the sandbox's instance name.
    let body = DEFAULT_CONFIG.replacen("name = \"netplane\"\n", "", 1);
    assert_ne!(
        body, DEFAULT_CONFIG,
        "the default config names its instance"
    );
    h.write_config(&body);
    println!(
        "\n$ nsenter --net={} netplane up -c {}\n  # the embedded default config, named {}",
        h.host.path(),
        h.config_path().display(),
        h.name()
    );
    let out = h.netplane(&["up"]);
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        return Err(format!(
            "netplane up failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let out = h.netplane(&["status"]);
    println!(
        "\n$ netplane status\n{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let (web, client) = (h.container("web"), h.container("client"));
    let (host, outside) = (&h.host, &h.outside);
    let published = format!("{UPLINK_IP}:8080");
    println!("{:<44} {:<10} DETAIL", "CHECK", "RESULT");
    let mut failed = 0;
    let mut row = |check: &str, res: Result<String, String>| {
        let (verdict, detail) = match res {
            Ok(d) => ("ok", d),
            Err(d) => {
                failed += 1;
                ("FAILED", d)
            }
        };
        println!("{check:<44} {verdict:<10} {detail}");
        std::io::stdout().flush().ok();
    };
    row("container → container: ping", ping(&client, "172.18.0.2"));
    row(
        "container → container: TCP",
        tcp(&web, "172.18.0.2:80", &client, "172.18.0.2:80"),
    );
    row("host → container: ping", ping(host, "172.18.0.2"));
    row("container → host (gateway): ping", ping(&web, "172.18.0.1"));
    row(
        "host → container: TCP",
        tcp(&web, "0.0.0.0:8000", host, "172.18.0.2:8000"),
    );
    row(
        "container → outside: TCP (masquerade)",
        tcp(outside, "0.0.0.0:7000", &web, &format!("{OUTSIDE_IP}:7000")),
    );
    row(
        "container → outside: ping (masquerade)",
        ping(&web, OUTSIDE_IP),
    );
    row(
        "outside → published port 8080 (DNAT)",
        tcp(&web, "0.0.0.0:80", outside, &published),
    );
    row(
        "host → published port 8080 (DNAT)",
        tcp(&web, "0.0.0.0:80", host, &published),
    );
    row(
        "host → 127.0.0.1:8080 (DNAT)",
        tcp(&web, "0.0.0.0:80", host, "127.0.0.1:8080"),
    );
    row(
        "container → own published port (hairpin)",
        tcp(&web, "0.0.0.0:80", &web, &published),
    );
    println!();
    if failed > 0 {
        return Err(format!("{failed} check(s) failed"));
    }
    Ok(())
}

fn ping(from: &Netns, to: &str) -> Result<String, String> {
    let out = from.run(&["ping", "-c", "1", "-W", "1", to]);
    let text = String::from_utf8_lossy(&out.stdout);
    let rtt = text
        .lines()
        .find(|l| l.contains("time="))
        .and_then(|l| l.split("time=").nth(1))
        .unwrap_or("");
    if out.status.success() {
        Ok(format!("{} → {to}: reply in {rtt}", from.name))
    } else {
        Err(format!("{} → {to}: no reply", from.name))
    }
}

/// One TCP exchange through the harness's connection tester; the server reports the
/// source address it saw.
fn tcp(server: &Netns, listen: &str, from: &Netns, target: &str) -> Result<String, String> {
    let _server = Server::start(server, &["serve-tcp", listen]);
    let answer = client(from, &["send-tcp", target, "hello"])
        .map_err(|e| format!("{} → {target}: {e}", from.name))?;
    match answer.strip_prefix("hello from ") {
        Some(source) => Ok(format!("{} → {target}: server saw {source}", from.name)),
        None => Err(format!("{} → {target}: answered {answer:?}", from.name)),
    }
}
