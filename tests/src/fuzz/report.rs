//! The report: disagreements between the program and the model, by kind, with
//! examples that reproduce them.

use std::{
    collections::BTreeMap,
    fmt::{self, Write as _},
    time::Duration,
};

use lb_common::{PROTO_ICMP, PROTO_TCP, PROTO_UDP};

use super::model::{addr_at, addr6_at, be16};

/// One kind of disagreement between the program and the model.
#[derive(Clone, Debug, Default)]
pub struct Finding {
    pub count: u64,
    pub examples: Vec<String>,
}

/// The outcome of a run.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub seed: u64,
    /// Frames generated.
    pub packets: u64,
    /// Frames the kernel refused (shorter than an Ethernet header).
    pub refused: u64,
    /// Verdicts by reason, as observed.
    pub reasons: BTreeMap<&'static str, u64>,
    /// The verdicts of IPv6 frames (ethertype 0x86dd) among them.
    pub reasons6: BTreeMap<&'static str, u64>,
    /// Frames by generator kind.
    pub kinds: BTreeMap<&'static str, u64>,
    /// Outcomes the model could not decide alone (clock window, unmodelled routes).
    pub ambiguous: u64,
    pub flows: usize,
    /// The IPv6 ones among them.
    pub flows6: usize,
    /// Backend-side tuples of the model's flows whose reply lookup was compared at the end.
    pub reply_tuples: usize,
    /// Backend packets that flows of two listeners could answer (the latest wins).
    pub contested_replies: u64,
    pub findings: BTreeMap<String, Finding>,
    pub elapsed: Duration,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.findings.is_empty()
    }

    /// Frames that ran (generated minus refused).
    pub fn run(&self) -> u64 {
        self.packets - self.refused
    }

    pub(super) fn finding(
        &mut self,
        what: impl Into<String>,
        example: impl FnOnce() -> String,
        max: usize,
    ) {
        let f = self.findings.entry(what.into()).or_default();
        f.count += 1;
        if f.examples.len() < max {
            f.examples.push(example());
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "lb-fuzz: seed {:#x}: {} frames ({} ran, {} refused by the kernel as shorter than \
             an Ethernet header) in {:.1} s ({:.0} frames/s); {} ambiguous; flow table {} \
             entries ({} IPv6), {} reply tuples; {} backend packets two flows could answer",
            self.seed,
            self.packets,
            self.run(),
            self.refused,
            self.elapsed.as_secs_f64(),
            self.packets as f64 / self.elapsed.as_secs_f64().max(1e-9),
            self.ambiguous,
            self.flows,
            self.flows6,
            self.reply_tuples,
            self.contested_replies,
        )?;
        write!(f, "  verdicts:")?;
        for (reason, n) in &self.reasons {
            write!(f, " {reason}={n}")?;
        }
        writeln!(f)?;
        write!(f, "  of IPv6 frames:")?;
        for (reason, n) in &self.reasons6 {
            write!(f, " {reason}={n}")?;
        }
        writeln!(f)?;
        write!(f, "  generated:")?;
        for (kind, n) in &self.kinds {
            write!(f, " {kind}={n}")?;
        }
        writeln!(f)?;
        if self.findings.is_empty() {
            writeln!(f, "  no disagreement with the packet policy")?;
        }
        for (what, finding) in &self.findings {
            writeln!(f, "  DISAGREEMENT ×{}: {what}", finding.count)?;
            for e in &finding.examples {
                for (i, line) in e.lines().enumerate() {
                    writeln!(f, "    {}{line}", if i == 0 { "- " } else { "  " })?;
                }
            }
        }
        Ok(())
    }
}

