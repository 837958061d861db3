//! The run: frames through the program, each checked against the model, and the
//! checks at the end (counters, the whole flow table).

use std::{collections::HashMap, fmt::Write as _, net::IpAddr, time::Instant};

use lb_common::{FLOW_F_BACKEND_ACKED, Flow, Reason, Verdict};
use lb_ctl::{
    dataplane::{DataPlane, LoadOptions},
    family::{EndpointMapKey, FlowMapKey, Served, ipv4_of},
};

use super::{
    generator::Generator,
    lab::Lab,
    model::{MODELLED_FLAGS, Model, Out, Outcome, Prediction, ShadowFlow, Tuple, tuple_of},
    report::{Report, describe, hex},
    setup::{Setup, sizes},
};
use crate::xdp::{self, XDP_ABORTED, XDP_PASS, XDP_REDIRECT, XDP_TX, action_name};

/// What to run.
#[derive(Clone, Debug)]
pub struct FuzzOptions {
    pub seed: u64,
    pub packets: u64,
    /// Print a progress line every this many packets (0: never).
    pub progress_every: u64,
    /// Examples kept per kind of disagreement.
    pub examples: usize,
}

impl Default for FuzzOptions {
    fn default() -> Self {
        Self {
            seed: 0x5eed_f022,
            packets: 20_000,
            progress_every: 0,
            examples: 3,
        }
    }
}

fn clock_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Verdict counters (events left out), by `Reason` index.
fn verdict_counters(dp: &DataPlane) -> anyhow::Result<Vec<u64>> {
    Reason::ALL
        .iter()
        .map(|&r| {
            if r.verdict().is_some() {
                Ok(dp.counter(r)?)
            } else {
                Ok(0)
            }
        })
        .collect()
}

/// Runs one frame through the program and tells which verdict counter moved (`None`
/// unless exactly one moved by one); `Err` when the kernel refuses the frame.
pub fn run_counted(
    dp: &mut DataPlane,
    ingress: u32,
    frame: &[u8],
) -> Result<(u32, Option<Reason>, Vec<u8>), String> {
    let before = verdict_counters(dp).map_err(|e| format!("{e:#}"))?;
    let (action, out) = test_run(dp, ingress, frame)?;
    let after = verdict_counters(dp).map_err(|e| format!("{e:#}"))?;
    let moved: Vec<(Reason, u64)> = Reason::ALL
        .iter()
        .zip(before.iter().zip(&after))
        .filter(|(_, (b, a))| a != b)
        .map(|(r, (b, a))| (*r, a - b))
        .collect();
    let reason = match moved.as_slice() {
        [(r, 1)] => Some(*r),
        _ => None,
    };
    Ok((action, reason, out))
}

/// Runs one frame through the program; `Err` with the errno when the kernel refuses it.
pub fn test_run(dp: &mut DataPlane, ingress: u32, frame: &[u8]) -> Result<(u32, Vec<u8>), String> {
    xdp::test_run(dp, lb_common::names::PROGRAM, ingress, frame).map_err(|e| format!("{e:#}"))
}

/// Loads the program (nothing pinned) with a flow table of `flow_table_size` entries,
/// installs `setup` and makes `cl0` and `be0` redirect targets. Call from inside the lab
/// namespace.
pub fn load(lab: &Lab, setup: &Setup, flow_table_size: u32) -> anyhow::Result<DataPlane> {
    let mut dp = DataPlane::load(&LoadOptions {
        sizes: sizes(flow_table_size),
        map_pin_dir: None,
        verifier_log_dir: None,
    })?;
    dp.add_tx_port(lab.client_if)?;
    dp.add_tx_port(lab.backend_if)?;
    setup.install(&mut dp)?;
    Ok(dp)
}

