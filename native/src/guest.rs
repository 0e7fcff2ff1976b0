//! Loading a guest: a component or a core module, from the compile cache
//! when it can; checking that it is a chunkd consumer (exports, their types,
//! its imports) before any instance is made, so `chunkd check` and a start
//! give the same clear error.

use std::fs;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use wasmtime::component::types::{ComponentItem, Type};
use wasmtime::component::{Component, InstancePre as ComponentPre};
use wasmtime::{Engine, ExternType, InstancePre as ModulePre, Module, ValType};

use crate::state::State;
use crate::wit;

pub enum Code {
    Component { pre: ComponentPre<State> },
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
    pub fn kind(&self) -> &'static str {
        match self.code {
            Code::Component { .. } => "component",
            Code::Core { .. } => "core",
        }
    }
}

fn first_line(e: &wasmtime::Error) -> String {
    let text = format!("{e:#}");
    text.lines().next().unwrap_or("invalid").to_string()
}

/// A component binary starts with layer 1; a core module with version 1.
fn is_core(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && &bytes[..4] == b"\0asm" && bytes[4..8] == [1, 0, 0, 0]
}

fn cache_path(engine: &Engine, cache_dir: &Path, bytes: &[u8]) -> PathBuf {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    let engine_key = h.finish();
    let mut h1 = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h1);
    let mut h2 = std::collections::hash_map::DefaultHasher::new();
    (bytes.len(), b"chunkd").hash(&mut h2);
    bytes.hash(&mut h2);
    cache_dir.join(format!("{engine_key:016x}-{:016x}{:016x}.cwasm", h1.finish(), h2.finish()))
}

