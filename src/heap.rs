//! The operator's long-lived memory: giving what a burst freed back to the operating system,
//! and small lists kept exact-size.
//!
//! glibc's allocator keeps what a burst of work freed: each runtime thread allocates from its
//! own arena, and an arena shrinks only from its top, so after the operator's first pass over
//! thousands of tenants (watch lists, rendered objects, API responses) its RSS stays at the
//! burst's high-water mark although a fraction of it is in use — measured on envtest
//! (`benches/operator_envtest.rs`): 12.5 MB in use of 46.6 MB held after a restart over 300
//! tenants. [`spawn_trimmer`] asks the allocator now and then to return its free pages
//! (`malloc_trim`). Only on glibc: the release image is a static musl binary, whose allocator
//! returns freed memory by itself, and there it is a no-op.
//!
//! Also [`upsert_exact`], for the small lists the operator keeps for its whole life.

use std::time::Duration;

/// Replaces the entry of `list` that is `same` as `item` with it, or appends `item` growing the
/// list by exactly one. For the small lists kept for the operator's life, one per tenant or
/// namespace (a tenant's owned objects, the Secrets checked in a namespace), where `push`'s
/// doubling would hold up to twice the room they need.
pub fn upsert_exact<T>(list: &mut Vec<T>, item: T, same: impl Fn(&T, &T) -> bool) {
    match list.iter_mut().find(|e| same(e, &item)) {
        Some(e) => *e = item,
        None => {
            list.reserve_exact(1);
            list.push(item);
        }
    }
}

/// How often the operator trims (a walk over the arenas' free lists: milliseconds).
pub const TRIM_EVERY: Duration = Duration::from_secs(30);

/// Returns the allocator's free pages to the operating system; true when some were (always
/// false where there is nothing to do: allocators other than glibc's).
pub fn trim() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim(3) takes no pointers and only releases memory the allocator
        // holds free; it locks each arena while it walks it.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Calls [`trim`] every `every` on the current tokio runtime (None where it would be a
/// no-op). Abort the handle to stop.
pub fn spawn_trimmer(every: Duration) -> Option<tokio::task::JoinHandle<()>> {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            trim();
        }
    }))
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    /// `RssAnon` of this process, KiB.
    fn anon_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("RssAnon:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// What a burst freed stays resident until trimmed: 64 MiB of small blocks allocated in
    /// another thread's arena, all freed but the last (which pins the arena's top, as live
    /// objects do in the operator), are given back by [`trim`].
    #[test]
    fn a_freed_burst_is_returned_to_the_system() {
        let kept = std::thread::spawn(|| {
            let mut blocks: Vec<Box<[u8; 256]>> =
                (0..262_144).map(|_| Box::new([7; 256])).collect();
            let last = blocks.pop().unwrap();
            drop(blocks);
            last
        })
        .join()
        .unwrap();
        let before = anon_kib();
        assert!(trim(), "nothing to trim");
        let after = anon_kib();
        assert!(
            before.saturating_sub(after) > 32 * 1024,
            "RssAnon {before} KiB before the trim, {after} KiB after"
        );
        assert_eq!(kept[0], 7);
    }
}

#[cfg(test)]
mod list_tests {
    use super::*;

    #[test]
    fn upsert_exact_replaces_or_grows_by_one() {
        let mut list: Vec<(u8, &str)> = Vec::new();
        for item in [(1, "a"), (2, "b"), (1, "c")] {
            upsert_exact(&mut list, item, |a, b| a.0 == b.0);
        }
        assert_eq!(list, vec![(1, "c"), (2, "b")]);
        assert_eq!(list.capacity(), 2, "no spare room");
    }
}
