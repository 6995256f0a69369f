//! At most [`LISTS_AT_ONCE`] of the process's watches list at a time.
//!
//! Every watch of the leader lists when it starts (13 owned kinds, Tenants, LimitProfiles and
//! Channels for the tree and again for the controller), and a watch holds one decoded page
//! (`controller::WATCH_PAGE_SIZE` objects) until its objects are processed. Owned objects are
//! listed metadata-only but with their `managedFields`: a StatefulSet's decodes to several
//! KB. All at once, the pages in flight were the largest part of the start-up's memory peak
//! (heaptrack over a restart at 2,000 tenants: ~21 MB of a 47 MB heap peak in decoding list
//! pages and reading their bodies). Listing a few at a time costs the start-up little: the
//! API server serves the same lists either way.
//!
//! The gate sits directly on a watcher's stream, before its backoff: a watcher (in
//! list-then-watch mode, `controller::watch_config`) emits `Init` before it sends its first
//! list request, so the next poll — the one that lists — waits for a permit; `InitDone` (the
//! list is complete) gives it back, and so does an error, so that the watch's backoff never
//! sleeps holding one (the retry waits for a permit again). A permit held for
//! [`MAX_HOLD`] is given back too and the list goes on ungated: a list request that hangs (a
//! half-open connection has no read timeout) must not stop every other watch from listing.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use futures::{Stream, StreamExt};
use kube::runtime::watcher;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// How many watches of one process may list at the same time.
pub const LISTS_AT_ONCE: usize = 2;

/// The longest one list holds its permit (a list of 60,000 Secrets' metadata takes a few
/// seconds); past it, it goes on without one.
pub const MAX_HOLD: Duration = Duration::from_secs(30);

static GATE: LazyLock<Arc<Semaphore>> = LazyLock::new(|| Arc::new(Semaphore::new(LISTS_AT_ONCE)));

