//! TEMPORARY STUB (replaced by the real front end).
#![allow(unused)]
use super::{Credentials, Failure};
pub const MAX_LINE: usize = 8 * 1024;
pub enum Action {
    NeedMore,
    Reply(Vec<u8>),
    Login {
        tag: String,
        credentials: Credentials,
    },
    StartTls {
        tag: String,
    },
    Close(Vec<u8>),
}
pub struct Frontend;
impl Frontend {
    pub fn new(_c: Vec<String>, _s: bool) -> Self {
        Frontend
    }
    pub fn step(&mut self, _b: &mut Vec<u8>) -> Action {
        Action::NeedMore
    }
}
pub fn failure_reply(_t: &str, _f: &Failure) -> Vec<u8> {
    Vec::new()
}
pub fn rewrite_capabilities(u: &[String], _o: bool) -> Vec<String> {
    u.to_vec()
}
pub fn rewrite_greeting(l: &[u8], _c: &[String]) -> Vec<u8> {
    l.to_vec()
}
pub enum ServerLine<'a> {
    Untagged(&'a [u8]),
    Continuation(&'a [u8]),
    Tagged {
        tag: &'a [u8],
        status: Status,
        text: &'a [u8],
    },
}
#[derive(PartialEq, Eq, Debug, Clone, Copy)]
pub enum Status {
    Ok,
    No,
    Bad,
    Bye,
    PreAuth,
}
pub fn parse_server_line(_l: &[u8]) -> Option<ServerLine<'_>> {
    None
}
pub fn capabilities_in(_l: &[u8]) -> Option<Vec<String>> {
    None
}
