//! The core-module kind: a core wasm module that implements the consumer
//! world at the canonical-ABI level (what wit-bindgen emits before
//! componentization). chunkd performs the canonical ABI itself: chunk bytes
//! are read by `pread` straight into a buffer from the guest's own
//! `cabi_realloc`.
//!
//! Layouts (CanonicalABI.md; little-endian, results through a return pointer):
//!   result<own<input-stream>, stream-error>  u8 disc @0 | ok: i32 handle @4 |
//!                                           err: u8 case @4, string (i32 ptr @8, i32 len @12)
//!   result<list<u8>, stream-error>           ok: i32 ptr @4, i32 len @8 | err as above
//!   result<_, stream-error>                  disc @0 | err as above
//!   option<u64>                              u8 disc @0 | u64 @8
//!   invoke -> result<string, string>         returned pointer: u8 disc @0, i32 ptr @4, i32 len @8

use wasmtime::{Caller, Engine, Extern, Linker, Memory, Module, TypedFunc, ValType};

use crate::guest::{core_sig, extern_func_sig, Code, Guest};
use crate::host::{self, StreamErr};
use crate::state::{host_time, State};
use crate::wit;

/// handle-chunk's `borrow<input-stream>`: the stream's handle with this bit set, as a
/// component's borrow is an index of its own. Dropping it ends only the borrow.
pub const BORROW_BIT: u32 = 1 << 30;

const I32: ValType = ValType::I32;
const I64: ValType = ValType::I64;

/// ((module, name), params, results) of an import a core guest may have.
type ImportSig = ((&'static str, &'static str), Vec<ValType>, Vec<ValType>);

fn imports_allowed() -> Vec<ImportSig> {
    vec![
        ((wit::BLOBS_IFACE, "open"), vec![I32, I32, I32, I32, I32], vec![]),
        ((wit::TYPES_IFACE, "[method]input-stream.size"), vec![I32, I32], vec![]),
        ((wit::TYPES_IFACE, "[method]input-stream.read"), vec![I32, I64, I32], vec![]),
        ((wit::TYPES_IFACE, "[method]input-stream.start-chunking-read"), vec![I32, I64, I64, I32], vec![]),
        ((wit::TYPES_IFACE, "[resource-drop]input-stream"), vec![I32], vec![]),
        // a core guest's stdout and stderr become guest output, as a component's do
        ((wit::WASI_P1, "fd_write"), vec![I32, I32, I32, I32], vec![I32]),
    ]
}

fn exports_expected() -> Vec<(String, Vec<ValType>, Vec<ValType>, bool)> {
    vec![
        ("cabi_realloc".into(), vec![I32, I32, I32, I32], vec![I32], true),
        (wit::EXPORT_INVOKE.into(), vec![I32, I32], vec![I32], true),
        (wit::EXPORT_HANDLE.into(), vec![I32, I64, I64, I64, I32, I32], vec![I32], true),
        (wit::EXPORT_ENDED.into(), vec![I64, I32, I32, I32], vec![], false),
        (format!("cabi_post_{}", wit::EXPORT_INVOKE), vec![I32], vec![], false),
        (format!("cabi_post_{}", wit::EXPORT_HANDLE), vec![I32], vec![], false),
        ("_initialize".into(), vec![], vec![], false),
    ]
}

pub fn check_and_link(engine: &Engine, label: &str, module: Module) -> Result<Guest, String> {
    let allowed = imports_allowed();
    let mut imports = Vec::new();
    for imp in module.imports() {
        let key = (imp.module(), imp.name());
        let Some((_, p, r)) = allowed.iter().find(|(k, _, _)| *k == key) else {
            return Err(format!(
                "{label}: core module imports {}/{}, which chunkd does not provide to core guests (only the \
                 chunkd:streams functions and wasi_snapshot_preview1/fd_write for stdout and stderr)",
                imp.module(),
                imp.name()
            ));
        };
        let want = core_sig(p, r);
        let got = extern_func_sig(&imp.ty()).unwrap_or_else(|| "not a function".into());
        if got != want {
            return Err(format!(
                "{label}: core import {}/{} has type {got}, expected {want}",
                imp.module(),
                imp.name()
            ));
        }
        imports.push(format!("{}/{}", imp.module(), imp.name()));
    }
    imports.sort();
    match module.get_export("memory") {
        Some(wasmtime::ExternType::Memory(_)) => {}
        _ => return Err(format!("{label}: core module does not export \"memory\": not a chunkd consumer")),
    }
    let mut present = std::collections::HashSet::new();
    for (name, p, r, required) in exports_expected() {
        match module.get_export(&name) {
            None if required => {
                return Err(format!("{label}: core module does not export {name:?}: not a chunkd consumer"));
            }
            None => {}
            Some(t) => {
                let want = core_sig(&p, &r);
                let got = extern_func_sig(&t).unwrap_or_else(|| "not a function".into());
                if got != want {
                    return Err(format!("{label}: core export {name} has type {got}, expected {want}"));
                }
                present.insert(name);
            }
        }
    }
    let linker = linker(engine).map_err(|e| format!("{label}: {e}"))?;
    let pre = linker.instantiate_pre(&module).map_err(|e| format!("{label}: cannot be linked: {e}"))?;
    let has_events = present.contains(wit::EXPORT_ENDED);
    Ok(Guest {
        code: Code::Core {
            pre,
            initialize: present.contains("_initialize"),
            has_post_handle: present.contains(&format!("cabi_post_{}", wit::EXPORT_HANDLE)),
            has_post_invoke: present.contains(&format!("cabi_post_{}", wit::EXPORT_INVOKE)),
        },
        world: if has_events { wit::CONSUMER_WITH_EVENTS } else { wit::CONSUMER },
        has_events,
        imports,
        from_cache: false,
    })
}

