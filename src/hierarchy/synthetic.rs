//! Generated trees of any size, for benchmarks and load tests, and the smallest tenants and
//! trees tests build on (not used by the product).

use crate::types::tenant::{TenantStatus, UsageStatus};
use crate::types::{Limits, Tenant, TenantSpec, UsageCounts};

use super::{EngineSettings, Inventory, TenantTree};

/// A tenant with only a name and a parent (None = a root), for tests and examples.
pub fn tenant(name: &str, parent: Option<&str>) -> Tenant {
    Tenant::new(
        name,
        TenantSpec {
            parent: parent.map(String::from),
            ..Default::default()
        },
    )
}

/// The tree of `tenants` alone (no profiles or channels), with the default settings.
pub fn built(tenants: Vec<Tenant>) -> TenantTree {
    TenantTree::build(
        Inventory {
            tenants,
            ..Default::default()
        },
        EngineSettings::default(),
    )
}

/// `n` tenants filling `levels` levels breadth-first (root = level 1), every tenant with a
/// `devices` limit of 10× its share and leaves with a few observed devices, so limits and
/// usage are exercised everywhere. Names: `t<index>`.
pub fn tree(n: usize, levels: u32) -> Inventory {
    let levels = levels.max(1);
    // Branching factor that reaches `levels` levels with n tenants.
    let mut k = 1usize;
    while (0..levels).map(|l| k.pow(l)).sum::<usize>() < n {
        k += 1;
    }
    let mut tenants = Vec::with_capacity(n);
    let mut depth = Vec::with_capacity(n);
    tenants.push(Tenant::new("t0", TenantSpec::default()));
    depth.push(1u32);
    let mut parent = 0usize;
    let mut children_of_parent = 0usize;
    while tenants.len() < n {
        if children_of_parent == k || depth[parent] == levels {
            parent += 1;
            children_of_parent = 0;
            continue;
        }
        let i = tenants.len();
        let mut t = Tenant::new(
            &format!("t{i}"),
            TenantSpec {
                parent: Some(format!("t{parent}")),
                ..Default::default()
            },
        );
        t.spec.limits = Limits {
            devices: Some(1_000_000 / (depth[parent] as i64 + 1)),
            ..Default::default()
        };
        t.status = Some(TenantStatus {
            usage: Some(UsageStatus {
                own: UsageCounts {
                    devices: (i % 5) as i64,
                    ..Default::default()
                },
                ..Default::default()
            }),
            ..Default::default()
        });
        tenants.push(t);
        depth.push(depth[parent] + 1);
        children_of_parent += 1;
    }
    Inventory {
        tenants,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hierarchy::{EngineSettings, TenantTree};

    #[test]
    fn generated_trees_are_valid_and_reach_the_requested_depth() {
        for n in [1, 10, 1000] {
            let t = TenantTree::build(tree(n, 7), EngineSettings::default());
            assert_eq!(t.len(), n);
            assert!(t.problems().is_empty(), "{:?}", &t.problems()[..1]);
            let max = (0..t.len()).map(|i| t.node(i).depth).max().unwrap_or(0);
            assert!(max <= 7);
            if n == 1000 {
                assert_eq!(max, 7);
            }
        }
    }
}
