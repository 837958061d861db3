//! Command-line interface: the clap definitions (also the source of completions and the
//! man page) and the parsing of operator input such as `ADDR[:PORT]`.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
};

use clap::{Args, Parser, Subcommand, ValueEnum, builder::TypedValueParser as _};
use lb_common::Scheduler;

use crate::config::{Protocol, SCHEDULERS, scheduler_from_name};

/// Default control socket.
pub const DEFAULT_SOCKET: &str = "/run/lb-ctl.sock";
/// Default folder of state files and instance locks.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/lb-ctl";

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  the daemon or the data plane failed (map or I/O error)
  2  bad input: invalid config, unknown name, a change refused by a rule
  3  no daemon answered on the control socket
  4  a wait timed out (wait drained)";

/// A scheduler by its config name. `Scheduler` lives in lb-common, which cannot derive
/// clap's `ValueEnum`; this parser gives the same refusal, listing the valid names.
fn scheduler_parser() -> impl clap::builder::TypedValueParser<Value = Scheduler> {
    clap::builder::PossibleValuesParser::new(SCHEDULERS.map(Scheduler::name)).map(|name| {
        scheduler_from_name(&name).expect("the parser accepts only the schedulers' names")
    })
}

#[derive(Debug, Parser)]
#[command(
    name = "lb-ctl",
    version,
    about = "XDP Layer-4 load balancer with CLB-style server groups: daemon and control CLI",
    after_help = EXIT_CODES
)]
pub struct Cli {
    /// Control socket of the daemon.
    #[arg(long, global = true, env = "LB_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load and attach the XDP program, fill its maps from the config, serve the API.
    ///
    /// Also turns `net.ipv4.conf.<iface>.accept_local` on for each interface it attaches
    /// to: replies the XDP program hands to the kernel (next hop not resolved yet) keep
    /// the VIP as their source, which the kernel drops where the VIP is an address of this
    /// host unless it accepts local sources there. It warns about a strict `rp_filter`
    /// that would drop them all the same.
    Daemon(DaemonArgs),
    /// Check a config file offline; lists every error with its path, and warnings about
    /// settings that work but probably not as meant (exit 0 with warnings).
    Validate {
        /// The config file.
        file: PathBuf,
    },
    /// Listeners, groups and backends with weight, state and active flows.
    Status(ReadArgs),
    /// Packet, byte and new-flow counters and rates per listener and backend.
    Stats {
        /// Refresh every second until interrupted.
        #[arg(long)]
        watch: bool,
        #[arg(long)]
        json: bool,
    },
    /// Add, change or remove servers of a group.
    #[command(subcommand)]
    Server(ServerCommand),
    /// Wait for a condition.
    #[command(subcommand)]
    Wait(WaitCommand),
    /// Create, delete and inspect server groups.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Add, change, remove and list listeners.
    #[command(subcommand)]
    Listener(ListenerCommand),
    /// Edit source access lists.
    #[command(subcommand)]
    Acl(AclCommand),
    /// Why a packet from SRC to VIP lands where it does: listener, access list, flow
    /// entry, scheduler, table slot, backend — computed from the live maps.
    Explain {
        /// Client IP:PORT.
        #[arg(long, value_parser = parse_endpoint)]
        src: SocketAddrV4,
        /// VIP:PORT.
        #[arg(long, value_parser = parse_endpoint)]
        dst: SocketAddrV4,
        #[arg(long, value_enum)]
        proto: Protocol,
        /// Explain a packet of an established connection (an ACK) instead of a SYN.
        #[arg(long)]
        established: bool,
        #[arg(long)]
        json: bool,
    },
    /// Withdraw every VIP from BGP while this host keeps forwarding, so routers move new
    /// traffic away and established flows finish here; before maintenance or a stop.
    ///
    /// Needs a `bgp` section. It lasts until `lb-ctl drain-host --undo` or the daemon's
    /// next start (a reload keeps it). `lb-ctl status` shows it.
    DrainHost {
        /// Announce the VIPs with a healthy backend again.
        #[arg(long)]
        undo: bool,
    },
    /// Re-read the config file and apply the difference (also SIGHUP).
    Reload,
    /// Print the effective state (config + runtime changes) as a config file.
    Export,
    /// Detach and unpin an instance's data plane (stopping the daemon does not).
    Teardown {
        /// Instance name (default: the one named in --config).
        #[arg(long)]
        instance: Option<String>,
        /// Config file to take the instance name from.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where bpffs is mounted.
        #[arg(long, default_value = crate::pins::BPFFS)]
        bpffs: PathBuf,
    },
    /// On a backend of a `forwarding: dsr` load balancer: strip the LBs' outer headers
    /// (IPIP, GUE) in XDP and hand the client's packet to the kernel, for kernels without
    /// the `ipip` or `fou` module. The program stays attached when the command exits
    /// (pinned under <bpffs>/<instance>).
    #[command(subcommand)]
    Decap(DecapCommand),
    /// Print a shell completion script, e.g. `lb-ctl completions bash >
    /// /etc/bash_completion.d/lb-ctl`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `lb-ctl man | man -l -`.
    Man,
}

