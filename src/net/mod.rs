//! What the operating system says about a connection's other end.

pub(crate) mod http_server;
pub mod peer_user;
pub mod proxy;
