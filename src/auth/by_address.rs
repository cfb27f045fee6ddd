//! Per-account state by address, for `accounts` and `tokens` alike: the
//! configured accounts, plus the addresses of catch-all (`@domain`)
//! accounts, each made on first use with the catch-all's settings.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::config::AccountConfig;

/// How many addresses the catch-all accounts hold in memory. Each address
/// a client tries costs an entry; this bounds what probing random addresses
/// can take (an entry is a few hundred bytes).
pub const MAX_CATCH_ALL_ADDRESSES: usize = 10_000;

pub struct ByAddress<T> {
    /// Accounts of their own, by lowercase address.
    exact: HashMap<String, Arc<T>>,
    /// `@domain` accounts, in configuration order.
    catch_all: Vec<AccountConfig>,
    /// Addresses of catch-all accounts used so far, lowercase.
    seen: RwLock<HashMap<String, Arc<T>>>,
}

impl<T> ByAddress<T> {
    pub fn new(accounts: &[AccountConfig], make: impl Fn(AccountConfig) -> Arc<T>) -> Self {
        ByAddress {
            exact: accounts
                .iter()
                .filter(|a| !a.is_catch_all())
                .map(|a| (a.username.to_lowercase(), make(a.clone())))
                .collect(),
            catch_all: accounts
                .iter()
                .filter(|a| a.is_catch_all())
                .cloned()
                .collect(),
            seen: RwLock::new(HashMap::new()),
        }
    }

    /// The entry of `username`: its own account, else the address under its
    /// domain's catch-all (made with `make` on first use). `None`: no
    /// account covers it, or the catch-all table is full.
    pub fn get(
        &self,
        username: &str,
        make: impl FnOnce(AccountConfig) -> Arc<T>,
    ) -> Option<Arc<T>> {
        let key = username.to_lowercase();
        if let Some(entry) = self.exact.get(&key) {
            return Some(entry.clone());
        }
        let catch_all = self.catch_all.iter().find(|a| a.covers(username))?;
        if let Some(entry) = self.seen.read().get(&key) {
            return Some(entry.clone());
        }
        let mut seen = self.seen.write();
        if seen.len() >= MAX_CATCH_ALL_ADDRESSES && !seen.contains_key(&key) {
            tracing::warn!(
                limit = MAX_CATCH_ALL_ADDRESSES,
                "catch-all address table full; new addresses refused"
            );
            return None;
        }
        Some(
            seen.entry(key.clone())
                .or_insert_with(|| make(catch_all.for_address(&key)))
                .clone(),
        )
    }

    /// A configured account of its own (not a catch-all address).
    pub fn exact(&self, username: &str) -> Option<&Arc<T>> {
        self.exact.get(&username.to_lowercase())
    }

    /// The `@domain` accounts.
    pub fn catch_alls(&self) -> &[AccountConfig] {
        &self.catch_all
    }

    /// Every entry: configured accounts and catch-all addresses seen.
    pub fn all(&self) -> Vec<Arc<T>> {
        let seen = self.seen.read();
        self.exact.values().chain(seen.values()).cloned().collect()
    }

    /// After a reload: takes `old`'s entry for every account (and catch-all
    /// address) whose settings, as `config` reads them, did not change.
    pub fn carry_over(&mut self, old: &ByAddress<T>, config: impl Fn(&T) -> &AccountConfig) {
        for (name, entry) in self.exact.iter_mut() {
            if let Some(before) = old.exact.get(name)
                && config(before).same_as(config(entry))
            {
                *entry = before.clone();
            }
        }
        let old_seen = old.seen.read();
        let seen = self.seen.get_mut();
        for (name, before) in old_seen.iter() {
            if !self.exact.contains_key(name)
                && let Some(catch_all) = self.catch_all.iter().find(|a| a.covers(name))
                && catch_all.for_address(name).same_as(config(before))
            {
                seen.insert(name.clone(), before.clone());
            }
        }
    }
}
