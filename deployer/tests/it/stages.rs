//! Stages, roles and tasks against real sshd hosts: `deployer -s STAGE` lays a stage file over
//! deploy.toml, hooks limited to roles run where they say, a task runs as a hook and by hand,
//! and `deployer config` / `tasks` describe what would run.

use crate::common::Hosts;

/// deploy.toml with what the stages share (tasks, hooks); deploy/production.toml naming the
/// three hosts with their roles: web; web and db; db.
fn staged(h: &Hosts) {
    h.configure(
        "",
        "[tasks.migrate]\ncommand = 'echo \"migrated $RELEASE $REVISION\" >> \"$DEPLOY_TO/shared/migrate.log\"'\n\
         roles = [\"db\"]\nonce = true\ndescription = \"the schema, before the new code runs\"\n\
         [hooks]\nbefore_publish = [{ task = \"migrate\" }]\n\
         after_publish = [{ command = 'touch \"$DEPLOY_TO/shared/warmed\"', roles = [\"web\"] }]\n\
         local_after = ['echo \"$DEPLOY_STAGE\" > stage.out']\n",
    );
    let roles = ["\"web\"", "\"web\", \"db\"", "\"db\""];
    let mut stage = "keep_releases = 2\n".to_owned();
    for (i, s) in h.servers.iter().enumerate() {
        stage.push_str(&format!(
            "[[hosts]]\naddress = \"{}\"\nroles = [{}]\ndeploy_to = '''{}'''\n",
            s.addr,
            roles[i],
            h.deploy_to(i).display()
        ));
    }
    std::fs::create_dir_all(h.dir.path().join("deploy")).expect("mkdir deploy/");
    std::fs::write(h.dir.path().join("deploy/production.toml"), stage).expect("stage file");
}

