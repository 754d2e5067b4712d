//! The admin API's request parsing: the JSON bodies (rollback, config) and
//! the query strings (push, kv listing), as the server parses them. The
//! first byte picks which.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringhost::admin::api::{self, ConfigBody, PrefixQuery, RollbackBody};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    match pick % 4 {
        0 => {
            let _ = serde_json::from_slice::<RollbackBody>(rest);
        }
        1 => {
            let _ = serde_json::from_slice::<ConfigBody>(rest);
        }
        2 => {
            if let Ok(query) = std::str::from_utf8(rest) {
                let _ = api::push_request(query);
            }
        }
        _ => {
            if let Ok(query) = std::str::from_utf8(rest) {
                let _ = serde_urlencoded::from_str::<PrefixQuery>(query);
            }
        }
    }
});
