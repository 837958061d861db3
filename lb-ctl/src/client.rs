//! What each CLI command does on the client side: build a request, call the daemon, print
//! the answer as a table or JSON, and return the exit code.

use std::{
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

use crate::{
    api::{self, Request, Response, Status, exit},
    cli::{
        AclCommand, Command, FlowsArgs, GroupCommand, GroupType, ListenerCommand, Nested,
        ServerCommand, StatusArgs, WaitCommand,
    },
    config::{self, Config, Endpoint},
    overlay::Change,
    pins,
};

const CALL_TIMEOUT: Duration = Duration::from_secs(30);

fn call(socket: &Path, request: &Request) -> Result<Response, i32> {
    api::call(socket, request, CALL_TIMEOUT).map_err(|e| {
        eprintln!("lb-ctl: {e}");
        match e {
            api::ClientError::Connect { .. } => exit::NO_DAEMON,
            _ => exit::FAILED,
        }
    })
}

/// Calls and prints the message of an Ok response; returns the exit code and the data.
fn call_ok(socket: &Path, request: &Request) -> Result<serde_json::Value, i32> {
    match call(socket, request)? {
        Response::Ok { data, .. } => Ok(data),
        Response::Error { message, code } => {
            eprintln!("lb-ctl: {message}");
            Err(code)
        }
    }
}

/// Sends a request whose answer is a message: printed as is (`print!` for a message that
/// is a file, `println!` otherwise); an error goes to stderr with its exit code.
fn simple(socket: &Path, request: &Request, as_file: bool) -> i32 {
    match call(socket, request) {
        Ok(Response::Ok { message, .. }) => {
            if as_file {
                print!("{message}");
            } else {
                println!("{message}");
            }
            exit::OK
        }
        Ok(Response::Error { message, code }) => {
            eprintln!("lb-ctl: {message}");
            code
        }
        Err(code) => code,
    }
}

fn change(socket: &Path, change: Change) -> i32 {
    simple(socket, &Request::Change { change }, false)
}

fn effective(socket: &Path) -> Result<Config, i32> {
    match call(socket, &Request::Export)? {
        Response::Ok { message, .. } => config::parse(&message).map_err(|e| {
            eprintln!("lb-ctl: the daemon's effective state does not parse: {e}");
            exit::FAILED
        }),
        Response::Error { message, code } => {
            eprintln!("lb-ctl: {message}");
            Err(code)
        }
    }
}

pub(crate) fn print_json(value: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    );
}

/// Formats rows as left-aligned columns.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                let _ = write!(l, "{cell:<w$}  ");
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for row in rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

pub fn render_status(s: &Status) -> String {
    let mut out = String::new();
    let ifaces: Vec<String> = s
        .interfaces
        .iter()
        .map(|i| format!("{} ({})", i.name, i.mode))
        .collect();
    let _ = writeln!(
        out,
        "instance {}  config {}  interfaces: {}",
        s.instance,
        s.config,
        ifaces.join(", ")
    );
    if s.overlay_changes > 0 {
        let _ = writeln!(
            out,
            "{} runtime change(s) on top of the config (lb-ctl export shows the result)",
            s.overlay_changes
        );
    }
    for c in &s.conflicts {
        let _ = writeln!(out, "dropped runtime change: {c}");
    }
    let _ = writeln!(
        out,
        "flow table: {} of {} entries, {} evicted",
        s.flow_table.entries, s.flow_table.capacity, s.flow_table.evicted
    );
    let _ = writeln!(
        out,
        "maglev array: {} of {} slots reserved by the listeners' tables",
        s.maglev.reserved, s.maglev.capacity
    );
    if let Some(bgp) = &s.bgp {
        render_bgp(bgp, &mut out);
    }
    for l in &s.listeners {
        let _ = writeln!(
            out,
            "\nlistener {}  {} {}  group {}  scheduler {}  packets {}  new flows {}",
            l.name,
            l.protocol,
            l.endpoint(),
            l.group,
            l.scheduler.name(),
            l.stats.packets,
            l.stats.new_flows
        );
        let rows: Vec<Vec<String>> = l
            .backends
            .iter()
            .map(|b| {
                vec![
                    b.endpoint().to_string(),
                    b.role.clone(),
                    if b.effective_weight != b.weight {
                        format!("{} ({})", b.weight, b.effective_weight)
                    } else {
                        b.weight.to_string()
                    },
                    b.state.clone(),
                    b.last_probe.clone().unwrap_or_else(|| "-".into()),
                    b.active_flows.to_string(),
                    b.stats.new_flows.to_string(),
                    b.stats.packets.to_string(),
                    b.origin.clone(),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "  BACKEND",
                "ROLE",
                "WEIGHT",
                "STATE",
                "LAST PROBE",
                "ACTIVE",
                "NEW FLOWS",
                "PACKETS",
                "ORIGIN",
            ],
            &rows
                .into_iter()
                .map(|mut r| {
                    r[0] = format!("  {}", r[0]);
                    r
                })
                .collect::<Vec<_>>(),
        ));
    }
    out
}