#[derive(Debug, Subcommand)]
pub enum DecapCommand {
    /// Attach the decapsulation program to IFACE (again: apply new settings), and warn
    /// about host settings that would break DSR (arp_ignore, arp_announce, rp_filter, the
    /// VIP on lo).
    Attach {
        /// The backend's interface the LBs' packets arrive on.
        iface: String,
        #[command(flatten)]
        pin: DecapPin,
        /// Also strip GUE: IPv4 in UDP to this port (the LBs' `dsr.gue_port`, 6080 by
        /// default). IPIP is always stripped.
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        gue_port: Option<u16>,
        /// Accept tunnelled packets only from this source prefix (the LB hosts'; ADDR or
        /// ADDR/LEN, repeatable). Without it any host can hand this backend a packet from
        /// any "client".
        #[arg(long = "allow-source", value_parser = parse_prefix)]
        allow_sources: Vec<crate::config::Ipv4Net>,
        /// A VIP this backend serves, checked to be on lo (repeatable).
        #[arg(long = "vip")]
        vips: Vec<Ipv4Addr>,
    },
    /// Detach it from IFACE; the last interface removes the pins and counters.
    Detach {
        iface: String,
        #[command(flatten)]
        pin: DecapPin,
    },
    /// Interfaces, settings and counters (decapsulated, passed, dropped).
    Status {
        #[command(flatten)]
        pin: DecapPin,
        #[arg(long)]
        json: bool,
    },
}

/// Where `lb-ctl decap` pins its program.
#[derive(Debug, Args)]
pub struct DecapPin {
    /// Pin folder name under bpffs: one per set of settings (each network namespace of a
    /// test host gets its own).
    #[arg(long, default_value = crate::decap::DEFAULT_NAME)]
    pub instance: String,
    /// Where bpffs is mounted.
    #[arg(long, default_value = crate::pins::BPFFS)]
    pub bpffs: PathBuf,
}

