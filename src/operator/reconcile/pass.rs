//! Reconcile every tenant of an inventory once (used by tests, the benchmark and as the
//! reference for the controller's behaviour): one tree per pass, tenants in tree order, one
//! failing tenant never stops the others.

use crate::hierarchy::{EngineSettings, Inventory, TenantTree};

use crate::operator::cluster::Cluster;
use crate::operator::error::Error;
use crate::operator::reconcile::{Outcome, Reconciler};

/// Result of one pass.
#[derive(Debug, Default)]
pub struct Pass {
    pub outcomes: Vec<(String, Result<Outcome, Error>)>,
}

impl Pass {
    pub fn failures(&self) -> Vec<(&str, &Error)> {
        self.outcomes
            .iter()
            .filter_map(|(n, r)| r.as_ref().err().map(|e| (n.as_str(), e)))
            .collect()
    }

    pub fn outcome(&self, name: &str) -> Option<&Outcome> {
        self.outcomes
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, r)| r.as_ref().ok())
    }
}

pub async fn reconcile_pass<C: Cluster>(rec: &Reconciler<C>, inventory: Inventory) -> Pass {
    let tree = TenantTree::build(inventory, EngineSettings::from(&rec.config));
    let mut order = tree.preorder();
    // Detached tenants (unknown parent, cycles) are reconciled too: they get status Failed.
    let attached: std::collections::HashSet<usize> = order.iter().copied().collect();
    order.extend((0..tree.len()).filter(|i| !attached.contains(i)));
    let mut pass = Pass::default();
    for id in order {
        let name = tree.name(id).to_string();
        let span = tracing::info_span!("reconcile", tenant = %name);
        let _enter = span.enter();
        let r = rec.reconcile(&tree, &name).await;
        if let Err(e) = &r {
            rec.report_error(tree.tenant(id), e).await;
        }
        pass.outcomes.push((name, r));
    }
    pass
}
