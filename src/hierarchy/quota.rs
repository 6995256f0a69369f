//! Display of quota values in thousandths.

use crate::types::QuotaResource;
use crate::types::quantity::format_millis;

/// Formats a quota value for messages and status (`cpu` 1500 → `1500m`, `memory` → `2Gi`).
pub fn format_quota(_r: QuotaResource, millis: i128) -> String {
    format_millis(millis)
}
