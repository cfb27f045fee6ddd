use std::time::SystemTime;

use super::*;

fn access() -> Access {
    Access {
        token: SecretString::from("at"),
        expires_at: SystemTime::now() + Duration::from_secs(3600),
        lifetime: Some(Duration::from_secs(3600)),
        cached_at: Instant::now(),
    }
}

fn rt() -> Option<SecretString> {
    Some(SecretString::from("rt"))
}

fn transient() -> TokenError {
    TokenError::Transient("down".into())
}

fn make(kind: Kind, now: Instant) -> TokenState {
    match kind {
        Kind::SignedOut => TokenState::SignedOut,
        Kind::Locked => TokenState::Locked { error: None },
        Kind::Ready => TokenState::Ready {
            access: Some(access()),
            refresh_token: rt(),
        },
        Kind::Refreshing => TokenState::Refreshing {
            access: Some(access()),
            refresh_token: rt(),
            failures: 0,
        },
        Kind::BackingOff => TokenState::BackingOff {
            access: Some(access()),
            refresh_token: rt(),
            failures: 1,
            until: now + Duration::from_secs(2),
            last_try: now,
            firm: false,
            error: transient(),
        },
        Kind::SignInNeeded => TokenState::SignInNeeded {
            access: Some(access()),
            error: TokenError::NeedsSignIn("refused".into()),
        },
    }
}

/// Each event, by name, so the table below can list them.
#[derive(Debug, Clone, Copy)]
enum E {
    StartLogin,
    StartBackground,
    LoadedNone,
    LoadedSome,
    Refreshed,
    Rotated,
    Transient,
    RefusedUsable,
    RefusedDead,
    Failed,
    Expired,
    Discard,
    Relock,
}

const EVENTS: [E; 13] = [
    E::StartLogin,
    E::StartBackground,
    E::LoadedNone,
    E::LoadedSome,
    E::Refreshed,
    E::Rotated,
    E::Transient,
    E::RefusedUsable,
    E::RefusedDead,
    E::Failed,
    E::Expired,
    E::Discard,
    E::Relock,
];

fn event(e: E) -> Event {
    match e {
        E::StartLogin => Event::Start { login: true },
        E::StartBackground => Event::Start { login: false },
        E::LoadedNone => Event::Loaded(None),
        E::LoadedSome => Event::Loaded(Some((rt(), Some(access())))),
        E::Refreshed => Event::Refreshed {
            access: access(),
            refresh_token: rt(),
        },
        E::Rotated => Event::Rotated {
            refresh_token: Some(SecretString::from("rt2")),
        },
        E::Transient => Event::Transient {
            error: transient(),
            retry_after: None,
            firm: false,
            jitter: 0.0,
        },
        E::RefusedUsable => Event::Refused {
            error: TokenError::NeedsSignIn("invalid_grant".into()),
            usable: true,
        },
        E::RefusedDead => Event::Refused {
            error: TokenError::NeedsSignIn("invalid_grant".into()),
            usable: false,
        },
        E::Failed => Event::Failed(TokenError::Configuration("invalid_client".into())),
        E::Expired => Event::Expired,
        E::Discard => Event::Discard,
        E::Relock => Event::Relock,
    }
}

const ALL: [Kind; 6] = [
    Kind::SignedOut,
    Kind::Locked,
    Kind::Ready,
    Kind::Refreshing,
    Kind::BackingOff,
    Kind::SignInNeeded,
];

/// The transition table at the moment a backoff began (no probe yet):
/// `Some(to)` for a legal event, `None` for one refused with the state
/// unchanged.
fn expected(from: Kind, e: E) -> Option<Kind> {
    use Kind as K;
    match (from, e) {
        (K::Refreshing, E::Relock) => None,
        (_, E::Relock) => Some(K::Locked),
        (_, E::Discard) => Some(from),
        (K::SignedOut | K::Locked | K::Ready, E::StartLogin | E::StartBackground) => {
            Some(K::Refreshing)
        }
        (K::Refreshing, E::LoadedNone) => Some(K::SignedOut),
        (K::Refreshing, E::LoadedSome | E::Refreshed | E::Rotated) => Some(K::Ready),
        (K::Refreshing, E::Transient) => Some(K::BackingOff),
        (K::Refreshing, E::RefusedUsable) => Some(K::SignInNeeded),
        (K::Refreshing, E::RefusedDead | E::Failed) => Some(K::Locked),
        (K::SignInNeeded, E::Expired) => Some(K::Locked),
        _ => None,
    }
}

