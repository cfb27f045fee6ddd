//! The binary's own modules (declared by `main.rs`, not by the library):
//! the clap types, and one file per subcommand family. They reach the
//! library as `xoauth2_proxy::…`, as any other user of it would.

pub(crate) mod args;
pub(crate) mod authorize;
pub(crate) mod init;
pub(crate) mod password;
pub(crate) mod service;
pub(crate) mod store;
pub(crate) mod token;
