//! An IMAP client session: upstream greeting and capabilities rewritten,
//! LOGIN/AUTHENTICATE taken locally, XOAUTH2 upstream, then the relay.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::{Context, Read, read_client, unavailable};
use crate::config::ListenerConfig;
use crate::protocol::imap::{
    Action, Frontend, failure_reply, rewrite_capabilities, rewrite_greeting,
};
use crate::protocol::{Credentials, Failure};
use crate::upstream::imap::{AuthOutcome, ImapUpstream, connect};

/// Offered when the upstream cannot be reached at connect time, so the
/// client still gets to LOGIN and hear why in words.
const FALLBACK_CAPABILITIES: &[&str] = &["IMAP4rev1", "SASL-IR", "LITERAL+", "ID"];

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
    let caps = match &upstream {
        Some(u) => rewrite_capabilities(&u.capabilities, false),
        None => rewrite_capabilities(
            &FALLBACK_CAPABILITIES
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
            false,
        ),
    };
    let greeting = match &upstream {
        Some(u) => rewrite_greeting(&u.greeting, &caps),
        None => format!(
            "* OK [CAPABILITY {}] xoauth2-proxy ready\r\n",
            caps.join(" ")
        )
        .into_bytes(),
    };
    if client.write_all(&greeting).await.is_err() {
        return;
    }
    let mut frontend = Frontend::new(caps, false);
    let mut buf = Vec::with_capacity(1024);
    loop {
        let action = frontend.step(&mut buf);
        let result = match action {
            Action::NeedMore => match read_client(&mut client, &mut buf, deadline).await {
                Ok(Read::Data) => continue,
                Ok(Read::Closed) | Err(_) => return,
                Ok(Read::Deadline) => {
                    tracing::info!(%peer, "closing: no login before the pre-authentication deadline");
                    let _ = client
                        .write_all(b"* BYE Autologout: no login in time\r\n")
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
            Action::StartTls { tag } => {
                // Not offered until local TLS exists; the front end only asks when offered.
                let _ = client
                    .write_all(format!("{tag} BAD STARTTLS is not available\r\n").as_bytes())
                    .await;
                return;
            }
            Action::Login { tag, credentials } => {
                match login(
                    &ctx,
                    &target,
                    &listener,
                    &mut upstream,
                    &tag,
                    &credentials,
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
                        super::relay_and_log(
                            &mut client,
                            &buf,
                            &mut stream,
                            &pending,
                            &account,
                            peer,
                        )
                        .await;
                        return;
                    }
                    Err(reply) => client.write_all(&reply).await,
                }
            }
        };
        if result.is_err() {
            return;
        }
    }
}

/// Authenticates upstream for `credentials`. `Ok` carries the account and
/// the server's reply for the client (its OK under the client's tag); `Err`
/// the refusal to send, after which the session stays in the login state.
async fn login(
    ctx: &Context,
    target: &crate::upstream::Target,
    listener: &ListenerConfig,
    upstream: &mut Option<ImapUpstream>,
    tag: &str,
    credentials: &Credentials,
    peer: SocketAddr,
) -> Result<(String, Vec<u8>), Vec<u8>> {
    let (account, token) = ctx
        .token_for(credentials)
        .await
        .map_err(|f| failure_reply(tag, &f))?;
    // One retry on a fresh connection: the server may have dropped an idle
    // pre-login connection while the user was typing.
    for attempt in 0..2 {
        let fresh = upstream.is_none();
        if fresh {
            match connect(target, listener.upstream_tls).await {
                Ok(u) => *upstream = Some(u),
                Err(e) => {
                    tracing::warn!(%peer, upstream = %target.addr(), error = %e, "upstream not reachable");
                    return Err(failure_reply(
                        tag,
                        &unavailable(&format!("cannot reach {}", target.addr()), &e),
                    ));
                }
            }
        }
        let up = upstream.as_mut().expect("connected above");
        match up.authenticate(tag, &account, &token).await {
            Ok(AuthOutcome::Accepted { reply }) => {
                tracing::info!(%peer, %account, "logged in upstream");
                return Ok((account, reply));
            }
            Ok(AuthOutcome::Refused { reply, challenge }) => {
                tracing::warn!(%peer, %account, server = %String::from_utf8_lossy(&reply).trim_end(),
                    challenge = ?challenge, "upstream refused the token");
                return Err(reply);
            }
            Err(e) => {
                *upstream = None;
                if fresh || attempt == 1 {
                    tracing::warn!(%peer, %account, error = %e, "upstream failed during authentication");
                    return Err(failure_reply(
                        tag,
                        &Failure::Unavailable(format!("the mail server failed during login: {e}")),
                    ));
                }
            }
        }
    }
    unreachable!("the loop returns on its second pass")
}
