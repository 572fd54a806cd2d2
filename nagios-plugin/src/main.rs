use std::io::Write;

fn main() {
    nagios_plugin::install_panic_hook();
    let (output, code) = nagios_plugin::main_with_args(std::env::args_os().collect());
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{output}");
    let _ = out.flush();
    std::process::exit(code);
}
