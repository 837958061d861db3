//! `lb-ctl decap attach|detach|status`: the command line over this module.

use crate::{
    api::exit,
    cli::DecapCommand,
    client::{print_json, table},
};

pub(crate) fn run(cmd: DecapCommand) -> i32 {
    match cmd {
        DecapCommand::Attach {
            iface,
            pin,
            gue_port,
            allow_sources,
            vips,
        } => {
            let options = super::AttachOptions {
                bpffs: pin.bpffs,
                name: pin.instance,
                gue_port,
                allow_sources,
                vips,
            };
            match super::attach(&iface, &options) {
                Ok(attached) => {
                    let tunnels = options.gue_port.map_or_else(
                        || "IPIP and ip6ip6".to_owned(),
                        |p| format!("IPIP, ip6ip6 and GUE on UDP port {p}"),
                    );
                    println!(
                        "decap {}: {tunnels} decapsulated on {iface} ({})",
                        options.name, attached.mode
                    );
                    for w in &attached.warnings {
                        eprintln!("lb-ctl: warning: {w}");
                    }
                    exit::OK
                }
                Err(e) => {
                    eprintln!("lb-ctl: decap attach {iface}: {e:#}");
                    exit::FAILED
                }
            }
        }
        DecapCommand::Detach { iface, pin } => {
            match super::detach(&iface, &pin.bpffs, &pin.instance) {
                Ok(left) if left.is_empty() => {
                    println!(
                        "decap {}: detached from {iface}; nothing left attached, pins removed",
                        pin.instance
                    );
                    exit::OK
                }
                Ok(left) => {
                    println!(
                        "decap {}: detached from {iface}; still on {}",
                        pin.instance,
                        left.join(", ")
                    );
                    exit::OK
                }
                Err(e) => {
                    eprintln!("lb-ctl: decap detach {iface}: {e:#}");
                    exit::REFUSED
                }
            }
        }
        DecapCommand::Status { pin, json } => match super::status(&pin.bpffs, &pin.instance) {
            Ok(status) if json => {
                print_json(&status);
                exit::OK
            }
            Ok(status) => {
                println!("decap {}: on {}", status.name, status.interfaces.join(", "));
                println!(
                    "GUE port: {}",
                    status.gue_port.map_or_else(
                        || "none (IPIP and ip6ip6 only)".to_owned(),
                        |p| p.to_string()
                    )
                );
                println!(
                    "allowed sources: {}",
                    if status.allowed_sources.is_empty() {
                        "any".to_owned()
                    } else {
                        status.allowed_sources.join(" ")
                    }
                );
                let rows: Vec<Vec<String>> = status
                    .counters
                    .iter()
                    .map(|(name, n)| vec![(*name).to_owned(), n.to_string()])
                    .collect();
                print!("{}", table(&["COUNTER", "PACKETS"], &rows));
                exit::OK
            }
            Err(e) => {
                eprintln!("lb-ctl: decap status: {e:#}");
                exit::REFUSED
            }
        },
    }
}
