//! Fake outbound proxies: an HTTP proxy (CONNECT tunnels and absolute-form
//! requests, optional Basic authentication, or a fixed answer, or silence)
//! and a SOCKS5 server (RFC 1928, with RFC 1929 user/password). Each records
//! what it was asked for.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::conn::AbortOnDrop;

/// What the HTTP proxy does with a request.
#[derive(Clone)]
pub enum HttpProxyMode {
    /// Tunnel CONNECT, forward absolute-form requests.
    Forward,
    /// Answer with this head and close.
    Answer(&'static str),
    /// Read the request, then say nothing.
    Silent,
}

/// One request a proxy got: its first line (`CONNECT host:port HTTP/1.1`,
/// `POST http://… HTTP/1.1`, or `SOCKS5 host:port`) and its credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Asked {
    pub line: String,
    pub credentials: Option<String>,
}

pub struct FakeHttpProxy {
    pub addr: SocketAddr,
    pub asked: Arc<Mutex<Vec<Asked>>>,
    _task: AbortOnDrop,
}

impl FakeHttpProxy {
    /// `basic`: the `user:password` it demands (407 with Basic otherwise).
    pub async fn start(mode: HttpProxyMode, basic: Option<&str>) -> FakeHttpProxy {
        use base64::Engine as _;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let expected = basic.map(|b| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(b)
            )
        });
        let log = asked.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (mode, expected, log) = (mode.clone(), expected.clone(), log.clone());
                tokio::spawn(async move {
                    let _ = http_one(stream, mode, expected, log).await;
                });
            }
        });
        FakeHttpProxy {
            addr,
            asked,
            _task: AbortOnDrop(task),
        }
    }

    pub fn asked(&self) -> Vec<Asked> {
        self.asked.lock().unwrap().clone()
    }
}

async fn read_head(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await? == 0 || head.len() > 64 * 1024 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push(byte[0]);
    }
    Ok(head)
}

async fn http_one(
    mut client: TcpStream,
    mode: HttpProxyMode,
    expected: Option<String>,
    log: Arc<Mutex<Vec<Asked>>>,
) -> std::io::Result<()> {
    let head = String::from_utf8_lossy(&read_head(&mut client).await?).into_owned();
    let line = head.lines().next().unwrap_or_default().to_owned();
    let credentials = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(n, _)| n.eq_ignore_ascii_case("proxy-authorization"))
        })
        .map(|(_, v)| v.trim().to_owned());
    log.lock().unwrap().push(Asked {
        line: line.clone(),
        credentials: credentials.clone(),
    });
    match mode {
        HttpProxyMode::Answer(answer) => return client.write_all(answer.as_bytes()).await,
        HttpProxyMode::Silent => {
            let mut rest = Vec::new();
            let _ = client.read_to_end(&mut rest).await;
            return Ok(());
        }
        HttpProxyMode::Forward => {}
    }
    if expected.is_some() && credentials != expected {
        return client
            .write_all(
                b"HTTP/1.1 407 Proxy Authentication Required\r\n\
                  Proxy-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\n\r\n",
            )
            .await;
    }
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method == "CONNECT" {
        let mut server = TcpStream::connect(target).await?;
        client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await?;
        tokio::io::copy_bidirectional(&mut client, &mut server).await?;
        return Ok(());
    }
    // Absolute form: `POST http://host:port/path HTTP/1.1`.
    let rest = target.strip_prefix("http://").unwrap_or(target);
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut server = TcpStream::connect(authority).await?;
    let origin = head.replacen(target, if path.is_empty() { "/" } else { path }, 1);
    let forwarded: String = origin
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("proxy-"))
        .collect::<Vec<_>>()
        .join("\r\n");
    server.write_all(forwarded.as_bytes()).await?;
    tokio::io::copy_bidirectional(&mut client, &mut server).await?;
    Ok(())
}

pub struct FakeSocks5 {
    pub addr: SocketAddr,
    pub asked: Arc<Mutex<Vec<Asked>>>,
    _task: AbortOnDrop,
}

impl FakeSocks5 {
    /// `login`: the user and password it demands (method 2), else none.
    pub async fn start(login: Option<(&str, &str)>) -> FakeSocks5 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let login = login.map(|(u, p)| (u.to_owned(), p.to_owned()));
        let log = asked.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (login, log) = (login.clone(), log.clone());
                tokio::spawn(async move {
                    let _ = socks_one(stream, login, log).await;
                });
            }
        });
        FakeSocks5 {
            addr,
            asked,
            _task: AbortOnDrop(task),
        }
    }

    pub fn asked(&self) -> Vec<Asked> {
        self.asked.lock().unwrap().clone()
    }
}

async fn socks_one(
    mut c: TcpStream,
    login: Option<(String, String)>,
    log: Arc<Mutex<Vec<Asked>>>,
) -> std::io::Result<()> {
    let mut greeting = [0u8; 2];
    c.read_exact(&mut greeting).await?;
    let mut methods = vec![0u8; greeting[1] as usize];
    c.read_exact(&mut methods).await?;
    let mut credentials = None;
    if let Some((user, password)) = &login {
        if !methods.contains(&2) {
            return c.write_all(&[5, 0xff]).await;
        }
        c.write_all(&[5, 2]).await?;
        let mut v = [0u8; 2];
        c.read_exact(&mut v).await?;
        let mut u = vec![0u8; v[1] as usize];
        c.read_exact(&mut u).await?;
        let mut plen = [0u8; 1];
        c.read_exact(&mut plen).await?;
        let mut p = vec![0u8; plen[0] as usize];
        c.read_exact(&mut p).await?;
        let given = (String::from_utf8_lossy(&u), String::from_utf8_lossy(&p));
        credentials = Some(given.0.to_string());
        if given.0 != *user || given.1 != *password {
            return c.write_all(&[1, 1]).await;
        }
        c.write_all(&[1, 0]).await?;
    } else {
        c.write_all(&[5, 0]).await?;
    }
    let mut request = [0u8; 4];
    c.read_exact(&mut request).await?;
    let target = match request[3] {
        1 => {
            let mut a = [0u8; 6];
            c.read_exact(&mut a).await?;
            format!(
                "{}.{}.{}.{}:{}",
                a[0],
                a[1],
                a[2],
                a[3],
                u16::from_be_bytes([a[4], a[5]])
            )
        }
        3 => {
            let mut len = [0u8; 1];
            c.read_exact(&mut len).await?;
            let mut name = vec![0u8; len[0] as usize + 2];
            c.read_exact(&mut name).await?;
            let port = u16::from_be_bytes([name[name.len() - 2], name[name.len() - 1]]);
            format!(
                "{}:{port}",
                String::from_utf8_lossy(&name[..name.len() - 2])
            )
        }
        _ => return c.write_all(&[5, 8, 0, 1, 0, 0, 0, 0, 0, 0]).await,
    };
    log.lock().unwrap().push(Asked {
        line: format!("SOCKS5 {target}"),
        credentials,
    });
    let Ok(mut server) = TcpStream::connect(&target).await else {
        return c.write_all(&[5, 5, 0, 1, 0, 0, 0, 0, 0, 0]).await;
    };
    c.write_all(&[5, 0, 0, 1, 127, 0, 0, 1, 0, 0]).await?;
    tokio::io::copy_bidirectional(&mut c, &mut server).await?;
    Ok(())
}
