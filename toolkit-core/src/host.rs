/// This machine's host name, as `hostname` prints it; `localhost` if it cannot be read.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "localhost".into())
}
