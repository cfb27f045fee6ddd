//! The stored tokens: `store migrate` (to another token store) and `forget`.

use xoauth2_proxy::auth::vault::TokenStore;
use xoauth2_proxy::config::Config;

/// `store migrate`: the configured store's entries copied to `to`.
pub(crate) fn migrate(config: &Config, to: &str, replace: bool) -> anyhow::Result<()> {
    use xoauth2_proxy::config::TokenStoreSetting;
    let from = TokenStore::open(config)?;
    let setting =
        TokenStoreSetting::try_from(to.to_owned()).map_err(|e| anyhow::anyhow!("--to {e}"))?;
    let dest = TokenStore::open_setting(config, &setting)?;
    if from.describe() == dest.describe() {
        anyhow::bail!("the configured token store is already {}", dest.describe());
    }
    let done = xoauth2_proxy::auth::vault::copy_entries(&from, &dest, replace)?;
    for account in &done.copied {
        println!("copied {account}");
    }
    for account in &done.kept {
        println!(
            "kept {account}: {} already holds tokens for it (--replace to overwrite)",
            dest.describe()
        );
    }
    println!(
        "Copied {} account(s) from {} to {}. Set token_store in [proxy] to use it.",
        done.copied.len(),
        from.describe(),
        dest.describe()
    );
    Ok(())
}

pub(crate) fn forget(config: &Config, name: &str) -> anyhow::Result<()> {
    let store = TokenStore::open(config)?;
    let name = config
        .account(name)
        .map(|a| a.username.clone())
        .unwrap_or_else(|| name.to_owned());
    let name = name.as_str();
    let path = store.location(name);
    if store.remove(name)? {
        println!(
            "Removed the tokens of {name} ({}). Sign in again with `xoauth2-proxy authorize {name}` \
             and choose the local password there. A proxy that is running keeps \
             the access token it holds until it expires (at most an hour); restart it to drop it now.",
            path.display()
        );
    } else {
        println!(
            "{name} has no stored tokens ({} does not exist).",
            path.display()
        );
    }
    Ok(())
}
