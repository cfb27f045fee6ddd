//! A POP3 client session: greeting and CAPA from the upstream (rewritten),
//! USER/PASS and AUTH PLAIN/LOGIN taken locally, XOAUTH2 upstream, relay.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use zeroize::Zeroize;

use super::client::ClientStream;
use super::upstream_auth::login;
use super::{
    Context, GOODBYE_GRACE, Read, TLS_REQUIRED, accept_implicit_tls, read_client, relay_and_log,
    upgrade, write_client,
};
use crate::config::{ListenerConfig, LocalTls};
use crate::protocol::pop3::{Action, Frontend, greeting, rewrite_capa, starttls_ok};
use crate::upstream::pop3::connect;

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
                let tls = listener.upstream_tls;
                match login(
                    &ctx,
                    &target,
                    tls,
                    "",
                    &mut upstream,
                    "",
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
