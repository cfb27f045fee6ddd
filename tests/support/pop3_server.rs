//! A fake Office-365-like POP3 server (implicit TLS) that only accepts SASL XOAUTH2.

use std::collections::BTreeSet;
use std::io;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::net::TcpStream;

use super::conn::{AbortOnDrop, LineConn, ServerLog, check_xoauth2, spawn_accept_loop, trim_eol};
use super::pki::TestPki;
use super::token_server::TokenState;

const MAX_LINE: usize = 64 * 1024;

pub const GREETING: &str = "+OK The Microsoft Exchange POP3 service is ready.";
pub const NOT_VALID_IN_STATE: &str = "-ERR Command is not valid in this state.";

#[derive(Clone, Debug)]
pub struct Pop3Opts {
    /// The only `user=` accepted in XOAUTH2.
    pub user: String,
    /// The maildrop (message 1 first), shared by all sessions.
    pub messages: Vec<Vec<u8>>,
    /// Accept `AUTH XOAUTH2 <initial response>` (RFC 5034); if false, only `AUTH XOAUTH2`
    /// followed by `+ ` and the response line, and an initial response gets `-ERR`.
    pub allow_initial_response: bool,
    /// The lines of the CAPA answer, without the `+OK` and the final `.`.
    pub capabilities: Vec<String>,
}

impl Default for Pop3Opts {
    fn default() -> Self {
        Pop3Opts {
            user: super::USER.to_owned(),
            messages: Vec::new(),
            allow_initial_response: true,
            capabilities: ["TOP", "UIDL", "SASL PLAIN XOAUTH2", "USER", "RESP-CODES"]
                .map(str::to_owned)
                .to_vec(),
        }
    }
}

pub struct Pop3State {
    log: Arc<ServerLog>,
    /// (id, message); ids are stable across deletions and used as UIDL.
    maildrop: Mutex<Vec<(u64, Vec<u8>)>>,
    deleted: Mutex<Vec<Vec<u8>>>,
}

impl Deref for Pop3State {
    type Target = ServerLog;

    fn deref(&self) -> &ServerLog {
        &self.log
    }
}

impl Pop3State {
    /// The maildrop now (messages deleted by a completed QUIT are gone).
    pub fn maildrop(&self) -> Vec<Vec<u8>> {
        lock(&self.maildrop)
            .iter()
            .map(|(_, m)| m.clone())
            .collect()
    }

