//! The imports of the frozen `ringhost:station@0.1` for its stations: each
//! one the 0.2 implementation ([`super::host_api`]) under the 0.1 names
//! and types, so both versions share one behaviour.

use super::StationState;
use super::worlds::v01::ringhost::station::{host, inbox, kv, types};
use super::worlds::v02::ringhost::station::{
    host as host02, inbox as inbox02, kv as kv02, types as types02,
};

impl types::Host for StationState {}

impl host::Host for StationState {
    fn log(&mut self, level: types::Level, message: String) {
        let level = match level {
            types::Level::Trace => types02::Level::Trace,
            types::Level::Debug => types02::Level::Debug,
            types::Level::Info => types02::Level::Info,
            types::Level::Warn => types02::Level::Warn,
            types::Level::Error => types02::Level::Error,
        };
        host02::Host::log(self, level, message);
    }

    fn now_unix_ms(&mut self) -> u64 {
        host02::Host::now_unix_ms(self)
    }

    fn monotonic_ns(&mut self) -> u64 {
        host02::Host::monotonic_ns(self)
    }

    fn get_node_info(&mut self) -> types::NodeInfo {
        let n = host02::Host::get_node_info(self);
        types::NodeInfo {
            name: n.name,
            index: n.index,
            ring_size: n.ring_size,
            ring_hash: n.ring_hash,
        }
    }
}

impl kv::Host for StationState {
    fn get(&mut self, key: String) -> Option<Vec<u8>> {
        kv02::Host::get(self, key)
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        kv02::Host::set(self, key, value)
    }

    fn delete(&mut self, key: String) -> bool {
        kv02::Host::delete(self, key)
    }

    fn keys(&mut self) -> Vec<String> {
        kv02::Host::keys(self)
    }
}

impl inbox::Host for StationState {
    fn take(&mut self, max: u32) -> Vec<Vec<u8>> {
        inbox02::Host::take(self, max)
    }

    fn pending(&mut self) -> u32 {
        inbox02::Host::pending(self)
    }
}
