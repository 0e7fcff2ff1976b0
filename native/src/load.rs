//! Loading a guest: a component or a core module, from the compile cache
//! when it can; checking that it is a chunkd consumer (component_link.rs and
//! core_link.rs say what each kind must export and may import) before any
//! instance is made, so `chunkd check` and a start give the same clear error.

use std::fs;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use wasmtime::component::Component;
use wasmtime::{Engine, Module};

use crate::errors::first_line;
use crate::guest::Guest;

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
        let mut g = crate::core_link::check_and_link(engine, label, module)?;
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
        let mut g = crate::component_link::check_and_link(engine, label, comp)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wit;

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
