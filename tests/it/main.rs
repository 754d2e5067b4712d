//! The one integration-test binary (see STYLE.md §9).

mod admin;
mod admin_conns;
mod bad_input;
mod bounds;
mod cache;
mod corosync;
#[path = "../fleet/corosync.rs"]
mod corosync_driver;
mod cut_link;
mod dashboard;
mod deploy;
mod deploy_client;
mod deploy_order;
mod deploy_records;
mod deploy_rollback;
mod deploy_sources;
mod deploy_stream;
mod examples;
mod files;
mod fleet;
mod health;
mod ingest;
mod inputs;
mod leave_race;
#[path = "../fleet/mod.rs"]
mod netfleet;
mod release_identity;
mod ring;
mod sandbox;
mod sets;
mod slow_stop;
mod soak;
mod startup;
mod stations;
mod stop_signal;
mod support;
mod tokens;
mod tokens_demo;
mod trust;
mod up;
mod wire_faults;
mod worlds;
