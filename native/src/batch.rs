//! A batch: several deliveries in order, in one native call, over any guest
//! kind. An item whose stream an earlier item (or batch) stopped is skipped;
//! a halt skips the rest. Each item's result is pushed before it runs and
//! counts its chunks as they go, so what was delivered before a panic is
//! still known.

use std::collections::HashSet;
use std::time::Instant;

use crate::chunks::{At, Source};
use crate::errors::Fault;
use crate::fileio::advise;
use crate::kinds::{Answer, Gate, GuestKind};

/// One item of a batch: where it goes, its chunks, and a read-ahead hint (fd, offset,
/// length) told to the kernel before it runs.
pub struct Item<'a> {
    pub at: At,
    pub src: Source<'a>,
    pub hint: Option<(i32, u64, u64)>,
}

/// What one item came to: its answer, its chunks delivered, their total duration.
#[derive(Clone, Debug, Default)]
pub struct ItemResult {
    pub answer: Answer,
    pub made: u64,
    pub seconds: f64,
}

/// Runs `items` on `kind`, pushing one result per item reached onto `out`; returns the
/// fault that stopped the batch, if one did (the item it stopped in is the last result).
/// `stopped`: the streams that answered false or failed, kept across the batches of one
/// job (cleared by a `fresh` batch).
pub fn run(
    kind: &mut dyn GuestKind,
    gate: &mut Gate<'_>,
    stopped: &mut HashSet<u32>,
    items: &[Item<'_>],
    fresh: bool,
    out: &mut Vec<ItemResult>,
) -> Option<Fault> {
    if fresh {
        stopped.clear();
    }
    for it in items {
        out.push(ItemResult::default());
        if stopped.contains(&it.at.handle) || gate.halted() {
            continue;
        }
        if let Some((fd, offset, len)) = it.hint {
            advise(fd, offset, len);
        }
        let t0 = Instant::now();
        let slot = out.len() - 1;
        let r = kind.deliver(gate, it.at, &it.src, &mut out[slot].made);
        out[slot].seconds = t0.elapsed().as_secs_f64();
        match r {
            Ok(answer) => {
                if matches!(answer, Answer::Bool(false) | Answer::SourceError(_)) {
                    stopped.insert(it.at.handle);
                }
                out[slot].answer = answer;
            }
            Err(f) => return Some(f),
        }
    }
    None
}
