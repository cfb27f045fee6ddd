use super::*;

const MIN: Duration = Duration::from_secs(60);

fn timing() -> Timing {
    Timing::default()
}

fn at(minutes: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000) + MIN * minutes as u32
}

fn account(health: TokenHealth) -> Observation {
    Observation {
        accounts: vec![("alice@contoso.com".into(), health)],
        ..Default::default()
    }
}

fn upstream(error: Option<&str>, since: Option<SystemTime>) -> Observation {
    Observation {
        listeners: vec![ListenerSeen {
            label: "imap 127.0.0.1:1143".into(),
            upstream: "outlook.office365.com:993".into(),
            seen: Some(Seen {
                at: at(0),
                error: error.map(str::to_owned),
                failing_since: since,
            }),
        }],
        ..Default::default()
    }
}

fn names(notices: &[Notice]) -> Vec<&'static str> {
    notices.iter().map(|n| n.event.name()).collect()
}

/// Each row: at minute N, this is observed, these events are sent.
#[test]
fn events_follow_the_observations_in_time() {
    let refused = || TokenHealth::SignInNeeded("invalid_grant".into());
    let failing = || TokenHealth::Failing("503".into());
    type Row = (u64, Observation, &'static [&'static str]);
    let tables: Vec<(&str, Vec<Row>)> = vec![
        (
            "a refused grant at once, once, then recovered once",
            vec![
                (0, account(TokenHealth::Unknown), &[]),
                (1, account(refused()), &["sign_in_needed"]),
                (2, account(refused()), &[]),
                (3, account(TokenHealth::Unknown), &[]),
                (4, account(TokenHealth::Good), &["recovered"]),
                (5, account(TokenHealth::Good), &[]),
                // Again within the 6 hours: not said, so nothing recovers.
                (6, account(refused()), &[]),
                (7, account(TokenHealth::Good), &[]),
                // After the window, it is said again.
                (7 + 6 * 60, account(refused()), &["sign_in_needed"]),
            ],
        ),
        (
            "still refused after six hours: a reminder",
            vec![
                (0, account(refused()), &["sign_in_needed"]),
                (6 * 60 - 1, account(refused()), &[]),
                (6 * 60, account(refused()), &["sign_in_needed"]),
            ],
        ),
        (
            "transient failures for more than 15 minutes",
            vec![
                (0, account(failing()), &[]),
                (14, account(failing()), &[]),
                (15, account(failing()), &["refresh_failing"]),
                (20, account(failing()), &[]),
                (21, account(TokenHealth::Good), &["recovered"]),
                // A new run of failures counts from its own start.
                (22, account(failing()), &[]),
                (30, account(failing()), &[]),
            ],
        ),
        (
            "a short outage says nothing",
            vec![
                (0, account(failing()), &[]),
                (10, account(TokenHealth::Good), &[]),
                (11, account(failing()), &[]),
                (25, account(failing()), &[]),
            ],
        ),
        (
            "an upstream failing for more than 5 minutes",
            vec![
                (0, upstream(Some("refused"), Some(at(0))), &[]),
                (4, upstream(Some("refused"), Some(at(0))), &[]),
                (
                    5,
                    upstream(Some("refused"), Some(at(0))),
                    &["upstream_unreachable"],
                ),
                (9, upstream(Some("refused"), Some(at(0))), &[]),
                (10, upstream(None, None), &["recovered"]),
                (11, upstream(None, None), &[]),
            ],
        ),
    ];
    for (name, rows) in tables {
        let mut tracker = Tracker::default();
        for (minute, seen, want) in rows {
            let got = tracker.observe(seen, at(minute), &timing());
            assert_eq!(names(&got), want, "{name}, minute {minute}");
        }
    }
}

#[test]
fn notices_name_their_subject_for_the_environment() {
    let mut tracker = Tracker::default();
    let got = tracker.observe(
        account(TokenHealth::SignInNeeded(
            "AADSTS70000 invalid_grant".into(),
        )),
        at(0),
        &timing(),
    );
    assert_eq!(got[0].subject.account(), "alice@contoso.com");
    assert_eq!(got[0].subject.listener(), "");
    assert!(got[0].message.contains("AADSTS70000"), "{}", got[0].message);
    let got = tracker.observe(upstream(Some("refused"), Some(at(0))), at(6), &timing());
    assert_eq!(got[0].subject.account(), "");
    assert_eq!(got[0].subject.listener(), "imap 127.0.0.1:1143");
    assert!(got[0].message.contains("outlook.office365.com:993"));
}

#[test]
fn certificates_warn_within_the_window_and_recover_when_renewed() {
    let mut tracker = Tracker::default();
    let expiring = |days: u64| Observation {
        expiries: Some(vec![
            Expiry {
                subject: Subject::LocalCertificate,
                not_after: at(days * 24 * 60),
            },
            Expiry {
                subject: Subject::ClientCertificate("app@contoso.com".into()),
                not_after: at(400 * 24 * 60),
            },
        ]),
        ..Default::default()
    };
    assert!(tracker.observe(expiring(15), at(0), &timing()).is_empty());
    let got = tracker.observe(expiring(14), at(0), &timing());
    assert_eq!(names(&got), ["credential_expiring"]);
    assert_eq!(got[0].subject, Subject::LocalCertificate);
    assert!(got[0].message.contains("14 days"), "{}", got[0].message);
    // Not looked at again: what was known stays, and is not said twice.
    assert!(
        tracker
            .observe(Observation::default(), at(60), &timing())
            .is_empty()
    );
    let got = tracker.observe(expiring(365), at(120), &timing());
    assert_eq!(names(&got), ["recovered"]);
}

#[test]
fn the_limiter_allows_once_per_event_and_subject_per_window() {
    let window = Duration::from_secs(6 * 3600);
    let mut limiter = Limiter::default();
    let alice = Subject::Account("alice".into());
    let bob = Subject::Account("bob".into());
    let sign_in = EventKind::SignInNeeded;
    let failing = EventKind::RefreshFailing;
    let rows: &[(u64, EventKind, &Subject, bool)] = &[
        (0, sign_in, &alice, true),
        (1, sign_in, &alice, false),
        (1, sign_in, &bob, true),
        (1, failing, &alice, true),
        (6 * 60 - 1, sign_in, &alice, false),
        (6 * 60, sign_in, &alice, true),
        // The clock went back: no time has passed.
        (3, sign_in, &alice, false),
    ];
    for (minute, event, subject, want) in rows {
        assert_eq!(
            limiter.allow(*event, subject, at(*minute), window),
            *want,
            "minute {minute}, {event:?} {subject:?}"
        );
    }
}
