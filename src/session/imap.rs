//! An IMAP client session: upstream greeting and capabilities rewritten,
//! LOGIN/AUTHENTICATE taken locally, XOAUTH2 upstream, then the relay.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use zeroize::Zeroize;

use super::client::ClientStream;
use super::upstream_auth::login;
use super::{
    Context, GOODBYE_GRACE, Read, TLS_REQUIRED, accept_implicit_tls, read_client, upgrade,
    write_client,
};
use crate::config::{ListenerConfig, LocalTls};
use crate::protocol::imap::{
    Action, Frontend, rewrite_capabilities, rewrite_greeting, starttls_ok,
};
use crate::upstream::imap::connect;

/// Offered when the upstream cannot be reached at connect time, so the
/// client still gets to LOGIN and hear why in words.
const FALLBACK_CAPABILITIES: &[&str] = &["IMAP4rev1", "SASL-IR", "LITERAL+", "ID"];

pub async fn serve(
    mut client: ClientStream,
    peer: SocketAddr,
    listener: Arc<ListenerConfig>,
    ctx: Arc<Context>,
) {
    let deadline = Instant::now() + ctx.preauth_timeout;
    let target = ctx.target(&listener);
    // The client's TLS handshake and the upstream connection overlap.
    let (handshake, connected) = tokio::join!(
        accept_implicit_tls(&mut client, &listener, &ctx, peer, deadline),
        connect(&target, listener.upstream_tls)
    );
    ctx.note_upstream(&target, &connected);
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
    let offer_starttls = listener.local_tls == LocalTls::Starttls;
    let caps = match &upstream {
        Some(u) => rewrite_capabilities(&u.capabilities, offer_starttls),
        None => rewrite_capabilities(
            &FALLBACK_CAPABILITIES
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
            offer_starttls,
        ),
    };
    // LOGINDISABLED (RFC 3501 §6.2.3) tells clients to STARTTLS before LOGIN
    // where a password in the clear would be refused.
    let caps_after_tls = caps.clone();
    let mut caps = caps;
    if !listener.accepts_password(client.is_tls()) {
        caps.push("LOGINDISABLED".to_owned());
    }
    let greeting = match &upstream {
        Some(u) => rewrite_greeting(&u.greeting, &caps),
        None => format!(
            "* OK [CAPABILITY {}] xoauth2-proxy ready\r\n",
            caps.join(" ")
        )
        .into_bytes(),
    };
    if write_client(&mut client, &greeting, deadline)
        .await
        .is_err()
    {
        return;
    }
    let mut frontend = Frontend::new(caps, offer_starttls);
    let mut buf = Vec::with_capacity(1024);
    loop {
        let action = frontend.step(&mut buf);
        let result = match action {
            Action::NeedMore => match read_client(&mut client, &mut buf, deadline).await {
                Ok(Read::Data) => continue,
                Ok(Read::Closed) | Err(_) => return,
                Ok(Read::Deadline) => {
                    tracing::info!(%peer, "closing: no login before the pre-authentication deadline");
                    let _ = write_client(
                        &mut client,
                        b"* BYE Autologout: no login in time\r\n",
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
            Action::StartTls { tag } => {
                if write_client(&mut client, &starttls_ok(&tag), deadline)
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
                frontend.set_capabilities(caps_after_tls.clone());
                continue;
            }
            Action::Login { tag, credentials } => {
                if !listener.accepts_password(client.is_tls()) {
                    tracing::warn!(%peer, user = %credentials.username, "login refused: password without TLS on a network listener");
                    let reply = format!(
                        "{tag} NO [PRIVACYREQUIRED] {TLS_REQUIRED}: use STARTTLS first\r\n"
                    );
                    drop(credentials);
                    if write_client(&mut client, reply.as_bytes(), deadline)
                        .await
                        .is_err()
                    {
                        return;
                    }
                    continue;
                }
                match login(
                    &ctx,
                    &target,
                    listener.upstream_tls,
                    "",
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
                    Err(reply) => write_client(&mut client, &reply, deadline).await,
                }
            }
        };
        if result.is_err() {
            return;
        }
    }
}
