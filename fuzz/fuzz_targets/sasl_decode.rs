//! SASL PLAIN and LOGIN decoding of client responses, and the upstream's
//! XOAUTH2 error challenge.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xoauth2_proxy::sasl::{
    decode_error_challenge, decode_login_part, decode_plain, decode_response,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(credentials) = decode_plain(data) {
        assert!(!credentials.username.is_empty());
        assert!(decode_response(data).is_ok());
    }
    if let Ok(part) = decode_login_part(data) {
        let raw = decode_response(data).expect("a decoded LOGIN part is a decoded response");
        assert_eq!(part.as_bytes(), raw.as_slice());
    }
    let _ = decode_error_challenge(data);
});