/// Runs `options.packets` frames through the program in `lab` and checks each against the
/// model. Errors only when the lab or the program cannot be used at all.
pub fn run(lab: &Lab, options: &FuzzOptions) -> anyhow::Result<Report> {
    lab.ns().enter(|| {
        let setup = Setup::standard();
        // Far larger than the flows a run makes (at most a few ten thousand), so the LRU
        // never evicts and the model's shadow stays exact; the IPv6 tables hold a quarter
        // (65,536), and each CPU's LRU list a share of that.
        let mut dp = load(lab, &setup, 262_144)?;
        let mut fuzzer = Fuzzer {
            lab,
            setup,
            model: Model::default(),
            generator: Generator::new(options.seed, lab),
            report: Report {
                seed: options.seed,
                ..Report::default()
            },
            options: options.clone(),
        };
        fuzzer.run(&mut dp)?;
        Ok(fuzzer.report)
    })
}

struct Fuzzer<'a> {
    pub(super) lab: &'a Lab,
    pub(super) setup: Setup,
    pub(super) model: Model,
    generator: Generator,
    report: Report,
    pub(super) options: FuzzOptions,
}

impl Fuzzer<'_> {
    pub(super) fn run(&mut self, dp: &mut DataPlane) -> anyhow::Result<()> {
        let started = Instant::now();
        let initial = verdict_counters(dp)?;
        let mut before = initial.clone();
        for n in 0..self.options.packets {
            let (frame, ingress, kind) = self.generator.next(&self.setup, &self.model, self.lab);
            *self.report.kinds.entry(kind).or_default() += 1;
            self.report.packets += 1;
            let t0 = clock_ns();
            let result = test_run(dp, ingress, &frame);
            let t1 = clock_ns();
            let prediction = self
                .model
                .predict(&self.setup, self.lab, &frame, ingress, (t0, t1));
            let after = verdict_counters(dp)?;
            self.check(
                dp, n, kind, ingress, &frame, result, prediction, &before, &after,
            )?;
            before = after;
            if self.options.progress_every > 0 && (n + 1) % self.options.progress_every == 0 {
                eprintln!(
                    "lb-fuzz: {} frames, {} disagreement kind(s), {:.0} s",
                    n + 1,
                    self.report.findings.len(),
                    started.elapsed().as_secs_f64()
                );
            }
        }
        self.finish(dp, &initial, &before)?;
        self.report.elapsed = started.elapsed();
        Ok(())
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "one call site; everything known about one frame"
    )]
    pub(super) fn check(
        &mut self,
        dp: &DataPlane,
        n: u64,
        kind: &str,
        ingress: u32,
        frame: &[u8],
        result: Result<(u32, Vec<u8>), String>,
        prediction: Prediction,
        before: &[u64],
        after: &[u64],
    ) -> anyhow::Result<()> {
        let max = self.options.examples;
        let seed = self.options.seed;
        let where_ = |extra: &str| {
            format!(
                "frame #{n} of seed {seed:#x} ({kind}, {} bytes, ingress {}): {extra}\n\
                 frame  {}\ninput  {}",
                frame.len(),
                self.lab.if_name(ingress),
                describe(frame),
                hex(frame)
            )
        };
        let outcomes = match (prediction, result) {
            (Prediction::Refused, Err(_)) => {
                self.report.refused += 1;
                return Ok(());
            }
            (Prediction::Refused, Ok((action, _))) => {
                let e = where_(&format!(
                    "the kernel ran a frame it should refuse; {}",
                    action_name(action)
                ));
                self.report.finding(
                    "BPF_PROG_TEST_RUN ran a frame outside 14..=3520 bytes",
                    || e,
                    max,
                );
                return Ok(());
            }
            (Prediction::Outcomes(_), Err(err)) => {
                let e = where_(&format!("BPF_PROG_TEST_RUN failed: {err}"));
                self.report.finding("BPF_PROG_TEST_RUN failed", || e, max);
                return Ok(());
            }
            (Prediction::Outcomes(o), Ok(r)) => (o, r),
        };
        let (outcomes, (action, out)) = outcomes;
        if outcomes.len() > 1 {
            self.report.ambiguous += 1;
        }
        let moved: Vec<(Reason, u64)> = Reason::ALL
            .iter()
            .zip(before.iter().zip(after))
            .filter(|(_, (b, a))| a != b)
            .map(|(r, (b, a))| (*r, a.wrapping_sub(*b)))
            .collect();
        let reason = match moved.as_slice() {
            [(r, 1)] => Some(*r),
            _ => None,
        };
        if let Some(r) = reason {
            *self.report.reasons.entry(r.name()).or_default() += 1;
            if frame.len() >= 14 && frame[12..14] == [0x86, 0xdd] {
                *self.report.reasons6.entry(r.name()).or_default() += 1;
            }
        }
        let expected = || {
            outcomes
                .iter()
                .map(|o| {
                    let mut s = format!("{} {}", action_name(o.action), o.reason.name());
                    if !o.why.is_empty() {
                        let _ = write!(s, ": {}", o.why);
                    }
                    s
                })
                .collect::<Vec<_>>()
                .join(" or ")
        };
        let observed = format!(
            "{} with counters {}",
            action_name(action),
            moved
                .iter()
                .map(|(r, d)| format!("{}+{d}", r.name()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if action == XDP_ABORTED || action > XDP_REDIRECT {
            let e = where_(&format!("observed {observed}, expected {}", expected()));
            self.report
                .finding("XDP_ABORTED or an unknown action returned", || e, max);
            self.resync(dp, frame);
            return Ok(());
        }
        let Some(reason) = reason else {
            let e = where_(&format!(
                "observed {observed}, expected {}: not exactly one verdict counter moved by one",
                expected()
            ));
            self.report
                .finding("a verdict not counted under exactly one reason", || e, max);
            self.resync(dp, frame);
            return Ok(());
        };
        if reason.verdict() != Some(class(action)) {
            let e = where_(&format!(
                "observed {observed}: the reason does not go with the action"
            ));
            self.report
                .finding("action and reason counter disagree", || e, max);
        }
        let matching: Vec<&Outcome> = outcomes
            .iter()
            .filter(|o| o.action == action && o.reason == reason)
            .collect();
        if matching.is_empty() {
            let transmitted = matches!(action, XDP_TX | XDP_REDIRECT);
            let allowed = outcomes
                .iter()
                .any(|o| matches!(o.action, XDP_TX | XDP_REDIRECT));
            let title = if transmitted && !allowed {
                format!(
                    "FORWARDED ({}) a frame the policy does not forward; policy: {}",
                    reason.name(),
                    expected()
                )
            } else {
                format!("{} where the policy says {}", reason.name(), expected())
            };
            let e = where_(&format!("observed {observed}\noutput {}", hex(&out)));
            self.report.finding(title, || e, max);
            self.resync(dp, frame);
            return Ok(());
        }
        // The output: the matching outcomes whose bytes fit.
        let mut errors = Vec::new();
        let mut fitting: Vec<&Outcome> = Vec::new();
        for o in &matching {
            let verdict = match &o.out {
                Out::Unchanged if out.as_slice() != frame => Err(format!(
                    "output differs from the input:{}",
                    crate::packet::diff(&out, frame)
                        .lines()
                        .map(|l| format!(" {}", l.trim()))
                        .collect::<String>()
                )),
                Out::Expect(e) => e.verify(&out),
                _ => Ok(()),
            };
            match verdict {
                Ok(()) => fitting.push(o),
                Err(e) => errors.push(e),
            }
        }
        let Some(first) = fitting.first() else {
            let first = errors.first().cloned().unwrap_or_default();
            let title = if first.contains("does not verify") || first.contains("checksum") {
                format!("{}: checksum wrong in the output", reason.name())
            } else {
                format!("{}: output bytes differ from the policy", reason.name())
            };
            let e = where_(&format!("{observed}: {first}\noutput {}", hex(&out)));
            self.report.finding(title, || e, max);
            self.resync(dp, frame);
            return Ok(());
        };
        if fitting.iter().all(|o| o.delta == first.delta) {
            let delta = first.delta.clone();
            self.model.apply(&delta);
        } else {
            self.resync(dp, frame);
        }
        Ok(())
    }

    /// Reads the flows the frame may have touched back from the program, after an
    /// outcome the model could not pin down: a client's flow, or every flow a backend's
    /// packet may have answered.
    fn resync(&mut self, dp: &DataPlane, frame: &[u8]) {
        let Some(t) = tuple_of(frame) else { return };
        let keys: Vec<(Tuple, usize)> = match self.setup.listener(t.dst, t.dport, t.proto) {
            Some(li) => vec![(t, li)],
            None => self
                .setup
                .endpoint(t.src, t.sport, t.proto)
                .iter()
                .map(|&li| (t.client_side(&self.setup.listeners[li]), li))
                .collect(),
        };
        for (key, li) in keys {
            self.reread(dp, key, li);
        }
    }

    fn reread(&mut self, dp: &DataPlane, t: Tuple, li: usize) {
        match flow_of(dp, &t) {
            Ok(Some(flow)) => self.model.insert_flow(
                t,
                ShadowFlow {
                    listener: li,
                    backend: flow.backend,
                    flags: flow.flags & MODELLED_FLAGS,
                    client_acked: flow.client_acked,
                    backend_acked: backend_acked(&flow),
                    seen: (flow.last_seen_ns, flow.last_seen_ns),
                },
            ),
            Ok(None) => {
                if self.model.flows.remove(&t).is_some() {
                    self.model.flow_keys.retain(|k| *k != t);
                }
            }
            Err(_) => {}
        }
    }

    /// The counters' sum and the whole flow table against the model.
    fn finish(&mut self, dp: &DataPlane, initial: &[u64], last: &[u64]) -> anyhow::Result<()> {
        let max = self.options.examples;
        let counted: u64 = last.iter().zip(initial).map(|(a, b)| a - b).sum();
        let now = verdict_counters(dp)?;
        if now != last {
            self.report.finding(
                "verdict counters moved after the last frame",
                || format!("{last:?} → {now:?}"),
                max,
            );
        }
        if counted != self.report.run() {
            let e = format!(
                "sum of the verdict counters {counted}, frames run {} ({} generated − {} \
                 refused)",
                self.report.run(),
                self.report.packets,
                self.report.refused
            );
            self.report.finding(
                "the verdict counters do not add up to the frames run",
                || e,
                max,
            );
        }
        // Both families' tables, established and half-open.
        let kernel: HashMap<Tuple, Flow> = dp
            .flows()
            .expect("reading the flow table")
            .into_iter()
            .map(|(k, f)| (Tuple::from_key(&k), f))
            .collect();
        self.report.flows = kernel.len();
        self.report.flows6 = kernel.keys().filter(|t| t.is_v6()).count();
        let mut keys: Vec<&Tuple> = kernel.keys().chain(self.model.flows.keys()).collect();
        keys.sort();
        keys.dedup();
        for t in keys {
            let k = kernel.get(t);
            let m = self.model.flows.get(t);
            let same = match (k, m) {
                (Some(k), Some(m)) => {
                    k.backend == m.backend
                        && k.flags & MODELLED_FLAGS == m.flags
                        && k.client_acked == m.client_acked
                        && backend_acked(k) == m.backend_acked
                }
                _ => false,
            };
            if !same {
                let e = format!(
                    "{t}: program (backend, flags, client_acked, backend_acked) {:?}, model {:?}",
                    k.map(|k| (k.backend, k.flags, k.client_acked, backend_acked(k))),
                    m.map(|m| (m.backend, m.flags, m.client_acked, m.backend_acked))
                );
                self.report
                    .finding("the flow table differs from the model", || e, max);
            }
        }
        // The controller's mirror of the reply lookup (what `explain` and adoption rely
        // on) finds, for each flow's backend-side tuple, a flow the model allows.
        let mut replies: Vec<Tuple> = self
            .model
            .flow_keys
            .iter()
            .filter_map(|k| self.model.reply_tuple(&self.setup, k))
            .collect();
        replies.sort();
        replies.dedup();
        self.report.reply_tuples = replies.len();
        self.report.contested_replies = self.model.contested.get();
        for r in replies {
            let allowed = self.model.reply_flows(&self.setup, &r);
            let found = reply_flow(dp, &r)?;
            let same = match found {
                Some((key, _, l)) => allowed.iter().any(|a| {
                    a.key == key && self.setup.listener_by_id(l.listener) == Some(a.listener)
                }),
                None => allowed.is_empty(),
            };
            if !same {
                let e = format!(
                    "{r}: the maps' reply flow {:?}, model {:?}",
                    found.map(|(k, _, l)| (k, l.listener)),
                    allowed
                        .iter()
                        .map(|a| (a.key, self.setup.listeners[a.listener].id))
                        .collect::<Vec<_>>()
                );
                self.report.finding(
                    "the controller's reply lookup differs from the model",
                    || e,
                    max,
                );
            }
        }
        Ok(())
    }
}

/// What the backend last acknowledged, as the flow entry says it.
fn backend_acked(f: &Flow) -> Option<u32> {
    (f.flags & FLOW_F_BACKEND_ACKED != 0).then_some(f.backend_acked)
}

fn class(action: u32) -> Verdict {
    match action {
        XDP_PASS => Verdict::Pass,
        XDP_TX | XDP_REDIRECT => Verdict::Transmit,
        _ => Verdict::Drop,
    }
}

/// A flow's entry in the tables of its family (established or half-open).
fn flow_of(dp: &DataPlane, t: &Tuple) -> anyhow::Result<Option<Flow>> {
    match t.key() {
        FlowMapKey::V4(k) => Ok(dp.flow(&k)?),
        FlowMapKey::V6(k) => Ok(dp.flow6(&k)?),
    }
}

/// What the maps make of a backend's packet with (backend-side) tuple `reply`, of either
/// family, read the way the XDP program's `flow::reply_flow` reads them: for each
/// listener its endpoint serves, the client side's flow entry if it names this backend;
/// of several, the one with the latest client packet. The fuzzer checks the model against
/// it, so the maps the program reads hold the model's answer.
fn reply_flow(dp: &DataPlane, reply: &Tuple) -> anyhow::Result<Option<(Tuple, Flow, Served)>> {
    let endpoint = EndpointMapKey::new(reply.src, reply.sport, reply.proto);
    let Some(endpoint) = dp.endpoint(&endpoint)? else {
        return Ok(None);
    };
    let mut found: Option<(Tuple, Flow, Served)> = None;
    for l in endpoint.served() {
        if l.vip.is_ipv6() != reply.is_v6() {
            continue;
        }
        let key = Tuple {
            src: reply.dst,
            dst: l.vip,
            sport: reply.dport,
            dport: l.port,
            proto: reply.proto,
        };
        let Some(flow) = flow_of(dp, &key)? else {
            continue;
        };
        let b = dp.backend(flow.backend)?;
        let addr = match reply.src {
            IpAddr::V4(_) => IpAddr::V4(ipv4_of(b.addr)),
            IpAddr::V6(_) => IpAddr::V6(dp.backend_address6(flow.backend)?),
        };
        if addr != reply.src || u16::from_be(b.port) != reply.sport {
            continue;
        }
        if found.is_none_or(|(_, f, _)| flow.last_seen_ns > f.last_seen_ns) {
            found = Some((key, flow, l));
        }
    }
    Ok(found)
}
