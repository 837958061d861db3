//! Changes to the effective state (the API, a reload, the health checker) and the one
//! path that writes them to the maps (`apply`).

use std::time::Instant;

use tracing::{info, warn};

use super::{Controller, ControllerError, Done, NS_PER_S, Platform};
use crate::{
    config,
    dataplane::MapSizes,
    health::{self, Checker},
    overlay::{self, Change},
    plan,
};

impl<P: Platform> Controller<P> {
    /// Hands the health checker its targets; from now on its verdicts drive the tables.
    pub fn attach_health(&mut self, checker: Checker) -> anyhow::Result<()> {
        self.health = Some(checker);
        self.refresh_health_targets();
        if let Some(c) = &self.health {
            c.assume_down(&self.initially_down);
        }
        // From here on the checker's view is the truth (unprobed backends it keeps up).
        self.health_changed()?;
        Ok(())
    }

    fn refresh_health_targets(&self) {
        if let Some(checker) = &self.health {
            checker.set_source(self.effective.health_check_source);
            // In DSR a probe is marked with its backend's id: the ids of the last apply.
            let id = |key: &plan::BackendKey| {
                self.desired
                    .listeners
                    .values()
                    .flat_map(|l| &l.backends)
                    .find(|b| b.key == *key)
                    .map(|b| b.id)
            };
            checker.set_targets(health::targets(&self.effective, id));
        }
    }

    /// Takes the checker's current verdicts and slow-start weights into the plan and
    /// applies: only listeners whose backends changed get new tables.
    pub fn health_changed(&mut self) -> anyhow::Result<usize> {
        if let Some(checker) = &self.health {
            self.runtime.unhealthy = checker.unhealthy();
            self.runtime.effective_weight = checker.ramping(Instant::now()).into_iter().collect();
        }
        self.apply()
    }

    /// Whether some backend is in its slow-start ramp (the daemon re-plans every second).
    pub fn is_ramping(&self) -> bool {
        !self.runtime.effective_weight.is_empty()
            || self
                .health
                .as_ref()
                .is_some_and(|c| !c.ramping(Instant::now()).is_empty())
    }

    /// Plans from the effective config and runtime facts and writes the difference.
    ///
    /// A backend that leaves a listener (server removed, listener moved to another group)
    /// while the listener has connection drain on keeps its flows: it becomes departing,
    /// out of the tables, until its drain deadline.
    pub fn apply(&mut self) -> anyhow::Result<usize> {
        let now = self.platform.monotonic_ns();
        // Planned on a copy of the ids: the plan releases the ids of backends that left,
        // and a departing one must keep its id and generation (its flows carry them).
        let mut ids = self.ids.clone();
        let mut desired = plan::plan(&self.effective, &self.runtime, &mut ids)?;
        let mut departures = false;
        for (name, old) in &self.desired.listeners {
            let Some(new) = desired.listeners.get(name) else {
                continue;
            };
            let Some(timeout) = new.drain_timeout.filter(|_| !self.cut_removed) else {
                continue;
            };
            if new.frontend != old.frontend {
                continue;
            }
            for b in old.backends.iter().filter(|b| b.usable && !b.departing) {
                if new.backends.iter().any(|n| n.key == b.key) {
                    continue;
                }
                // A server already being drained keeps its deadline.
                let deadline = self
                    .runtime
                    .draining
                    .remove(&b.key)
                    .unwrap_or(now + u64::from(timeout) * NS_PER_S);
                self.runtime.departing.insert(b.key, deadline);
                departures = true;
            }
        }
        if departures {
            ids = self.ids.clone();
            desired = plan::plan(&self.effective, &self.runtime, &mut ids)?;
            self.persist_drains();
        }
        self.ids = ids;
        let ops = self.reconciler.apply(&desired, now, &mut self.dataplane)?;
        self.desired = desired;
        Ok(ops.len())
    }

    /// A runtime change: checked against the rules, persisted, applied.
    pub fn change(&mut self, change: Change) -> Result<Done, ControllerError> {
        self.cut_removed = matches!(change, Change::ServerRemove { now: true, .. });
        let result = self.change_inner(change);
        self.cut_removed = false;
        result
    }

