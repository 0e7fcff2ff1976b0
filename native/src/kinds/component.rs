//! The component kind (world consumer, consumer-with-events): one typed
//! handle-chunk call per chunk. Exports are looked up and type-checked once,
//! at instantiation. A file chunk is read into the instance's one buffer
//! (host time), then lowered as `list<u8>` (one realloc, one copy).

use wasmtime::component::{Func, InstancePre, Resource, TypedFunc};
use wasmtime::Store;

use super::{fault, find_export, per_call, Answer, At, Chunk, Gate, GuestKind, Source, Step};
use crate::component_link::{InputStream, StreamEnd};
use crate::errors::Fault;
use crate::fileio::read_exact_at;
use crate::state::{begin, State};
use crate::wit;

type HandleParams<'a> = (Resource<InputStream>, u64, u64, u64, &'a [u8]);
pub type InvokeFunc = TypedFunc<(Vec<String>,), (Result<String, String>,)>;
type EndedFunc = TypedFunc<(u64, StreamEnd), ()>;

pub struct ComponentKind {
    store: Store<State>,
    /// handle-chunk, its type checked at instantiation (see `handle`).
    handle: Func,
    invoke: InvokeFunc,
    ended: Option<EndedFunc>,
    buf: Vec<u8>,
}

/// `invoke`'s typed function, checked.
pub fn typed_invoke(store: &mut Store<State>, f: Option<Func>) -> Result<InvokeFunc, Fault> {
    let f = f.ok_or_else(|| Fault::Trap("the component lost its exports".into()))?;
    f.typed(&*store).map_err(|e| fault(e, store))
}

/// Calls `invoke(args)`: (ok, text).
pub fn call_invoke(
    store: &mut Store<State>,
    invoke: &InvokeFunc,
    timeout: u64,
    args: Vec<String>,
) -> Result<(bool, String), Fault> {
    begin(store, timeout);
    match invoke.call(&mut *store, (args,)) {
        Ok((Ok(s),)) => Ok((true, s)),
        Ok((Err(s),)) => Ok((false, s)),
        Err(e) => Err(fault(e, store)),
    }
}

impl ComponentKind {
    pub fn new(mut store: Store<State>, pre: &InstancePre<State>) -> Result<ComponentKind, Fault> {
        let inst = pre.instantiate(&mut store).map_err(|e| fault(e, &mut store))?;
        let handle = find_export(&mut store, &inst, wit::HANDLER_IFACE, "handle-chunk")
            .ok_or_else(|| Fault::Trap("the component lost its exports".into()))?;
        handle.typed::<HandleParams<'_>, (bool,)>(&store).map_err(|e| fault(e, &mut store))?;
        let invoke = find_export(&mut store, &inst, wit::TRIGGER_IFACE, "invoke");
        let invoke = typed_invoke(&mut store, invoke)?;
        let ended = match find_export(&mut store, &inst, wit::EVENTS_IFACE, "stream-ended") {
            Some(f) => Some(f.typed(&store).map_err(|e| fault(e, &mut store))?),
            None => None,
        };
        Ok(ComponentKind { store, handle, invoke, ended, buf: Vec::new() })
    }

    /// handle-chunk, typed for a chunk of any lifetime.
    fn handle<'a>(&self) -> TypedFunc<HandleParams<'a>, (bool,)> {
        // SAFETY: `new` checked this very type (lifetimes play no part in the check).
        unsafe { TypedFunc::new_unchecked(self.handle) }
    }
}

impl GuestKind for ComponentKind {
    fn invoke(&mut self, timeout: u64, args: Vec<String>) -> Result<(bool, String), Fault> {
        call_invoke(&mut self.store, &self.invoke, timeout, args)
    }

    fn deliver(&mut self, gate: &mut Gate<'_>, at: At, src: &Source<'_>, made: &mut u64) -> Result<Answer, Fault> {
        let timeout = gate.timeout;
        let mut buf = std::mem::take(&mut self.buf);
        let r = per_call(gate, src, made, |j, chunk| {
            let data: &[u8] = match chunk {
                Chunk::Mem(b) => b,
                Chunk::File { fd, offset, len } => {
                    let n = len as usize;
                    if buf.len() < n {
                        buf.resize(n, 0);
                    }
                    let clock = &self.store.data().clock;
                    if let Some(e) = clock.host_time(|| read_exact_at(fd, &mut buf[..n], offset)) {
                        return Ok(Step::Source(e));
                    }
                    &buf[..n]
                }
            };
            begin(&mut self.store, timeout);
            let args = (Resource::new_borrow(at.handle), at.cid, at.first + j, at.total, data);
            match self.handle().call(&mut self.store, args) {
                Ok((b,)) => Ok(Step::Answered(b)),
                Err(e) => Err(fault(e, &mut self.store)),
            }
        });
        self.buf = buf;
        r
    }

    fn stream_ended(&mut self, timeout: u64, cid: u64, end: StreamEnd) -> Result<Option<String>, Fault> {
        if let Some(f) = self.ended {
            begin(&mut self.store, timeout);
            f.call(&mut self.store, (cid, end)).map_err(|e| fault(e, &mut self.store))?;
        }
        Ok(None)
    }
}
