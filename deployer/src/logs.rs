//! `deployer logs [-n N]`: the last lines of the service's log on every selected host (the
//! config's `log`, relative to `deploy_to`: `shared/usersvc.log` by default), each line
//! prefixed with its host.

use crate::config::Target;
use crate::host_output::{Executed, run_everywhere};
use crate::settings::Settings;
use crate::ssh::quote;

/// The last `lines` lines of `log` (relative to each host's `deploy_to`) on every host.
pub fn logs(targets: &[Target], settings: &Settings, log: &str, lines: u32) -> Executed {
    run_everywhere(targets, settings, false, |h| {
        let path = quote(&format!("{}/{log}", h.target.deploy_to));
        format!("tail -n {lines} -- {path}\n")
    })
}