fn store_cache(path: &Path, data: &[u8]) {
    if let Some(dir) = path.parent() {
        if fs::create_dir_all(dir).is_err() {
            return;
        }
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    if fs::write(&tmp, data).is_ok() && fs::rename(&tmp, path).is_err() {
        let _ = fs::remove_file(&tmp);
    }
}

/// The largest guest file chunkd reads (a componentize-py component is ~18 MB).
const MAX_GUEST_BYTES: u64 = 1 << 30;

/// A regular file of at most MAX_GUEST_BYTES (not a directory, a device or a pipe).
fn read_guest_file(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let meta = fs::metadata(path)?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    if meta.len() > MAX_GUEST_BYTES {
        return Err(std::io::Error::other(format!("{} bytes, above the {MAX_GUEST_BYTES}-byte limit", meta.len())));
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    fs::File::open(path)?.take(MAX_GUEST_BYTES + 1).read_to_end(&mut data)?;
    if data.len() as u64 > MAX_GUEST_BYTES {
        return Err(std::io::Error::other("grew above the size limit while being read"));
    }
    Ok(data)
}

pub fn load(engine: &Engine, label: &str, path: &Path, cache_dir: Option<&Path>) -> Result<Guest, String> {
    let raw = read_guest_file(path).map_err(|e| format!("{label}: cannot read: {e}"))?;
    let bytes = if path.extension().is_some_and(|x| x == "wat") {
        wat::parse_bytes(&raw).map_err(|e| format!("{label}: not valid WAT: {e}"))?.into_owned()
    } else {
        raw
    };
    let cached = cache_dir.map(|d| cache_path(engine, d, &bytes));
    let core = is_core(&bytes);
    // a serialized artifact is only ever one this engine wrote (same compatibility hash),
    // and is replaced only by rename (store_cache), never rewritten in place: mapping it
    // (deserialize_file) keeps only the code pages a guest runs resident. One that does
    // not load is compiled again.
    let in_cache = cached.as_deref().filter(|p| p.is_file());
    if core {
        // SAFETY: the bytes come from our own cache directory, written by `serialize`
        let hit = in_cache.and_then(|p| unsafe { Module::deserialize_file(engine, p) }.ok());
        let from_cache = hit.is_some();
        let module = match hit {
            Some(m) => m,
            None => compile_module(engine, label, &bytes, cached.as_deref())?,
        };
        let mut g = crate::core::check_and_link(engine, label, module)?;
        g.from_cache = from_cache;
        Ok(g)
    } else {
        // SAFETY: as above
        let hit = in_cache.and_then(|p| unsafe { Component::deserialize_file(engine, p) }.ok());
        let from_cache = hit.is_some();
        let comp = match hit {
            Some(c) => c,
            None => compile_component(engine, label, &bytes, cached.as_deref())?,
        };
        let mut g = check_component(engine, label, comp)?;
        g.from_cache = from_cache;
        Ok(g)
    }
}

fn compile_module(engine: &Engine, label: &str, bytes: &[u8], cache: Option<&Path>) -> Result<Module, String> {
    let m = Module::new(engine, bytes).map_err(|e| format!("{label}: not a valid wasm module: {}", first_line(&e)))?;
    if let (Some(p), Ok(data)) = (cache, m.serialize()) {
        store_cache(p, &data);
    }
    Ok(m)
}

fn compile_component(engine: &Engine, label: &str, bytes: &[u8], cache: Option<&Path>) -> Result<Component, String> {
    let c = Component::new(engine, bytes)
        .map_err(|e| format!("{label}: not a valid wasm component: {}", first_line(&e)))?;
    if let (Some(p), Ok(data)) = (cache, c.serialize()) {
        store_cache(p, &data);
    }
    Ok(c)
}

/// A component type written as WIT, for error messages and type checks.
pub fn wit_type(t: &Type) -> String {
    match t {
        Type::Bool => "bool".into(),
        Type::S8 => "s8".into(),
        Type::U8 => "u8".into(),
        Type::S16 => "s16".into(),
        Type::U16 => "u16".into(),
        Type::S32 => "s32".into(),
        Type::U32 => "u32".into(),
        Type::S64 => "s64".into(),
        Type::U64 => "u64".into(),
        Type::Float32 => "f32".into(),
        Type::Float64 => "f64".into(),
        Type::Char => "char".into(),
        Type::String => "string".into(),
        Type::List(l) => format!("list<{}>", wit_type(&l.ty())),
        Type::Option(o) => format!("option<{}>", wit_type(&o.ty())),
        Type::Result(r) => {
            let ok = r.ok().map(|t| wit_type(&t)).unwrap_or_else(|| "_".into());
            let err = r.err().map(|t| wit_type(&t)).unwrap_or_else(|| "_".into());
            format!("result<{ok}, {err}>")
        }
        Type::Variant(v) => {
            let cases: Vec<String> = v
                .cases()
                .map(|c| match c.ty {
                    Some(t) => format!("{}({})", c.name, wit_type(&t)),
                    None => c.name.to_string(),
                })
                .collect();
            format!("variant {{ {} }}", cases.join(", "))
        }
        Type::Own(_) => "own<resource>".into(),
        Type::Borrow(_) => "borrow<resource>".into(),
        Type::Stream(t) => match t.ty() {
            Some(t) => format!("stream<{}>", wit_type(&t)),
            None => "stream".into(),
        },
        Type::Future(t) => match t.ty() {
            Some(t) => format!("future<{}>", wit_type(&t)),
            None => "future".into(),
        },
        other => format!("{other:?}").split('(').next().unwrap_or("?").to_lowercase(),
    }
}

fn func_sig(engine: &Engine, item: &ComponentItem) -> Option<(String, bool)> {
    let _ = engine;
    match item {
        ComponentItem::ComponentFunc(f) => {
            let params: Vec<String> = f.params().map(|(_, t)| wit_type(&t)).collect();
            let results: Vec<String> = f.results().map(|t| wit_type(&t)).collect();
            Some((format!("({}) -> ({})", params.join(", "), results.join(", ")), f.async_()))
        }
        _ => None,
    }
}

/// The signature of `func` in exported interface `iface`: None if the interface or
/// the function is missing.
fn export_sig(engine: &Engine, comp: &Component, iface: &str, func: &str) -> Option<(String, bool)> {
    let ty = comp.component_type();
    let ext = ty.get_export(engine, iface)?;
    match &ext.ty {
        ComponentItem::ComponentInstance(inst) => {
            let f = inst.get_export(engine, func)?;
            func_sig(engine, &f.ty)
        }
        _ => None,
    }
}

fn check_component(engine: &Engine, label: &str, comp: Component) -> Result<Guest, String> {
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
    for imp in &imports {
        if imp == wit::TYPES_IFACE || imp == wit::BLOBS_IFACE || imp.starts_with("wasi:") {
            continue;
        }
        return Err(format!("{label}: imports {imp:?}, which chunkd does not provide"));
    }
    let linker = crate::component::linker(engine).map_err(|e| format!("{label}: {}", first_line(&e)))?;
    let pre = linker
        .instantiate_pre(&comp)
        .map_err(|e| format!("{label}: cannot be linked: {e:#}").lines().next().unwrap_or_default().to_string())?;
    Ok(Guest {
        code: Code::Component { pre },
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

/// A core function type written as `(i32, i64) -> (i32)`.
pub fn core_sig(params: &[ValType], results: &[ValType]) -> String {
    let p: Vec<String> = params.iter().map(|t| t.to_string()).collect();
    let r: Vec<String> = results.iter().map(|t| t.to_string()).collect();
    format!("({}) -> ({})", p.join(", "), r.join(", "))
}

pub fn extern_func_sig(t: &ExternType) -> Option<String> {
    match t {
        ExternType::Func(f) => {
            let p: Vec<ValType> = f.params().collect();
            let r: Vec<ValType> = f.results().collect();
            Some(core_sig(&p, &r))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> Engine {
        crate::engine::make_engine().unwrap()
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn binaries_are_told_apart_by_their_header() {
        assert!(is_core(b"\0asm\x01\x00\x00\x00"));
        assert!(!is_core(b"\0asm\x0d\x00\x01\x00"));
        assert!(!is_core(b"\0as"));
    }

    #[test]
    fn a_core_consumer_loads_and_a_wrong_export_type_is_named() {
        let dir = std::env::temp_dir().join(format!("chunkd-native-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let good = r#"(module
            (memory (export "memory") 1)
            (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32) (i32.const 16))
            (func (export "chunkd:streams/trigger@0.1.0#invoke") (param i32 i32) (result i32) (i32.const 0))
            (func (export "chunkd:streams/chunked-stream-handler@0.1.0#handle-chunk")
              (param i32 i64 i64 i64 i32 i32) (result i32) (i32.const 1)))"#;
        let g = load(&engine(), "good", &write(&dir, "good.wat", good), None).unwrap();
        assert_eq!((g.kind(), g.world, g.has_events), ("core", wit::CONSUMER, false));
        let bad = good.replace("(param i32 i64 i64 i64 i32 i32)", "(param i32 i64 i64 i64 i64 i32)");
        let err = load(&engine(), "bad", &write(&dir, "bad.wat", &bad), None).err().unwrap();
        assert!(err.contains("handle-chunk has type (i32, i64, i64, i64, i64, i32) -> (i32)"), "{err}");
        let wasi = good.replace("(memory", r#"(import "wasi_snapshot_preview1" "path_open" (func)) (memory"#);
        let err = load(&engine(), "wasi", &write(&dir, "wasi.wat", &wasi), None).err().unwrap();
        assert!(err.contains("wasi_snapshot_preview1/path_open"), "{err}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_cache_key_changes_with_the_bytes() {
        let e = engine();
        let d = Path::new("/tmp");
        assert_ne!(cache_path(&e, d, b"a"), cache_path(&e, d, b"b"));
        assert_eq!(cache_path(&e, d, b"a"), cache_path(&e, d, b"a"));
    }
}