    /// Messages removed by DELE + QUIT, in order.
    pub fn deleted(&self) -> Vec<Vec<u8>> {
        lock(&self.deleted).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct FakePop3Server {
    pub addr: SocketAddr,
    pub state: Arc<Pop3State>,
    _accept: AbortOnDrop,
}

impl FakePop3Server {
    pub async fn start(pki: &TestPki, tokens: Arc<TokenState>, opts: Pop3Opts) -> Self {
        Self::start_with_config(pki.server_config.clone(), tokens, opts).await
    }

    pub async fn start_with_config(
        tls_config: Arc<rustls::ServerConfig>,
        tokens: Arc<TokenState>,
        opts: Pop3Opts,
    ) -> Self {
        let state = Arc::new(Pop3State {
            log: Arc::new(ServerLog::default()),
            maildrop: Mutex::new((1..).zip(opts.messages.iter().cloned()).collect()),
            deleted: Mutex::new(Vec::new()),
        });
        let opts = Arc::new(opts);
        let st = state.clone();
        let (addr, accept) = spawn_accept_loop("FakePop3Server", move |tcp| {
            let session = Session {
                opts: opts.clone(),
                state: st.clone(),
                tokens: tokens.clone(),
                tls_config: tls_config.clone(),
                snapshot: None,
                marked: BTreeSet::new(),
            };
            async move {
                let _guard = session.state.log.open_connection();
                let _ = session.run(tcp).await;
            }
        })
        .await;
        FakePop3Server {
            addr,
            state,
            _accept: accept,
        }
    }
}

struct Session {
    opts: Arc<Pop3Opts>,
    state: Arc<Pop3State>,
    tokens: Arc<TokenState>,
    tls_config: Arc<rustls::ServerConfig>,
    /// The maildrop as of authentication; `Some` once authenticated.
    snapshot: Option<Vec<(u64, Vec<u8>)>>,
    /// Message numbers marked by DELE.
    marked: BTreeSet<usize>,
}

impl Session {
    async fn run(mut self, tcp: TcpStream) -> io::Result<()> {
        let mut conn = LineConn::plain(tcp)
            .accept_tls(self.tls_config.clone())
            .await?;
        conn.write_all(format!("{GREETING}\r\n").as_bytes()).await?;
        loop {
            let line = match conn.read_line(MAX_LINE).await {
                Ok(Some(line)) => line,
                Ok(None) => break,
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    conn.write_all(b"-ERR Line too long.\r\n").await?;
                    break;
                }
                Err(e) => return Err(e),
            };
            self.state
                .log
                .record_command(self.snapshot.is_some(), &line);
            let text = String::from_utf8_lossy(trim_eol(&line)).into_owned();
            let (verb, args) = text.split_once(' ').unwrap_or((text.as_str(), ""));
            let verb = verb.to_ascii_uppercase();
            let reply = match (verb.as_str(), self.snapshot.is_some()) {
                ("CAPA", _) => {
                    let mut reply = String::from("+OK\r\n");
                    for cap in &self.opts.capabilities {
                        reply.push_str(cap);
                        reply.push_str("\r\n");
                    }
                    reply.push_str(".\r\n");
                    reply.into_bytes()
                }
                ("QUIT", authenticated) => {
                    if authenticated {
                        self.commit_deletions();
                    }
                    conn.write_all(b"+OK Microsoft Exchange Server POP3 server signing off.\r\n")
                        .await?;
                    break;
                }
                ("AUTH", false) => self.auth(&mut conn, args).await?.into_bytes(),
                ("NOOP", true) => b"+OK\r\n".to_vec(),
                ("RSET", true) => {
                    self.marked.clear();
                    b"+OK\r\n".to_vec()
                }
                ("STAT", true) => {
                    let live = self.live();
                    let size: usize = live.iter().map(|(_, m)| m.len()).sum();
                    format!("+OK {} {size}\r\n", live.len()).into_bytes()
                }
                ("LIST", true) | ("UIDL", true) => self.listing(&verb, args).into_bytes(),
                ("RETR", true) => match self.message(args) {
                    Ok(msg) => {
                        let mut reply = format!("+OK {} octets\r\n", msg.len()).into_bytes();
                        reply.extend_from_slice(&super::dot_stuff(&msg));
                        reply
                    }
                    Err(e) => e.into_bytes(),
                },
                ("TOP", true) => self.top(args),
                ("DELE", true) => match self.message(args) {
                    Ok(_) => {
                        self.marked
                            .insert(args.trim().parse().expect("checked by message()"));
                        b"+OK Marked for deletion.\r\n".to_vec()
                    }
                    Err(e) => e.into_bytes(),
                },
                (
                    "AUTH" | "USER" | "PASS" | "APOP" | "NOOP" | "RSET" | "STAT" | "LIST" | "UIDL"
                    | "RETR" | "TOP" | "DELE" | "STLS",
                    _,
                ) => format!("{NOT_VALID_IN_STATE}\r\n").into_bytes(),
                _ => b"-ERR Protocol error. 14\r\n".to_vec(),
            };
            conn.write_all(&reply).await?;
        }
        let _ = conn.shutdown().await;
        Ok(())
    }

    async fn auth(&mut self, conn: &mut LineConn, args: &str) -> io::Result<String> {
        let mut words = args.split(' ').filter(|w| !w.is_empty());
        let Some(mechanism) = words.next().map(str::to_ascii_uppercase) else {
            return Ok("+OK\r\nPLAIN\r\nXOAUTH2\r\n.\r\n".to_owned());
        };
        let initial = words.next().map(str::to_owned);
        if mechanism != "XOAUTH2" && mechanism != "PLAIN" {
            return Ok("-ERR Unrecognized authentication type.\r\n".to_owned());
        }
        if initial.is_some() && !self.opts.allow_initial_response {
            return Ok("-ERR Protocol error. 14\r\n".to_owned());
        }
        let response = match initial {
            Some(ir) if ir == "=" => Vec::new(),
            Some(ir) => ir.into_bytes(),
            None => {
                conn.write_all(b"+ \r\n").await?;
                match conn.read_line(MAX_LINE).await? {
                    Some(line) => trim_eol(&line).to_vec(),
                    None => return Err(io::ErrorKind::UnexpectedEof.into()),
                }
            }
        };
        if response == b"*" {
            return Ok("-ERR Authentication canceled.\r\n".to_owned());
        }
        if mechanism == "PLAIN" {
            return Ok(
                "-ERR Authentication failure: unknown user name or bad password.\r\n".to_owned(),
            );
        }
        if check_xoauth2(&self.state.log, &self.tokens, &self.opts.user, &response) {
            self.snapshot = Some(lock(&self.state.maildrop).clone());
            return Ok("+OK User successfully authenticated.\r\n".to_owned());
        }
        conn.write_all(format!("+ {}\r\n", super::error_challenge_b64()).as_bytes())
            .await?;
        if conn.read_line(MAX_LINE).await?.is_none() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok("-ERR [AUTH] Authentication failed.\r\n".to_owned())
    }

    fn snapshot(&self) -> &[(u64, Vec<u8>)] {
        self.snapshot.as_deref().unwrap_or_default()
    }

    /// (message number, message) of messages not marked deleted.
    fn live(&self) -> Vec<(usize, &Vec<u8>)> {
        (1..)
            .zip(self.snapshot())
            .filter(|(n, _)| !self.marked.contains(n))
            .map(|(n, (_, m))| (n, m))
            .collect()
    }

    fn message(&self, args: &str) -> Result<Vec<u8>, String> {
        let n: usize = args
            .split(' ')
            .next()
            .and_then(|a| a.trim().parse().ok())
            .ok_or_else(|| "-ERR Protocol error. 14\r\n".to_owned())?;
        if n == 0 || n > self.snapshot().len() || self.marked.contains(&n) {
            return Err("-ERR No such message.\r\n".to_owned());
        }
        Ok(self.snapshot()[n - 1].1.clone())
    }

    fn listing(&self, verb: &str, args: &str) -> String {
        let item = |n: usize| -> String {
            let (id, msg) = &self.snapshot()[n - 1];
            if verb == "LIST" {
                format!("{n} {}", msg.len())
            } else {
                format!("{n} fake-uid-{id}")
            }
        };
        if !args.trim().is_empty() {
            return match self.message(args) {
                Ok(_) => format!(
                    "+OK {}\r\n",
                    item(args.trim().parse().expect("checked by message()"))
                ),
                Err(e) => e,
            };
        }
        let live = self.live();
        let mut reply = format!("+OK {} messages\r\n", live.len());
        for (n, _) in live {
            reply.push_str(&item(n));
            reply.push_str("\r\n");
        }
        reply.push_str(".\r\n");
        reply
    }

    fn top(&self, args: &str) -> Vec<u8> {
        let mut words = args.split(' ');
        let (Some(n), Some(lines)) = (
            words.next(),
            words.next().and_then(|l| l.parse::<usize>().ok()),
        ) else {
            return b"-ERR Protocol error. 14\r\n".to_vec();
        };
        let msg = match self.message(n) {
            Ok(msg) => msg,
            Err(e) => return e.into_bytes(),
        };
        let header_end = msg
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(msg.len(), |i| i + 4);
        let mut end = header_end;
        for _ in 0..lines {
            match msg[end..].windows(2).position(|w| w == b"\r\n") {
                Some(i) => end += i + 2,
                None => {
                    end = msg.len();
                    break;
                }
            }
        }
        let mut reply = b"+OK\r\n".to_vec();
        reply.extend_from_slice(&super::dot_stuff(&msg[..end]));
        reply
    }

    fn commit_deletions(&mut self) {
        let ids: Vec<u64> = self
            .marked
            .iter()
            .map(|&n| self.snapshot()[n - 1].0)
            .collect();
        let mut maildrop = lock(&self.state.maildrop);
        let mut deleted = lock(&self.state.deleted);
        maildrop.retain(|(id, msg)| {
            let gone = ids.contains(id);
            if gone {
                deleted.push(msg.clone());
            }
            !gone
        });
    }
}
