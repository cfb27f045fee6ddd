//! A POP3 client session: greeting and CAPA from the upstream (rewritten),
//! USER/PASS and AUTH PLAIN/LOGIN taken locally, XOAUTH2 upstream, relay.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::{Context, Read, read_client, relay_and_log, unavailable};
use crate::config::ListenerConfig;
use crate::protocol::pop3::{Action, Frontend, failure_reply, greeting, rewrite_capa};
use crate::protocol::{Credentials, Failure};
use crate::upstream::Target;
use crate::upstream::pop3::{AuthOutcome, Pop3Upstream, connect};

/// Offered when the upstream cannot be reached at connect time.
const FALLBACK_CAPA: &[&str] = &["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE"];

pub async fn serve<C>(
    mut client: C,
    peer: SocketAddr,
    listener: Arc<ListenerConfig>,
    ctx: Arc<Context>,
) where
    C: AsyncRead + AsyncWrite + Unpin + Send,
{
    let deadline = Instant::now() + ctx.preauth_timeout;
    let target = ctx.target(&listener);
    let mut upstream = match connect(&target, listener.upstream_tls).await {
        Ok(u) => Some(u),
        Err(e) => {
            tracing::warn!(%peer, upstream = %target.addr(), error = %e, "upstream not reachable at connect");
            None
        }
    };
    let (hello, capa) = match &upstream {
        Some(u) => (greeting(&u.greeting_text), rewrite_capa(&u.capa, false)),
        None => (
            greeting(b"xoauth2-proxy ready"),
            rewrite_capa(
                &FALLBACK_CAPA
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>(),
                false,
            ),
        ),
    };
    if client.write_all(&hello).await.is_err() {
        return;
    }
    let mut frontend = Frontend::new(capa, false);
    let mut buf = Vec::with_capacity(512);
    loop {
        let written = match frontend.step(&mut buf) {
            Action::NeedMore => match read_client(&mut client, &mut buf, deadline).await {
                Ok(Read::Data) => continue,
                Ok(Read::Closed) | Err(_) => return,
                Ok(Read::Deadline) => {
                    tracing::info!(%peer, "closing: no login before the pre-authentication deadline");
                    let _ = client
                        .write_all(b"-ERR Timeout: no login in time\r\n")
                        .await;
                    return;
                }
            },
            Action::Reply(bytes) => client.write_all(&bytes).await,
            Action::Close(bytes) => {
                let _ = client.write_all(&bytes).await;
                let _ = client.shutdown().await;
                return;
            }
            Action::StartTls => {
                let _ = client.write_all(b"-ERR STLS is not available\r\n").await;
                return;
            }
            Action::Login { credentials } => {
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
                    Err(reply) => client.write_all(&reply).await,
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
        .token_for(credentials)
        .await
        .map_err(|f| failure_reply(&f))?;
    for attempt in 0..2 {
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
                // POP3 servers may close after a failed AUTH; start afresh next time.
                *upstream = None;
                return Err(reply);
            }
            Err(e) => {
                *upstream = None;
                if fresh || attempt == 1 {
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
