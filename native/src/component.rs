//! The component kind: the chunkd imports linked natively beside a
//! locked-down WASI 0.2, and the WIT values that cross.

use std::sync::Arc;

use pyo3::prelude::*;
use wasmtime::component::{ComponentType, Lift, Linker, Lower, Resource, ResourceType};
use wasmtime::Engine;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder};

use crate::host::{self, StreamErr};
use crate::output::GuestOut;
use crate::state::State;
use crate::wit;

/// The host side of `resource input-stream`: its rep is the stream's handle in Python.
pub struct InputStream;

#[derive(ComponentType, Lift, Lower, Clone, Debug)]
#[component(variant)]
pub enum StreamError {
    #[component(name = "closed")]
    Closed,
    #[component(name = "invalid-argument")]
    InvalidArgument(String),
    #[component(name = "failed")]
    Failed(String),
}

impl From<StreamErr> for StreamError {
    fn from(e: StreamErr) -> Self {
        match e {
            StreamErr::Closed => StreamError::Closed,
            StreamErr::Invalid(m) => StreamError::InvalidArgument(m),
            StreamErr::Failed(m) => StreamError::Failed(m),
        }
    }
}

#[derive(ComponentType, Lift, Lower, Clone, Debug)]
#[component(variant)]
pub enum StreamEnd {
    #[component(name = "completed")]
    Completed,
    #[component(name = "cancelled")]
    Cancelled,
    #[component(name = "failed")]
    Failed(String),
}

pub fn linker(engine: &Engine) -> wasmtime::Result<Linker<State>> {
    let mut l: Linker<State> = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut l)?;
    {
        let mut types = l.instance(wit::TYPES_IFACE)?;
        types.resource("input-stream", ResourceType::host::<InputStream>(), |mut store, rep| {
            host::drop_stream(store.data_mut(), rep)
        })?;
        types.func_wrap("[method]input-stream.size", |mut store, (this,): (Resource<InputStream>,)| {
            Ok((host::size(store.data_mut(), this.rep())?,))
        })?;
        types.func_wrap(
            "[method]input-stream.read",
            |mut store,
             (this, len): (Resource<InputStream>, u64)|
             -> wasmtime::Result<(Result<Vec<u8>, StreamError>,)> {
                Ok((host::read(store.data_mut(), this.rep(), len)?.map_err(StreamError::from),))
            },
        )?;
        types.func_wrap(
            "[method]input-stream.start-chunking-read",
            |mut store,
             (this, chunk, cid): (Resource<InputStream>, u64, u64)|
             -> wasmtime::Result<(Result<(), StreamError>,)> {
                Ok((host::start_chunking(store.data_mut(), this.rep(), chunk, cid)?.map_err(StreamError::from),))
            },
        )?;
    }
    {
        let mut blobs = l.instance(wit::BLOBS_IFACE)?;
        blobs.func_wrap(
            "open",
            |mut store,
             (container, name): (String, String)|
             -> wasmtime::Result<(Result<Resource<InputStream>, StreamError>,)> {
                let r = host::open(store.data_mut(), &container, &name)?;
                Ok((r.map(Resource::new_own).map_err(StreamError::from),))
            },
        )?;
    }
    Ok(l)
}

/// WASI 0.2 locked down: no preopens, no environment, no arguments, no network,
/// no stdin; stdout and stderr become guest output.
pub fn wasi_ctx(
    host: Arc<Py<PyAny>>,
    waited: Arc<std::sync::atomic::AtomicU64>,
    ticks: Arc<std::sync::atomic::AtomicU64>,
) -> WasiCtx {
    let out = GuestOut { fd: 1, host: host.clone(), waited: waited.clone(), ticks: ticks.clone() };
    let err = GuestOut { fd: 2, host, waited, ticks };
    WasiCtxBuilder::new().stdout(out).stderr(err).allow_ip_name_lookup(false).allow_tcp(false).allow_udp(false).build()
}
