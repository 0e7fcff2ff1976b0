//! The streams kind (world consumer-streams, WASI 0.3 style): one `stream<u8>`
//! per started chunked read, written by the host at the pace Python chooses
//! (feed.rs holds the plumbing, drive.rs the waits). A batch's run of chunks
//! for one stream goes in as few trips through the store as the gate allows:
//! one, unless a panic is injected sooner (a test hook).

use std::collections::HashMap;

use wasmtime::component::InstancePre;
use wasmtime::Store;

use super::component::{typed_invoke, InvokeFunc};
use super::{fault, find_export, Answer, At, Gate, GuestKind, Source};
use crate::component_link::StreamEnd;
use crate::drive::{block_on, drive, Progress, Stop};
use crate::errors::Fault;
use crate::feed::{self, lock, ConsumeFunc, Shared};
use crate::state::{begin, State};
use crate::wit;

pub struct StreamsKind {
    store: Store<State>,
    invoke: InvokeFunc,
    consume: ConsumeFunc,
    feeds: HashMap<u64, Shared>,
}

impl StreamsKind {
    /// A streams component is instantiated and invoked the async way: one that imports
    /// `write-blob` (a concurrent host function) requires it, and the rest run alike.
    pub fn new(mut store: Store<State>, pre: &InstancePre<State>) -> Result<StreamsKind, Fault> {
        let clock = store.data().clock.clone();
        let inst = match block_on(pre.instantiate_async(&mut store), &clock) {
            Some(Ok(i)) => i,
            Some(Err(e)) => return Err(fault(e, &mut store)),
            None => return Err(Fault::Timeout),
        };
        let invoke = find_export(&mut store, &inst, wit::TRIGGER_IFACE, "invoke");
        let invoke = typed_invoke(&mut store, invoke)?;
        let consume = find_export(&mut store, &inst, wit::CONSUMER_IFACE, "consume")
            .ok_or_else(|| Fault::Trap("the component lost its exports".into()))?;
        let consume = consume.typed(&store).map_err(|e| fault(e, &mut store))?;
        Ok(StreamsKind { store, invoke, consume, feeds: HashMap::new() })
    }

    /// The feed of `cid`'s stream; its `consume` call is started here the first time.
    fn feed_of(&mut self, cid: u64) -> Result<Shared, Fault> {
        if let Some(f) = self.feeds.get(&cid) {
            return Ok(f.clone());
        }
        let store = &mut self.store;
        let size = match store.data().started.get(&cid).copied() {
            Some(h) => crate::host::size(store.data_mut(), h).map_err(|e| fault(e, store))?,
            None => None,
        };
        let feed = feed::start(store, self.consume, cid, size).map_err(|e| fault(e, store))?;
        self.feeds.insert(cid, feed.clone());
        Ok(feed)
    }

    /// The trap a finished `consume` call ended in, if it did (told once).
    fn call_fault(&mut self, feed: &Shared) -> Option<Fault> {
        let mut f = lock(feed);
        if let Some(Err(_)) = &f.done {
            if let Some(Err(e)) = f.done.replace(Ok(Err("the call failed".into()))) {
                drop(f);
                return Some(fault(e, &mut self.store));
            }
        }
        None
    }

    fn stop_fault(&mut self, stop: Stop) -> Fault {
        match stop {
            Stop::Expired => Fault::Timeout,
            Stop::Error(e) => fault(e, &mut self.store),
        }
    }

    /// The end of `cid`'s stream: `end` resolves, the data stream closes, and the store
    /// runs until `consume` returns. A stream that ended before its first write still
    /// gets its call (an empty stream, then its end). Returns the guest's error, if any.
    fn end(&mut self, timeout: u64, cid: u64, end: StreamEnd) -> Result<Option<String>, Fault> {
        let feed = self.feed_of(cid)?;
        self.feeds.remove(&cid);
        self.store.data_mut().started.remove(&cid);
        lock(&feed).finish(end);
        begin(&mut self.store, timeout);
        let r = drive(&mut self.store, &feed, false);
        if let Some(f) = self.call_fault(&feed) {
            return Err(f);
        }
        if let Err(stop) = r {
            return Err(self.stop_fault(stop));
        }
        let verdict = match lock(&feed).done.take() {
            Some(Ok(Err(msg))) => Some(msg),
            _ => None,
        };
        Ok(verdict)
    }
}

impl GuestKind for StreamsKind {
    fn invoke(&mut self, timeout: u64, args: Vec<String>) -> Result<(bool, String), Fault> {
        // streams a job left open (its end never told): cancelled, their calls returned,
        // before the next job's invoke
        let stale: Vec<u64> = self.feeds.keys().copied().collect();
        for cid in stale {
            self.end(timeout, cid, StreamEnd::Cancelled)?;
        }
        begin(&mut self.store, timeout);
        let invoke = self.invoke;
        let clock = self.store.data().clock.clone();
        let fut = self.store.run_concurrent(async move |acc| invoke.call_concurrent(acc, (args,)).await);
        match block_on(fut, &clock) {
            Some(Ok(Ok((Ok(s),)))) => Ok((true, s)),
            Some(Ok(Ok((Err(s),)))) => Ok((false, s)),
            Some(Ok(Err(e)) | Err(e)) => Err(fault(e, &mut self.store)),
            None => Err(Fault::Timeout),
        }
    }

    /// Writes `src`'s chunks into the stream: a chunk counts as delivered only when the
    /// guest took it whole, on every path (a trap and a timeout included).
    fn deliver(&mut self, gate: &mut Gate<'_>, at: At, src: &Source<'_>, made: &mut u64) -> Result<Answer, Fault> {
        let feed = self.feed_of(at.cid)?;
        let count = src.count();
        let mut j = 0;
        while j < count {
            {
                let f = lock(&feed);
                if f.done.is_some() || f.reader_gone() {
                    drop(f);
                    return match self.call_fault(&feed) {
                        Some(fault) => Err(fault),
                        None => Ok(Answer::Bool(false)),
                    };
                }
            }
            if gate.halted() {
                return Ok(Answer::Nothing);
            }
            let m = gate.allow(count - j);
            let part = src.part(j, m);
            begin(&mut self.store, gate.timeout);
            let lent = feed::lend(&feed, &part, gate.halt);
            let r = drive(&mut self.store, &feed, true);
            let (taken, read_error) = lent.result();
            drop(lent);
            *made += taken;
            gate.took(taken);
            j += taken;
            if let Some(f) = self.call_fault(&feed) {
                return Err(f);
            }
            if let Some(e) = read_error {
                return Ok(Answer::SourceError(e));
            }
            match r {
                Ok(Progress::Taken) => {}
                Ok(Progress::Held) => return Ok(Answer::Nothing),
                Ok(Progress::ReaderGone | Progress::Returned) => return Ok(Answer::Bool(false)),
                Ok(Progress::ReadFailed) => return Ok(Answer::SourceError("the direct read failed".into())),
                Err(stop) => return Err(self.stop_fault(stop)),
            }
        }
        Ok(Answer::Bool(true))
    }

    fn stream_ended(&mut self, timeout: u64, cid: u64, end: StreamEnd) -> Result<Option<String>, Fault> {
        self.end(timeout, cid, end)
    }
}
