//! `cargo xtask demo`: netplane's embedded default, up inside a throwaway sandbox, with each
//! check shown live, then everything torn down.
//!
//! The sandbox: a "host" namespace where netplane runs, its uplink cabled to an "outside"
//! namespace on TEST-NET-3 (203.0.113.0/24). Nothing touches the root namespace. The
//! instance is named `npdemo<pid>`, so that it can never be taken for (and its `down`
//! never remove) a real instance of the default name; the sandbox goes on every exit,
//! Ctrl-C included.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use anyhow::{Context, bail};

use crate::util::{is_root, workspace_root};

/// The embedded default config, as `netplane up` without `-c` uses it.
const DEFAULT_CONFIG: &str = include_str!("../../netplane/src/config/default.toml");

#[derive(Clone)]
struct Sandbox {
    name: String,
    host: String,
    outside: String,
    /// The default config under the sandbox's instance name.
    config: PathBuf,
}

impl Sandbox {
    fn new() -> anyhow::Result<Sandbox> {
        let name = format!("npdemo{}", std::process::id());
        let sb = Sandbox {
            host: format!("{name}-host"),
            outside: format!("{name}-out"),
            config: std::env::temp_dir().join(format!("{name}.toml")),
            name,
        };
        // Ctrl-C or a kill: clean up, then exit as the signal would have.
        let on_signal = sb.clone();
        ctrlc::set_handler(move || {
            println!("\ninterrupted");
            on_signal.remove();
            std::process::exit(130);
        })
        .context("install the Ctrl-C handler")?;
        let config =
            DEFAULT_CONFIG.replacen("name = \"netplane\"", &format!("name = \"{}\"", sb.name), 1);
        std::fs::write(&sb.config, config).context("write the demo's config")?;
        for ns in [&sb.host, &sb.outside] {
            ip(&["netns", "add", ns])?;
        }
        ip(&[
            "-n",
            &sb.host,
            "link",
            "add",
            "up0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &sb.outside,
        ])?;
        for (ns, dev, addr) in [
            (&sb.host, "up0", "203.0.113.1/24"),
            (&sb.outside, "eth0", "203.0.113.2/24"),
        ] {
            ip(&["-n", ns, "addr", "add", addr, "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        ip(&[
            "-n",
            &sb.host,
            "route",
            "add",
            "default",
            "via",
            "203.0.113.2",
        ])?;
        Ok(sb)
    }

    fn run_in(&self, ns: &str, args: &[&str]) -> Output {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .args(args)
            .output()
            .expect("nsenter runs")
    }

    /// `netplane ARGS -c CONFIG` in the host namespace.
    fn netplane(&self, args: &[&str]) -> Output {
        let (np, config) = (netplane(), self.config.to_string_lossy().into_owned());
        let mut all = vec![np.to_str().unwrap()];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-c", &config]);
        self.run_in(&self.host, &all)
    }

    /// `netplane down` (which finds nothing to do if `up` never ran), then the namespaces
    /// and the config.
    fn remove(&self) {
        let out = self.netplane(&["down"]);
        print!("{}", String::from_utf8_lossy(&out.stdout));
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        for ns in [&self.host, &self.outside] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_file(&self.config);
        println!("sandbox removed: no namespace, link or state left behind");
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.remove();
    }
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output().context("run ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn target_bin(name: &str) -> PathBuf {
    workspace_root().join("target/debug").join(name)
}

fn netplane() -> PathBuf {
    target_bin("netplane")
}

pub fn run() -> anyhow::Result<()> {
    if !is_root() {
        bail!("the demo creates network namespaces: run it as root");
    }
    let sb = Sandbox::new()?;
    println!(
        "\n$ nsenter --net=/run/netns/{} netplane up -c {}\n  # the embedded default config, named {}",
        sb.host,
        sb.config.display(),
        sb.name
    );
    let out = sb.netplane(&["up"]);
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        bail!(
            "netplane up failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = sb.netplane(&["status"]);
    println!(
        "\n$ netplane status\n{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let (web, client) = (format!("{}-web", sb.name), format!("{}-client", sb.name));
    let (web, client) = (web.as_str(), client.as_str());
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
    row(
        "container → container: ping",
        ping(&sb, client, "172.18.0.2"),
    );
    row(
        "container → container: TCP",
        tcp(&sb, web, "172.18.0.2:80", client, "172.18.0.2:80"),
    );
    row("host → container: ping", ping(&sb, &sb.host, "172.18.0.2"));
    row(
        "container → host (gateway): ping",
        ping(&sb, web, "172.18.0.1"),
    );
    row(
        "host → container: TCP",
        tcp(&sb, web, "0.0.0.0:8000", &sb.host, "172.18.0.2:8000"),
    );
    row(
        "container → outside: TCP (masquerade)",
        tcp(&sb, &sb.outside, "0.0.0.0:7000", web, "203.0.113.2:7000"),
    );
    row(
        "container → outside: ping (masquerade)",
        ping(&sb, web, "203.0.113.2"),
    );
    row(
        "outside → published port 8080 (DNAT)",
        tcp(&sb, web, "0.0.0.0:80", &sb.outside, "203.0.113.1:8080"),
    );
    row(
        "host → published port 8080 (DNAT)",
        tcp(&sb, web, "0.0.0.0:80", &sb.host, "203.0.113.1:8080"),
    );
    row(
        "host → 127.0.0.1:8080 (DNAT)",
        tcp(&sb, web, "0.0.0.0:80", &sb.host, "127.0.0.1:8080"),
    );
    row(
        "container → own published port (hairpin)",
        tcp(&sb, web, "0.0.0.0:80", web, "203.0.113.1:8080"),
    );
    println!();
    drop(sb);
    if failed > 0 {
        bail!("{failed} check(s) failed");
    }
    Ok(())
}

fn ping(sb: &Sandbox, from: &str, to: &str) -> Result<String, String> {
    let out = sb.run_in(from, &["ping", "-c", "1", "-W", "1", to]);
    let text = String::from_utf8_lossy(&out.stdout);
    let rtt = text
        .lines()
        .find(|l| l.contains("time="))
        .and_then(|l| l.split("time=").nth(1))
        .unwrap_or("");
    if out.status.success() {
        Ok(format!("{from} → {to}: reply in {rtt}"))
    } else {
        Err(format!("{from} → {to}: no reply"))
    }
}

/// One TCP exchange through the tests' connection tester; the server reports the source
/// address it saw.
fn tcp(
    sb: &Sandbox,
    server_ns: &str,
    listen: &str,
    client_ns: &str,
    target: &str,
) -> Result<String, String> {
    let tester = target_bin("nptest");
    let mut srv = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{server_ns}"))
        .args([tester.to_str().unwrap(), "serve-tcp", listen])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(srv.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let out = sb.run_in(
        client_ns,
        &[tester.to_str().unwrap(), "send-tcp", target, "hello"],
    );
    let _ = srv.kill();
    let _ = srv.wait();
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if out.status.success() && answer.starts_with("hello from") {
        Ok(format!(
            "{client_ns} → {target}: server saw {}",
            answer.trim_start_matches("hello from ")
        ))
    } else {
        Err(format!(
            "{client_ns} → {target}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
