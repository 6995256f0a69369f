//! Display of quota values in thousandths.

use crate::types::QuotaResource;
use crate::types::quantity::format_millis;

/// Formats a quota value for messages, status and the ResourceQuota: `memory`/`storage`
/// with binary suffixes (`2Gi`), `cpu`/`pods` as plain decimals (`1024`, `1500m`): a cpu
/// or pod count of 1024 is "1024", not "1Ki".
pub fn format_quota(r: QuotaResource, millis: i128) -> String {
    match r {
        QuotaResource::Memory | QuotaResource::Storage => format_millis(millis),
        QuotaResource::Cpu | QuotaResource::Pods => {
            if millis % 1000 == 0 {
                (millis / 1000).to_string()
            } else {
                format!("{millis}m")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_of_cores_and_pods_stay_decimal() {
        assert_eq!(format_quota(QuotaResource::Cpu, 1024 * 1000), "1024");
        assert_eq!(format_quota(QuotaResource::Pods, 2048 * 1000), "2048");
        assert_eq!(format_quota(QuotaResource::Cpu, 1500), "1500m");
        assert_eq!(format_quota(QuotaResource::Cpu, 64_000), "64");
    }

    #[test]
    fn bytes_use_binary_suffixes() {
        assert_eq!(format_quota(QuotaResource::Memory, (2 << 30) * 1000), "2Gi");
        assert_eq!(
            format_quota(QuotaResource::Storage, (1 << 40) * 2000),
            "2Ti"
        );
    }
}