/// A watcher's `events`, listing only while holding one of the process's [`LISTS_AT_ONCE`]
/// permits (see the module docs).
pub fn gated<K, S>(
    events: S,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send
where
    K: Send + 'static,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
{
    gated_by(events, GATE.clone())
}

/// Where a gated watch is.
struct Gate {
    permits: Arc<Semaphore>,
    /// Between `Init` and `InitDone`: the next poll may send a list request.
    listing: bool,
    /// The permit, and until when it may be held.
    held: Option<(OwnedSemaphorePermit, Instant)>,
}

/// [`gated`] with its own semaphore.
fn gated_by<K, S>(
    events: S,
    permits: Arc<Semaphore>,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send
where
    K: Send + 'static,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
{
    let gate = Gate {
        permits,
        listing: false,
        held: None,
    };
    futures::stream::unfold(
        (events.boxed(), gate),
        |(mut events, mut gate)| async move {
            if gate.listing && gate.held.is_none() {
                // The semaphore is never closed; were it, the watch would go on ungated.
                let permit = gate.permits.clone().acquire_owned().await.ok();
                gate.held = permit.map(|p| (p, Instant::now() + MAX_HOLD));
            }
            let event = match gate.held.as_ref().map(|(_, until)| *until) {
                // `next` loses nothing when the timer wins (it is cancel-safe).
                Some(until) => tokio::select! {
                    e = events.next() => e,
                    () = tokio::time::sleep_until(until) => {
                        tracing::warn!("a watch's list holds its turn too long: it goes on, others list beside it");
                        gate.held = None;
                        gate.listing = false;
                        events.next().await
                    }
                },
                None => events.next().await,
            }?;
            match &event {
                Ok(watcher::Event::Init) => gate.listing = true,
                Ok(watcher::Event::InitDone) => {
                    gate.listing = false;
                    gate.held = None;
                }
                Err(_) => gate.held = None,
                Ok(_) => {}
            }
            Some((event, (events, gate)))
        },
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use futures::FutureExt;
    use futures::stream::BoxStream;

    use super::*;

    type Event = Result<watcher::Event<&'static str>, watcher::Error>;

    /// A watcher stand-in that logs every event when it produces it (when it is polled).
    fn source(
        name: &'static str,
        events: Vec<Event>,
        log: Arc<Mutex<Vec<String>>>,
    ) -> BoxStream<'static, Event> {
        futures::stream::iter(events)
            .inspect(move |e| {
                let what = match e {
                    Ok(watcher::Event::Init) => "Init".to_string(),
                    Ok(watcher::Event::InitApply(o)) => format!("InitApply {o}"),
                    Ok(watcher::Event::InitDone) => "InitDone".to_string(),
                    Ok(watcher::Event::Apply(o)) => format!("Apply {o}"),
                    Ok(watcher::Event::Delete(o)) => format!("Delete {o}"),
                    Err(_) => "Err".to_string(),
                };
                log.lock().unwrap().push(format!("{name}: {what}"));
            })
            .boxed()
    }

    fn list(objects: &[&'static str]) -> Vec<Event> {
        let mut v = vec![Ok(watcher::Event::Init)];
        v.extend(objects.iter().map(|o| Ok(watcher::Event::InitApply(*o))));
        v.push(Ok(watcher::Event::InitDone));
        v
    }

    #[tokio::test]
    async fn a_second_watch_lists_only_once_the_first_is_done() {
        let permits = Arc::new(Semaphore::new(1));
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut a_events = list(&["a1", "a2"]);
        a_events.push(Ok(watcher::Event::Apply("a3")));
        let mut a = gated_by(source("a", a_events, log.clone()), permits.clone()).boxed();
        let mut b = gated_by(source("b", list(&["b1"]), log.clone()), permits.clone()).boxed();

        // Both announce their list; announcing sends no request and needs no permit.
        assert!(matches!(a.next().await, Some(Ok(watcher::Event::Init))));
        assert!(matches!(b.next().await, Some(Ok(watcher::Event::Init))));
        // a takes the one permit and lists.
        assert!(matches!(
            a.next().await,
            Some(Ok(watcher::Event::InitApply("a1")))
        ));
        // b may not list while a does: its source is not even polled.
        assert!(b.next().now_or_never().is_none());
        assert!(b.next().now_or_never().is_none());
        assert!(matches!(
            a.next().await,
            Some(Ok(watcher::Event::InitApply("a2")))
        ));
        assert!(matches!(a.next().await, Some(Ok(watcher::Event::InitDone))));
        // a's list is complete: b lists, and a watches on beside it.
        assert!(matches!(
            b.next().await,
            Some(Ok(watcher::Event::InitApply("b1")))
        ));
        assert!(matches!(
            a.next().await,
            Some(Ok(watcher::Event::Apply("a3")))
        ));
        assert!(matches!(b.next().await, Some(Ok(watcher::Event::InitDone))));
        assert_eq!(
            *log.lock().unwrap(),
            [
                "a: Init",
                "b: Init",
                "a: InitApply a1",
                "a: InitApply a2",
                "a: InitDone",
                "b: InitApply b1",
                "a: Apply a3",
                "b: InitDone",
            ]
        );
        assert_eq!(permits.available_permits(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_list_that_hangs_gives_its_turn_back_after_the_longest_hold() {
        let permits = Arc::new(Semaphore::new(1));
        let log = Arc::new(Mutex::new(Vec::new()));
        // a announces its list, then its list request never answers.
        let hung = source("a", vec![Ok(watcher::Event::Init)], log.clone())
            .chain(futures::stream::pending());
        let mut a = gated_by(hung, permits.clone()).boxed();
        let mut b = gated_by(source("b", list(&["b1"]), log.clone()), permits.clone()).boxed();
        assert!(matches!(a.next().await, Some(Ok(watcher::Event::Init))));
        assert!(matches!(b.next().await, Some(Ok(watcher::Event::Init))));
        let started = Instant::now();
        let a_waits = tokio::spawn(async move { a.next().await.is_some() });
        tokio::task::yield_now().await;
        assert!(b.next().now_or_never().is_none(), "a holds the one permit");
        // b lists once a has held the permit for MAX_HOLD, while a still waits for its answer.
        let b1 = tokio::time::timeout(MAX_HOLD * 2, b.next()).await;
        assert!(
            matches!(b1, Ok(Some(Ok(watcher::Event::InitApply("b1"))))),
            "b never got its turn"
        );
        assert!(started.elapsed() >= MAX_HOLD);
        assert!(!a_waits.is_finished());
        assert!(matches!(b.next().await, Some(Ok(watcher::Event::InitDone))));
        assert_eq!(permits.available_permits(), 1);
        a_waits.abort();
    }

    #[tokio::test]
    async fn an_error_gives_the_permit_back_and_the_retry_waits_for_one() {
        let permits = Arc::new(Semaphore::new(1));
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut a_events = vec![
            Ok(watcher::Event::Init),
            Err(watcher::Error::NoResourceVersion),
        ];
        a_events.extend(list(&["a1"]).into_iter().skip(1));
        let mut a = gated_by(source("a", a_events, log.clone()), permits.clone()).boxed();
        let mut b = gated_by(source("b", list(&["b1"]), log.clone()), permits.clone()).boxed();

        assert!(matches!(a.next().await, Some(Ok(watcher::Event::Init))));
        assert!(matches!(a.next().await, Some(Err(_))));
        // While a backs off it holds nothing: b lists.
        assert_eq!(permits.available_permits(), 1);
        assert!(matches!(b.next().await, Some(Ok(watcher::Event::Init))));
        assert!(matches!(
            b.next().await,
            Some(Ok(watcher::Event::InitApply("b1")))
        ));
        // a's retry waits for b's list.
        assert!(a.next().now_or_never().is_none());
        assert!(matches!(b.next().await, Some(Ok(watcher::Event::InitDone))));
        assert!(matches!(
            a.next().await,
            Some(Ok(watcher::Event::InitApply("a1")))
        ));
        assert!(matches!(a.next().await, Some(Ok(watcher::Event::InitDone))));
        assert_eq!(permits.available_permits(), 1);
    }
}
