//! The rules between two successive states, for API changes and reloads alike.

use crate::config::Config;

/// Checks the rules that hold between two successive states (the seed's modifiability
/// table), for API changes and reloads alike. Returns every violation.
pub fn check_transition(old: &Config, new: &Config) -> Vec<String> {
    let mut violations = Vec::new();
    for l in &new.listeners {
        let Some(before) = old.listener(&l.name) else {
            continue;
        };
        if before.named_group().is_none()
            && l.named_group().is_none()
            && before.backend_port != l.backend_port
        {
            violations.push(format!(
                "listener {}: the default group's backend port is fixed once its listener \
                 exists ({} → {})",
                l.name,
                before.backend_port.unwrap_or_default(),
                l.backend_port.unwrap_or_default()
            ));
        }
    }
    for g in &new.primary_secondary_groups {
        if let Some(before) = old.primary_secondary_group(&g.name)
            && (before.primary != g.primary || before.secondary != g.secondary)
        {
            violations.push(format!(
                "primary/secondary group {}: roles and ports cannot be changed ({} / {} → {} / {})",
                g.name, before.primary, before.secondary, g.primary, g.secondary
            ));
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overlay::tests::base;

    #[test]
    fn reload_transition_rules() {
        let c = base();
        let mut changed = c.clone();
        changed.listeners[0].backend_port = Some(9090);
        changed.primary_secondary_groups[0].primary.port = 6432;
        let v = check_transition(&c, &changed);
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(v[0].contains("fixed once its listener exists (8080 → 9090)"));
        assert!(v[1].contains("roles and ports cannot be changed"));
    }
}
