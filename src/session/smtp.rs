//! An SMTP submission session: the upstream's greeting, EHLO answered from
//! the upstream's own EHLO after its STARTTLS (rewritten), AUTH PLAIN/LOGIN
//! taken locally, XOAUTH2 upstream, then the relay.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::{Context, Read, read_client, relay_and_log, unavailable};
use crate::config::ListenerConfig;
use crate::protocol::smtp::{Action, Frontend, ehlo_reply, failure_reply};
use crate::protocol::{Credentials, Failure};
use crate::upstream::Target;
use crate::upstream::smtp::{AuthOutcome, SmtpUpstream, connect};

/// EHLO keywords offered when the upstream cannot be reached; AUTH is added
/// by the rewrite.
const FALLBACK_EHLO: &[&str] = &["xoauth2-proxy", "ENHANCEDSTATUSCODES"];
/// The EHLO name used upstream when a reconnect happens before the client
/// has given one (cannot happen with a well-behaved client).
const DEFAULT_EHLO_NAME: &str = "localhost";

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
    let hello = match &upstream {
        Some(u) => u.greeting.clone(),
        None => b"220 xoauth2-proxy ESMTP ready\r\n".to_vec(),
    };
    if client.write_all(&hello).await.is_err() {
        return;
    }
    let mut frontend = Frontend::new(false);
    let mut client_name: Option<String> = None;
    let mut buf = Vec::with_capacity(512);
    loop {
        let written = match frontend.step(&mut buf) {
            Action::NeedMore => match read_client(&mut client, &mut buf, deadline).await {
                Ok(Read::Data) => continue,
                Ok(Read::Closed) | Err(_) => return,
                Ok(Read::Deadline) => {
                    tracing::info!(%peer, "closing: no login before the pre-authentication deadline");
                    let _ = client
                        .write_all(b"421 4.4.2 Timeout: no login in time\r\n")
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
                let _ = client.write_all(b"454 4.7.0 TLS not available\r\n").await;
                return;
            }
            Action::Ehlo { domain, extended } => {
                let lines = match upstream.as_mut() {
                    Some(up) => match up.ehlo(&domain).await {
                        Ok(lines) => Some(lines),
                        Err(e) => {
                            tracing::warn!(%peer, error = %e, "upstream EHLO failed");
                            upstream = None;
                            None
                        }
                    },
                    None => None,
                };
                let lines =
                    lines.unwrap_or_else(|| FALLBACK_EHLO.iter().map(|s| s.to_string()).collect());
                client_name = Some(domain);
                client.write_all(&ehlo_reply(&lines, extended, false)).await
            }
            Action::Login { credentials } => {
                let name = client_name.as_deref().unwrap_or(DEFAULT_EHLO_NAME);
                match login(
                    &ctx,
                    &target,
                    &listener,
                    &mut upstream,
                    &credentials,
                    name,
                    peer,
                )
                .await
                {
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
    upstream: &mut Option<SmtpUpstream>,
    credentials: &Credentials,
    ehlo_name: &str,
    peer: SocketAddr,
) -> Result<(String, Vec<u8>), Vec<u8>> {
    let (account, token) = ctx
        .token_for(credentials)
        .await
        .map_err(|f| failure_reply(&f))?;
    for attempt in 0..2 {
        let fresh = upstream.is_none();
        if fresh {
            let connected = async {
                let mut up = connect(target, listener.upstream_tls).await?;
                up.ehlo(ehlo_name).await?;
                Ok::<_, crate::upstream::UpstreamError>(up)
            };
            match connected.await {
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
            Ok(AuthOutcome::Refused {
                reply,
                code,
                challenge,
            }) => {
                let text = String::from_utf8_lossy(&reply);
                tracing::warn!(%peer, %account, server = %text.trim_end(), challenge = ?challenge,
                    "upstream refused the token");
                if text.contains("5.7.139") {
                    tracing::warn!(%account, "SMTP AUTH is disabled for this mailbox or tenant: an admin can enable it with \
                        `Set-CASMailbox -Identity {account} -SmtpClientAuthenticationDisabled $false`");
                } else if code == 432 {
                    tracing::warn!(%account, "Office 365 allows 3 concurrent SMTP connections per mailbox; the client opened more");
                }
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
