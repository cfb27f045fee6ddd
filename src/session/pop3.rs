//! A POP3 client session: greeting and CAPA from the upstream (rewritten),
//! USER/PASS and AUTH PLAIN/LOGIN taken locally, XOAUTH2 upstream, relay.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use zeroize::Zeroize;

use super::client::ClientStream;
use super::{
    Context, GOODBYE_GRACE, Read, TLS_REQUIRED, accept_implicit_tls, read_client, relay_and_log,
    unavailable, upgrade, write_client,
};
use crate::config::{ListenerConfig, LocalTls};
use crate::protocol::pop3::{Action, Frontend, failure_reply, greeting, rewrite_capa, starttls_ok};
use crate::protocol::{Credentials, Failure};
use crate::upstream::Target;
use crate::upstream::pop3::{AuthOutcome, Pop3Upstream, connect};

/// Offered when the upstream cannot be reached at connect time.
const FALLBACK_CAPA: &[&str] = &["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE"];

pub async fn serve(
    mut client: ClientStream,
    peer: SocketAddr,
    listener: Arc<ListenerConfig>,
    ctx: Arc<Context>,
) {
    let deadline = Instant::now() + ctx.preauth_timeout;
    let target = ctx.target(&listener);
    let (handshake, connected) = tokio::join!(
        accept_implicit_tls(&mut client, &listener, &ctx, peer, deadline),
        connect(&target, listener.upstream_tls)
    );
    if !handshake {
        return;
    }
    let mut upstream = match connected {
        Ok(u) => Some(u),
        Err(e) => {
            tracing::warn!(%peer, upstream = %target.addr(), error = %e, "upstream not reachable at connect");
            None
        }
    };
    let offer_stls = listener.local_tls == LocalTls::Starttls;
    let (hello, upstream_capa) = match &upstream {
        Some(u) => (greeting(&u.greeting_text), u.capa.clone()),
        None => (
            greeting(b"xoauth2-proxy ready"),
            FALLBACK_CAPA.iter().map(|s| s.to_string()).collect(),
        ),
    };
    if write_client(&mut client, &hello, deadline).await.is_err() {
        return;
    }
    let mut frontend = Frontend::new(rewrite_capa(&upstream_capa, offer_stls), offer_stls);
    let mut buf = Vec::with_capacity(512);
    loop {
        let written = match frontend.step(&mut buf) {
            Action::NeedMore => match read_client(&mut client, &mut buf, deadline).await {
                Ok(Read::Data) => continue,
                Ok(Read::Closed) | Err(_) => return,
                Ok(Read::Deadline) => {
                    tracing::info!(%peer, "closing: no login before the pre-authentication deadline");
                    let _ = write_client(
                        &mut client,
                        b"-ERR Timeout: no login in time\r\n",
                        Instant::now() + GOODBYE_GRACE,
                    )
                    .await;
                    return;
                }
            },
            Action::Reply(bytes) => write_client(&mut client, &bytes, deadline).await,
            Action::Close(bytes) => {
                let _ = write_client(&mut client, &bytes, deadline).await;
                let _ = client.shutdown().await;
                return;
            }
            Action::StartTls => {
                if write_client(&mut client, &starttls_ok(), deadline)
                    .await
                    .is_err()
                {
                    return;
                }
                // Injection defence: nothing sent before the handshake counts.
                buf.zeroize();
                buf.clear();
                if !upgrade(&mut client, &ctx, peer, deadline).await {
                    return;
                }
                frontend.set_capa(rewrite_capa(&upstream_capa, frontend.offers_stls()));
                continue;
            }
            Action::Login { credentials } => {
                if !listener.accepts_password(client.is_tls()) {
                    tracing::warn!(%peer, user = %credentials.username, "login refused: password without TLS on a network listener");
                    drop(credentials);
                    let reply = format!("-ERR [SYS/PERM] {TLS_REQUIRED}: use STLS first\r\n");
                    if write_client(&mut client, reply.as_bytes(), deadline)
                        .await
                        .is_err()
                    {
                        return;
                    }
                    continue;
                }
                match login(&ctx, &target, &listener, &mut upstream, &credentials, peer).await {
                    Ok((account, reply)) => {
                        if client.write_all(&reply).await.is_err() {
                            return;
                        }
                        let Some(up) = upstream.take() else { return };
                        let (mut stream, pending) = up.into_parts();
                        relay_and_log(&mut client, &buf, &mut stream, &pending, &account, peer)
                            .await;
                        return;
                    }
                    Err(reply) => write_client(&mut client, &reply, deadline).await,
                }
            }
        };
        if written.is_err() {
            return;
        }
    }
}

async fn login(
    ctx: &Context,
    target: &Target,
    listener: &ListenerConfig,
    upstream: &mut Option<Pop3Upstream>,
    credentials: &Credentials,
    peer: SocketAddr,
) -> Result<(String, Vec<u8>), Vec<u8>> {
    let (account, token) = ctx
        .token_for_peer(peer.ip(), credentials)
        .await
        .map_err(|f| failure_reply(&f))?;
    for _attempt in 0..2 {
        let fresh = upstream.is_none();
        if fresh {
            match connect(target, listener.upstream_tls).await {
                Ok(u) => *upstream = Some(u),
                Err(e) => {
                    tracing::warn!(%peer, upstream = %target.addr(), error = %e, "upstream not reachable");
                    return Err(failure_reply(&unavailable(
                        &format!("cannot reach {}", target.addr()),
                        &e,
                    )));
                }
            }
        }
        let up = upstream.as_mut().expect("connected above");
        match up.authenticate(&account, &token).await {
            Ok(AuthOutcome::Accepted { reply }) => {
                tracing::info!(%peer, %account, "logged in upstream");
                return Ok((account, reply));
            }
            Ok(AuthOutcome::Refused { reply, challenge }) => {
                tracing::warn!(%peer, %account, server = %String::from_utf8_lossy(&reply).trim_end(),
                    challenge = ?challenge, "upstream refused the token");
                ctx.tokens.discard_access_token(&account);
                // POP3 servers may close after a failed AUTH; start afresh next time.
                *upstream = None;
                return Err(reply);
            }
            Err(e) => {
                *upstream = None;
                if fresh {
                    tracing::warn!(%peer, %account, error = %e, "upstream failed during authentication");
                    return Err(failure_reply(&Failure::Unavailable(format!(
                        "the mail server failed during login: {e}"
                    ))));
                }
            }
        }
    }
    unreachable!("the loop returns on its second pass")
}
