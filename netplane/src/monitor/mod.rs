//! `netplane monitor`: the data plane's drop and flow events, one line each, as
//! `cilium monitor` prints them; and, with `--log`, the programs' aya-log output.

/// Which events to show, and how.
#[derive(Clone, Debug, Default)]
pub struct MonitorOptions {
    /// [`netplane_common::observe::monitor`] bits.
    pub mask: u32,
    /// One JSON object per line instead of text.
    pub json: bool,
    /// The programs' debug logs (`up --debug-datapath`) instead of events.
    pub log: bool,
}

/// Streams instance `name`'s events to stdout until interrupted.
pub fn run(name: &str, opts: MonitorOptions) -> anyhow::Result<()> {
    let _ = (name, opts);
    anyhow::bail!("netplane monitor: not built yet")
}
