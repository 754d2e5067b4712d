//! The worlds a node runs, and which one a component is.
//!
//! A node serves three worlds of two package versions from one linker:
//! - `ringhost:station/station@0.1.x` (frozen in `wit/v0.1`),
//! - `ringhost:station/station@0.2.x` and
//! - `ringhost:station/input-station@0.2.x` (`wit/station.wit`).
//!
//! Each version has its own `bindgen!`; the imports of both are one
//! implementation (`host_api` for 0.2, [`super::host_v01`] delegating to
//! it for 0.1). The world of a component is read from its type when it is
//! compiled ([`World::of`]): the version of the `ringhost:station`
//! interfaces it imports (every station imports at least `types`, which
//! its exports use), and for 0.2 whether it exports `on-input`. Component
//! model types are structural, so the exports alone could not tell a 0.1
//! station from a 0.2 one.
//!
//! What this module does not own: the calls' bounds and fault handling
//! ([`super::Station`]).

use anyhow::{Result, bail};
use wasmtime::component::{Component, InstancePre};
use wasmtime::{AsContextMut, Engine};

use super::{StationState, StopContext, Visit};

/// Bindings of `ringhost:station@0.2.0`, world `input-station` (which
/// includes `station`): the host imports of 0.2 and the `input-station`
/// exports.
pub mod v02 {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "input-station",
        exports: { default: async },
    });
}

/// Bindings of `ringhost:station@0.2.0`, world `station`: its exports; the
/// imports are those of [`v02`].
pub mod v02_station {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "station",
        exports: { default: async },
        with: {
            "ringhost:station/types": super::v02::ringhost::station::types,
            "ringhost:station/host": super::v02::ringhost::station::host,
            "ringhost:station/kv": super::v02::ringhost::station::kv,
            "ringhost:station/inbox": super::v02::ringhost::station::inbox,
            "ringhost:station/sets": super::v02::ringhost::station::sets,
        },
    });
}

/// Bindings of the frozen `ringhost:station@0.1.0`, world `station`.
pub mod v01 {
    wasmtime::component::bindgen!({
        path: "wit/v0.1",
        world: "station",
        exports: { default: async },
    });
}

/// The worlds this node runs, as named in errors.
pub const SUPPORTED: &str = "ringhost:station/station@0.1.x, ringhost:station/station@0.2.x, \
                             ringhost:station/input-station@0.2.x";

/// Which world a component is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum World {
    /// `ringhost:station/station@0.1.x`.
    StationV01,
    /// `ringhost:station/station@0.2.x`.
    StationV02,
    /// `ringhost:station/input-station@0.2.x`: also takes `on-input`.
    InputStationV02,
}

impl World {
    /// The world's name, with its version range.
    pub fn name(self) -> &'static str {
        match self {
            Self::StationV01 => "ringhost:station/station@0.1.x",
            Self::StationV02 => "ringhost:station/station@0.2.x",
            Self::InputStationV02 => "ringhost:station/input-station@0.2.x",
        }
    }

    /// Whether components of this world export `on-input`.
    pub fn takes_inputs(self) -> bool {
        self == Self::InputStationV02
    }

    /// The world of `component`, read from its imports and exports.
    ///
    /// # Errors
    /// When it imports `ringhost:station` interfaces of another version
    /// than 0.1 and 0.2, or of both; the message names the worlds this
    /// node runs.
    pub fn of(component: &Component, engine: &Engine) -> Result<World> {
        let ty = component.component_type();
        let mut versions: Vec<&str> = Vec::new();
        for (name, _) in ty.imports(engine) {
            let Some(rest) = name.strip_prefix("ringhost:station/") else {
                continue;
            };
            let version = rest.split_once('@').map_or("", |(_, v)| v);
            if !versions.contains(&version) {
                versions.push(version);
            }
        }
        let on_input = ty.exports(engine).any(|(name, _)| name == "on-input");
        let minor = |v: &str| {
            if v.starts_with("0.1.") {
                Some(1)
            } else if v.starts_with("0.2.") {
                Some(2)
            } else {
                None
            }
        };
        let minors: Vec<Option<u8>> = versions.iter().map(|v| minor(v)).collect();
        match minors.as_slice() {
            [Some(1)] if !on_input => Ok(Self::StationV01),
            // A component that imports none of our interfaces uses no
            // types of them either: any world fits; the newest is chosen.
            [] | [Some(2)] if on_input => Ok(Self::InputStationV02),
            [] | [Some(2)] => Ok(Self::StationV02),
            _ => bail!(
                "the component imports ringhost:station@{}{}; this node runs the worlds \
                 {SUPPORTED}",
                versions.join(" and @"),
                if on_input {
                    " and exports on-input"
                } else {
                    ""
                }
            ),
        }
    }
}

