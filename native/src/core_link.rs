//! Core modules: what a core guest must export and may import, and the
//! linker that answers its imports (the chunkd functions at the canonical-ABI
//! level, through abi.rs, and `fd_write` for stdout and stderr).

use wasmtime::{Caller, Engine, Linker, Module, ValType};

use crate::abi::{option_u64, pair, GuestMem};
use crate::guest::{Code, Guest};
use crate::host;
use crate::sigs::{core_sig, extern_func_sig};
use crate::state::State;
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
        ((wit::BLOBS_IFACE, "create"), vec![I32, I32, I32, I32, I32], vec![]),
        ((wit::TYPES_IFACE, "[method]output-stream.write"), vec![I32, I32, I32, I32], vec![]),
        ((wit::TYPES_IFACE, "[method]output-stream.finish"), vec![I32, I32], vec![]),
        ((wit::TYPES_IFACE, "[resource-drop]output-stream"), vec![I32], vec![]),
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

pub fn linker(engine: &Engine) -> wasmtime::Result<Linker<State>> {
    let mut l: Linker<State> = Linker::new(engine);
    l.func_wrap(
        wit::BLOBS_IFACE,
        "open",
        |mut c: Caller<'_, State>, cp: u32, cl: u32, np: u32, nl: u32, ret: u32| -> wasmtime::Result<()> {
            let m = GuestMem::of_caller(&mut c)?;
            m.slice(&c, ret, 16)?;
            let container = m.string(&c, cp, cl)?;
            let name = m.string(&c, np, nl)?;
            match host::open(c.data_mut(), &container, &name)? {
                Ok(h) => m.put_result(&mut c, ret, Ok(&h.to_le_bytes())),
                Err(e) => m.put_result(&mut c, ret, Err(&e)),
            }
        },
    )?;
    l.func_wrap(
        wit::TYPES_IFACE,
        "[method]input-stream.size",
        |mut c: Caller<'_, State>, h: u32, ret: u32| -> wasmtime::Result<()> {
            let m = GuestMem::of_caller(&mut c)?;
            let (rec, n) = option_u64(host::size(c.data_mut(), h & !BORROW_BIT)?);
            m.put(&mut c, ret, &rec[..n])
        },
    )?;
    l.func_wrap(
        wit::TYPES_IFACE,
        "[method]input-stream.read",
        |mut c: Caller<'_, State>, h: u32, len: u64, ret: u32| -> wasmtime::Result<()> {
            let m = GuestMem::of_caller(&mut c)?;
            m.slice(&c, ret, 16)?;
            match host::read(c.data_mut(), h & !BORROW_BIT, len)? {
                Ok(bytes) => {
                    let p = m.lower(&mut c, &bytes)?;
                    m.put_result(&mut c, ret, Ok(&pair(p, bytes.len() as u32)))
                }
                Err(e) => m.put_result(&mut c, ret, Err(&e)),
            }
        },
    )?;
    l.func_wrap(
        wit::TYPES_IFACE,
        "[method]input-stream.start-chunking-read",
        |mut c: Caller<'_, State>, h: u32, chunk: u64, cid: u64, ret: u32| -> wasmtime::Result<()> {
            let m = GuestMem::of_caller(&mut c)?;
            m.slice(&c, ret, 16)?;
            let r = host::start_chunking(c.data_mut(), h & !BORROW_BIT, chunk, cid)?;
            m.put_result(&mut c, ret, r.as_ref().map(|()| &[][..]))
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
        wit::BLOBS_IFACE,
        "create",
        |mut c: Caller<'_, State>, cp: u32, cl: u32, np: u32, nl: u32, ret: u32| -> wasmtime::Result<()> {
            let m = GuestMem::of_caller(&mut c)?;
            m.slice(&c, ret, 16)?;
            let container = m.string(&c, cp, cl)?;
            let name = m.string(&c, np, nl)?;
            match host::create_output(c.data_mut(), &container, &name)? {
                Ok(h) => m.put_result(&mut c, ret, Ok(&h.to_le_bytes())),
                Err(e) => m.put_result(&mut c, ret, Err(&e)),
            }
        },
    )?;
    l.func_wrap(
        wit::TYPES_IFACE,
        "[method]output-stream.write",
        |mut c: Caller<'_, State>, h: u32, p: u32, n: u32, ret: u32| -> wasmtime::Result<()> {
            let m = GuestMem::of_caller(&mut c)?;
            m.slice(&c, ret, 16)?;
            let data = m.slice(&c, p, n)?.to_vec();
            let r = host::write_output(c.data_mut(), h, &data)?;
            m.put_result(&mut c, ret, r.as_ref().map(|()| &[][..]))
        },
    )?;
    l.func_wrap(
        wit::TYPES_IFACE,
        "[method]output-stream.finish",
        |mut c: Caller<'_, State>, h: u32, ret: u32| -> wasmtime::Result<()> {
            let m = GuestMem::of_caller(&mut c)?;
            m.slice(&c, ret, 16)?;
            let r = host::finish_output(c.data_mut(), h)?;
            m.put_result(&mut c, ret, r.as_ref().map(|()| &[][..]))
        },
    )?;
    l.func_wrap(
        wit::TYPES_IFACE,
        "[resource-drop]output-stream",
        |mut c: Caller<'_, State>, h: u32| -> wasmtime::Result<()> { host::drop_output(c.data_mut(), h) },
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
            let m = GuestMem::of_caller(&mut c)?;
            let table = m.slice(&c, iovs, 8 * n_iovs)?.to_vec();
            let mut data = Vec::new();
            for iov in table.chunks_exact(8) {
                let (p, n) = crate::abi::unpair(iov);
                data.extend_from_slice(m.slice(&c, p, n)?);
            }
            let total = data.len() as u32;
            let st = c.data();
            st.clock
                .host_time(|| host::output(&st.host, fd as u8, &data))
                .map_err(|e| wasmtime::format_err!("host output failed: {e}"))?;
            m.put(&mut c, nwritten, &total.to_le_bytes())?;
            Ok(0)
        },
    )?;
    Ok(l)
}
