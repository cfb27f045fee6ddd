use super::*;

const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

fn alice() -> Subject {
    Subject::Account("alice@contoso.com".into())
}

trait Outcome {
    fn is_ok_or_positive_wait(&self) -> bool;
}

impl Outcome for Result<(), Duration> {
    fn is_ok_or_positive_wait(&self) -> bool {
        match self {
            Ok(()) => true,
            Err(wait) => *wait > Duration::ZERO,
        }
    }
}

fn throttle() -> Arc<Throttle> {
    Arc::new(Throttle::new())
}

/// One attempt that fails, on tokio's clock.
async fn fail(t: &Arc<Throttle>, source: &Source, subject: &Subject) -> Result<(), Duration> {
    t.admit(source.clone(), subject.clone()).await?.failed();
    Ok(())
}

#[test]
fn delays_grow_from_zero_and_are_capped() {
    let secs: Vec<u64> = (0..10).map(|n| delay_after(n).as_secs()).collect();
    assert_eq!(secs, [0, 0, 1, 2, 4, 8, 16, 16, 16, 16]);
    assert_eq!(delay_after(u32::MAX), MAX_DELAY);
}

#[tokio::test(start_paused = true)]
async fn failures_slow_a_source_down_then_refuse_it_then_expire() {
    let t = throttle();
    let a = Source::Address(A);
    for _ in 0..FREE_FAILURES {
        let started = Instant::now();
        fail(&t, &a, &alice()).await.unwrap();
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
    let started = Instant::now();
    fail(&t, &a, &alice()).await.unwrap();
    assert_eq!(started.elapsed(), FIRST_DELAY, "admit waits the delay");
    // The next delay (2 s) counts from that failure: time already waited counts.
    tokio::time::advance(Duration::from_millis(1500)).await;
    let started = Instant::now();
    fail(&t, &a, &alice()).await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_millis(500));
    for _ in 4..LOCKOUT_FAILURES {
        fail(&t, &a, &alice()).await.unwrap();
    }
    assert_eq!(fail(&t, &a, &alice()).await, Err(LOCKOUT));
    let other = Source::Address(B);
    assert!(
        t.admit(other, alice()).await.is_ok(),
        "another source is not affected"
    );
    tokio::time::advance(LOCKOUT - Duration::from_secs(1)).await;
    assert_eq!(fail(&t, &a, &alice()).await, Err(Duration::from_secs(1)));
    tokio::time::advance(Duration::from_secs(1)).await;
    let r = t.admit(a.clone(), alice()).await.unwrap();
    r.succeeded();
    assert_eq!(t.tracked(), 0, "a success clears the record");
}

#[tokio::test(start_paused = true)]
async fn success_and_time_clear_failures() {
    let t = throttle();
    let a = Source::Address(A);
    // A success clears failures.
    for _ in 0..5 {
        fail(&t, &a, &alice()).await.unwrap();
    }
    t.admit(a.clone(), alice()).await.unwrap().succeeded();
    assert_eq!(t.tracked(), 0);
    // An attempt in flight counts: nine more fill the window...
    let slow = t.admit(a.clone(), alice()).await.unwrap();
    for _ in 0..LOCKOUT_FAILURES - 1 {
        fail(&t, &a, &alice()).await.unwrap();
    }
    assert!(fail(&t, &a, &alice()).await.is_err(), "pending counts");
    // ...and its success clears them (the owner typed it right).
    slow.succeeded();
    assert_eq!(t.tracked(), 0);
    // A refusal is not lifted by a success: none is admitted while it runs.
    for _ in 0..LOCKOUT_FAILURES {
        fail(&t, &a, &alice()).await.unwrap();
    }
    assert!(t.admit(a.clone(), alice()).await.is_err());
    // Time forgets failures: a new window starts.
    let t = throttle();
    for _ in 0..5 {
        fail(&t, &a, &alice()).await.unwrap();
    }
    tokio::time::advance(WINDOW).await;
    let started = Instant::now();
    fail(&t, &a, &alice()).await.unwrap();
    fail(&t, &a, &alice()).await.unwrap();
    assert_eq!(started.elapsed(), Duration::ZERO, "a new window starts");
}

#[tokio::test(start_paused = true)]
async fn parallel_guesses_are_counted_as_they_arrive() {
    let t = throttle();
    let a = Source::Address(A);
    let mut guesses = tokio::task::JoinSet::new();
    for _ in 0..60 {
        let (t, a) = (t.clone(), a.clone());
        guesses.spawn(async move {
            let attempt = t.admit(a, alice()).await?;
            // Judging takes a moment: all 60 arrive before any is judged.
            tokio::task::yield_now().await;
            attempt.failed();
            Ok::<(), Duration>(())
        });
    }
    let outcomes = guesses.join_all().await;
    let judged = outcomes.iter().filter(|o| o.is_ok()).count();
    assert_eq!(judged as u32, LOCKOUT_FAILURES, "never more judged");
    assert!(
        outcomes.iter().all(|o| o.is_ok_or_positive_wait()),
        "the rest: the temporary reply with a wait"
    );
    assert_eq!(t.admit(a, alice()).await.unwrap_err(), LOCKOUT);
}

