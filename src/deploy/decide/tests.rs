//! Sans-IO tests of the deploy decisions: events in by hand, actions
//! checked, no runtime.

use std::time::Duration;

use super::*;

const NOW_MS: u64 = 1_700_000_000_000;

fn release(version: u64, published_ms: u64) -> Release {
    let hash = Hash::of(format!("m v{version}").as_bytes());
    Release::sample("m", version, 1, hash, published_ms)
}

fn fetched(r: &Release) -> Fetched {
    let bytes = Arc::new(format!("m v{}", r.version).into_bytes());
    Fetched {
        wire_bytes: bytes.len(),
        bytes,
        payload: Payload::Full,
    }
}

fn failure(missing: bool) -> FetchError {
    FetchError {
        missing,
        message: "it went wrong".into(),
    }
}

/// Node 0 with version 0 of `m`.
fn node(trust: Trust) -> DeployState {
    let v0 = release(0, 0);
    let running = [("m".to_string(), v0.hash)];
    DeployState::new(0, trust, [v0], running, [])
}

fn step(s: &mut DeployState, event: Event) -> Vec<Action> {
    let mut out = Vec::new();
    s.handle(event, &mut out);
    out
}

fn offer(s: &mut DeployState, peer: usize, releases: Vec<Release>, now: Instant) -> Vec<Action> {
    let event = Event::PeerReleases {
        peer,
        releases,
        coming: Vec::new(),
        now,
        now_ms: NOW_MS,
    };
    step(s, event)
}

fn tick(s: &mut DeployState, now: Instant) -> Vec<Action> {
    step(
        s,
        Event::Tick {
            now,
            now_ms: NOW_MS,
        },
    )
}

fn fetches(actions: &[Action]) -> Vec<usize> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Fetch { peer, .. } => Some(*peer),
            _ => None,
        })
        .collect()
}

#[test]
fn a_failed_fetch_moves_to_the_next_source_then_waits_before_trying_again() {
    let t = Instant::now();
    let mut s = node(Trust::default());
    let r = release(1, NOW_MS - 10);
    assert_eq!(fetches(&offer(&mut s, 1, vec![r.clone()], t)), [1]);
    assert_eq!(
        fetches(&offer(&mut s, 2, vec![r.clone()], t)),
        [] as [usize; 0]
    );
    let failed = |from| Event::Fetched {
        release: r.clone(),
        from,
        result: Err(failure(false)),
        now: t,
    };
    let out = step(&mut s, failed(1));
    assert!(
        matches!(
            &out[..],
            [Action::Fetch {
                peer: 2,
                after: Some(_),
                ..
            }]
        ),
        "{out:?}"
    );
    let out = step(&mut s, failed(2));
    assert!(
        matches!(&out[..], [Action::Fail { .. }, Action::Announce(_)]),
        "{out:?}"
    );
    assert_eq!(s.pending("m"), None);
    // The sources wait (1 s after the first failure of the release,
    // doubling: 2 s after the second), then it is fetched again.
    assert!(tick(&mut s, t + Duration::from_millis(1_100)).is_empty());
    let out = tick(&mut s, t + Duration::from_millis(2_100));
    assert_eq!(fetches(&out), [1]);
    // This time it comes: recorded, announced, loaded, swapped.
    let got = Event::Fetched {
        release: r.clone(),
        from: 1,
        result: Ok(fetched(&r)),
        now: t,
    };
    let out = step(&mut s, got);
    assert!(
        matches!(
            &out[..],
            [Action::Record {
                fetched: Some(_),
                ..
            }]
        ),
        "{out:?}"
    );
    let recorded = Event::Recorded {
        release: r.clone(),
        result: Ok(()),
        now: t,
    };
    let out = step(&mut s, recorded);
    assert_eq!(
        out,
        [
            Action::Announce(Announce::held(vec![r.clone()])),
            Action::Load(r.clone())
        ]
    );
    let loaded = Event::Loaded {
        release: r.clone(),
        result: Ok(()),
    };
    assert_eq!(step(&mut s, loaded), [Action::Swap(r.clone())]);
    assert_eq!(s.pending("m"), None);
    assert!(tick(&mut s, t + Duration::from_secs(5)).is_empty());
}

#[test]
fn a_peer_that_lacks_the_module_is_not_asked_again_until_it_announces_anew() {
    let t = Instant::now();
    let mut s = node(Trust::default());
    let r = release(1, NOW_MS - 10);
    assert_eq!(fetches(&offer(&mut s, 1, vec![r.clone()], t)), [1]);
    let lacking = Event::Fetched {
        release: r.clone(),
        from: 1,
        result: Err(failure(true)),
        now: t,
    };
    let out = step(&mut s, lacking);
    assert!(
        matches!(&out[..], [Action::Fail { .. }, Action::Announce(_)]),
        "{out:?}"
    );
    let later = t + Duration::from_secs(120);
    assert!(tick(&mut s, later).is_empty());
    // The same list again (a link coming back up) is no news.
    assert!(offer(&mut s, 1, vec![r.clone()], later).is_empty());
    // Another peer that has it is asked.
    assert_eq!(fetches(&offer(&mut s, 2, vec![r.clone()], later)), [2]);
}