/// A one-line reading of a frame's headers, for reports.
pub fn describe(f: &[u8]) -> String {
    if f.len() < 14 {
        return format!("{} bytes, no Ethernet header", f.len());
    }
    let ethertype = be16(f, 12);
    if ethertype == 0x86dd {
        return describe6(f);
    }
    if ethertype != 0x0800 {
        return format!("ethertype {ethertype:#06x}");
    }
    if f.len() < 34 {
        return format!("IPv4 header truncated at {} bytes", f.len() - 14);
    }
    let ihl = usize::from(f[14] & 0x0f) * 4;
    let tot = usize::from(be16(f, 16));
    let frag = be16(f, 20);
    let mut s = format!(
        "IPv4 {} → {} version {} IHL {ihl} total length {tot} (frame has {}) ttl {} proto {}{}",
        addr_at(f, 26),
        addr_at(f, 30),
        f[14] >> 4,
        f.len() - 14,
        f[22],
        f[23],
        if frag & 0x3fff != 0 {
            format!(" fragment MF={} offset={}", frag >> 13 & 1, frag & 0x1fff)
        } else {
            String::new()
        }
    );
    let off = 14 + ihl;
    if ihl < 20 || f.len() < off + 4 {
        return s;
    }
    match f[23] {
        PROTO_TCP | PROTO_UDP => {
            let _ = write!(s, ", ports {} → {}", be16(f, off), be16(f, off + 2));
            if f[23] == PROTO_TCP && f.len() > off + 13 {
                let _ = write!(
                    s,
                    " flags {:#04x} data offset {}",
                    f[off + 13],
                    usize::from(f[off + 12] >> 4) * 4
                );
            } else if f[23] == PROTO_UDP && f.len() >= off + 8 {
                let _ = write!(s, " length {}", be16(f, off + 4));
            }
        }
        PROTO_ICMP => {
            let _ = write!(s, ", ICMP type {} code {}", f[off], f[off + 1]);
            let q = off + 8;
            if f.len() >= q + 24 {
                let _ = write!(
                    s,
                    " quoting [IPv4 {}:{} → {}:{} vihl {:#04x} proto {}] ({} quoted bytes inside \
                     the IP packet)",
                    addr_at(f, q + 12),
                    be16(f, q + 20),
                    addr_at(f, q + 16),
                    be16(f, q + 22),
                    f[q],
                    f[q + 9],
                    (14 + tot).saturating_sub(q)
                );
            }
        }
        _ => {}
    }
    s
}

/// `describe` for an IPv6 frame: addresses, lengths, hop limit, the extension headers
/// (as far as the frame holds them) and the upper layer.
fn describe6(f: &[u8]) -> String {
    if f.len() < 54 {
        return format!("IPv6 header truncated at {} bytes", f.len() - 14);
    }
    let mut s = format!(
        "IPv6 {} → {} version {} payload length {} (frame has {}) hop limit {}",
        addr6_at(f, 22),
        addr6_at(f, 38),
        f[14] >> 4,
        be16(f, 18),
        f.len() - 54,
        f[21]
    );
    let (mut next, mut off) = (f[20], 54);
    let mut chain = Vec::new();
    while matches!(next, 0 | 43 | 44 | 60) && chain.len() < 12 {
        if off + 8 > f.len() {
            chain.push(format!("{next} (truncated)"));
            break;
        }
        let (len, what) = match next {
            44 => {
                let w = be16(f, off + 2);
                (8, format!("44 (offset {} M={})", w >> 3, w & 1))
            }
            43 => (
                (usize::from(f[off + 1]) + 1) * 8,
                format!("43 (type {} segments left {})", f[off + 2], f[off + 3]),
            ),
            _ => ((usize::from(f[off + 1]) + 1) * 8, format!("{next}")),
        };
        chain.push(format!("{what} {len} bytes"));
        next = f[off];
        off += len;
    }
    if !chain.is_empty() {
        let _ = write!(s, ", extension headers [{}]", chain.join(", "));
    }
    let _ = write!(s, ", next header {next}");
    if f.len() < off + 4 {
        return s;
    }
    match next {
        PROTO_TCP | PROTO_UDP => {
            let _ = write!(s, ", ports {} → {}", be16(f, off), be16(f, off + 2));
            if next == PROTO_TCP && f.len() > off + 13 {
                let _ = write!(
                    s,
                    " flags {:#04x} data offset {}",
                    f[off + 13],
                    usize::from(f[off + 12] >> 4) * 4
                );
            } else if next == PROTO_UDP && f.len() >= off + 8 {
                let _ = write!(
                    s,
                    " length {} checksum {:#06x}",
                    be16(f, off + 4),
                    be16(f, off + 6)
                );
            }
        }
        58 => {
            let _ = write!(s, ", ICMPv6 type {} code {}", f[off], f[off + 1]);
        }
        _ => {}
    }
    s
}

pub(super) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
