//! Components (both worlds): what they must export and may import, the chunkd
//! imports linked natively beside a locked-down WASI 0.2, and the WIT values
//! that cross.

use std::sync::Arc;

use pyo3::prelude::*;
use wasmtime::component::{
    Accessor, Component, ComponentType, Lift, Linker, Lower, Resource, ResourceType, StreamReader,
};
use wasmtime::Engine;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder};

use crate::errors::first_line;
use crate::guest::{Code, Guest};
use crate::host::{self, StreamErr};
use crate::outpipe::{self, Pipe, SharedPipe};
use crate::output::GuestOut;
use crate::sigs::export_sig;
use crate::state::{CallClock, State};
use crate::wit;

/// The host side of `resource input-stream`: its rep is the stream's handle in Python.
pub struct InputStream;

/// The host side of `resource output-stream`: its rep is the output's handle in Python.
pub struct OutputStream;

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
        types.resource("output-stream", ResourceType::host::<OutputStream>(), |mut store, rep| {
            host::drop_output(store.data_mut(), rep)
        })?;
        types.func_wrap(
            "[method]output-stream.write",
            |mut store,
             (this, data): (Resource<OutputStream>, Vec<u8>)|
             -> wasmtime::Result<(Result<(), StreamError>,)> {
                Ok((host::write_output(store.data_mut(), this.rep(), &data)?.map_err(StreamError::from),))
            },
        )?;
        types.func_wrap(
            "[method]output-stream.finish",
            |mut store, (this,): (Resource<OutputStream>,)| -> wasmtime::Result<(Result<(), StreamError>,)> {
                Ok((host::finish_output(store.data_mut(), this.rep())?.map_err(StreamError::from),))
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
        blobs.func_wrap(
            "create",
            |mut store,
             (container, name): (String, String)|
             -> wasmtime::Result<(Result<Resource<OutputStream>, StreamError>,)> {
                let r = host::create_output(store.data_mut(), &container, &name)?;
                Ok((r.map(Resource::new_own).map_err(StreamError::from),))
            },
        )?;
    }
    {
        let mut writer = l.instance(wit::BLOB_WRITER_IFACE)?;
        writer.func_wrap_concurrent("write-blob", |acc: &Accessor<State>, params: WriteBlobParams| {
            Box::pin(write_blob(acc, params))
        })?;
    }
    Ok(l)
}

type WriteBlobParams = (String, String, StreamReader<u8>);

/// `write-blob(container, name, data)`: the output is created, the guest's stream piped
/// into it (outpipe.rs) until the guest closes its end, then sealed; a refusal or a sink
/// error is the result's error (the output is then dropped: aborted).
async fn write_blob(
    acc: &Accessor<State>,
    (container, name, mut data): WriteBlobParams,
) -> wasmtime::Result<(Result<(), StreamError>,)> {
    let handle = match acc.with(|mut a| host::create_output(a.data_mut(), &container, &name))? {
        Ok(h) => h,
        Err(e) => {
            acc.with(|mut a| data.close(&mut a))?;
            return Ok((Err(e.into()),));
        }
    };
    let cap = acc.with(|mut a| host::output_cap(a.data_mut()))?;
    let state = SharedPipe::default();
    acc.with(|mut a| data.pipe(&mut a, Pipe { state: state.clone(), handle, cap }))?;
    std::future::poll_fn(|cx| outpipe::lock(&state).poll_over(cx)).await;
    let refused = outpipe::lock(&state).error.take();
    let r = match refused {
        Some(e) => {
            acc.with(|mut a| host::drop_output(a.data_mut(), handle))?;
            Err(e)
        }
        None => acc.with(|mut a| host::finish_output(a.data_mut(), handle))?,
    };
    Ok((r.map_err(StreamError::from),))
}

/// WASI 0.2 locked down: no preopens, no environment, no arguments, no network,
/// no stdin; stdout and stderr become guest output.
pub fn wasi_ctx(host: Arc<Py<PyAny>>, clock: CallClock) -> WasiCtx {
    let out = GuestOut { fd: 1, host: host.clone(), clock: clock.clone() };
    let err = GuestOut { fd: 2, host, clock };
    WasiCtxBuilder::new().stdout(out).stderr(err).allow_ip_name_lookup(false).allow_tcp(false).allow_udp(false).build()
}

