//! The canonical ABI for core-module guests, written once: one helper per
//! layout chunkd lowers or lifts (CanonicalABI.md; little-endian, results
//! through a return pointer), and `GuestMem`, a guest's memory with its
//! `cabi_realloc`, used alike from host functions (a `Caller`) and from
//! calls into the guest (a `Store`).
//!
//! ```text
//! result<own<input-stream>, stream-error>  u8 disc @0 | ok: i32 handle @4 |
//!                                          err: u8 case @4, string (i32 ptr @8, i32 len @12)
//! result<list<u8>, stream-error>           ok: i32 ptr @4, i32 len @8 | err as above
//! result<_, stream-error>                  disc @0 | err as above
//! option<u64>                              u8 disc @0 | u64 @8
//! list<string>                             (i32 ptr, i32 len) records, 8 bytes each, align 4
//! invoke -> result<string, string>         returned pointer: u8 disc @0, i32 ptr @4, i32 len @8
//! ```

use wasmtime::{AsContext, AsContextMut, Caller, Extern, Memory, TypedFunc};

use crate::host::StreamErr;
use crate::state::State;

pub type Realloc = TypedFunc<(i32, i32, i32, i32), i32>;

pub fn span_err(ptr: u64, n: u64) -> wasmtime::Error {
    wasmtime::format_err!("guest pointer {ptr}+{n} is outside its memory")
}

/// A core guest's memory and its allocator.
#[derive(Clone)]
pub struct GuestMem {
    pub memory: Memory,
    pub realloc: Realloc,
}

impl GuestMem {
    /// The memory and allocator of the guest calling a host function.
    pub fn of_caller(c: &mut Caller<'_, State>) -> wasmtime::Result<GuestMem> {
        let memory = match c.get_export("memory") {
            Some(Extern::Memory(m)) => m,
            _ => wasmtime::bail!("core guest exports no memory"),
        };
        let realloc = match c.get_export("cabi_realloc") {
            Some(Extern::Func(f)) => f.typed::<(i32, i32, i32, i32), i32>(&*c)?,
            _ => wasmtime::bail!("core guest exports no cabi_realloc"),
        };
        Ok(GuestMem { memory, realloc })
    }