#[test]
fn a_peer_that_announces_anew_is_asked_again() {
    let t = Instant::now();
    let mut s = node(Trust::default());
    let r = release(1, NOW_MS - 10);
    offer(&mut s, 1, vec![r.clone()], t);
    let lacking = Event::Fetched {
        release: r.clone(),
        from: 1,
        result: Err(failure(true)),
        now: t,
    };
    step(&mut s, lacking);
    let other = Release::sample("other", 1, 1, Hash::of(b"other"), NOW_MS - 5);
    let out = offer(
        &mut s,
        1,
        vec![r.clone(), other],
        t + Duration::from_secs(2),
    );
    assert_eq!(fetches(&out), [1, 1]);
}

#[test]
fn a_release_from_the_future_is_set_aside_and_reported_once() {
    let t = Instant::now();
    let mut s = node(Trust::default());
    let ahead = release(1, NOW_MS + 120_000);
    let out = offer(&mut s, 1, vec![ahead.clone()], t);
    let [Action::Conflict(c)] = &out[..] else {
        panic!("{out:?}");
    };
    assert_eq!((c.ahead_ms, &c.stale), (Some(120_000), &ahead));
    assert!(tick(&mut s, t + Duration::from_secs(5)).is_empty());
    assert_eq!(s.conflicts().len(), 1);
    assert_eq!(s.pending("m"), None);
}

#[test]
fn a_release_refused_for_its_signature_is_relayed_and_not_fetched_again() {
    let t = Instant::now();
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
    let trust = Trust {
        keys: vec![key],
        local: Vec::new(),
    };
    let mut s = node(trust);
    let unsigned = release(1, NOW_MS - 10);
    assert_eq!(fetches(&offer(&mut s, 1, vec![unsigned.clone()], t)), [1]);
    let got = Event::Fetched {
        release: unsigned.clone(),
        from: 1,
        result: Ok(fetched(&unsigned)),
        now: t,
    };
    let out = step(&mut s, got);
    assert!(
        matches!(&out[..], [Action::Keep { .. }, Action::Fail { reason, .. }, Action::Announce(_)] if reason.contains("unsigned")),
        "{out:?}"
    );
    let kept = Event::Kept {
        release: unsigned.clone(),
    };
    assert_eq!(
        step(&mut s, kept),
        [Action::Announce(Announce::held(vec![unsigned.clone()]))]
    );
    let later = t + Duration::from_secs(120);
    assert!(tick(&mut s, later).is_empty());
    assert!(offer(&mut s, 2, vec![unsigned.clone()], later).is_empty());
    assert_eq!(s.current("m").map(|c| c.version), Some(0));
}

#[test]
fn a_release_on_its_way_at_the_predecessor_is_fetched_and_relayed_at_once() {
    let t = Instant::now();
    let mut s = node(Trust::default());
    let r = release(1, NOW_MS - 10);
    let event = Event::PeerReleases {
        peer: 3,
        releases: Vec::new(),
        coming: vec![r.clone()],
        now: t,
        now_ms: NOW_MS,
    };
    let out = step(&mut s, event);
    // Asked of the predecessor (it streams what it receives), and told to
    // the successor as on its way here, before any byte arrived.
    let relayed = Announce {
        held: Vec::new(),
        coming: vec![r.clone()],
    };
    assert_eq!(
        out,
        [
            Action::Fetch {
                release: r.clone(),
                peer: 3,
                after: None
            },
            Action::Announce(relayed)
        ]
    );
    assert_eq!(s.coming(), std::slice::from_ref(&r));
}

#[test]
fn a_stream_that_fails_falls_back_to_the_publisher_of_the_release() {
    let t = Instant::now();
    let mut s = node(Trust::default());
    // Published by node 1, on its way at node 3.
    let r = release(1, NOW_MS - 10);
    let event = Event::PeerReleases {
        peer: 3,
        releases: Vec::new(),
        coming: vec![r.clone()],
        now: t,
        now_ms: NOW_MS,
    };
    assert_eq!(fetches(&step(&mut s, event)), [3]);
    // The source died mid-stream (or its bytes did not hash right).
    let cut = Event::Fetched {
        release: r.clone(),
        from: 3,
        result: Err(failure(false)),
        now: t,
    };
    let out = step(&mut s, cut);
    assert!(
        matches!(
            &out[..],
            [Action::Fetch {
                peer: 1,
                after: Some(_),
                ..
            }]
        ),
        "{out:?}"
    );
    let got = Event::Fetched {
        release: r.clone(),
        from: 1,
        result: Ok(fetched(&r)),
        now: t,
    };
    assert!(matches!(&step(&mut s, got)[..], [Action::Record { .. }]));
    let recorded = Event::Recorded {
        release: r.clone(),
        result: Ok(()),
        now: t,
    };
    // Held now: announced as such, no longer as on its way.
    assert_eq!(
        step(&mut s, recorded),
        [
            Action::Announce(Announce::held(vec![r.clone()])),
            Action::Load(r.clone())
        ]
    );
    assert!(s.coming().is_empty());
}