    fn change_inner(&mut self, change: Change) -> Result<Done, ControllerError> {
        let mut next = self.effective.clone();
        change.apply(&mut next)?;
        next.validate().map_err(ControllerError::Invalid)?;
        let violations = overlay::check_transition(&self.effective, &next);
        if !violations.is_empty() {
            return Err(ControllerError::BreaksRules(violations));
        }
        // Ids and room for the tables must be there before anything is persisted.
        let desired = plan::plan(&next, &self.runtime, &mut self.ids.clone())
            .map_err(ControllerError::NoIds)?;
        self.reconciler
            .check_room(&desired)
            .map_err(ControllerError::NoMaglevRoom)?;
        let mut overlay = self.overlay.clone();
        overlay.push(change.clone());
        overlay::save_state_with_drains(&self.state_path, self.instance(), &overlay, &self.drains)?;
        let previous = std::mem::replace(&mut self.effective, next);
        self.overlay = overlay;
        match self.apply() {
            Ok(ops) => {
                self.refresh_health_targets();
                info!("{} ({ops} map operation(s))", change.describe());
                Ok(Done::new(format!("{}: done", change.describe()), ops))
            }
            Err(source) => {
                // Put the previous state back, in the maps and on disk.
                self.effective = previous;
                self.overlay.pop();
                let _ = overlay::save_state_with_drains(
                    &self.state_path,
                    self.instance(),
                    &self.overlay,
                    &self.drains,
                );
                let _ = self.apply();
                Err(ControllerError::ChangeFailed {
                    change: change.describe(),
                    source,
                })
            }
        }
    }

    /// Re-reads the config file; applies only the difference, with the overlay replayed.
    /// Counts the outcome for `/metrics`.
    pub fn reload(&mut self) -> Result<Done, ControllerError> {
        let outcome = self.reload_config();
        let ok = outcome.is_ok();
        if ok {
            self.reloads.applied += 1;
        } else {
            self.reloads.refused += 1;
        }
        self.reloads.last_successful = ok;
        outcome
    }

    fn reload_config(&mut self) -> Result<Done, ControllerError> {
        let base = config::load(&self.options.config_path).map_err(|errors| {
            ControllerError::BadConfig {
                path: self.options.config_path.clone(),
                errors,
            }
        })?;
        if base.instance != self.base.instance {
            return Err(ControllerError::InstanceRenamed {
                found: base.instance,
                running: self.base.instance.clone(),
            });
        }
        if MapSizes::of(&base) != MapSizes::of(&self.base) {
            return Err(ControllerError::MapSizesChanged);
        }
        if base.forwarding != self.base.forwarding {
            return Err(ControllerError::ForwardingChanged {
                from: self.base.forwarding.name().to_owned(),
                to: base.forwarding.name().to_owned(),
            });
        }
        let (next, kept, conflicts) = overlay::replay(&base, &self.overlay);
        let violations = overlay::check_transition(&self.effective, &next);
        if !violations.is_empty() {
            return Err(ControllerError::ReloadBreaksRules(violations));
        }
        let desired = plan::plan(&next, &self.runtime, &mut self.ids.clone())
            .map_err(ControllerError::ReloadNoIds)?;
        self.reconciler
            .check_room(&desired)
            .map_err(ControllerError::NoMaglevRoom)?;
        // New interfaces, or another xdp_mode (a link in another mode is attached again in
        // the new one): attached before anything is committed, so an interface whose
        // driver refuses native mode refuses the reload.
        let attach_changed = next.interfaces != self.effective.interfaces
            || next.xdp_mode != self.effective.xdp_mode;
        if attach_changed {
            self.reattach_to(&next.interfaces, next.xdp_mode)?;
        }
        if kept != self.overlay {
            overlay::save_state_with_drains(
                &self.state_path,
                self.instance(),
                &kept,
                &self.drains,
            )?;
        }
        self.base = base;
        self.effective = next;
        self.overlay = kept;
        self.conflicts = conflicts.clone();
        for c in &conflicts {
            warn!("runtime change dropped, it no longer fits the config: {c}");
        }
        for w in self.effective.warnings() {
            warn!("config: {w}");
        }
        // Also without new interfaces: the VIPs, and so which of them are local, may
        // have changed.
        self.prepare_host();
        let ops = self.apply()?;
        self.refresh_health_targets();
        info!("config reloaded: {ops} map operation(s)");
        let mut message = format!("reloaded: {ops} map operation(s)");
        for c in &conflicts {
            message.push_str(&format!("\ndropped runtime change: {c}"));
        }
        Ok(Done::new(
            message,
            serde_json::json!({ "operations": ops, "conflicts": conflicts }),
        ))
    }
}