// --- linear memory, from inside a host function -------------------------------------

fn memory(caller: &mut Caller<'_, State>) -> wasmtime::Result<Memory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(m)) => Ok(m),
        _ => wasmtime::bail!("core guest exports no memory"),
    }
}

pub fn span_err(ptr: u64, n: u64) -> wasmtime::Error {
    wasmtime::format_err!("guest pointer {ptr}+{n} is outside its memory")
}

fn get(caller: &mut Caller<'_, State>, ptr: u32, n: u32) -> wasmtime::Result<Vec<u8>> {
    let mem = memory(caller)?;
    let data = mem.data(&caller);
    let (p, e) = (ptr as usize, ptr as usize + n as usize);
    data.get(p..e).map(|s| s.to_vec()).ok_or_else(|| span_err(ptr.into(), n.into()))
}

fn put(caller: &mut Caller<'_, State>, ptr: u32, bytes: &[u8]) -> wasmtime::Result<()> {
    let mem = memory(caller)?;
    let data = mem.data_mut(&mut *caller);
    let p = ptr as usize;
    let dst = data.get_mut(p..p + bytes.len()).ok_or_else(|| span_err(ptr.into(), bytes.len() as u64))?;
    dst.copy_from_slice(bytes);
    Ok(())
}

fn check_span(caller: &mut Caller<'_, State>, ptr: u32, n: u32) -> wasmtime::Result<()> {
    let mem = memory(caller)?;
    if ptr as u64 + n as u64 > mem.data_size(&caller) as u64 {
        return Err(span_err(ptr.into(), n.into()));
    }
    Ok(())
}

fn string(caller: &mut Caller<'_, State>, ptr: u32, n: u32) -> wasmtime::Result<String> {
    String::from_utf8(get(caller, ptr, n)?)
        .map_err(|_| wasmtime::format_err!("guest passed a string that is not UTF-8"))
}

fn alloc(caller: &mut Caller<'_, State>, n: u32, align: u32) -> wasmtime::Result<u32> {
    let realloc = match caller.get_export("cabi_realloc") {
        Some(Extern::Func(f)) => f.typed::<(i32, i32, i32, i32), i32>(&caller)?,
        _ => wasmtime::bail!("core guest exports no cabi_realloc"),
    };
    let p = realloc.call(&mut *caller, (0, 0, align as i32, n as i32))? as u32;
    check_span(caller, p, n)?;
    Ok(p)
}

fn write_error(caller: &mut Caller<'_, State>, ret: u32, e: &StreamErr) -> wasmtime::Result<()> {
    let mut rec = [0u8; 16];
    rec[0] = 1;
    rec[4] = e.discriminant();
    if !matches!(e, StreamErr::Closed) {
        let b = e.message().as_bytes();
        let p = alloc(caller, b.len() as u32, 1)?;
        put(caller, p, b)?;
        rec[8..12].copy_from_slice(&p.to_le_bytes());
        rec[12..16].copy_from_slice(&(b.len() as u32).to_le_bytes());
        return put(caller, ret, &rec);
    }
    put(caller, ret, &rec[..8])
}

