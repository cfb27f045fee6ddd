//! macOS' proxy settings, read from the system configuration
//! (`SCDynamicStoreCopyProxies`, through the `system-configuration` crate)
//! into the plain [`MacProxies`] that `mac_system_proxy` converts.

use system_configuration::core_foundation::array::CFArray;
use system_configuration::core_foundation::base::{CFType, CFTypeRef, TCFType};
use system_configuration::core_foundation::dictionary::CFDictionary;
use system_configuration::core_foundation::number::CFNumber;
use system_configuration::core_foundation::string::CFString;
use system_configuration::dynamic_store::SCDynamicStoreBuilder;

use super::MacProxies;

/// The settings now; empty (no proxy) when the store cannot be read.
pub(super) fn proxies() -> MacProxies {
    let Some(store) = SCDynamicStoreBuilder::new("xoauth2-proxy").build() else {
        tracing::debug!("the system configuration cannot be read: no macOS proxy");
        return MacProxies::default();
    };
    let Some(dict) = store.get_proxies() else {
        return MacProxies::default();
    };
    from_dictionary(&dict)
}

fn value(dict: &CFDictionary<CFString, CFType>, key: &'static str) -> Option<CFType> {
    dict.find(CFString::from_static_string(key))
        .map(|v| v.clone())
}

fn number(dict: &CFDictionary<CFString, CFType>, key: &'static str) -> Option<i64> {
    value(dict, key)?.downcast::<CFNumber>()?.to_i64()
}

fn text(dict: &CFDictionary<CFString, CFType>, key: &'static str) -> Option<String> {
    Some(value(dict, key)?.downcast::<CFString>()?.to_string())
}

fn from_dictionary(dict: &CFDictionary<CFString, CFType>) -> MacProxies {
    let exceptions = value(dict, "ExceptionsList")
        .and_then(|v| v.downcast::<CFArray>())
        .map(|list| {
            list.get_all_values()
                .into_iter()
                .filter(|item| !item.is_null())
                // SAFETY: the values of a property-list array are CF objects,
                // alive while `list` is; the get rule retains each one.
                .map(|item| unsafe { CFType::wrap_under_get_rule(item as CFTypeRef) })
                .filter_map(|item| item.downcast::<CFString>().map(|s| s.to_string()))
                .collect()
        })
        .unwrap_or_default();
    MacProxies {
        https_enable: number(dict, "HTTPSEnable").is_some_and(|n| n != 0),
        https_proxy: text(dict, "HTTPSProxy"),
        https_port: number(dict, "HTTPSPort"),
        socks_enable: number(dict, "SOCKSEnable").is_some_and(|n| n != 0),
        socks_proxy: text(dict, "SOCKSProxy"),
        socks_port: number(dict, "SOCKSPort"),
        exceptions,
    }
}
