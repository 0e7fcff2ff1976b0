//! A loaded, checked guest: its compiled code, pre-linked, of one of three kinds.

use wasmtime::component::InstancePre as ComponentPre;
use wasmtime::InstancePre as ModulePre;

use crate::state::State;

/// The three guest kinds. `kinds::instantiate` is the one place that tells them apart.
pub enum Code {
    /// A component of world consumer (or consumer-with-events): handle-chunk calls.
    Component { pre: ComponentPre<State> },
    /// A component of world consumer-streams: one `stream<u8>` per chunked read.
    Streams { pre: ComponentPre<State> },
    /// A core module at the canonical-ABI level: chunkd performs the ABI itself.
    Core { pre: ModulePre<State>, initialize: bool, has_post_handle: bool, has_post_invoke: bool },
}

pub struct Guest {
    pub code: Code,
    pub world: &'static str,
    pub has_events: bool,
    pub imports: Vec<String>,
    pub from_cache: bool,
}

impl Guest {
    /// "component" or "core".
    pub fn kind(&self) -> &'static str {
        match self.code {
            Code::Component { .. } | Code::Streams { .. } => "component",
            Code::Core { .. } => "core",
        }
    }

    pub fn engine(&self) -> &wasmtime::Engine {
        match &self.code {
            Code::Component { pre } | Code::Streams { pre } => pre.engine(),
            Code::Core { pre, .. } => pre.module().engine(),
        }
    }
}
