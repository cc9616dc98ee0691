//! `mode = "none"`: the topology alone, with no NAT (the benchmark's baseline, or a host
//! where another tool owns NAT). Like netavark's `fwnone.rs`, it is a data plane that
//! does nothing, so that callers never branch around a missing one.
//!
//! Gateway modes are the data plane's to enforce, so here only their topology remains:
//! every network, bridge or ptp, is routed to and from untranslated and unfiltered (an
//! isolated network still has no gateway, and `[[routes]]` are still routed), whatever
//! its `gateway_mode` says; published ports take no host port.

use super::{Dataplane, DataplaneError, DataplaneStatus, HostContext};
use crate::config::{Mode, Plan};

pub struct NoNat;

impl Dataplane for NoNat {
    fn mode(&self) -> Mode {
        Mode::NoNat
    }

    fn check(&self) -> Result<(), DataplaneError> {
        Ok(())
    }

    fn sysctls(&self, _plan: &Plan) -> Vec<(String, String)> {
        Vec::new()
    }

    fn apply(
        &self,
        _plan: &Plan,
        _old: Option<&Plan>,
        _host: &HostContext,
    ) -> Result<Vec<String>, DataplaneError> {
        Ok(Vec::new())
    }

    fn teardown(&self, _name: &str) -> Result<Vec<String>, DataplaneError> {
        Ok(Vec::new())
    }

    fn describe(&self) -> &'static str {
        "none (topology only: no NAT, no filtering, gateway modes not enforced)"
    }

    fn status(&self, _plan: &Plan) -> DataplaneStatus {
        DataplaneStatus::new(Mode::NoNat).finish()
    }
}