/// An IPv4 prefix (ADDR/LEN) or address.
pub fn parse_prefix(s: &str) -> Result<crate::config::Ipv4Net, String> {
    s.parse::<crate::config::Ipv4Net>()
        .map_err(|e| match e.hint() {
            Some(hint) => format!("{e} ({hint})"),
            None => e.to_string(),
        })
}

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// The config file (YAML).
    #[arg(long)]
    pub config: PathBuf,
    /// Folder of the state file (runtime changes) and the instance lock.
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Group allowed to use the control socket (mode 0660; default: root only, 0600).
    #[arg(long)]
    pub socket_group: Option<String>,
    /// Run inside this network namespace (`ip netns` name: its interfaces, addresses and
    /// settings) while keeping the host's bpffs.
    #[arg(long)]
    pub netns: Option<String>,
    /// Where bpffs is mounted.
    #[arg(long, default_value = crate::pins::BPFFS)]
    pub bpffs: PathBuf,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Seconds between sweeps of the flow table (active-flow counts).
    #[arg(long, default_value_t = 1)]
    pub sweep_interval: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct ReadArgs {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

/// A server of a group: the group, and ADDR (default group) or ADDR:PORT (vServer and
/// primary/secondary groups).
#[derive(Debug, Args)]
pub struct ServerRef {
    /// Group name: `default` or a vServer / primary-secondary group.
    #[arg(long)]
    pub group: String,
    /// ADDR (default group) or ADDR:PORT.
    #[arg(value_parser = parse_server)]
    pub server: (Ipv4Addr, Option<u16>),
}

#[derive(Debug, Subcommand)]
pub enum ServerCommand {
    /// Add a server to a group (new flows start going to it).
    Add {
        #[command(flatten)]
        server: ServerRef,
        /// 0..=100 (default 100).
        #[arg(long, allow_negative_numbers = true, value_parser = parse_weight)]
        weight: Option<u8>,
    },
    /// Change a server's weight (new flows only; 0 = no new flows, established continue).
    Set {
        #[command(flatten)]
        server: ServerRef,
        #[arg(long, allow_negative_numbers = true, value_parser = parse_weight)]
        weight: u8,
    },
    /// Take a server out of a group. New flows stop at once; its established flows follow
    /// the listener's connection drain (kept until the drain timeout, or cut at once when
    /// drain is off).
    Remove {
        #[command(flatten)]
        server: ServerRef,
        /// Cut its established flows now, even with connection drain on.
        #[arg(long)]
        now: bool,
    },
    /// Drain a server: no new flows; established flows continue until they end or the
    /// timeout passes, then they are cut (TCP: RST to the client; UDP: dropped).
    Drain {
        #[command(flatten)]
        server: ServerRef,
        /// Wait until it has no active flows (exit 4 at the timeout).
        #[arg(long)]
        wait: bool,
        /// Seconds before remaining flows are cut (default: the listener's
        /// connection_drain timeout).
        #[arg(long)]
        timeout: Option<u32>,
    },
    /// End a drain: the server takes new flows again.
    Undrain {
        #[command(flatten)]
        server: ServerRef,
    },
}

#[derive(Debug, Subcommand)]
pub enum WaitCommand {
    /// Block until a server has no active flows; exit 4 at the timeout with the count.
    Drained {
        #[command(flatten)]
        server: ServerRef,
        /// Seconds to wait.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum GroupType {
    Vserver,
    PrimarySecondary,
}

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Create a vServer or primary/secondary group.
    Create {
        name: String,
        #[arg(long = "type", value_enum)]
        kind: GroupType,
        /// Primary server (primary-secondary groups).
        #[arg(long, value_parser = parse_endpoint)]
        primary: Option<SocketAddrV4>,
        /// Secondary server (primary-secondary groups).
        #[arg(long, value_parser = parse_endpoint)]
        secondary: Option<SocketAddrV4>,
        /// Health-check the secondary too (default: only the primary, as in CLB).
        #[arg(long)]
        probe_secondary: bool,
    },
    /// Delete a group no listener uses.
    Delete { name: String },
    /// One group and its servers.
    Show {
        name: String,
        #[command(flatten)]
        read: ReadArgs,
    },
    /// Every group.
    List(ReadArgs),
}

#[derive(Debug, Subcommand)]
pub enum ListenerCommand {
    /// Add a listener.
    Add {
        name: String,
        #[arg(long, value_enum)]
        protocol: Protocol,
        /// The VIP.
        #[arg(long)]
        address: Ipv4Addr,
        #[arg(long, value_parser = parse_port)]
        port: u16,
        /// Server group (default: the default group).
        #[arg(long)]
        group: Option<String>,
        /// Port of the default group's servers (required with the default group).
        #[arg(long, value_parser = parse_port)]
        backend_port: Option<u16>,
        /// Default: wrr.
        #[arg(long, value_parser = scheduler_parser())]
        scheduler: Option<Scheduler>,
    },
    /// Change a listener's group or scheduler.
    Set {
        name: String,
        #[arg(long)]
        group: Option<String>,
        /// With `--group default` when moving a listener onto the default group.
        #[arg(long, value_parser = parse_port)]
        backend_port: Option<u16>,
        #[arg(long, value_parser = scheduler_parser())]
        scheduler: Option<Scheduler>,
    },
    /// Remove a listener.
    Remove { name: String },
    /// Every listener.
    List(ReadArgs),
}

#[derive(Debug, Subcommand)]
pub enum AclCommand {
    /// Add a CIDR to an access list (the list is created if needed).
    Add { name: String, cidr: String },
    /// Remove a CIDR from an access list.
    Remove { name: String, cidr: String },
    /// Every access list.
    List(ReadArgs),
}

/// Writes the completion script of `lb-ctl` for `shell`.
pub fn write_completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
    let mut command = <Cli as clap::CommandFactory>::command();
    clap_complete::generate(shell, &mut command, "lb-ctl", out);
}

