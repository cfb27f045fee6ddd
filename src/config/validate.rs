//! The rules serde cannot check: value ranges, keys that go together, and
//! what one section says about another. One function per section; each
//! error names the key.

use super::{
    AccountConfig, AdminListen, Backend, Config, ConfigError, Flow, ListenerConfig, LocalTls,
    MAX_MAX_RECIPIENTS, Protocol, ProviderKind,
};

/// Makes the full key of a setting of one `[[listener]]` or `[[account]]`.
type KeyOf<'a> = &'a dyn Fn(&str) -> String;

impl Config {
    fn invalid(&self, key: String, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.source.clone(),
            key,
            message: message.into(),
        }
    }

    /// Checks what serde cannot: cross-field rules and value ranges.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        self.validate_proxy()?;
        self.validate_local_certificate()?;
        for (i, listener) in self.listeners.iter().enumerate() {
            self.validate_listener(i, listener)?;
        }
        for (i, account) in self.accounts.iter().enumerate() {
            self.validate_account(i, account)?;
        }
        Ok(())
    }

    /// `[proxy]`: limits that must not be zero, the page's address, `ca_file`.
    fn validate_proxy(&self) -> Result<(), ConfigError> {
        let p = &self.proxy;
        for (name, value) in [
            ("preauth_timeout_secs", p.preauth_timeout_secs),
            ("max_connections", p.max_connections as u64),
            ("connect_timeout_secs", p.connect_timeout_secs),
            (
                "max_connections_per_source",
                p.max_connections_per_source as u64,
            ),
            ("log_keep", p.log_keep as u64),
            ("admin_timeout_secs", p.admin_timeout_secs),
        ] {
            if value == 0 {
                return Err(self.invalid(format!("proxy.{name}"), "must be at least 1"));
            }
        }
        if let Some(name) = &p.token_store_name
            && let Err(e) = super::check_store_name(name)
        {
            return Err(self.invalid("proxy.token_store_name".into(), e));
        }
        if p.admin_timeout_secs > super::MAX_ADMIN_TIMEOUT_SECS {
            return Err(self.invalid(
                "proxy.admin_timeout_secs".into(),
                format!(
                    "must be at most {}: a longer wait lets a half-sent request hold one of the \
                     page's connections",
                    super::MAX_ADMIN_TIMEOUT_SECS
                ),
            ));
        }
        if let AdminListen::At(addr) = p.admin_listen
            && !addr.ip().is_loopback()
            && !p.admin_allow_remote
        {
            return Err(self.invalid(
                "proxy.admin_listen".into(),
                format!(
                    "{addr} is not a loopback address: the page signs accounts in, so other \
                     machines must not reach it; use 127.0.0.1, or set admin_allow_remote = true \
                     if this network is trusted"
                ),
            ));
        }
        if let Some(addr) = p.metrics_listen
            && !addr.ip().is_loopback()
            && p.metrics_allow_from.is_empty()
        {
            return Err(self.invalid(
                "proxy.metrics_allow_from".into(),
                format!(
                    "metrics_listen {addr} is not a loopback address: list the networks that \
                     may scrape it, e.g. metrics_allow_from = [\"192.168.1.0/24\"] (or listen \
                     on 127.0.0.1)"
                ),
            ));
        }
        if p.graph_memory_mib == 0 {
            return Err(self.invalid(
                "proxy.graph_memory_mib".into(),
                "must be at least 1: the Graph listeners hold each message in memory until \
                 Graph has it",
            ));
        }
        self.validate_notify_command()?;
        if let Some(ca) = &p.ca_file
            && !ca.is_file()
        {
            return Err(self.invalid(
                "proxy.ca_file".into(),
                format!("{} does not exist or is not a file", ca.display()),
            ));
        }
        Ok(())
    }

    /// `[proxy] notify_command`: a program given by its absolute path (it
    /// runs from a service, whose `PATH` is not the user's), no empty words.
    fn validate_notify_command(&self) -> Result<(), ConfigError> {
        let key = || "proxy.notify_command".to_owned();
        let Some(command) = &self.proxy.notify_command else {
            return Ok(());
        };
        let Some(program) = command.first() else {
            return Err(self.invalid(
                key(),
                "is empty: give the program's absolute path (and its arguments), or remove the \
                 key for desktop notifications",
            ));
        };
        if !std::path::Path::new(program).is_absolute() {
            return Err(self.invalid(
                key(),
                format!(
                    "the program `{program}` must be an absolute path (the proxy may run as a \
                     service, without your PATH); the list is the program and its arguments, \
                     not a shell line"
                ),
            ));
        }
        if command.iter().any(|w| w.contains('\0')) {
            return Err(self.invalid(key(), "a word contains a NUL character"));
        }
        Ok(())
    }

    /// `[proxy]`: `cert_file` and `key_file` together and present, and the
    /// extra names of a generated certificate.
    fn validate_local_certificate(&self) -> Result<(), ConfigError> {
        let p = &self.proxy;
        match (&p.cert_file, &p.key_file) {
            (Some(_), None) => {
                return Err(self.invalid(
                    "proxy.key_file".into(),
                    "is missing: cert_file needs the private key that goes with it",
                ));
            }
            (None, Some(_)) => {
                return Err(self.invalid(
                    "proxy.cert_file".into(),
                    "is missing: key_file needs the certificate that goes with it",
                ));
            }
            _ => {}
        }
        for (name, file) in [("cert_file", &p.cert_file), ("key_file", &p.key_file)] {
            if let Some(file) = file
                && !file.is_file()
            {
                return Err(self.invalid(
                    format!("proxy.{name}"),
                    format!("{} does not exist or is not a file", file.display()),
                ));
            }
        }
        for (i, name) in p.cert_names.iter().enumerate() {
            if rustls_pki_types::ServerName::try_from(name.as_str()).is_err() {
                return Err(self.invalid(
                    format!("proxy.cert_names[{i}]"),
                    format!("`{name}` is neither a DNS name nor an IP address"),
                ));
            }
        }
        Ok(())
    }

    /// One `[[listener]]`: who may reach it, what it takes in the clear, and
    /// an address no earlier listener uses.
    fn validate_listener(&self, i: usize, l: &ListenerConfig) -> Result<(), ConfigError> {
        let key = |k: &str| format!("listener[{i}].{k}");
        self.validate_exposure(l, &key)?;
        if l.backend == Backend::Graph && l.protocol != Protocol::Smtp {
            return Err(self.invalid(
                key("backend"),
                "\"graph\" only applies with protocol = \"smtp\" (Graph sends mail; it does not read it here)",
            ));
        }
        match (l.backend, &l.upstream, l.upstream_tls) {
            (Backend::Smtp, None, _) => {
                return Err(self.invalid(
                    key("upstream"),
                    "is required (host:port of the mail server)",
                ));
            }
            (Backend::Smtp, Some(_), None) => {
                return Err(self.invalid(
                    key("upstream_tls"),
                    "is required: \"implicit\" (993, 995) or \"starttls\" (587, 143)",
                ));
            }
            (Backend::Graph, Some(_), _) | (Backend::Graph, _, Some(_)) => {
                return Err(self.invalid(
                    key("upstream"),
                    "does not apply with backend = \"graph\": messages go to Microsoft Graph (remove upstream and upstream_tls)",
                ));
            }
            _ => {}
        }
        if l.backend == Backend::Graph && !self.accounts.iter().any(AccountConfig::can_use_graph) {
            return Err(self.invalid(
                key("backend"),
                "\"graph\" sends through Microsoft Graph, and no [[account]] of this file is an \
                 office365 account (or a custom one with graph_url)",
            ));
        }
        if let Some(account) = &l.fixed_account {
            self.validate_fixed_account(l, account, &key)?;
        } else if !l.allowed_senders.is_empty() {
            return Err(self.invalid(
                key("allowed_senders"),
                "only applies with fixed_account; client logins may send as their account",
            ));
        } else if l.max_recipients.is_some() && l.backend != Backend::Graph {
            return Err(self.invalid(
                key("max_recipients"),
                "only applies with fixed_account; client logins are limited by Office 365",
            ));
        }
        if let Some(n) = l.max_recipients
            && !(1..=MAX_MAX_RECIPIENTS).contains(&n)
        {
            return Err(self.invalid(
                key("max_recipients"),
                format!(
                    "must be between 1 and {MAX_MAX_RECIPIENTS} (Exchange Online's highest limit)"
                ),
            ));
        }
        if let Some(j) = self.listeners[..i]
            .iter()
            .position(|o| o.listen == l.listen && l.listen.port() != 0)
        {
            return Err(self.invalid(
                key("listen"),
                format!("{} is already used by listener[{j}]", l.listen),
            ));
        }
        Ok(())
    }

    /// `allow_from` off loopback, and passwords in the clear on the network.
    fn validate_exposure(&self, l: &ListenerConfig, key: KeyOf) -> Result<(), ConfigError> {
        if !l.listen.ip().is_loopback() && l.allow_from.is_empty() {
            return Err(self.invalid(
                key("allow_from"),
                format!(
                    "{} is not a loopback address, so other machines can connect: list the \
                     networks that may, e.g. allow_from = [\"192.168.1.0/24\"] (or listen on 127.0.0.1)",
                    l.listen
                ),
            ));
        }
        if l.is_exposed()
            && l.local_tls == LocalTls::None
            && !l.allow_plaintext
            && l.fixed_account.is_none()
        {
            return Err(self.invalid(
                key("local_tls"),
                format!(
                    "{} is reachable from other machines and would take passwords in the clear: \
                     set local_tls = \"starttls\" or \"implicit\", or allow_plaintext = true for \
                     devices that cannot do TLS on a protected network",
                    l.listen
                ),
            ));
        }
        Ok(())
    }

    /// A fixed-account SMTP relay: anyone allowed to connect sends as the
    /// account, so its networks and senders must be listed, and the account
    /// must be one that needs no client password to unlock.
    fn validate_fixed_account(
        &self,
        l: &ListenerConfig,
        account: &str,
        key: KeyOf,
    ) -> Result<(), ConfigError> {
        if l.protocol != Protocol::Smtp {
            return Err(self.invalid(
                key("fixed_account"),
                "is for SMTP listeners only (devices that send mail without logging in)",
            ));
        }
        if l.allow_from.is_empty() {
            return Err(self.invalid(
                key("allow_from"),
                "is required with fixed_account: anyone who can connect sends as that account, \
                 so list the devices' networks, e.g. allow_from = [\"192.168.1.0/24\"]",
            ));
        }
        match self.account(account) {
            None => {
                return Err(self.invalid(
                    key("fixed_account"),
                    format!("`{account}` is not an [[account]] of this file"),
                ));
            }
            Some(a) if a.password_hash.is_none() => {
                return Err(self.invalid(
                    key("fixed_account"),
                    format!(
                        "`{account}` needs password_hash (an unattended account): no client \
                         logs in on this listener, so its tokens cannot be sealed with a client's \
                         password; make one with `xoauth2-proxy hash-password`"
                    ),
                ));
            }
            Some(a) if l.backend == Backend::Graph && !a.can_use_graph() => {
                return Err(self.invalid(
                    key("fixed_account"),
                    format!(
                        "`{account}` is not an office365 account (nor a custom one with graph_url), \
                         and backend = \"graph\" sends through Microsoft Graph, which only \
                         Microsoft 365 accounts can use"
                    ),
                ));
            }
            Some(_) => {}
        }
        if l.allowed_senders.is_empty() {
            return Err(self.invalid(
                key("allowed_senders"),
                format!(
                    "is required with fixed_account: list the MAIL FROM addresses the \
                     devices use, e.g. allowed_senders = [\"{account}\"]"
                ),
            ));
        }
        Ok(())
    }

    /// One `[[account]]`: a name no earlier account has, the provider's
    /// required keys, the password hash, then its flow and credential.
    fn validate_account(&self, i: usize, a: &AccountConfig) -> Result<(), ConfigError> {
        let key = |k: &str| format!("account[{i}].{k}");
        if a.is_catch_all() && a.mailbox.is_some() {
            return Err(self.invalid(
                key("mailbox"),
                "cannot be used with a catch-all account: each address opens its own mailbox",
            ));
        }
        if a.client_id.trim().is_empty() {
            return Err(self.invalid(
                key("client_id"),
                "is empty: put the application (client) id of your Entra app here",
            ));
        }
        if let Some(j) = self.accounts[..i]
            .iter()
            .position(|o| o.username.eq_ignore_ascii_case(&a.username))
        {
            return Err(self.invalid(
                key("username"),
                format!("`{}` is already configured as account[{j}]", a.username),
            ));
        }
        if a.provider == ProviderKind::Custom {
            if a.token_url.is_none() {
                return Err(
                    self.invalid(key("token_url"), "is required with provider = \"custom\"")
                );
            }
            if a.scopes.is_none() {
                return Err(self.invalid(key("scopes"), "is required with provider = \"custom\""));
            }
        }
        for (name, url) in [
            ("authorize_url", &a.authorize_url),
            ("token_url", &a.token_url),
            ("device_code_url", &a.device_code_url),
            ("graph_url", &a.graph_url),
        ] {
            if let Some(url) = url
                && let Err(why) = super::values::require_https_off_loopback(url)
            {
                return Err(self.invalid(key(name), why));
            }
        }
        if a.cloud.is_some() && a.provider != ProviderKind::Office365 {
            return Err(self.invalid(
                key("cloud"),
                "only applies with provider = \"office365\" (the Microsoft cloud of the tenant)",
            ));
        }
        if a.verify_identity == Some(false) && a.provider != ProviderKind::Custom {
            return Err(self.invalid(
                key("verify_identity"),
                "can only be turned off for provider = \"custom\": Office 365 and Gmail always \
                 say who signed in, and the check keeps another person's sign-in out of this account",
            ));
        }
        if a.tenant.is_some() && a.provider == ProviderKind::Gmail {
            return Err(self.invalid(key("tenant"), "only applies with provider = \"office365\""));
        }
        if let Some(phc) = &a.password_hash
            && let Err(why) = super::validate_phc(secrecy::ExposeSecret::expose_secret(phc))
        {
            return Err(self.invalid(
                key("password_hash"),
                format!("{why}; make one with `xoauth2-proxy hash-password`"),
            ));
        }
        self.validate_credential(a, &key)?;
        self.validate_flow(a, &key)
    }

    /// The app's certificate credential: both files, loadable, and not
    /// alongside a `client_secret`.
    fn validate_credential(&self, a: &AccountConfig, key: KeyOf) -> Result<(), ConfigError> {
        match (&a.client_certificate, &a.client_key) {
            (Some(_), None) => Err(self.invalid(
                key("client_key"),
                "is missing: client_certificate needs the private key that goes with it",
            )),
            (None, Some(_)) => Err(self.invalid(
                key("client_certificate"),
                "is missing: client_key needs the certificate that goes with it",
            )),
            (Some(_), Some(_)) if a.client_secret.is_some() => Err(self.invalid(
                key("client_secret"),
                "set either client_secret or client_certificate and client_key, not both",
            )),
            (Some(cert), Some(pem)) => {
                match crate::auth::assertion::ClientCertificate::load(cert, pem) {
                    Ok(_) => Ok(()),
                    Err(e) => {
                        let setting = e.setting();
                        let message = e.to_string();
                        let message = message
                            .strip_prefix(&format!("{setting}: "))
                            .unwrap_or(&message)
                            .to_owned();
                        Err(self.invalid(key(setting), message))
                    }
                }
            }
            (None, None) => Ok(()),
        }
    }

    /// What the chosen flow needs from the provider and the account.
    fn validate_flow(&self, a: &AccountConfig, key: KeyOf) -> Result<(), ConfigError> {
        match a.flow {
            // `auto` takes the device code where no authorize_url is known.
            Flow::DeviceCode | Flow::Auto => {}
            Flow::AuthorizationCode | Flow::Paste => {
                let flow = if a.flow == Flow::Paste {
                    "paste"
                } else {
                    "authorization_code"
                };
                if a.provider == ProviderKind::Custom && a.authorize_url.is_none() {
                    return Err(self.invalid(
                        key("authorize_url"),
                        format!("is required with provider = \"custom\" and flow = \"{flow}\""),
                    ));
                }
                if a.flow == Flow::AuthorizationCode && !a.redirect_on_this_machine() {
                    return Err(self.invalid(
                        key("redirect_uri"),
                        "is not on this machine, so flow = \"authorization_code\" (which \
                         listens for the answer on localhost) cannot receive it; use flow = \
                         \"paste\" (the address the browser ends on is pasted back) or an \
                         http://localhost redirect URI",
                    ));
                }
            }
            Flow::ClientCredentials => {
                if a.provider == ProviderKind::Gmail {
                    return Err(self.invalid(
                        key("flow"),
                        "\"client_credentials\" is not offered by Gmail; use \"authorization_code\" or \"device_code\"",
                    ));
                }
                if a.password_hash.is_none() {
                    return Err(self.invalid(
                        key("password_hash"),
                        "is required with flow = \"client_credentials\": there is no user sign-in \
                         whose tokens a client's password could seal, so the local password is \
                         checked against this hash; make one with `xoauth2-proxy hash-password`",
                    ));
                }
                if a.client_secret.is_none() && a.client_certificate.is_none() {
                    return Err(self.invalid(
                        key("client_secret"),
                        "is missing: flow = \"client_credentials\" needs the app's credential, \
                         client_secret or client_certificate and client_key",
                    ));
                }
            }
        }
        Ok(())
    }
}
