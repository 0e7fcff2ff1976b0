//! Function types written as text, for type checks and error messages: WIT for
//! component exports, `(i32, i64) -> (i32)` for core ones.

use wasmtime::component::types::{ComponentItem, Type};
use wasmtime::component::Component;
use wasmtime::{Engine, ExternType, ValType};

/// A component type written as WIT.
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

/// A component function's type as `(params) -> (results)`, and whether it is async.
fn func_sig(item: &ComponentItem) -> Option<(String, bool)> {
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
pub fn export_sig(engine: &Engine, comp: &Component, iface: &str, func: &str) -> Option<(String, bool)> {
    let ty = comp.component_type();
    let ext = ty.get_export(engine, iface)?;
    match &ext.ty {
        ComponentItem::ComponentInstance(inst) => {
            let f = inst.get_export(engine, func)?;
            func_sig(&f.ty)
        }
        _ => None,
    }
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