fn render_bgp(bgp: &crate::bgp::BgpStatus, out: &mut String) {
    let list = |vips: &[IpAddr]| {
        if vips.is_empty() {
            "none".to_owned()
        } else {
            vips.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let bird = match bgp.bird_pid {
        Some(pid) => format!("BIRD pid {pid}"),
        None => "BIRD not running".to_owned(),
    };
    let restarts = if bgp.bird_restarts > 0 {
        format!(", restarted {} time(s)", bgp.bird_restarts)
    } else {
        String::new()
    };
    let _ = writeln!(out, "\nbgp: {bird}{restarts}");
    if bgp.host_drained {
        let _ = writeln!(
            out,
            "  host drained: nothing announced (`lb-ctl drain-host --undo` ends it)"
        );
    }
    let _ = writeln!(out, "  announced: {}", list(&bgp.announced));
    let _ = writeln!(
        out,
        "  VIPs with a healthy backend: {}",
        list(&bgp.healthy_vips)
    );
    if let Some(problem) = &bgp.problem {
        let _ = writeln!(out, "  problem: {problem}");
    }
    let rows: Vec<Vec<String>> = bgp
        .sessions
        .iter()
        .map(|s| {
            vec![
                format!(
                    "  {}",
                    s.neighbor.map_or_else(|| s.name.clone(), |n| n.to_string())
                ),
                s.state.to_string(),
                s.since.clone(),
                s.info.clone(),
            ]
        })
        .collect();
    out.push_str(&table(&["  NEIGHBOR", "STATE", "SINCE", "INFO"], &rows));
}

fn status(socket: &Path, args: &StatusArgs) -> i32 {
    loop {
        let data = match call_ok(socket, &Request::Status) {
            Ok(d) => d,
            Err(code) => return code,
        };
        if args.json {
            print_json(&data);
        } else {
            match serde_json::from_value::<Status>(data) {
                Ok(s) if args.watch => print!("\x1b[H\x1b[2J{}", render_status(&s)),
                Ok(s) => print!("{}", render_status(&s)),
                Err(e) => {
                    eprintln!("lb-ctl: unexpected status from the daemon: {e}");
                    return exit::FAILED;
                }
            }
        }
        if !args.watch {
            return exit::OK;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// `lb-ctl check`: whether this host serves (the daemon answers within `timeout`, its
/// program is attached to every interface of its config), said in one line.
fn check(socket: &Path, timeout: Duration) -> i32 {
    let data = match api::call(socket, &Request::Status, timeout) {
        Ok(Response::Ok { data, .. }) => data,
        Ok(Response::Error { message, .. }) => {
            println!("not serving: the daemon answers with an error: {message}");
            return exit::FAILED;
        }
        Err(e @ api::ClientError::Connect { .. }) => {
            println!("not serving: {e}");
            return exit::NO_DAEMON;
        }
        Err(e) => {
            println!("not serving: {e}");
            return exit::FAILED;
        }
    };
    let status: Status = match serde_json::from_value(data) {
        Ok(s) => s,
        Err(e) => {
            println!("not serving: unexpected status from the daemon: {e}");
            return exit::FAILED;
        }
    };
    match check_status(&status) {
        Ok(summary) => {
            println!("serving: {summary}");
            exit::OK
        }
        Err(why) => {
            println!("not serving: {why}");
            exit::FAILED
        }
    }
}

/// What `check` concludes from a status: a summary when every interface has the program
/// attached, else why not.
fn check_status(status: &Status) -> Result<String, String> {
    if status.interfaces.is_empty() {
        return Err(format!(
            "instance {}: the program is attached to no interface",
            status.instance
        ));
    }
    let missing: Vec<&str> = status
        .interfaces
        .iter()
        .filter(|i| i.mode == "missing")
        .map(|i| i.name.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "instance {}: interface(s) {} of the config do not exist, nothing arriving \
             there is balanced",
            status.instance,
            missing.join(", ")
        ));
    }
    let interfaces: Vec<String> = status
        .interfaces
        .iter()
        .map(|i| format!("{} ({})", i.name, i.mode))
        .collect();
    Ok(format!(
        "instance {}, {} listener(s), XDP on {}",
        status.instance,
        status.listeners.len(),
        interfaces.join(", ")
    ))
}

fn flows(socket: &Path, args: &FlowsArgs) -> i32 {
    let request = Request::Flows {
        listener: args.listener.clone(),
        backend: args.backend.map(|b| b.0),
        backend_port: args.backend.and_then(|b| b.1),
        limit: args.limit,
    };
    let data = match call_ok(socket, &request) {
        Ok(d) => d,
        Err(code) => return code,
    };
    if args.json {
        print_json(&data);
        return exit::OK;
    }
    match serde_json::from_value::<crate::controller::FlowList>(data) {
        Ok(list) => {
            print!("{}", render_flows(&list));
            exit::OK
        }
        Err(e) => {
            eprintln!("lb-ctl: unexpected flow list from the daemon: {e}");
            exit::FAILED
        }
    }
}

pub fn render_flows(list: &crate::controller::FlowList) -> String {
    let rows: Vec<Vec<String>> = list
        .flows
        .iter()
        .map(|f| {
            vec![
                f.protocol.to_uppercase(),
                f.client.to_string(),
                f.vip.to_string(),
                f.backend.clone(),
                f.listener.clone(),
                f.state.clone(),
                f.idle_s.to_string(),
                f.expires_in_s.to_string(),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "PRO",
            "CLIENT",
            "VIP",
            "BACKEND",
            "LISTENER",
            "STATE",
            "IDLE S",
            "EXPIRES S",
        ],
        &rows,
    );
    let shown = list.flows.len() as u64;
    if list.matched > shown {
        let _ = writeln!(
            out,
            "... {} more flow(s) not shown (--limit N, 0 for all; --listener or --backend to \
             narrow)",
            list.matched - shown
        );
    }
    let _ = writeln!(
        out,
        "{} flow(s) matched of {} entries in the flow tables",
        list.matched, list.entries
    );
    out
}

fn stats(socket: &Path, watch: bool, json: bool) -> i32 {
    let mut previous: Option<api::Stats> = None;
    loop {
        let data = match call_ok(socket, &Request::Stats) {
            Ok(d) => d,
            Err(code) => return code,
        };
        let current: api::Stats = match serde_json::from_value(data.clone()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("lb-ctl: unexpected stats from the daemon: {e}");
                return exit::FAILED;
            }
        };
        if json {
            print_json(&data);
        } else {
            let text = render_stats(&current, previous.as_ref());
            if watch {
                // Redraw in place: home, clear screen.
                print!("\x1b[H\x1b[2J{text}");
            } else {
                print!("{text}");
            }
        }
        if !watch {
            return exit::OK;
        }
        previous = Some(current);
        std::thread::sleep(Duration::from_secs(1));
    }
}

pub fn render_stats(now: &api::Stats, before: Option<&api::Stats>) -> String {
    let dt = before.map_or(0.0, |b| now.at_s - b.at_s);
    let rate = |cur: u64, old: Option<u64>| -> String {
        match old {
            Some(o) if dt > 0.0 => format!("{:.1}", cur.saturating_sub(o) as f64 / dt),
            _ => "-".into(),
        }
    };
    let mut rows = Vec::new();
    for l in &now.listeners {
        let old = before.and_then(|b| b.listeners.iter().find(|x| x.name == l.name));
        rows.push(vec![
            l.name.clone(),
            String::new(),
            l.stats.packets.to_string(),
            rate(l.stats.packets, old.map(|o| o.stats.packets)),
            rate(l.stats.bytes * 8, old.map(|o| o.stats.bytes * 8)),
            l.stats.new_flows.to_string(),
            rate(l.stats.new_flows, old.map(|o| o.stats.new_flows)),
            l.stats.dropped.to_string(),
        ]);
        for (name, c) in &l.backends {
            let ob = old
                .and_then(|o| o.backends.iter().find(|(n, _)| n == name))
                .map(|(_, c)| *c);
            rows.push(vec![
                String::new(),
                name.clone(),
                c.packets.to_string(),
                rate(c.packets, ob.map(|o| o.packets)),
                rate(c.bytes * 8, ob.map(|o| o.bytes * 8)),
                c.new_flows.to_string(),
                rate(c.new_flows, ob.map(|o| o.new_flows)),
                c.dropped.to_string(),
            ]);
        }
    }
    let mut out = table(
        &[
            "LISTENER",
            "BACKEND",
            "PACKETS",
            "PPS",
            "BPS",
            "NEW FLOWS",
            "NEW/S",
            "DROPPED",
        ],
        &rows,
    );
    let nonzero: Vec<String> = now
        .reasons
        .iter()
        .filter(|(_, v)| **v > 0)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let _ = writeln!(out, "\nverdicts: {}", nonzero.join(" "));
    out
}

fn wait_drained(
    socket: &Path,
    group: &str,
    address: IpAddr,
    port: Option<u16>,
    timeout: u64,
) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(timeout);
    loop {
        let data = match call_ok(
            socket,
            &Request::ActiveFlows {
                group: group.to_owned(),
                address,
                port,
            },
        ) {
            Ok(d) => d,
            Err(code) => return code,
        };
        if data["backends"].as_u64() == Some(0) {
            eprintln!("lb-ctl: no server {address} in group {group} is serving a listener");
            return exit::REFUSED;
        }
        let active = data["active_flows"].as_u64().unwrap_or(0);
        if active == 0 {
            println!("drained: no active flows");
            return exit::OK;
        }
        if Instant::now() >= deadline {
            eprintln!("lb-ctl: timed out after {timeout} s: {active} active flow(s) remain");
            return exit::TIMEOUT;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn endpoint(e: SocketAddr) -> Endpoint {
    Endpoint::new(e.ip(), e.port())
}

fn group_command(socket: &Path, cmd: GroupCommand) -> i32 {
    match cmd {
        GroupCommand::Create {
            name,
            kind,
            primary,
            secondary,
            probe_secondary,
        } => match (kind, primary, secondary) {
            (GroupType::Vserver, None, None) => change(socket, Change::GroupCreateVserver { name }),
            (GroupType::Vserver, _, _) => {
                eprintln!("lb-ctl: --primary/--secondary are for --type primary-secondary");
                exit::REFUSED
            }
            (GroupType::PrimarySecondary, Some(p), Some(s)) => change(
                socket,
                Change::GroupCreatePrimarySecondary {
                    name,
                    primary: endpoint(p),
                    secondary: endpoint(s),
                    probe_secondary,
                },
            ),
            (GroupType::PrimarySecondary, _, _) => {
                eprintln!(
                    "lb-ctl: a primary/secondary group has exactly two members: give --primary \
                     ADDR:PORT and --secondary ADDR:PORT"
                );
                exit::REFUSED
            }
        },
        GroupCommand::Delete { name } => change(socket, Change::GroupDelete { name }),
        GroupCommand::Show { name, read } => {
            let cfg = match effective(socket) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let groups = groups(&cfg);
            let Some(g) = groups.into_iter().find(|g| g.name == name) else {
                eprintln!("lb-ctl: no server group `{name}`");
                return exit::REFUSED;
            };
            if read.json {
                print_json(&g);
            } else {
                println!(
                    "group {} ({}), used by: {}",
                    g.name,
                    g.kind,
                    g.listeners.join(", ")
                );
                let rows: Vec<Vec<String>> = g
                    .servers
                    .iter()
                    .map(|s| vec![s.server.clone(), s.role.clone(), s.weight.clone()])
                    .collect();
                print!("{}", table(&["SERVER", "ROLE", "WEIGHT"], &rows));
            }
            exit::OK
        }
        GroupCommand::List(read) => {
            let cfg = match effective(socket) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let groups = groups(&cfg);
            if read.json {
                print_json(&groups);
            } else {
                let rows: Vec<Vec<String>> = groups
                    .iter()
                    .map(|g| {
                        vec![
                            g.name.clone(),
                            g.kind.clone(),
                            g.servers.len().to_string(),
                            g.listeners.join(","),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(&["GROUP", "TYPE", "SERVERS", "LISTENERS"], &rows)
                );
            }
            exit::OK
        }
    }
}

#[derive(serde::Serialize)]
struct GroupView {
    name: String,
    kind: String,
    servers: Vec<ServerView>,
    listeners: Vec<String>,
}

#[derive(serde::Serialize)]
struct ServerView {
    server: String,
    role: String,
    weight: String,
}

fn groups(cfg: &Config) -> Vec<GroupView> {
    let users = |name: &str| -> Vec<String> {
        cfg.listeners
            .iter()
            .filter(|l| l.named_group().unwrap_or(config::DEFAULT_GROUP_NAME) == name)
            .map(|l| l.name.clone())
            .collect()
    };
    let mut out = vec![GroupView {
        name: config::DEFAULT_GROUP_NAME.into(),
        kind: "default".into(),
        servers: cfg
            .default_server_group
            .servers
            .iter()
            .map(|s| ServerView {
                server: s.address.to_string(),
                role: "member".into(),
                weight: s.weight.to_string(),
            })
            .collect(),
        listeners: users(config::DEFAULT_GROUP_NAME),
    }];
    for g in &cfg.vserver_groups {
        out.push(GroupView {
            name: g.name.clone(),
            kind: "vserver".into(),
            servers: g
                .servers
                .iter()
                .map(|m| ServerView {
                    server: m.endpoint().to_string(),
                    role: "member".into(),
                    weight: m.weight.to_string(),
                })
                .collect(),
            listeners: users(&g.name),
        });
    }
    for g in &cfg.primary_secondary_groups {
        out.push(GroupView {
            name: g.name.clone(),
            kind: "primary-secondary".into(),
            servers: vec![
                ServerView {
                    server: g.primary.to_string(),
                    role: "primary".into(),
                    weight: "-".into(),
                },
                ServerView {
                    server: g.secondary.to_string(),
                    role: "secondary".into(),
                    weight: "-".into(),
                },
            ],
            listeners: users(&g.name),
        });
    }
    out
}

fn listener_command(socket: &Path, cmd: ListenerCommand) -> i32 {
    match cmd {
        ListenerCommand::Add {
            name,
            protocol,
            address,
            port,
            group,
            backend_port,
            options,
        } => change(
            socket,
            Change::ListenerAdd {
                name,
                protocol,
                address,
                port,
                group,
                backend_port,
                scheduler: options.scheduler,
                settings: options.settings(),
            },
        ),
        ListenerCommand::Set {
            name,
            group,
            backend_port,
            options,
        } => {
            let settings = options.settings();
            if group.is_none()
                && backend_port.is_none()
                && options.scheduler.is_none()
                && settings.is_empty()
            {
                eprintln!(
                    "lb-ctl: listener set {name}: nothing to change; give --group, \
                     --scheduler or a listener option (lb-ctl listener set --help lists them)"
                );
                return exit::REFUSED;
            }
            change(
                socket,
                Change::ListenerSet {
                    name,
                    group,
                    backend_port,
                    scheduler: options.scheduler,
                    settings,
                },
            )
        }
        ListenerCommand::Remove { name } => change(socket, Change::ListenerRemove { name }),
        ListenerCommand::List(read) => {
            let cfg = match effective(socket) {
                Ok(c) => c,
                Err(code) => return code,
            };
            if read.json {
                print_json(&cfg.listeners);
            } else {
                let rows: Vec<Vec<String>> = cfg
                    .listeners
                    .iter()
                    .map(|l| {
                        vec![
                            l.name.clone(),
                            l.protocol.name().into(),
                            l.endpoint().to_string(),
                            l.named_group().unwrap_or(config::DEFAULT_GROUP_NAME).into(),
                            l.backend_port.map_or("-".into(), |p| p.to_string()),
                            l.scheduler.name().into(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(
                        &[
                            "LISTENER",
                            "PROTO",
                            "VIP",
                            "GROUP",
                            "BACKEND PORT",
                            "SCHEDULER"
                        ],
                        &rows
                    )
                );
            }
            exit::OK
        }
    }
}

fn acl_command(socket: &Path, cmd: AclCommand) -> i32 {
    match cmd {
        AclCommand::Add { name, cidr, create } => change(
            socket,
            Change::AclAdd {
                name,
                cidr,
                existing: !create,
            },
        ),
        AclCommand::Remove { name, cidr } => change(socket, Change::AclRemove { name, cidr }),
        AclCommand::List(read) => {
            let cfg = match effective(socket) {
                Ok(c) => c,
                Err(code) => return code,
            };
            if read.json {
                print_json(&cfg.acls);
            } else {
                let rows: Vec<Vec<String>> = cfg
                    .acls
                    .iter()
                    .map(|a| {
                        vec![
                            a.name.clone(),
                            a.entries
                                .iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join(" "),
                        ]
                    })
                    .collect();
                print!("{}", table(&["ACL", "ENTRIES"], &rows));
            }
            exit::OK
        }
    }
}

/// Runs every command except `daemon` (which main starts itself). `before`: the socket
/// given before the command (or its default), for commands that do not name their own.
pub fn run(before: &Path, command: Command) -> i32 {
    let socket_path = command
        .connect()
        .map_or_else(|| before.to_owned(), |c| c.or(before));
    let socket = socket_path.as_path();
    match command {
        Command::Daemon(_) => unreachable!("main runs the daemon"),
        Command::Decap(cmd) => crate::decap::command::run(cmd),
        Command::Completions { shell } => {
            crate::cli::write_completions(shell, &mut std::io::stdout());
            exit::OK
        }
        Command::Man => match crate::cli::write_man_page(&mut std::io::stdout()) {
            Ok(()) => exit::OK,
            Err(e) => {
                eprintln!("lb-ctl: writing the man page: {e}");
                exit::FAILED
            }
        },
        Command::Validate { file } => match config::load(&file) {
            Ok(c) => {
                for w in c.warnings() {
                    eprintln!("{}: warning: {w}", file.display());
                }
                println!(
                    "{}: valid (instance {}, {} listener(s))",
                    file.display(),
                    c.instance,
                    c.listeners.len()
                );
                if let Some(cpus) = crate::sizing::possible_cpus() {
                    let maps = crate::sizing::data_plane(&crate::dataplane::MapSizes::of(&c), cpus);
                    println!(
                        "{}: the data plane's maps take up to {} of kernel memory on this \
                         host's {cpus} CPUs (docs/config.md, \"Sizing\")",
                        file.display(),
                        crate::sizing::human(crate::sizing::total(&maps))
                    );
                }
                exit::OK
            }
            Err(errors) => {
                eprintln!("{}: {} error(s):\n{errors}", file.display(), errors.len());
                exit::REFUSED
            }
        },
        Command::Status(args) => status(socket, &args),
        Command::Stats { watch, json, .. } => stats(socket, watch, json),
        Command::Flows(args) => flows(socket, &args),
        Command::Server(Nested { command: cmd, .. }) => match cmd {
            ServerCommand::Add { server, weight } => change(
                socket,
                Change::ServerAdd {
                    group: server.group,
                    address: server.server.0,
                    port: server.server.1,
                    weight,
                },
            ),
            ServerCommand::Set { server, weight } => change(
                socket,
                Change::ServerSet {
                    group: server.group,
                    address: server.server.0,
                    port: server.server.1,
                    weight,
                },
            ),
            ServerCommand::Remove { server, now } => change(
                socket,
                Change::ServerRemove {
                    group: server.group,
                    address: server.server.0,
                    port: server.server.1,
                    now,
                },
            ),
            ServerCommand::Drain {
                server,
                wait,
                timeout,
            } => {
                let (address, port) = server.server;
                let request = Request::Drain {
                    group: server.group.clone(),
                    address,
                    port,
                    timeout,
                };
                match call(socket, &request) {
                    Ok(Response::Ok { message, .. }) => println!("{message}"),
                    Ok(Response::Error { message, code }) => {
                        eprintln!("lb-ctl: {message}");
                        return code;
                    }
                    Err(code) => return code,
                }
                if !wait {
                    return exit::OK;
                }
                // Past the drain timeout the data plane cuts what is left; wait a little
                // longer than that for the count to reach zero.
                let limit = u64::from(timeout.unwrap_or(900)) + 5;
                wait_drained(socket, &server.group, address, port, limit)
            }
            ServerCommand::Undrain { server } => simple(
                socket,
                &Request::Undrain {
                    group: server.group,
                    address: server.server.0,
                    port: server.server.1,
                },
                false,
            ),
        },
        Command::Wait(Nested {
            command: WaitCommand::Drained { server, timeout },
            ..
        }) => wait_drained(
            socket,
            &server.group,
            server.server.0,
            server.server.1,
            timeout,
        ),
        Command::Group(Nested { command, .. }) => group_command(socket, command),
        Command::Listener(Nested { command, .. }) => listener_command(socket, command),
        Command::Acl(Nested { command, .. }) => acl_command(socket, command),
        Command::Explain {
            src,
            dst,
            protocol,
            established,
            json,
            ..
        } => {
            let request = Request::Explain {
                src,
                dst,
                protocol,
                tcp_flags: Some(if established {
                    lb_common::select::TCP_ACK
                } else {
                    lb_common::select::TCP_SYN
                }),
            };
            match call(socket, &request) {
                Ok(Response::Ok { message, data }) => {
                    if json {
                        print_json(&data);
                    } else {
                        for (i, line) in message.lines().enumerate() {
                            println!("{}. {line}", i + 1);
                        }
                    }
                    exit::OK
                }
                Ok(Response::Error { message, code }) => {
                    eprintln!("lb-ctl: {message}");
                    code
                }
                Err(code) => code,
            }
        }
        Command::DrainHost { undo, .. } => simple(socket, &Request::DrainHost { undo }, false),
        Command::Check { timeout, .. } => check(socket, Duration::from_secs(timeout)),
        Command::Reload(_) => simple(socket, &Request::Reload, false),
        Command::Export(_) => simple(socket, &Request::Export, true),
        Command::Teardown {
            instance,
            config: config_path,
            bpffs,
        } => {
            let instance = match (instance, config_path) {
                (Some(i), _) => i,
                (None, Some(path)) => match config::load(&path) {
                    Ok(c) => c.instance,
                    Err(e) => {
                        eprintln!("lb-ctl: {}: {e}", path.display());
                        return exit::REFUSED;
                    }
                },
                (None, None) => {
                    eprintln!("lb-ctl: teardown needs --instance NAME or --config FILE");
                    return exit::REFUSED;
                }
            };
            match pins::teardown(&pins::Layout::new(&bpffs, &instance)) {
                Ok(true) => {
                    println!("instance {instance}: XDP detached, maps and program unpinned");
                    exit::OK
                }
                Ok(false) => {
                    println!(
                        "instance {instance}: nothing pinned under {}",
                        bpffs.display()
                    );
                    exit::OK
                }
                Err(e) => {
                    eprintln!("lb-ctl: {e}");
                    exit::FAILED
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::InterfaceStatus;

    fn status(modes: &[(&str, &str)]) -> Status {
        Status {
            instance: "edge".into(),
            interfaces: modes
                .iter()
                .enumerate()
                .map(|(i, (name, mode))| InterfaceStatus {
                    name: (*name).into(),
                    ifindex: i as u32 + 2,
                    mode: (*mode).into(),
                })
                .collect(),
            ..Status::default()
        }
    }

    #[test]
    fn check_passes_only_with_the_program_on_every_interface() {
        let ok = check_status(&status(&[("eth0", "native"), ("eth1", "generic")])).unwrap();
        assert_eq!(
            ok,
            "instance edge, 0 listener(s), XDP on eth0 (native), eth1 (generic)"
        );
        let why = check_status(&status(&[("eth0", "native"), ("eth1", "missing")])).unwrap_err();
        assert!(
            why.contains("interface(s) eth1 of the config do not exist"),
            "{why}"
        );
        let why = check_status(&status(&[])).unwrap_err();
        assert!(why.contains("attached to no interface"), "{why}");
    }

    #[test]
    fn status_and_stats_bracket_ipv6_endpoints() {
        let backend = |address: &str| {
            serde_json::json!({
                "address": address, "port": 8080, "role": "member", "weight": 100,
                "effective_weight": 100, "state": "up", "health": "up", "active_flows": 0,
                "origin": "config", "backend_id": 1, "stats": api::Counters::default(),
            })
        };
        let status: Status = serde_json::from_value(serde_json::json!({
            "instance": "edge", "config": "lb.yaml", "interfaces": [], "overlay_changes": 0,
            "conflicts": [],
            "listeners": [{
                "name": "web6", "protocol": "tcp", "address": "2001:db8::100", "port": 80,
                "group": "app", "scheduler": "wrr", "stats": api::Counters::default(),
                "backends": [backend("2001:db8::11"), backend("198.18.1.11")],
            }],
        }))
        .unwrap();
        let text = render_status(&status);
        assert!(
            text.contains("listener web6  tcp [2001:db8::100]:80  group app"),
            "{text}"
        );
        assert!(text.contains("  [2001:db8::11]:8080"), "{text}");
        assert!(text.contains("  198.18.1.11:8080"), "{text}");
        let stats = crate::controller::stats_of(&status, 0.0, &Default::default());
        let names: Vec<&str> = stats.listeners[0]
            .backends
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(names, ["[2001:db8::11]:8080", "198.18.1.11:8080"]);
    }
}
