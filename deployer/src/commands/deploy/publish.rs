//! Publishing, one batch at a time: the switch, the after_publish hooks and the health gate;
//! how hosts are cut into batches (the canary first); and the success path's cleanup, log and
//! unlock.

use super::{Ctx, Run};
use crate::config::{Hook, hook_commands};
use crate::fleet::{Stage, each};
use crate::health::Gate;
use crate::layout;
use crate::lock;
use crate::phases;

/// How many hosts each publish batch has: `rolling` at a time (all at once without it); with
/// a canary, the first batch is `rolling` hosts or one, and the rest go as `rolling` says.
pub(super) fn batch_sizes(count: usize, rolling: Option<usize>, canary: bool) -> Vec<usize> {
    let mut sizes = Vec::new();
    let mut left = count;
    if canary && left > 0 {
        let first = rolling.unwrap_or(1).clamp(1, left);
        sizes.push(first);
        left -= first;
    }
    let size = rolling.unwrap_or(left).max(1);
    while left > 0 {
        let n = size.min(left);
        sizes.push(n);
        left -= n;
    }
    sizes
}

/// Runs a stage's hooks on one host; one failing fails the host at `stage`.
pub(super) fn remote_hooks(r: &mut Run, c: &Ctx, stage: Stage, hooks: &[Hook]) {
    let release = c.release(r.previous.as_deref());
    let commands = hook_commands(hooks, &r.host.target, &c.selected);
    let timeout = c.settings.hook_timeout;
    if let Some(ran) = phases::hooks(&mut r.host, stage, &release, &commands, timeout) {
        if let Some(problem) = &ran.problem {
            r.host.fail(stage, problem);
        }
        r.hooks.push(ran);
    }
}

/// Publishes one batch, runs its after_publish hooks, then its health gate.
pub(super) fn publish_batch(batch: &mut [Run], c: &Ctx, gate: Option<&Gate>) {
    let parallel = c.settings.parallel;
    each(batch, parallel, |r| {
        let script = layout::switch_script(r.deploy_to(), &c.release);
        if r.host.step(Stage::Publish, &script, None) {
            r.published = true;
            r.result = "published".into();
        }
    });
    let after = &c.cfg.hooks.after_publish;
    if batch.iter().all(Run::ok) && !after.is_empty() {
        c.settings.say("running after_publish hooks");
        each(batch, parallel, |r| {
            remote_hooks(r, c, Stage::AfterPublish, after);
        });
    }
    if let Some(gate) = gate.filter(|_| batch.iter().all(Run::ok)) {
        c.settings.say("health gate");
        each(batch, parallel, |r| {
            phases::health(&mut r.host, gate, &c.release(None));
        });
    }
}

/// Cleanup, log and unlock: one step per host.
pub(super) fn finish(runs: &mut [Run], c: &Ctx) {
    each(runs, c.settings.parallel, |r| {
        let d = r.deploy_to().to_owned();
        let remove =
            layout::cleanup_after_publish(&r.host.state.releases, &c.release, c.cfg.keep_releases);
        let release = c.release(r.previous.as_deref());
        let entry = phases::log_entry(&release, &c.user, &c.branch, "deployed");
        let script = format!(
            "{}\n{}",
            layout::remove_script(&d, &remove),
            layout::log_script(&d, &entry),
        );
        if let Err(e) = lock::release(&mut r.host, &c.owner, &script) {
            r.warnings.push(format!(
                "published, but cleanup or unlock failed: {e}; then run `deployer cleanup --hosts {}`",
                r.host.name()
            ));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::batch_sizes;

    #[test]
    fn batches_put_the_canary_first() {
        assert_eq!(batch_sizes(5, None, false), [5]);
        assert_eq!(batch_sizes(5, Some(2), false), [2, 2, 1]);
        assert_eq!(batch_sizes(5, None, true), [1, 4]);
        assert_eq!(batch_sizes(5, Some(2), true), [2, 2, 1]);
        assert_eq!(batch_sizes(1, None, true), [1]);
        assert_eq!(batch_sizes(3, Some(9), true), [3]);
        assert!(batch_sizes(0, None, true).is_empty());
    }
}