/// Writes the man page of `lb-ctl`: its synopsis, every subcommand with its options, and
/// the exit codes.
pub fn write_man_page(out: &mut dyn std::io::Write) -> std::io::Result<()> {
    let command = <Cli as clap::CommandFactory>::command();
    let man = clap_mangen::Man::new(command.clone());
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    // One section per subcommand with its own options, instead of clap_mangen's list of
    // lb-ctl-SUBCOMMAND(1) pages: `lb-ctl man` prints a single, complete page.
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_subcommand_options(out, &format!("lb-ctl {}", sub.get_name()), sub)?;
    }
    // EXIT_CODES (the --help epilogue) as a man page's EXIT STATUS list.
    writeln!(out, ".SH \"EXIT STATUS\"")?;
    for line in EXIT_CODES.lines().skip(1) {
        if let Some((code, meaning)) = line.trim().split_once(' ') {
            writeln!(out, ".TP\n{code}\n{}", roff_text(meaning.trim()))?;
        }
    }
    man.render_version_section(out)
}

/// A `.SH` section per subcommand listing its arguments, recursing into nested ones.
fn write_subcommand_options(
    out: &mut dyn std::io::Write,
    path: &str,
    command: &clap::Command,
) -> std::io::Result<()> {
    if command.has_subcommands() {
        for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
            write_subcommand_options(out, &format!("{path} {}", sub.get_name()), sub)?;
        }
        return Ok(());
    }
    // Render the subcommand as a page of its own and keep its OPTIONS section, under a
    // heading naming the command.
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone()).render_options_section(&mut page)?;
    let page = String::from_utf8_lossy(&page);
    // Keep what follows its own heading: the subcommand's heading replaces it.
    let body = page
        .split_once(".SH OPTIONS\n")
        .map_or("", |(_, rest)| rest);
    if body.trim().is_empty() {
        return Ok(());
    }
    writeln!(out, ".SH \"{}\"", path.to_uppercase())?;
    if let Some(about) = command.get_about() {
        writeln!(out, "{}", roff_text(&about.to_string()))?;
    }
    out.write_all(body.as_bytes())
}

/// Plain text as a roff paragraph: a leading `.` or `'` would be read as a request.
fn roff_text(text: &str) -> String {
    let escaped = text.replace('\\', "\\e");
    match escaped.chars().next() {
        Some('.' | '\'') => format!("\\&{escaped}"),
        _ => escaped,
    }
}

