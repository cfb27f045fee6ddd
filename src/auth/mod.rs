//! Accounts, tokens and how they are obtained and kept.

pub mod accounts;
pub mod assertion;
pub mod authcode;
pub mod by_address;
pub mod choice;
pub mod flows;
pub mod gate;
pub mod http;
pub mod identity;
pub mod loopback;
pub mod password;
pub mod paste;
pub mod provider;
pub mod signin;
pub mod throttle;
pub mod tokens;
pub mod vault;
