//! The layers of configuration, through the binary: a flag beats its environment variable, which
//! beats the config file, which beats the default; and a relative path is the directory's of
//! whatever set it (the file's for the file and the defaults, the working directory's for flags
//! and the environment).

use std::path::Path;
use std::process::Command;

/// `usersvc --config etc/usersvc.toml ARGS import users.json` in `dir`, with `env` set.
fn import(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_usersvc"))
        .args(["--log", "off", "--config", "etc/usersvc.toml"])
        .args(args)
        .args(["import", "users.json"])
        .env_remove("USERSVC_DATABASE_URL")
        .env_remove("USERSVC_JOURNAL")
        .envs(env.iter().copied())
        .current_dir(dir)
        .output()
        .expect("run usersvc");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn flag_over_environment_over_file_over_default() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    std::fs::create_dir(dir.join("etc")).expect("mkdir");
    std::fs::write(dir.join("users.json"), r#"[{"id":"a","name":"A"}]"#).expect("write");
    // The default, beside the file.
    std::fs::write(dir.join("etc/usersvc.toml"), "log = \"off\"\n").expect("write");
    assert_eq!(import(dir, &[], &[]), "imported 1 users from users.json\n");
    assert!(dir.join("etc/usersvc.db").exists());
    // The file's, in the file's directory.
    std::fs::write(
        dir.join("etc/usersvc.toml"),
        "database_url = \"sqlite://from-file.db\"\n",
    )
    .expect("write");
    import(dir, &[], &[]);
    assert!(dir.join("etc/from-file.db").exists());
    // The environment's, in the working directory.
    let env = [("USERSVC_DATABASE_URL", "sqlite://from-env.db")];
    import(dir, &[], &env);
    assert!(dir.join("from-env.db").exists());
    // The flag's, over the environment's.
    import(dir, &["--database-url", "sqlite://from-flag.db"], &env);
    assert!(dir.join("from-flag.db").exists());
    // Each went to its own place, and only there.
    for (name, place) in [
        ("usersvc.db", "etc"),
        ("from-file.db", "etc"),
        ("from-env.db", "."),
        ("from-flag.db", "."),
    ] {
        let other = if place == "etc" { "." } else { "etc" };
        assert!(!dir.join(other).join(name).exists(), "{name} in {other}");
    }
}

/// A bad value fails the same way from any layer: named, before anything is opened, and a
/// secret's value is never echoed.
#[test]
fn a_bad_value_is_named_from_every_layer() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    std::fs::create_dir(dir.join("etc")).expect("mkdir");
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let out = Command::new(env!("CARGO_BIN_EXE_usersvc"))
            .args(args)
            .env_remove("USERSVC_BREAKER_FAILURES")
            .envs(env.iter().copied())
            .current_dir(dir)
            .output()
            .expect("run usersvc");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), stderr)
    };
    let (code, err) = run(&["--breaker-failures", "0"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--breaker-failures") && err.contains("not in 1.."),
        "{err}"
    );
    assert!(!err.contains("USERSVC_BREAKER_FAILURES"), "{err}");
    let (code, err) = run(&[], &[("USERSVC_BREAKER_FAILURES", "0")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--breaker-failures") && err.contains("not in 1.."),
        "{err}"
    );
    assert!(
        err.contains("the value comes from USERSVC_BREAKER_FAILURES"),
        "{err}"
    );
    for (text, named) in [
        (
            "\nbreaker_failures = 0\n",
            "line 2 (breaker_failures): 0 is not in 1..",
        ),
        (
            "auth_token = 12345\n",
            "line 1 (auth_token): write it as a string",
        ),
    ] {
        std::fs::write(dir.join("etc/usersvc.toml"), text).expect("write");
        let (code, err) = run(&["--config", "etc/usersvc.toml"], &[]);
        assert_eq!(code, Some(1), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        let expected = format!("usersvc: config file etc/usersvc.toml: {named}");
        assert!(err.starts_with(&expected), "{err}");
        assert!(!err.contains("12345"), "{err}");
    }
    assert!(!dir.join("etc/usersvc.db").exists() && !dir.join("usersvc.db").exists());
}