pub fn linker(engine: &Engine) -> wasmtime::Result<Linker<State>> {
    let mut l: Linker<State> = Linker::new(engine);
    l.func_wrap(
        wit::BLOBS_IFACE,
        "open",
        |mut c: Caller<'_, State>, cp: u32, cl: u32, np: u32, nl: u32, ret: u32| -> wasmtime::Result<()> {
            check_span(&mut c, ret, 16)?;
            let container = string(&mut c, cp, cl)?;
            let name = string(&mut c, np, nl)?;
            match host::open(c.data_mut(), &container, &name)? {
                Ok(h) => {
                    let mut rec = [0u8; 8];
                    rec[4..8].copy_from_slice(&h.to_le_bytes());
                    put(&mut c, ret, &rec)
                }
                Err(e) => write_error(&mut c, ret, &e),
            }
        },
    )?;
    l.func_wrap(
        wit::TYPES_IFACE,
        "[method]input-stream.size",
        |mut c: Caller<'_, State>, h: u32, ret: u32| -> wasmtime::Result<()> {
            match host::size(c.data_mut(), h & !BORROW_BIT)? {
                None => put(&mut c, ret, &[0u8]),
                Some(n) => {
                    let mut rec = [0u8; 16];
                    rec[0] = 1;
                    rec[8..16].copy_from_slice(&n.to_le_bytes());
                    put(&mut c, ret, &rec)
                }
            }
        },
    )?;
    l.func_wrap(
        wit::TYPES_IFACE,
        "[method]input-stream.read",
        |mut c: Caller<'_, State>, h: u32, len: u64, ret: u32| -> wasmtime::Result<()> {
            check_span(&mut c, ret, 16)?;
            match host::read(c.data_mut(), h & !BORROW_BIT, len)? {
                Ok(bytes) => {
                    let p = alloc(&mut c, bytes.len() as u32, 1)?;
                    put(&mut c, p, &bytes)?;
                    let mut rec = [0u8; 12];
                    rec[4..8].copy_from_slice(&p.to_le_bytes());
                    rec[8..12].copy_from_slice(&(bytes.len() as u32).to_le_bytes());
                    put(&mut c, ret, &rec)
                }
                Err(e) => write_error(&mut c, ret, &e),
            }
        },
    )?;
    l.func_wrap(
        wit::TYPES_IFACE,
        "[method]input-stream.start-chunking-read",
        |mut c: Caller<'_, State>, h: u32, chunk: u64, cid: u64, ret: u32| -> wasmtime::Result<()> {
            check_span(&mut c, ret, 16)?;
            match host::start_chunking(c.data_mut(), h & !BORROW_BIT, chunk, cid)? {
                Ok(()) => put(&mut c, ret, &[0u8]),
                Err(e) => write_error(&mut c, ret, &e),
            }
        },
    )?;
    l.func_wrap(
        wit::TYPES_IFACE,
        "[resource-drop]input-stream",
        |mut c: Caller<'_, State>, h: u32| -> wasmtime::Result<()> {
            if h & BORROW_BIT != 0 {
                return Ok(()); // the end of a borrow, not of the guest's own handle
            }
            host::drop_stream(c.data_mut(), h)
        },
    )?;
    l.func_wrap(
        wit::WASI_P1,
        "fd_write",
        |mut c: Caller<'_, State>, fd: u32, iovs: u32, n_iovs: u32, nwritten: u32| -> wasmtime::Result<i32> {
            if fd != 1 && fd != 2 {
                return Ok(8); // errno badf: no files, no sockets
            }
            if n_iovs > 1024 {
                return Ok(28); // errno inval
            }
            let table = get(&mut c, iovs, 8 * n_iovs)?;
            let mut data = Vec::new();
            for iov in table.chunks_exact(8) {
                let p = u32::from_le_bytes(iov[0..4].try_into().unwrap());
                let n = u32::from_le_bytes(iov[4..8].try_into().unwrap());
                data.extend_from_slice(&get(&mut c, p, n)?);
            }
            let total = data.len() as u32;
            let st = c.data();
            host_time(&st.clock.waited, &st.clock.ticks, || host::output(&st.host, fd as u8, &data))
                .map_err(|e| wasmtime::format_err!("host output failed: {e}"))?;
            put(&mut c, nwritten, &total.to_le_bytes())?;
            Ok(0)
        },
    )?;
    Ok(l)
}

/// The exports of one core instance, bound once per instance.
pub struct CoreExports {
    pub memory: Memory,
    pub realloc: TypedFunc<(i32, i32, i32, i32), i32>,
    pub handle: TypedFunc<(i32, i64, i64, i64, i32, i32), i32>,
    pub post_handle: Option<TypedFunc<i32, ()>>,
    pub invoke: TypedFunc<(i32, i32), i32>,
    pub post_invoke: Option<TypedFunc<i32, ()>>,
    pub ended: Option<TypedFunc<(i64, i32, i32, i32), ()>>,
}
