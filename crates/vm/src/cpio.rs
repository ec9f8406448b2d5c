//! A minimal writer for the "newc" cpio format the kernel unpacks as initramfs.

use std::io::{self, Write};

pub(crate) const S_IFDIR: u32 = 0o040_000;
pub(crate) const S_IFREG: u32 = 0o100_000;
pub(crate) const S_IFLNK: u32 = 0o120_000;
pub(crate) const S_IFCHR: u32 = 0o020_000;

const MAGIC: &[u8] = b"070701";
const TRAILER: &str = "TRAILER!!!";

/// One archive member as the kernel sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EntryHeader<'a> {
    /// Path without a leading `/`.
    pub name: &'a str,
    /// File type bits (`S_IF*`) plus permission bits.
    pub mode: u32,
    pub nlink: u32,
    pub rdev_major: u32,
    pub rdev_minor: u32,
}

/// Streams newc entries; offsets are tracked so every header and body is 4-byte aligned.
#[derive(Debug)]
pub(crate) struct CpioWriter<W: Write> {
    out: W,
    offset: u64,
    next_inode: u32,
}

impl<W: Write> CpioWriter<W> {
    pub(crate) fn new(out: W) -> Self {
        // Inode 0 is avoided: some extractors treat it as "no inode".
        Self {
            out,
            offset: 0,
            next_inode: 1,
        }
    }

    pub(crate) fn entry(&mut self, header: EntryHeader<'_>, data: &[u8]) -> io::Result<()> {
        let file_size = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is too large for a newc entry", header.name),
            )
        })?;
        // The name size counts the terminating NUL.
        let name_size = u32::try_from(header.name.len() + 1)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "entry name is too long"))?;
        let inode = self.next_inode;
        self.next_inode = self.next_inode.wrapping_add(1);
        let fields: [u32; 13] = [
            inode,
            header.mode,
            0, // uid: root
            0, // gid: root
            header.nlink,
            0, // mtime: fixed, so archives are reproducible
            file_size,
            0, // devmajor
            0, // devminor
            header.rdev_major,
            header.rdev_minor,
            name_size,
            0, // check: only used by the "crc" variant
        ];
        self.put(MAGIC)?;
        for field in fields {
            self.put(format!("{field:08X}").as_bytes())?;
        }
        self.put(header.name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    /// Writes the trailer entry and hands back the underlying writer.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.entry(
            EntryHeader {
                name: TRAILER,
                mode: 0,
                nlink: 1,
                rdev_major: 0,
                rdev_minor: 0,
            },
            &[],
        )?;
        Ok(self.out)
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let misalignment = self.offset % 4;
        if misalignment != 0 {
            let zeros = [0u8; 3];
            let count = usize::try_from(4 - misalignment).unwrap_or(0);
            self.put(zeros.get(..count).unwrap_or(&[]))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use super::*;

    #[test]
    fn header_layout_and_alignment() {
        let mut writer = CpioWriter::new(Vec::new());
        writer
            .entry(
                EntryHeader {
                    name: "ab",
                    mode: S_IFREG | 0o644,
                    nlink: 1,
                    rdev_major: 0,
                    rdev_minor: 0,
                },
                b"hello",
            )
            .unwrap();
        let bytes = writer.finish().unwrap();
        assert_eq!(&bytes[..6], b"070701");
        // mode field is the second one.
        assert_eq!(&bytes[14..22], b"000081A4");
        // 110 header + "ab\0" = 113, padded to 116; data 5 padded to 8.
        assert_eq!(&bytes[110..113], b"ab\0");
        assert_eq!(&bytes[116..121], b"hello");
        assert_eq!(&bytes[124..130], b"070701");
        assert_eq!(bytes.len() % 4, 0);
    }
}