#[tokio::test(start_paused = true)]
async fn many_connections_with_the_right_password_all_get_in_at_once() {
    let t = throttle();
    let a = Source::Address(A);
    let started = Instant::now();
    let mut logins = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let (t, a) = (t.clone(), a.clone());
        logins.spawn(async move {
            let attempt = t.admit(a, alice()).await?;
            tokio::task::yield_now().await;
            attempt.succeeded();
            Ok::<(), Duration>(())
        });
    }
    assert!(logins.join_all().await.iter().all(Result::is_ok));
    assert_eq!(started.elapsed(), Duration::ZERO, "waited for places only");
    assert_eq!(t.tracked(), 0);
}

#[tokio::test(start_paused = true)]
async fn in_flight_attempts_fill_the_window_and_settle_one_by_one() {
    let t = throttle();
    let a = Source::Address(A);
    let mut held = Vec::new();
    // None settled yet: the eleventh waits for a place, then gives up.
    while let Ok(r) = t.admit(a.clone(), alice()).await {
        held.push(r);
    }
    assert_eq!(held.len() as u32, LOCKOUT_FAILURES, "never more in flight");
    // Not judged (dropped): released, one more may go.
    held.pop();
    assert!(t.admit(a.clone(), alice()).await.is_ok());
    for r in held {
        r.failed();
    }
    assert!(t.admit(a.clone(), alice()).await.is_ok(), "nine failures");
    // The tenth judged failure refuses the source for this account.
    fail(&t, &a, &alice()).await.unwrap();
    assert_eq!(t.admit(a.clone(), alice()).await.unwrap_err(), LOCKOUT);
}

#[tokio::test(start_paused = true)]
async fn names_that_are_no_account_never_count_against_an_account() {
    let t = throttle();
    let mallory = Source::LocalUser(PeerUser::Uid(1001));
    let alice_uid = Source::LocalUser(PeerUser::Uid(1000));
    for _ in 0..LOCKOUT_FAILURES {
        fail(&t, &mallory, &Subject::NotAnAccount).await.unwrap();
    }
    assert!(fail(&t, &mallory, &Subject::NotAnAccount).await.is_err());
    // Mallory's guesses at Alice's account count for Mallory only.
    for _ in 0..LOCKOUT_FAILURES {
        fail(&t, &mallory, &alice()).await.unwrap();
    }
    assert!(t.admit(mallory.clone(), alice()).await.is_err());
    let started = Instant::now();
    t.admit(alice_uid.clone(), alice())
        .await
        .unwrap()
        .succeeded();
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "Alice is not even slowed"
    );
    assert_eq!(
        t.tracked(),
        2,
        "Mallory's two records; Alice's success left none"
    );
}

#[tokio::test(start_paused = true)]
async fn memory_is_bounded() {
    let t = throttle();
    for i in 0..(MAX_RECORDS as u32 + 100) {
        let source = Source::Address(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)));
        fail(&t, &source, &Subject::NotAnAccount).await.unwrap();
        tokio::time::advance(Duration::from_millis(1)).await;
    }
    assert_eq!(t.tracked(), MAX_RECORDS);
}

#[tokio::test(start_paused = true)]
async fn a_loopback_client_counts_as_its_local_user_when_known() {
    let t = throttle();
    let local: SocketAddr = "127.0.0.1:143".parse().unwrap();
    let peer: SocketAddr = "127.0.0.1:50000".parse().unwrap();
    let lan: SocketAddr = "192.0.2.7:50000".parse().unwrap();
    t.identify_peers_with(|_, peer| (peer.port() == 50000).then_some(PeerUser::Uid(1000)));
    assert_eq!(
        t.source(peer, Some(local)).await,
        Source::LocalUser(PeerUser::Uid(1000))
    );
    let mapped = SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.to_ipv6_mapped().into(), 50000);
    assert_eq!(
        t.source(mapped, Some(local)).await,
        Source::LocalUser(PeerUser::Uid(1000)),
        "an IPv4-mapped loopback client too"
    );
    assert_eq!(t.source(lan, Some(local)).await, Source::Address(lan.ip()));
    let own: SocketAddr = "192.0.2.1:143".parse().unwrap();
    let from_own: SocketAddr = "192.0.2.1:50000".parse().unwrap();
    assert_eq!(
        t.source(from_own, Some(own)).await,
        Source::LocalUser(PeerUser::Uid(1000)),
        "a local client that dialled the machine's own address"
    );
    let unknown: SocketAddr = "127.0.0.1:50001".parse().unwrap();
    assert_eq!(
        t.source(unknown, Some(local)).await,
        Source::Address(A),
        "no user named: the address"
    );
    assert_eq!(t.source(peer, None).await, Source::Address(A));
}