#[test]
fn every_state_and_event_follows_the_table() {
    let now = Instant::now();
    for from in ALL {
        for e in EVENTS {
            let mut state = make(from, now);
            let got = state.step(event(e), now);
            match expected(from, e) {
                Some(to) => {
                    assert_eq!(got, Ok(()), "{from:?} --{e:?}--> should be legal");
                    assert_eq!(state.kind(), to, "{from:?} --{e:?}-->");
                }
                None => {
                    assert_eq!(got, Err(Illegal), "{from:?} --{e:?}--> should be refused");
                    assert_eq!(state.kind(), from, "a refused event changes nothing");
                }
            }
        }
    }
}

#[test]
fn a_graph_redemption_keeps_the_mail_token_and_takes_the_rotated_refresh_token() {
    use secrecy::ExposeSecret as _;
    let now = Instant::now();
    let mut state = make(Kind::Ready, now);
    state.step(Event::Start { login: true }, now).unwrap();
    let rotated = |rt: Option<&str>| Event::Rotated {
        refresh_token: rt.map(SecretString::from),
    };
    state.step(rotated(Some("rt2")), now).unwrap();
    assert_eq!(state.kind(), Kind::Ready);
    assert_eq!(state.refresh_token().unwrap().expose_secret(), "rt2");
    assert_eq!(state.access().unwrap().token.expose_secret(), "at");
    // No new refresh token: the old one stays.
    state.step(Event::Start { login: true }, now).unwrap();
    state.step(rotated(None), now).unwrap();
    assert_eq!(state.refresh_token().unwrap().expose_secret(), "rt2");
}

#[test]
fn single_flight_a_second_start_is_refused() {
    let now = Instant::now();
    let mut state = make(Kind::Ready, now);
    assert_eq!(state.step(Event::Start { login: true }, now), Ok(()));
    assert_eq!(state.step(Event::Start { login: true }, now), Err(Illegal));
    assert_eq!(state.step(Event::Relock, now), Err(Illegal), "waits");
    assert_eq!(state.kind(), Kind::Refreshing);
}

#[test]
fn a_flight_from_the_disk_reads_it_then_may_refresh() {
    let now = Instant::now();
    let mut state = make(Kind::Locked, now);
    state.step(Event::Start { login: true }, now).unwrap();
    assert!(state.refresh_token().is_none(), "nothing read yet");
    state.step(event(E::LoadedSome), now).unwrap();
    assert_eq!(state.kind(), Kind::Ready);
    assert!(state.refresh_token().is_some());
    assert!(state.fresh(Duration::from_secs(60)).is_some());
}

#[test]
fn failures_in_a_row_double_the_wait_and_a_success_resets_them() {
    let now = Instant::now();
    let mut state = make(Kind::Ready, now);
    let mut waits = vec![];
    let mut at = now;
    for _ in 0..3 {
        state.step(Event::Start { login: false }, at).unwrap();
        state.step(event(E::Transient), at).unwrap();
        let until = state.retry_at().unwrap();
        waits.push(until - at);
        at = until;
    }
    assert_eq!(
        waits,
        [2, 4, 8].map(Duration::from_secs),
        "BACKOFF_BASE doubling, no jitter"
    );
    state.step(Event::Start { login: false }, at).unwrap();
    state.step(event(E::Refreshed), at).unwrap();
    assert_eq!(state.kind(), Kind::Ready);
    state.step(Event::Start { login: false }, at).unwrap();
    state.step(event(E::Transient), at).unwrap();
    assert_eq!(state.retry_at().unwrap() - at, Duration::from_secs(2));
}

