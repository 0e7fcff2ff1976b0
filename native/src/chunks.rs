//! What a delivery is made of: where it goes (`At`) and its chunks (`Source`):
//! bytes Python holds, or a run of file chunks the instance reads itself.

/// (stream handle, correlation-id, first chunk's number, total-chunks) of a delivery.
#[derive(Clone, Copy, Debug)]
pub struct At {
    pub handle: u32,
    pub cid: u64,
    pub first: u64,
    pub total: u64,
}

/// `count` consecutive chunks of one file the instance reads itself: `chunk_size`
/// bytes each from `offset` on, but the last, which is `last_length` long.
#[derive(Clone, Copy, Debug)]
pub struct FileRun {
    pub fd: i32,
    pub offset: u64,
    pub chunk_size: u64,
    pub count: u64,
    pub last_length: u64,
}

impl FileRun {
    /// Chunks `j..j + m` of the run, as a run of their own.
    pub fn part(&self, j: u64, m: u64) -> FileRun {
        let last_length = if j + m >= self.count { self.last_length } else { self.chunk_size };
        FileRun { offset: self.offset + j * self.chunk_size, count: m, last_length, ..*self }
    }

    /// (offset, length) of chunk `j`.
    pub fn chunk(&self, j: u64) -> (u64, u64) {
        let n = if j + 1 < self.count { self.chunk_size } else { self.last_length };
        (self.offset + j * self.chunk_size, n)
    }
}

/// What one item of a batch delivers: one chunk of bytes Python holds, or a file run.
#[derive(Clone, Copy)]
pub enum Source<'a> {
    Mem(&'a [u8]),
    File(FileRun),
}

/// One chunk of a source.
#[derive(Clone, Copy)]
pub enum Chunk<'a> {
    Mem(&'a [u8]),
    File { fd: i32, offset: u64, len: u64 },
}

impl<'a> Source<'a> {
    pub fn count(&self) -> u64 {
        match self {
            Source::Mem(_) => 1,
            Source::File(r) => r.count,
        }
    }

    /// Chunks `j..j + m`.
    pub fn part(&self, j: u64, m: u64) -> Source<'a> {
        match self {
            Source::Mem(b) => Source::Mem(b),
            Source::File(r) => Source::File(r.part(j, m)),
        }
    }

    pub fn chunk(&self, j: u64) -> Chunk<'_> {
        match self {
            Source::Mem(b) => Chunk::Mem(b),
            Source::File(r) => {
                let (offset, len) = r.chunk(j);
                Chunk::File { fd: r.fd, offset, len }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_cut_into_parts() {
        let r = FileRun { fd: 3, offset: 100, chunk_size: 10, count: 5, last_length: 4 };
        assert_eq!(r.chunk(4), (140, 4));
        let p = r.part(1, 2);
        assert_eq!((p.offset, p.count, p.last_length, p.chunk(1)), (110, 2, 10, (120, 10)));
        let tail = r.part(3, 2);
        assert_eq!((tail.offset, tail.count, tail.chunk(1)), (130, 2, (140, 4)));
    }
}
