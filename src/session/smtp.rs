//! An SMTP submission session: the upstream's greeting, EHLO answered from
//! the upstream's own EHLO after its STARTTLS (rewritten), AUTH PLAIN/LOGIN
//! taken locally, XOAUTH2 upstream, then the relay. On a fixed-account
//! listener no client login is needed: the first allowed `MAIL FROM` signs
//! the proxy in as that account and starts the relay.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use zeroize::Zeroize;

use super::client::ClientStream;
use super::upstream_auth::{authenticate, login};
use super::{
    Context, GOODBYE_GRACE, Read, TLS_REQUIRED, accept_implicit_tls, read_client, relay_and_log,
    upgrade, write_client,
};
use crate::config::{ListenerConfig, LocalTls};
use crate::protocol::smtp::{
    Action, Frontend, ehlo_reply, failure_reply, leading_mail_from, starttls_ok,
};
use crate::protocol::{Failure, one_line};
use crate::upstream::Target;
use crate::upstream::smtp::{SmtpUpstream, connect};

/// EHLO keywords offered when the upstream cannot be reached; AUTH is added
/// by the rewrite.
const FALLBACK_EHLO: &[&str] = &["xoauth2-proxy", "ENHANCEDSTATUSCODES"];
/// The EHLO name used upstream when a reconnect happens before the client
/// has given one (cannot happen with a well-behaved client).
const DEFAULT_EHLO_NAME: &str = "localhost";

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
    let hello = match &upstream {
        Some(u) => u.greeting.clone(),
        None => b"220 xoauth2-proxy ESMTP ready\r\n".to_vec(),
    };
    if write_client(&mut client, &hello, deadline).await.is_err() {
        return;
    }
    let mut frontend = Frontend::new(listener.local_tls == LocalTls::Starttls);
    let mut client_name: Option<String> = None;
    let mut buf = Vec::with_capacity(512);
    loop {
        if let Some(account) = &listener.fixed_account
            && let Some(mail) = leading_mail_from(&buf)
        {
            let relay = FixedRelay {
                ctx: &ctx,
                target: &target,
                listener: &listener,
                account,
                peer,
            };
            match relay
                .start(
                    &mut upstream,
                    client_name.as_deref(),
                    mail.sender.as_deref(),
                )
                .await
            {
                Ok(()) => {
                    let Some(up) = upstream.take() else { return };
                    let (mut stream, pending) = up.into_parts();
                    // The MAIL FROM line is still in `buf`: it goes up first.
                    relay_and_log(&mut client, &buf, &mut stream, &pending, account, peer).await;
                    return;
                }
                Err(reply) => {
                    buf.drain(..mail.consumed);
                    if write_client(&mut client, &reply, deadline).await.is_err() {
                        return;
                    }
                    continue;
                }
            }
        }
        let written = match frontend.step(&mut buf) {
            Action::NeedMore => match read_client(&mut client, &mut buf, deadline).await {
                Ok(Read::Data) => continue,
                Ok(Read::Closed) | Err(_) => return,
                Ok(Read::Deadline) => {
                    tracing::info!(%peer, "closing: no login before the pre-authentication deadline");
                    let _ = write_client(
                        &mut client,
                        b"421 4.4.2 Timeout: no login in time\r\n",
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
                // Injection defence: nothing sent before the handshake counts;
                // the client greets again (RFC 3207 §4.2).
                buf.zeroize();
                buf.clear();
                client_name = None;
                if !upgrade(&mut client, &ctx, peer, deadline).await {
                    return;
                }
                continue;
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
                let reply = ehlo_reply(&lines, extended, frontend.offers_starttls());
                write_client(&mut client, &reply, deadline).await
            }
            Action::Login { credentials } if listener.fixed_account.is_some() => {
                // Devices configured with a login keep working; the relay
                // signs in upstream as the fixed account whatever they send.
                tracing::info!(%peer, user = %credentials.username,
                    "client AUTH on a fixed-account listener: accepted and ignored");
                drop(credentials);
                write_client(&mut client, AUTH_IGNORED, deadline).await
            }
            Action::Login { credentials } => {
                if !listener.accepts_password(client.is_tls()) {
                    tracing::warn!(%peer, user = %credentials.username, "login refused: password without TLS on a network listener");
                    drop(credentials);
                    let reply = format!("538 5.7.11 {TLS_REQUIRED}: use STARTTLS first\r\n");
                    if write_client(&mut client, reply.as_bytes(), deadline)
                        .await
                        .is_err()
                    {
                        return;
                    }
                    continue;
                }
                let name = client_name.as_deref().unwrap_or(DEFAULT_EHLO_NAME);
                match login(
                    &ctx,
                    &target,
                    listener.upstream_tls,
                    name,
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

/// The answer to a client's AUTH on a fixed-account listener.
const AUTH_IGNORED: &[u8] = b"235 2.7.0 Authentication not needed here; accepted\r\n";

/// A fixed-account listener's first transaction: the sender is checked
/// against `allowed_senders`, then the proxy signs in upstream as the
/// account and the session becomes a relay, starting with that MAIL FROM.
struct FixedRelay<'a> {
    ctx: &'a Context,
    target: &'a Target,
    listener: &'a ListenerConfig,
    account: &'a str,
    peer: SocketAddr,
}

impl FixedRelay<'_> {
    /// `Ok`: signed in upstream, relay now. `Err`: the reply to the MAIL
    /// FROM; the session stays where it was.
    async fn start(
        &self,
        upstream: &mut Option<SmtpUpstream>,
        client_name: Option<&str>,
        sender: Option<&str>,
    ) -> Result<(), Vec<u8>> {
        let peer = self.peer;
        let Some(ehlo_name) = client_name else {
            return Err(b"503 5.5.1 Send EHLO first\r\n".to_vec());
        };
        let Some(sender) = sender else {
            return Err(b"501 5.5.4 Syntax: MAIL FROM:<address>\r\n".to_vec());
        };
        let allowed = self
            .listener
            .allowed_senders
            .iter()
            .any(|a| a.eq_ignore_ascii_case(sender));
        if !allowed {
            tracing::warn!(%peer, sender = %one_line(sender), account = %self.account,
                "MAIL FROM refused: not in allowed_senders");
            return Err(format!(
                "550 5.7.1 Sender <{}> is not allowed on this relay\r\n",
                one_line(sender)
            )
            .into_bytes());
        }
        let grant = self.ctx.gate.unattended(self.account).await.map_err(|e| {
            failure_reply(&Failure::Unavailable(format!(
                "the relay cannot sign in as {}: {e}",
                self.account
            )))
        })?;
        let signed_in = authenticate(
            self.ctx,
            self.target,
            self.listener.upstream_tls,
            ehlo_name,
            upstream,
            "",
            &grant,
            peer,
        )
        .await;
        match signed_in {
            Ok(_reply) => Ok(()),
            // A 535 would read as "your password is wrong" to a client that
            // sent none: say it is the relay's sign-in that failed.
            Err(reply) => Err(failure_reply(&Failure::Unavailable(format!(
                "the mail server refused the relay's sign-in as {}: {}",
                self.account,
                String::from_utf8_lossy(&reply).trim_end()
            )))),
        }
    }
}