#[test]
fn logins_probe_a_backoff_but_never_a_firm_one() {
    let now = Instant::now();
    let mut state = make(Kind::Ready, now);
    state.step(Event::Start { login: true }, now).unwrap();
    state.step(event(E::Transient), now).unwrap();
    // What a longer outage leaves: a wait longer than a probe's interval.
    if let TokenState::BackingOff { until, .. } = &mut state {
        *until = now + Duration::from_secs(8);
    }
    let later = now + LOGIN_PROBE_EVERY;
    assert!(!state.may_start(true, now), "no probe right after a try");
    assert!(state.may_start(true, later), "a login probes");
    assert!(!state.may_start(false, later), "the background waits");
    assert_eq!(
        state.step(Event::Start { login: false }, later),
        Err(Illegal)
    );
    assert_eq!(state.step(Event::Start { login: true }, later), Ok(()));

    let mut firm = make(Kind::Ready, now);
    firm.step(Event::Start { login: true }, now).unwrap();
    firm.step(
        Event::Transient {
            error: transient(),
            retry_after: Some(Duration::from_secs(60)),
            firm: false,
            jitter: 0.0,
        },
        now,
    )
    .unwrap();
    assert!(!firm.may_start(true, later), "never against a Retry-After");
    assert!(firm.may_start(false, now + Duration::from_secs(60)));
}

#[test]
fn a_refusal_keeps_the_token_in_hand_until_it_expires() {
    let now = Instant::now();
    let mut state = make(Kind::Refreshing, now);
    state.step(event(E::RefusedUsable), now).unwrap();
    assert_eq!(state.kind(), Kind::SignInNeeded);
    assert!(state.access().is_some(), "the access token in hand is kept");
    assert!(!state.may_start(true, now + Duration::from_secs(3600)));
    state.step(Event::Expired, now).unwrap();
    assert_eq!(state.kind(), Kind::Locked, "then start over from the disk");
    assert!(
        matches!(state.error(), Some(TokenError::NeedsSignIn(_))),
        "and say why"
    );
}

#[test]
fn discard_drops_only_the_access_token() {
    let now = Instant::now();
    let mut state = make(Kind::BackingOff, now);
    state.step(Event::Discard, now).unwrap();
    assert_eq!(state.kind(), Kind::BackingOff);
    assert!(state.access().is_none());
    assert!(state.retry_at().is_some(), "the backoff stands");
}

#[test]
fn a_short_lived_token_is_fresh_for_half_its_life() {
    let now = SystemTime::now();
    let short = Access {
        token: SecretString::from("at"),
        expires_at: now + Duration::from_secs(4),
        lifetime: Some(Duration::from_secs(5)),
        cached_at: Instant::now(),
    };
    assert!(
        short.fresh(Duration::from_secs(300)).is_some(),
        "the margin is min(margin, lifetime / 2)"
    );
    let from_disk = Access {
        lifetime: None,
        ..short
    };
    assert!(from_disk.fresh(Duration::from_secs(300)).is_none());
}

#[test]
fn health_reads_the_states_classification() {
    let now = Instant::now();
    let refused = || TokenError::NeedsSignIn("invalid_grant".into());
    let cases: Vec<(TokenState, TokenHealth)> = vec![
        (make(Kind::SignedOut, now), TokenHealth::Unknown),
        (make(Kind::Locked, now), TokenHealth::Unknown),
        (make(Kind::Ready, now), TokenHealth::Good),
        (
            TokenState::Ready {
                access: None,
                refresh_token: rt(),
            },
            TokenHealth::Unknown,
        ),
        (make(Kind::Refreshing, now), TokenHealth::Unknown),
        (
            TokenState::Refreshing {
                access: None,
                refresh_token: rt(),
                failures: 2,
            },
            TokenHealth::Failing("retrying after transient failures".into()),
        ),
        (
            make(Kind::BackingOff, now),
            TokenHealth::Failing("down".into()),
        ),
        (
            make(Kind::SignInNeeded, now),
            TokenHealth::SignInNeeded("refused".into()),
        ),
        (
            TokenState::Locked {
                error: Some(refused()),
            },
            TokenHealth::SignInNeeded("invalid_grant".into()),
        ),
        (
            TokenState::Locked {
                error: Some(TokenError::Configuration("invalid_client".into())),
            },
            TokenHealth::Unknown,
        ),
    ];
    for (state, want) in cases {
        assert_eq!(state.health(), want, "{:?}", state.kind());
    }
    // Through the transition itself: a refused grant becomes SignInNeeded.
    let mut state = make(Kind::Ready, now);
    state.step(Event::Start { login: true }, now).unwrap();
    state
        .step(
            Event::Refused {
                error: refused(),
                usable: false,
            },
            now,
        )
        .unwrap();
    assert_eq!(
        state.health(),
        TokenHealth::SignInNeeded("invalid_grant".into())
    );
}