/// Checks that `comp` is a chunkd consumer of one world (its exports and their exact
/// types, its imports) and links it.
pub fn check_and_link(engine: &Engine, label: &str, comp: Component) -> Result<Guest, String> {
    let consume = export_sig(engine, &comp, wit::CONSUMER_IFACE, "consume");
    let handler = export_sig(engine, &comp, wit::HANDLER_IFACE, "handle-chunk");
    let streams = match (&consume, &handler) {
        (Some(_), Some(_)) => {
            return Err(format!(
                "{label}: exports both {} and {}: a consumer is of one world, consumer or consumer-streams",
                wit::HANDLER_IFACE,
                wit::CONSUMER_IFACE
            ));
        }
        (Some(_), None) => true,
        _ => false,
    };
    let mut wanted: Vec<(&str, &str, &str, bool)> =
        vec![(wit::TRIGGER_IFACE, "invoke", wit::COMPONENT_EXPORTS[1].2, false)];
    if streams {
        wanted.push((wit::CONSUMER_IFACE, "consume", wit::CONSUME_SIG, true));
    } else {
        let (i, f, w) = wit::COMPONENT_EXPORTS[0];
        wanted.push((i, f, w, false));
        let (i, f, w) = wit::COMPONENT_EXPORTS[2];
        wanted.push((i, f, w, false));
    }
    for (iface, func, want, must_be_async) in wanted {
        match export_sig(engine, &comp, iface, func) {
            None if iface == wit::EVENTS_IFACE => {}
            None => {
                return Err(format!(
                    "{label}: does not export {iface} ({func}): not a chunkd consumer \
                     (world consumer exports {}, world consumer-streams exports {})",
                    wit::HANDLER_IFACE,
                    wit::CONSUMER_IFACE
                ));
            }
            Some((got, is_async)) => {
                if got != want || is_async != must_be_async {
                    let how = |a: bool| if a { " (async)" } else { "" };
                    return Err(format!(
                        "{label}: export {iface}#{func} has type {got}{}, expected {want}{}",
                        how(is_async),
                        how(must_be_async)
                    ));
                }
            }
        }
    }
    if streams && export_sig(engine, &comp, wit::EVENTS_IFACE, "stream-ended").is_some() {
        return Err(format!(
            "{label}: world consumer-streams tells each end through consume's `end` future; \
             it does not export {}",
            wit::EVENTS_IFACE
        ));
    }
    let has_events = streams || export_sig(engine, &comp, wit::EVENTS_IFACE, "stream-ended").is_some();
    let ty = comp.component_type();
    let mut imports: Vec<String> = ty.imports(engine).map(|(n, _)| n.to_string()).collect();
    imports.sort();
    if !streams && imports.iter().any(|i| i == wit::BLOB_WRITER_IFACE) {
        return Err(format!(
            "{label}: imports {} (write-blob), which is the streams world's way to write; a handle-chunk \
             consumer writes with blobs.create and output-stream",
            wit::BLOB_WRITER_IFACE
        ));
    }
    for imp in &imports {
        if imp == wit::TYPES_IFACE
            || imp == wit::BLOBS_IFACE
            || imp == wit::BLOB_WRITER_IFACE
            || imp.starts_with("wasi:")
        {
            continue;
        }
        return Err(format!("{label}: imports {imp:?}, which chunkd does not provide"));
    }
    let linker = linker(engine).map_err(|e| format!("{label}: {}", first_line(&e)))?;
    let pre = linker
        .instantiate_pre(&comp)
        .map_err(|e| format!("{label}: cannot be linked: {e:#}").lines().next().unwrap_or_default().to_string())?;
    Ok(Guest {
        code: if streams { Code::Streams { pre } } else { Code::Component { pre } },
        world: if streams {
            wit::CONSUMER_STREAMS
        } else if has_events {
            wit::CONSUMER_WITH_EVENTS
        } else {
            wit::CONSUMER
        },
        has_events,
        imports,
        from_cache: false,
    })
}
