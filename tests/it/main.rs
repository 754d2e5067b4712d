//! The one integration-test binary (see STYLE.md §9).

mod cut_link;
mod deploy;
mod files;
mod health;
mod ring;
mod stations;
mod support;
mod up;
mod wire_faults;
