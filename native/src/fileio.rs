//! File I/O of direct reads: a chunk is `pread` by the instance itself (into its
//! buffer, into a core guest's memory, or into a streams guest's read buffer).

use std::io;

/// Reads `buf.len()` bytes at `offset`, or fewer at the file's end.
pub fn pread_full(fd: i32, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut got = 0usize;
    while got < buf.len() {
        let rest = &mut buf[got..];
        // SAFETY: `rest` is a valid, writable buffer of `rest.len()` bytes.
        let r = unsafe {
            libc::pread(fd, rest.as_mut_ptr() as *mut libc::c_void, rest.len(), (offset + got as u64) as libc::off_t)
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            break;
        }
        got += r as usize;
    }
    Ok(got)
}

/// Tells the kernel that `len` bytes at `offset` will be read soon (a hint only).
pub fn advise(fd: i32, offset: u64, len: u64) {
    // SAFETY: a hint only; errors are ignored.
    unsafe {
        libc::posix_fadvise(fd, offset as libc::off_t, len as libc::off_t, libc::POSIX_FADV_WILLNEED);
    }
}

/// A direct read's failure, worded as the Python side words SourceError.
pub fn read_error(got: io::Result<usize>, offset: u64, n: u64) -> Option<String> {
    match got {
        Ok(g) if g as u64 == n => None,
        Ok(g) => Some(format!("blob changed size: got {g} bytes at offset {offset}, expected {n}")),
        Err(e) => Some(format!("read failed at offset {offset}: {e}")),
    }
}

/// `pread_full` of exactly `buf.len()` bytes: None, or the error as `read_error` words it.
pub fn read_exact_at(fd: i32, buf: &mut [u8], offset: u64) -> Option<String> {
    let n = buf.len() as u64;
    read_error(pread_full(fd, buf, offset), offset, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_reads_are_exact_or_say_why() {
        let f = tempfile_with(b"0123456789");
        let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
        let mut buf = [0u8; 4];
        assert_eq!(read_exact_at(fd, &mut buf, 3), None);
        assert_eq!(&buf, b"3456");
        let short = read_exact_at(fd, &mut buf, 8).unwrap();
        assert_eq!(short, "blob changed size: got 2 bytes at offset 8, expected 4");
        let bad = read_exact_at(-1, &mut buf, 0).unwrap();
        assert!(bad.starts_with("read failed at offset 0: "), "{bad}");
    }

    fn tempfile_with(data: &[u8]) -> std::fs::File {
        let p = std::env::temp_dir().join(format!("chunkd-native-read-{}", std::process::id()));
        std::fs::write(&p, data).unwrap();
        let f = std::fs::File::open(&p).unwrap();
        let _ = std::fs::remove_file(&p);
        f
    }
}
