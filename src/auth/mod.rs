//! Accounts, tokens and how they are obtained and kept.

pub mod accounts;
pub mod flows;
pub mod http;
pub mod password;
pub mod provider;
pub mod throttle;
pub mod tokens;
pub mod vault;