#[test]
fn a_stage_its_roles_and_its_tasks_run_where_they_say() {
    let h = Hosts::start(&[80, 81, 82]);
    staged(&h);
    h.write("v", "1");
    // The dry run's -v lists each host's remote commands: the hooks only where they run.
    let r = h.run(&["-s", "production", "deploy", "--dry-run", "-v"]);
    assert_eq!(r.code, 0, "{r}");
    let on = |i: usize| {
        let head = format!("Remote commands on {}:", h.servers[i].addr);
        let from = r
            .stdout
            .find(&head)
            .unwrap_or_else(|| panic!("{head} in {r}"));
        let rest = &r.stdout[from + head.len()..];
        rest[..rest.find("Remote commands on").unwrap_or(rest.len())].to_owned()
    };
    let steps = |i: usize| -> Vec<String> {
        on(i)
            .lines()
            .filter_map(|l| l.trim().strip_prefix("# ").and_then(|l| l.split_once(". ")))
            .map(|(_, step)| step.to_owned())
            .collect()
    };
    let all = [
        "lock, state",
        "upload, shared links",
        "before_publish",
        "publish",
        "after_publish",
        "cleanup, log, unlock",
    ];
    let without = |gone: &[&str]| -> Vec<String> {
        all.iter()
            .filter(|s| !gone.contains(s))
            .map(|s| s.to_string())
            .collect()
    };
    assert_eq!(steps(0), without(&["before_publish"]), "web: {r}");
    assert_eq!(steps(1), without(&[]), "web and the first db: {r}");
    assert_eq!(
        steps(2),
        without(&["before_publish", "after_publish"]),
        "the second db: {r}"
    );
    assert!(
        on(1).contains("migrate.log") && on(0).contains("tar -x"),
        "{r}"
    );
    assert!(h.releases(0).is_empty(), "a dry run changes nothing");
    let r = h.run(&["-s", "production", "deploy"]);
    assert_eq!(r.code, 0, "{r}");
    let has = |i: usize, f: &str| h.deploy_to(i).join("shared").join(f).exists();
    assert_eq!(
        (0..3).map(|i| has(i, "migrate.log")).collect::<Vec<_>>(),
        [false, true, false],
        "the once task ran on the first db host only"
    );
    assert_eq!(
        (0..3).map(|i| has(i, "warmed")).collect::<Vec<_>>(),
        [true, true, false],
        "the web hook ran on the web hosts"
    );
    let stage_out = std::fs::read_to_string(h.dir.path().join("stage.out")).expect("local hook");
    assert_eq!(stage_out.trim(), "production");

    // By hand, in the current release, with the hooks' environment.
    let r = h.run(&["-s", "production", "run", "migrate"]);
    assert_eq!(r.code, 0, "{r}");
    let log = std::fs::read_to_string(h.deploy_to(1).join("shared/migrate.log")).expect("log");
    let current = h.current(1).expect("current");
    let revision = h.revision(1);
    assert_eq!(
        log.lines().last(),
        Some(format!("migrated {current} {revision}").as_str()),
        "{log}"
    );
    assert_eq!(log.lines().count(), 2, "{log}");
    let r = h.run(&[
        "-s",
        "production",
        "--role",
        "web",
        "--hosts",
        &h.servers[0].addr,
        "run",
        "migrate",
    ]);
    assert_ne!(r.code, 0, "{r}");
    assert!(
        r.stderr
            .contains("task \"migrate\" runs on roles db: no selected host has one"),
        "{r}"
    );
    let r = h.run(&["-s", "production", "run", "migrat"]);
    assert!(
        r.stderr
            .contains("no task \"migrat\": the tasks are migrate"),
        "{r}"
    );

    let r = h.run(&["-s", "production", "tasks"]);
    assert_eq!(r.code, 0, "{r}");
    assert!(
        r.stdout.contains("once, on the first host with role db"),
        "{r}"
    );
    assert!(
        r.stdout.contains("the schema, before the new code runs"),
        "{r}"
    );

    let r = h.run(&["-s", "production", "config"]);
    assert_eq!(r.code, 0, "{r}");
    let keep = r
        .stdout
        .lines()
        .find(|l| l.starts_with("keep_releases"))
        .unwrap_or_default();
    assert!(
        keep.starts_with("keep_releases = 2") && keep.ends_with("deploy/production.toml"),
        "{r}"
    );

    let r = h.run(&["-s", "staging", "deploy"]);
    assert_ne!(r.code, 0, "{r}");
    assert!(
        r.stderr
            .contains("no stage \"staging\": the stages are production"),
        "{r}"
    );
    assert_eq!(
        h.releases(0).len(),
        1,
        "nothing deployed by a stage that does not exist"
    );

    // Every deploy and rollback is a line of this machine's history, 0600.
    h.write("v", "2");
    let r = h.run(&["-s", "production", "deploy"]);
    assert_eq!(r.code, 0, "{r}");
    let r = h.run(&["-s", "production", "rollback"]);
    assert_eq!(r.code, 0, "{r}");
    let r = h.run(&["-s", "production", "history", "-n", "2"]);
    assert_eq!(r.code, 0, "{r}");
    let rows: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(rows.len(), 3, "a heading and the last two: {r}");
    assert!(
        rows[0].starts_with("WHEN") && rows[0].ends_with("HOSTS"),
        "{r}"
    );
    let user = testbed::process::current_user();
    let deployed = format!("{user}  production  deploy ");
    assert!(
        rows[1].contains(&deployed) && rows[1].contains("  ok  "),
        "{r}"
    );
    assert!(
        rows[2].contains("rollback") && rows[2].contains(&current),
        "{r}"
    );
    let hosts: Vec<String> = h.servers.iter().map(|s| s.addr.clone()).collect();
    assert!(rows[2].ends_with(&hosts.join(", ")), "{r}");
    let file = crate::common::state_home(&h.config).join("deployer/history");
    let meta = std::fs::metadata(&file).expect("history");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600
    );
    let lines = std::fs::read_to_string(&file).expect("history");
    assert_eq!(lines.lines().count(), 3, "{lines}");
}