/// `ADDR` or `ADDR:PORT`.
pub fn parse_server(s: &str) -> Result<(Ipv4Addr, Option<u16>), String> {
    let hint = "expected ADDR or ADDR:PORT, e.g. 198.18.1.10 or 198.18.1.10:8080";
    if let Some((addr, port)) = s.rsplit_once(':') {
        if addr.contains(':') || s.starts_with('[') {
            return Err(format!("`{s}`: IPv6 is not supported yet; {hint}"));
        }
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("`{addr}` is not an IPv4 address; {hint}"))?;
        let port = parse_port(port)?;
        Ok((addr, Some(port)))
    } else {
        let addr: Ipv4Addr = s
            .parse()
            .map_err(|_| format!("`{s}` is not an IPv4 address; {hint}"))?;
        Ok((addr, None))
    }
}

/// A port, 1..=65535.
pub fn parse_port(s: &str) -> Result<u16, String> {
    match s.parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
        Ok(p) => Err(format!("port {p} is not in 1..=65535")),
        Err(_) => Err(format!("`{s}` is not a port number (1..=65535)")),
    }
}

/// `ADDR:PORT`.
pub fn parse_endpoint(s: &str) -> Result<SocketAddrV4, String> {
    match parse_server(s)? {
        (addr, Some(port)) => Ok(SocketAddrV4::new(addr, port)),
        (_, None) => Err(format!("`{s}` has no port; expected ADDR:PORT")),
    }
}

/// A weight, 0..=100.
pub fn parse_weight(s: &str) -> Result<u8, String> {
    match s.parse::<u32>() {
        Ok(w) if w <= 100 => Ok(w as u8),
        Ok(w) => Err(format!(
            "weight {w} is not in 0..=100 (0 = no new flows, established ones continue)"
        )),
        Err(_) => Err(format!("`{s}` is not a weight (an integer 0..=100)")),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn completions_and_man_page_generate() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut out = Vec::new();
            write_completions(shell, &mut out);
            let text = String::from_utf8(out).expect("completions are UTF-8");
            for word in ["lb-ctl", "drain", "explain", "completions"] {
                assert!(text.contains(word), "{shell} completions lack {word}");
            }
        }
        let mut out = Vec::new();
        write_man_page(&mut out).expect("the man page renders");
        let page = String::from_utf8(out).expect("the man page is UTF-8");
        for needle in [
            ".TH lb-ctl",
            ".SH SYNOPSIS",
            "LB-CTL SERVER DRAIN",
            "\\-\\-wait",
            ".SH \"EXIT STATUS\"",
        ] {
            assert!(
                page.contains(needle),
                "the man page lacks {needle:?}:\n{page}"
            );
        }
    }

    #[test]
    fn server_addresses() {
        assert_eq!(
            parse_server("198.18.1.10:8080"),
            Ok(("198.18.1.10".parse().unwrap(), Some(8080)))
        );
        assert_eq!(
            parse_server("198.18.1.10"),
            Ok(("198.18.1.10".parse().unwrap(), None))
        );
        assert!(
            parse_server("198.18.1.300")
                .unwrap_err()
                .contains("not an IPv4 address")
        );
        assert!(
            parse_server("198.18.1.1:0")
                .unwrap_err()
                .contains("not in 1..=65535")
        );
        assert!(
            parse_server("198.18.1.1:70000")
                .unwrap_err()
                .contains("not in 1..=65535")
        );
        assert!(parse_server("2001:db8::1").unwrap_err().contains("IPv6"));
        assert!(
            parse_endpoint("198.18.1.1")
                .unwrap_err()
                .contains("no port")
        );
    }

    #[test]
    fn weights() {
        assert_eq!(parse_weight("0"), Ok(0));
        assert_eq!(parse_weight("100"), Ok(100));
        assert!(parse_weight("101").unwrap_err().contains("0..=100"));
        assert!(parse_weight("-1").unwrap_err().contains("not a weight"));
        assert!(parse_weight("heavy").unwrap_err().contains("not a weight"));
    }
}
