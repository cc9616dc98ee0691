//! The one root check: netplane, its tests, the bench and the demo all ask here.

/// Whether this process runs as root (effective uid 0). netplane creates network
/// namespaces, links and BPF programs; every privileged test and tool checks this first.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}