    /// `n` bytes of guest memory at `ptr`, checked.
    pub fn slice<'a>(&self, store: &'a impl AsContext<Data = State>, ptr: u32, n: u32) -> wasmtime::Result<&'a [u8]> {
        let (p, e) = (ptr as usize, ptr as usize + n as usize);
        self.memory.data(store).get(p..e).ok_or_else(|| span_err(ptr.into(), n.into()))
    }

    pub fn slice_mut<'a>(
        &self,
        store: &'a mut impl AsContextMut<Data = State>,
        ptr: u32,
        n: u32,
    ) -> wasmtime::Result<&'a mut [u8]> {
        let (p, e) = (ptr as usize, ptr as usize + n as usize);
        self.memory.data_mut(store).get_mut(p..e).ok_or_else(|| span_err(ptr.into(), n.into()))
    }

    pub fn put(&self, store: &mut impl AsContextMut<Data = State>, ptr: u32, bytes: &[u8]) -> wasmtime::Result<()> {
        self.slice_mut(store, ptr, bytes.len() as u32)?.copy_from_slice(bytes);
        Ok(())
    }

    /// A UTF-8 string the guest passed.
    pub fn string(&self, store: &impl AsContext<Data = State>, ptr: u32, n: u32) -> wasmtime::Result<String> {
        String::from_utf8(self.slice(store, ptr, n)?.to_vec())
            .map_err(|_| wasmtime::format_err!("guest passed a string that is not UTF-8"))
    }

    /// Allocates `n` bytes in the guest (its `cabi_realloc`), then `fill`s them in
    /// place: the bytes are copied once, from wherever they come from (a slice, or a
    /// `pread` straight into guest memory).
    pub fn lower_with<R>(
        &self,
        store: &mut impl AsContextMut<Data = State>,
        n: u32,
        align: u32,
        fill: impl FnOnce(&mut [u8]) -> R,
    ) -> wasmtime::Result<(u32, R)> {
        let p = self.realloc.call(&mut *store, (0, 0, align as i32, n as i32))? as u32;
        let r = fill(self.slice_mut(store, p, n)?);
        Ok((p, r))
    }

    /// Allocates and copies `bytes` into the guest: their pointer.
    pub fn lower(&self, store: &mut impl AsContextMut<Data = State>, bytes: &[u8]) -> wasmtime::Result<u32> {
        Ok(self.lower_with(store, bytes.len() as u32, 1, |dst| dst.copy_from_slice(bytes))?.0)
    }

    /// `list<string>`: the strings, then their (ptr, len) records; (records, count).
    pub fn lower_strings(
        &self,
        store: &mut impl AsContextMut<Data = State>,
        items: &[String],
    ) -> wasmtime::Result<(u32, u32)> {
        let mut recs = Vec::with_capacity(8 * items.len());
        for s in items {
            let p = self.lower(store, s.as_bytes())?;
            recs.extend_from_slice(&pair(p, s.len() as u32));
        }
        let (arr, ()) = self.lower_with(store, recs.len() as u32, 4, |dst| dst.copy_from_slice(&recs))?;
        Ok((arr, items.len() as u32))
    }

    /// `result<T, stream-error>` at `ret`: ok with `payload` at offset 4, or the error
    /// (its message lowered first).
    pub fn put_result(
        &self,
        store: &mut impl AsContextMut<Data = State>,
        ret: u32,
        r: Result<&[u8], &StreamErr>,
    ) -> wasmtime::Result<()> {
        let mut rec = [0u8; 16];
        let used = match r {
            Ok(payload) => {
                rec[4..4 + payload.len()].copy_from_slice(payload);
                4 + payload.len()
            }
            Err(e) => {
                rec[0] = 1;
                rec[4] = e.discriminant();
                if matches!(e, StreamErr::Closed) {
                    8
                } else {
                    let msg = e.message();
                    let p = self.lower(store, msg.as_bytes())?;
                    rec[8..16].copy_from_slice(&pair(p, msg.len() as u32));
                    16
                }
            }
        };
        self.put(store, ret, &rec[..used.max(1)])
    }

    /// `result<string, string>` returned by pointer: (ok, text).
    pub fn lift_result_string(
        &self,
        store: &impl AsContext<Data = State>,
        ret: u32,
    ) -> wasmtime::Result<(bool, String)> {
        let rec = self.slice(store, ret, 12)?;
        let disc = rec[0];
        if disc > 1 {
            wasmtime::bail!("invoke returned result discriminant {disc}");
        }
        let (p, n) = unpair(&rec[4..12]);
        Ok((disc == 0, self.string(store, p, n)?))
    }
}

/// An (i32, i32) pair: a list's or a string's (ptr, len).
pub fn pair(a: u32, b: u32) -> [u8; 8] {
    let mut r = [0u8; 8];
    r[..4].copy_from_slice(&a.to_le_bytes());
    r[4..].copy_from_slice(&b.to_le_bytes());
    r
}

pub fn unpair(b: &[u8]) -> (u32, u32) {
    (u32::from_le_bytes([b[0], b[1], b[2], b[3]]), u32::from_le_bytes([b[4], b[5], b[6], b[7]]))
}

/// `option<u64>`: the record and how many of its bytes are written.
pub fn option_u64(v: Option<u64>) -> ([u8; 16], usize) {
    let mut rec = [0u8; 16];
    match v {
        None => (rec, 1),
        Some(n) => {
            rec[0] = 1;
            rec[8..16].copy_from_slice(&n.to_le_bytes());
            (rec, 16)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts() {
        assert_eq!(unpair(&pair(7, 0x0102_0304)), (7, 0x0102_0304));
        assert_eq!(option_u64(None).1, 1);
        let (rec, n) = option_u64(Some(5));
        assert_eq!((rec[0], n, u64::from_le_bytes(rec[8..16].try_into().unwrap())), (1, 16, 5));
    }
}