/// A component linked and checked against its world.
pub enum StationPre {
    /// World `station@0.1`.
    V01(v01::StationPre<StationState>),
    /// World `station@0.2`.
    V02(v02_station::StationPre<StationState>),
    /// World `input-station@0.2`.
    Input(v02::InputStationPre<StationState>),
}

impl StationPre {
    /// Checks that `pre` exports the functions of `world`.
    ///
    /// # Errors
    /// When an export is missing or of the wrong type.
    pub fn new(pre: InstancePre<StationState>, world: World) -> wasmtime::Result<Self> {
        Ok(match world {
            World::StationV01 => Self::V01(v01::StationPre::new(pre)?),
            World::StationV02 => Self::V02(v02_station::StationPre::new(pre)?),
            World::InputStationV02 => Self::Input(v02::InputStationPre::new(pre)?),
        })
    }

    /// The world it was checked against.
    pub fn world(&self) -> World {
        match self {
            Self::V01(_) => World::StationV01,
            Self::V02(_) => World::StationV02,
            Self::Input(_) => World::InputStationV02,
        }
    }

    /// A new instance in `store`.
    ///
    /// # Errors
    /// As wasmtime's instantiation (a trap in a start function, limits).
    pub(super) async fn instantiate_async(
        &self,
        store: impl AsContextMut<Data = StationState>,
    ) -> wasmtime::Result<Exports> {
        Ok(match self {
            Self::V01(p) => Exports::V01(p.instantiate_async(store).await?),
            Self::V02(p) => Exports::V02(p.instantiate_async(store).await?),
            Self::Input(p) => Exports::Input(p.instantiate_async(store).await?),
        })
    }
}

/// The exports of a live instance, of whichever world.
pub(super) enum Exports {
    V01(v01::Station),
    V02(v02_station::Station),
    Input(v02::InputStation),
}

impl Exports {
    /// Calls `init`.
    pub(super) async fn call_init(
        &self,
        store: impl AsContextMut<Data = StationState>,
        config: &[(String, String)],
    ) -> wasmtime::Result<Result<(), String>> {
        match self {
            Self::V01(b) => b.call_init(store, config).await,
            Self::V02(b) => b.call_init(store, config).await,
            Self::Input(b) => b.call_init(store, config).await,
        }
    }

    /// Calls `on-particle`.
    pub(super) async fn call_on_particle(
        &self,
        store: impl AsContextMut<Data = StationState>,
        ctx: &StopContext,
        slot: &[u8],
    ) -> wasmtime::Result<Result<Visit, String>> {
        match self {
            Self::V01(b) => {
                let old = v01::StopContext {
                    node_name: ctx.node_name.clone(),
                    node_index: ctx.node_index,
                    ring_size: ctx.ring_size,
                    generation: ctx.generation,
                    lap: ctx.lap,
                    hop: ctx.hop,
                    now_unix_ms: ctx.now_unix_ms,
                    last_lap_us: ctx.last_lap_us,
                };
                let visit = b.call_on_particle(store, &old, slot).await?;
                Ok(visit.map(|v| Visit {
                    slot: v.slot,
                    hold_ms: v.hold_ms,
                }))
            }
            Self::V02(b) => b.call_on_particle(store, ctx, slot).await,
            Self::Input(b) => b.call_on_particle(store, ctx, slot).await,
        }
    }

    /// Calls `on-input`; `None` when the world has no such export.
    pub(super) async fn call_on_input(
        &self,
        store: impl AsContextMut<Data = StationState>,
        inputs: &[Vec<u8>],
    ) -> Option<wasmtime::Result<Result<(), String>>> {
        match self {
            Self::Input(b) => Some(b.call_on_input(store, inputs).await),
            Self::V01(_) | Self::V02(_) => None,
        }
    }
}
