//! `mode = "none"`: the topology alone, with no NAT (the benchmark's baseline, or a host
//! where another tool owns NAT). Like netavark's `fwnone.rs`, it is a data plane that
//! does nothing, so that callers never branch around a missing one.

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
        "none (topology only, no NAT)"
    }

    fn status(&self, _plan: &Plan) -> DataplaneStatus {
        DataplaneStatus::new(Mode::NoNat).finish()
    }
}
