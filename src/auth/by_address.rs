//! Per-account state by address, for `accounts` and `tokens` alike: the
//! configured accounts, plus the addresses of catch-all (`@domain`)
//! accounts that earned an entry of their own.
//!
//! An address under a catch-all earns its entry only by having tokens on
//! disk or a finished sign-in (or, under a catch-all with a
//! `password_hash`, by the right password): things a stranger cannot do.
//! Any other address a client names gets no entry at all, so probing random
//! addresses takes no memory here and cannot crowd out a real one; those
//! attempts are throttled as names that are no account (`auth::throttle`).

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::config::AccountConfig;

pub struct ByAddress<T> {
    /// Accounts of their own, by lowercase address.
    exact: HashMap<String, Arc<T>>,
    /// `@domain` accounts, in configuration order.
    catch_all: Vec<AccountConfig>,
    /// Addresses of catch-all accounts that earned an entry, lowercase.
    known: RwLock<HashMap<String, Arc<T>>>,
}

/// What an address is to the proxy.
pub enum Lookup<'a, T> {
    /// A configured account, or a catch-all address with an entry.
    Found(Arc<T>),
    /// An address a catch-all covers that has no entry yet: this catch-all.
    Candidate(&'a AccountConfig),
    /// No account covers it.
    Unknown,
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
            known: RwLock::new(HashMap::new()),
        }
    }

    /// What `username` is: its own account, a catch-all address with an
    /// entry, a candidate under a catch-all, or nothing. Makes nothing.
    pub fn lookup(&self, username: &str) -> Lookup<'_, T> {
        let key = username.to_lowercase();
        if let Some(entry) = self.exact.get(&key) {
            return Lookup::Found(entry.clone());
        }
        let Some(catch_all) = self.catch_all.iter().find(|a| a.covers(username)) else {
            return Lookup::Unknown;
        };
        match self.known.read().get(&key) {
            Some(entry) => Lookup::Found(entry.clone()),
            None => Lookup::Candidate(catch_all),
        }
    }

    /// The entry of `username` if it has one (no candidate is made one).
    pub fn get(&self, username: &str) -> Option<Arc<T>> {
        match self.lookup(username) {
            Lookup::Found(entry) => Some(entry),
            Lookup::Candidate(_) | Lookup::Unknown => None,
        }
    }

    /// Gives a catch-all address its entry, after it earned one (tokens on
    /// disk, a finished sign-in): `make` builds it from the catch-all's
    /// settings for the address, unless one is there already. `None`: no
    /// catch-all covers `username` (a configured account is returned as is).
    pub fn admit(
        &self,
        username: &str,
        make: impl FnOnce(AccountConfig) -> Arc<T>,
    ) -> Option<Arc<T>> {
        let key = username.to_lowercase();
        if let Some(entry) = self.exact.get(&key) {
            return Some(entry.clone());
        }
        let catch_all = self.catch_all.iter().find(|a| a.covers(username))?;
        let mut known = self.known.write();
        Some(
            known
                .entry(key.clone())
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

    /// Catch-all addresses with an entry (for tests and status).
    pub fn known_addresses(&self) -> usize {
        self.known.read().len()
    }

    /// Every entry: configured accounts and catch-all addresses with one.
    pub fn all(&self) -> Vec<Arc<T>> {
        let known = self.known.read();
        self.exact.values().chain(known.values()).cloned().collect()
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
        let old_known = old.known.read();
        let known = self.known.get_mut();
        for (name, before) in old_known.iter() {
            if !self.exact.contains_key(name)
                && let Some(catch_all) = self.catch_all.iter().find(|a| a.covers(name))
                && catch_all.for_address(name).same_as(config(before))
            {
                known.insert(name.clone(), before.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(username: &str, client_id: &str) -> AccountConfig {
        AccountConfig {
            client_id: client_id.into(),
            ..AccountConfig::for_tests(username)
        }
    }

    fn table(client_id: &str) -> ByAddress<AccountConfig> {
        ByAddress::new(
            &[
                account("boss@contoso.com", client_id),
                account("@contoso.com", client_id),
            ],
            Arc::new,
        )
    }

    #[test]
    fn lookups_make_nothing_and_only_admit_makes_an_entry() {
        let t = table("id");
        assert!(matches!(t.lookup("Boss@contoso.com"), Lookup::Found(_)));
        assert!(
            matches!(t.lookup("new@contoso.com"), Lookup::Candidate(c) if c.username == "@contoso.com")
        );
        assert!(matches!(t.lookup("new@fabrikam.com"), Lookup::Unknown));
        assert!(t.get("new@contoso.com").is_none());
        assert_eq!(t.known_addresses(), 0);
        let made = t.admit("New@Contoso.com", Arc::new).unwrap();
        assert_eq!(made.username, "new@contoso.com");
        assert!(Arc::ptr_eq(
            &made,
            &t.admit("new@contoso.com", Arc::new).unwrap()
        ));
        assert!(matches!(t.lookup("NEW@contoso.com"), Lookup::Found(_)));
        assert!(t.admit("boss@contoso.com", Arc::new).is_some());
        assert!(t.admit("eve@fabrikam.com", Arc::new).is_none());
        assert_eq!(
            t.known_addresses(),
            1,
            "the configured account is not a catch-all entry"
        );
    }

    #[test]
    fn a_reload_keeps_entries_whose_settings_stay() {
        let old = table("id");
        let kept = old.admit("new@contoso.com", Arc::new).unwrap();
        let mut same = table("id");
        same.carry_over(&old, |a| a);
        assert!(Arc::ptr_eq(&same.get("new@contoso.com").unwrap(), &kept));
        let mut changed = table("other-id");
        changed.carry_over(&old, |a| a);
        assert_eq!(changed.known_addresses(), 0, "new settings: earned again");
    }
}
