//! Capistrano 3 (Debian's `capistrano`) as a peer of the deployer: a git repository holding an
//! application, a Capfile with a `production` stage whose servers are loopback sshd hosts, and
//! `cap` run against them. What the deployer must interoperate with on a host Capistrano
//! deployed, or deploys after it.

use crate::process::checked;
use crate::sshd::Sshd;
use std::path::{Path, PathBuf};
use std::process::Command;

const INSTALL: &str = "(install Capistrano with `apt-get install capistrano`; make test does)";

pub struct Capistrano {
    dir: tempfile::TempDir,
    /// A work tree whose commits are pushed to the repository Capistrano deploys from.
    pub work: PathBuf,
}

/// What one `cap` run did.
pub struct CapRun {
    pub ok: bool,
    pub output: String,
}

impl Capistrano {
    /// A project deploying `files` (path, content) from branch `main` to `deploy_to` on every
    /// host in `hosts` (logging in with the first host's key and known_hosts), keeping
    /// `keep_releases`.
    pub fn new(
        hosts: &[&Sshd],
        deploy_to: &Path,
        keep_releases: usize,
        files: &[(&str, &str)],
    ) -> Self {
        assert!(
            Path::new("/usr/bin/cap").exists(),
            "cap is missing {INSTALL}"
        );
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
        let d = dir.path();
        let repo = d.join("repo.git");
        let work = d.join("work");
        git(d, &["init", "-q", "--bare", "-b", "main", path(&repo)]);
        git(d, &["init", "-q", "-b", "main", path(&work)]);
        let cap = Self { dir, work };
        cap.commit(files, "first");
        git(&cap.work, &["remote", "add", "origin", path(&repo)]);
        git(&cap.work, &["push", "-q", "origin", "main"]);
        let project = cap.dir.path().join("project");
        std::fs::create_dir_all(project.join("config/deploy")).unwrap_or_else(|e| panic!("{e}"));
        let write = |p: &str, text: String| {
            std::fs::write(project.join(p), text).unwrap_or_else(|e| panic!("{p}: {e}"))
        };
        write(
            "Capfile",
            "require \"capistrano/setup\"\nrequire \"capistrano/deploy\"\nrequire \"capistrano/scm/git\"\ninstall_plugin Capistrano::SCM::Git\n".into(),
        );
        let first = hosts[0];
        write(
            "config/deploy.rb",
            format!(
                "set :application, \"usersvc\"\nset :repo_url, \"file://{}\"\nset :branch, \"main\"\nset :deploy_to, \"{}\"\nset :keep_releases, {keep_releases}\nset :ssh_options, {{ keys: [\"{}\"], auth_methods: [\"publickey\"], verify_host_key: :always, user_known_hosts_file: \"{}\" }}\n",
                repo.display(),
                deploy_to.display(),
                first.identity.display(),
                first.known_hosts.display(),
            ),
        );
        let servers: String = hosts
            .iter()
            .map(|h| {
                format!(
                    "server \"{}\", port: {}, user: \"{}\", roles: %w{{app}}\n",
                    h.ip, h.port, h.user
                )
            })
            .collect();
        write("config/deploy/production.rb", servers);
        cap
    }

    /// Commits `files` to the work tree and pushes them: the next `cap deploy` takes them.
    /// Returns the commit's full SHA.
    pub fn commit(&self, files: &[(&str, &str)], message: &str) -> String {
        for (p, text) in files {
            let p = self.work.join(p);
            std::fs::create_dir_all(p.parent().unwrap_or(&self.work))
                .unwrap_or_else(|e| panic!("{e}"));
            std::fs::write(&p, text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        }
        git(&self.work, &["add", "-A"]);
        git(
            &self.work,
            &[
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@example.com",
                "commit",
                "-q",
                "-m",
                message,
            ],
        );
        if git_ok(&self.work, &["remote", "get-url", "origin"]) {
            git(&self.work, &["push", "-q", "origin", "main"]);
        }
        let out = git(&self.work, &["rev-parse", "HEAD"]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `cap production ARGS…`, as an operator runs it.
    pub fn cap(&self, args: &[&str]) -> CapRun {
        let out = Command::new("cap")
            .arg("production")
            .args(args)
            .current_dir(self.dir.path().join("project"))
            .env("NO_COLOR", "1")
            .output()
            .unwrap_or_else(|e| panic!("cap {INSTALL}: {e}"));
        CapRun {
            ok: out.status.success(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }
}

fn path(p: &Path) -> &str {
    p.to_str()
        .unwrap_or_else(|| panic!("{} is not UTF-8", p.display()))
}

fn git(dir: &Path, args: &[&str]) -> std::process::Output {
    checked(
        &format!("git {}", args.join(" ")),
        Command::new("git").arg("-C").arg(dir).args(args).output(),
    )
}

fn git_ok(dir: &Path, args: &[&str]) -> bool {
    Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}
