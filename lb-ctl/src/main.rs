//! `lb-ctl`: the daemon (`lb-ctl daemon`) and the CLI that talks to it.

fn main() -> std::process::ExitCode {
    lb_ctl::run()
}
