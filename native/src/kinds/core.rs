//! The core-module kind: chunkd performs the canonical ABI itself (abi.rs).
//! Exports are bound once per instance; a file chunk is `pread` straight into
//! a buffer from the guest's own `cabi_realloc` (one copy).

use wasmtime::{InstancePre, Store, TypedFunc};

use super::{fault, per_call, Answer, At, Chunk, Gate, GuestKind, Source, Step};
use crate::abi::GuestMem;
use crate::component_link::StreamEnd;
use crate::core_link::BORROW_BIT;
use crate::errors::Fault;
use crate::fileio::read_exact_at;
use crate::state::{begin, State};
use crate::wit;

/// The optional exports a core guest has (found by the loader).
pub struct Optional {
    pub initialize: bool,
    pub post_handle: bool,
    pub post_invoke: bool,
}

pub struct CoreKind {
    store: Store<State>,
    ex: Exports,
}

/// The exports of one core instance, bound once.
struct Exports {
    mem: GuestMem,
    handle: TypedFunc<(i32, i64, i64, i64, i32, i32), i32>,
    post_handle: Option<TypedFunc<i32, ()>>,
    invoke: TypedFunc<(i32, i32), i32>,
    post_invoke: Option<TypedFunc<i32, ()>>,
    ended: Option<TypedFunc<(i64, i32, i32, i32), ()>>,
}

impl CoreKind {
    pub fn new(
        mut store: Store<State>,
        pre: &InstancePre<State>,
        has_events: bool,
        opt: Optional,
    ) -> Result<CoreKind, Fault> {
        let inst = pre.instantiate(&mut store).map_err(|e| fault(e, &mut store))?;
        let post = |name: &str| format!("cabi_post_{name}");
        let bound = (|| -> wasmtime::Result<Exports> {
            let s = &mut store;
            let memory = inst.get_memory(&mut *s, "memory").ok_or_else(|| wasmtime::format_err!("no memory"))?;
            let realloc = inst.get_typed_func(&mut *s, "cabi_realloc")?;
            Ok(Exports {
                mem: GuestMem { memory, realloc },
                handle: inst.get_typed_func(&mut *s, wit::EXPORT_HANDLE)?,
                post_handle: match opt.post_handle {
                    true => Some(inst.get_typed_func(&mut *s, &post(wit::EXPORT_HANDLE))?),
                    false => None,
                },
                invoke: inst.get_typed_func(&mut *s, wit::EXPORT_INVOKE)?,
                post_invoke: match opt.post_invoke {
                    true => Some(inst.get_typed_func(&mut *s, &post(wit::EXPORT_INVOKE))?),
                    false => None,
                },
                ended: match has_events {
                    true => Some(inst.get_typed_func(&mut *s, wit::EXPORT_ENDED)?),
                    false => None,
                },
            })
        })();
        let ex = bound.map_err(|e| fault(e, &mut store))?;
        if opt.initialize {
            let init = inst.get_typed_func::<(), ()>(&mut store, "_initialize");
            init.and_then(|f| f.call(&mut store, ())).map_err(|e| fault(e, &mut store))?;
        }
        Ok(CoreKind { store, ex })
    }

    /// One handle-chunk call: the chunk lowered (or read straight into guest memory),
    /// the call, its post-return.
    fn handle_one(&mut self, at: At, current: u64, chunk: Chunk<'_>) -> wasmtime::Result<Step> {
        let store = &mut self.store;
        let (p, n) = match chunk {
            Chunk::Mem(b) => (self.ex.mem.lower(store, b)?, b.len() as u32),
            Chunk::File { fd, offset, len } => {
                let clock = store.data().clock.clone();
                let (p, err) = self
                    .ex
                    .mem
                    .lower_with(store, len as u32, 1, |dst| clock.host_time(|| read_exact_at(fd, dst, offset)))?;
                if let Some(e) = err {
                    return Ok(Step::Source(e));
                }
                (p, len as u32)
            }
        };
        let args =
            ((at.handle | BORROW_BIT) as i32, at.cid as i64, current as i64, at.total as i64, p as i32, n as i32);
        let r = self.ex.handle.call(&mut *store, args)?;
        if let Some(post) = &self.ex.post_handle {
            post.call(&mut *store, r)?;
        }
        Ok(Step::Answered(r != 0))
    }

    fn invoke_abi(&mut self, args: &[String]) -> wasmtime::Result<(bool, String)> {
        let store = &mut self.store;
        let (arr, n) = self.ex.mem.lower_strings(store, args)?;
        let ret = self.ex.invoke.call(&mut *store, (arr as i32, n as i32))? as u32;
        let r = self.ex.mem.lift_result_string(store, ret)?;
        if let Some(post) = &self.ex.post_invoke {
            post.call(&mut *store, ret as i32)?;
        }
        Ok(r)
    }
}

impl GuestKind for CoreKind {
    fn invoke(&mut self, timeout: u64, args: Vec<String>) -> Result<(bool, String), Fault> {
        begin(&mut self.store, timeout);
        self.invoke_abi(&args).map_err(|e| fault(e, &mut self.store))
    }

    fn deliver(&mut self, gate: &mut Gate<'_>, at: At, src: &Source<'_>, made: &mut u64) -> Result<Answer, Fault> {
        let timeout = gate.timeout;
        per_call(gate, src, made, |j, chunk| {
            begin(&mut self.store, timeout);
            self.handle_one(at, at.first + j, chunk).map_err(|e| fault(e, &mut self.store))
        })
    }

    fn stream_ended(&mut self, timeout: u64, cid: u64, end: StreamEnd) -> Result<Option<String>, Fault> {
        let Some(ended) = self.ex.ended.clone() else { return Ok(None) };
        begin(&mut self.store, timeout);
        let store = &mut self.store;
        let r = (|| -> wasmtime::Result<()> {
            let (kind, (p, n)) = match &end {
                StreamEnd::Completed => (0, (0, 0)),
                StreamEnd::Cancelled => (1, (0, 0)),
                StreamEnd::Failed(reason) => (2, (self.ex.mem.lower(store, reason.as_bytes())?, reason.len() as u32)),
            };
            ended.call(&mut *store, (cid as i64, kind, p as i32, n as i32))
        })();
        r.map(|()| None).map_err(|e| fault(e, store))
    }
}
