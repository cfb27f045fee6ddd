//! What the operating system says about a connection's other end.

pub mod peer_user;
pub mod proxy;
