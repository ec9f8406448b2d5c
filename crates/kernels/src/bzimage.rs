//! Getting the ELF vmlinux out of a bzImage: QEMU boots it through its PVH entry, which skips
//! the in-guest decompression that costs seconds under TCG. Debian compresses 6.1 with XZ and
//! 6.12 with ZSTD.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::KernelError;

pub(crate) const XZ_MAGIC: [u8; 6] = [0xFD, b'7', b'z', b'X', b'Z', 0x00];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];
const ELF_MAGIC: [u8; 4] = [0x7F, b'E', b'L', b'F'];

/// Offsets in the x86 boot protocol's setup header (Documentation/x86/boot.rst).
const SETUP_SECTS: usize = 0x1F1;
const HEADER_MAGIC: usize = 0x202;
const PROTOCOL_VERSION: usize = 0x206;
const PAYLOAD_OFFSET: usize = 0x248;
const PAYLOAD_LENGTH: usize = 0x24C;

/// How the kernel inside a bzImage is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    Xz,
    Zstd,
}

/// Where the compressed kernel is, and how it is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Payload {
    pub(crate) offset: usize,
    /// The bytes of the compressed stream, without the 4-byte size the build appends.
    pub(crate) length: Option<usize>,
    pub(crate) compression: Compression,
}

/// The payload the setup header points at (boot protocol 2.08+), XZ or ZSTD; for older
/// headers, the first XZ stream after the setup code.
pub(crate) fn payload(image: &[u8]) -> Result<Payload, String> {
    let xz_offset = xz_payload_offset(image);
    if let Ok(offset) = xz_offset {
        return Ok(Payload {
            offset,
            length: None,
            compression: Compression::Xz,
        });
    }
    let setup_sects = match image.get(SETUP_SECTS).copied() {
        Some(0) => 4,
        Some(n) => usize::from(n),
        None => return Err("truncated setup header".into()),
    };
    let start = (setup_sects + 1) * 512;
    let offset = read_u32(image, PAYLOAD_OFFSET)
        .and_then(|o| usize::try_from(o).ok())
        .and_then(|o| o.checked_add(start));
    let length = read_u32(image, PAYLOAD_LENGTH).and_then(|l| usize::try_from(l).ok());
    match (offset, length) {
        (Some(offset), Some(length))
            if image.get(offset..offset + ZSTD_MAGIC.len()) == Some(ZSTD_MAGIC.as_slice())
                && length > 4
                && offset
                    .checked_add(length)
                    .is_some_and(|end| end <= image.len()) =>
        {
            Ok(Payload {
                offset,
                length: Some(length - 4),
                compression: Compression::Zstd,
            })
        }
        _ => Err(xz_offset
            .err()
            .unwrap_or_default()
            .replace("no XZ stream", "no XZ or ZSTD stream")),
    }
}

fn read_u16(bytes: &[u8], at: usize) -> Option<u16> {
    let raw = bytes.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes(raw.try_into().ok()?))
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let raw = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(raw.try_into().ok()?))
}

fn has_magic_at(bytes: &[u8], at: usize) -> bool {
    at.checked_add(XZ_MAGIC.len())
        .and_then(|end| bytes.get(at..end))
        .is_some_and(|window| window == XZ_MAGIC)
}

/// Where the XZ-compressed kernel starts: the payload the setup header points at (boot
/// protocol 2.08+), else the first XZ stream magic after the real-mode setup code.
pub(crate) fn xz_payload_offset(image: &[u8]) -> Result<usize, String> {
    if image.get(HEADER_MAGIC..HEADER_MAGIC + 4) != Some(b"HdrS".as_slice()) {
        return Err("no \"HdrS\" setup header at 0x202 (not an x86 bzImage)".into());
    }
    let setup_sects = match image.get(SETUP_SECTS).copied() {
        Some(0) => 4, // the boot protocol's meaning of 0
        Some(n) => usize::from(n),
        None => return Err("truncated setup header".into()),
    };
    let protected_mode_start = (setup_sects + 1) * 512;
    let protocol = read_u16(image, PROTOCOL_VERSION).unwrap_or(0);
    if protocol >= 0x0208 {
        if let Some(payload) = read_u32(image, PAYLOAD_OFFSET)
            .and_then(|offset| usize::try_from(offset).ok())
            .and_then(|offset| offset.checked_add(protected_mode_start))
        {
            if has_magic_at(image, payload) {
                return Ok(payload);
            }
        }
    }
    let search_area = image
        .get(protected_mode_start..)
        .ok_or_else(|| "image ends inside the setup code".to_string())?;
    search_area
        .windows(XZ_MAGIC.len())
        .position(|window| window == XZ_MAGIC)
        .map(|position| protected_mode_start + position)
        .ok_or_else(|| "no XZ stream after the setup header (kernel not XZ-compressed?)".into())
}

/// Decompresses the bzImage's payload into `output`: XZ with `xz -dc --single-stream`
/// (`--single-stream` ignores the trailer the kernel appends after the stream), ZSTD with
/// `zstd -dc` on exactly the stream's bytes.
pub(crate) fn extract_vmlinux(bzimage: &Path, output: &Path) -> Result<(), KernelError> {
    let image = fs::read(bzimage).map_err(|e| KernelError::io("read", bzimage, e))?;
    let found = payload(&image).map_err(|reason| KernelError::BzImage {
        path: bzimage.to_path_buf(),
        reason,
    })?;
    let offset = found.offset;
    let payload = match found.length {
        Some(length) => image.get(offset..offset + length).unwrap_or(&[]),
        None => image.get(offset..).unwrap_or(&[]),
    };
    let out_file = File::create(output).map_err(|e| KernelError::io("create", output, e))?;
    let mut command = match found.compression {
        Compression::Xz => {
            let mut xz = Command::new("xz");
            xz.args(["-dc", "--single-stream"]);
            xz
        }
        Compression::Zstd => {
            let mut zstd = Command::new("zstd");
            zstd.args(["-dc", "-q"]);
            zstd
        }
    };
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::from(out_file))
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .map_err(|e| crate::process::spawn_error(&command, e))?;
    let stdin = child.stdin.take();
    let child_output = std::thread::scope(|scope| {
        let writer = scope.spawn(move || {
            if let Some(mut stdin) = stdin {
                // A write error means xz stopped early; its exit status tells why.
                let _ = stdin.write_all(payload);
            }
        });
        let output = child.wait_with_output();
        let _ = writer.join();
        output
    })
    .map_err(|e| KernelError::io("wait for xz decompressing", bzimage, e))?;
    if !child_output.status.success() {
        return Err(crate::process::failure(
            &command,
            child_output.status,
            &child_output.stderr,
            &format!(
                "the {:?} stream at offset {offset} of {} is damaged",
                found.compression,
                bzimage.display()
            ),
        ));
    }
    let mut magic = [0u8; 4];
    File::open(output)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map_err(|e| KernelError::io("read back", output, e))?;
    if magic != ELF_MAGIC {
        return Err(KernelError::Elf {
            path: output.to_path_buf(),
            reason: format!(
                "decompressed payload of {} does not start with the ELF magic",
                bzimage.display()
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    /// A fake bzImage: `setup_sects` sectors of setup + boot sector, then some
    /// protected-mode code, then the XZ magic at `payload` bytes into protected mode.
    fn synthetic(
        setup_sects: u8,
        protocol: u16,
        header_payload: u32,
        real_payload: usize,
    ) -> Vec<u8> {
        let pm_start = (usize::from(if setup_sects == 0 { 4 } else { setup_sects }) + 1) * 512;
        let mut image = vec![0u8; pm_start + real_payload + 64];
        image[SETUP_SECTS] = setup_sects;
        image[HEADER_MAGIC..HEADER_MAGIC + 4].copy_from_slice(b"HdrS");
        image[PROTOCOL_VERSION..PROTOCOL_VERSION + 2].copy_from_slice(&protocol.to_le_bytes());
        image[PAYLOAD_OFFSET..PAYLOAD_OFFSET + 4].copy_from_slice(&header_payload.to_le_bytes());
        image[pm_start + real_payload..pm_start + real_payload + 6].copy_from_slice(&XZ_MAGIC);
        image
    }

    #[test]
    fn uses_the_header_payload_offset() {
        let image = synthetic(39, 0x020f, 716, 716);
        assert_eq!(xz_payload_offset(&image).unwrap(), 40 * 512 + 716);
    }

    #[test]
    fn scans_when_the_header_is_old_or_wrong() {
        let old = synthetic(30, 0x0206, 0, 1000);
        assert_eq!(xz_payload_offset(&old).unwrap(), 31 * 512 + 1000);
        let wrong = synthetic(30, 0x020f, 12, 1000);
        assert_eq!(xz_payload_offset(&wrong).unwrap(), 31 * 512 + 1000);
        let zero_sects = synthetic(0, 0x0206, 0, 10);
        assert_eq!(xz_payload_offset(&zero_sects).unwrap(), 5 * 512 + 10);
    }

    #[test]
    fn ignores_magic_inside_the_setup_code() {
        let mut image = synthetic(10, 0x0206, 0, 100);
        image[600..606].copy_from_slice(&XZ_MAGIC);
        assert_eq!(xz_payload_offset(&image).unwrap(), 11 * 512 + 100);
    }

    #[test]
    fn rejects_non_bzimages() {
        assert!(xz_payload_offset(&[]).is_err());
        assert!(xz_payload_offset(&[0u8; 4096]).is_err());
        let mut no_xz = synthetic(4, 0x020f, 0, 0);
        let len = no_xz.len();
        no_xz[len - 64..].fill(0);
        no_xz[5 * 512..5 * 512 + 6].fill(0);
        assert!(xz_payload_offset(&no_xz).is_err());
        // Header claims more sectors than the file has.
        let mut truncated = vec![0u8; 1024];
        truncated[SETUP_SECTS] = 200;
        truncated[HEADER_MAGIC..HEADER_MAGIC + 4].copy_from_slice(b"HdrS");
        assert!(xz_payload_offset(&truncated).is_err());
    }

    /// A ZSTD kernel as Debian's 6.12 ships it: the header's payload offset and length (which
    /// counts the 4-byte size appended after the frame); extracted through the real `zstd`.
    #[test]
    fn extracts_a_zstd_payload_by_the_header_length() {
        let dir = tempfile::tempdir().unwrap();
        let elf = [b"\x7fELF".as_slice(), &[7u8; 3000]].concat();
        std::fs::write(dir.path().join("elf"), &elf).unwrap();
        let status = Command::new("zstd")
            .args(["-q", "-19", "-f", "-o"])
            .arg(dir.path().join("elf.zst"))
            .arg(dir.path().join("elf"))
            .status()
            .unwrap();
        assert!(status.success());
        let mut stream = std::fs::read(dir.path().join("elf.zst")).unwrap();
        stream.extend_from_slice(&(elf.len() as u32).to_le_bytes());
        let mut image = synthetic(4, 0x020f, 300, 0);
        image.resize(5 * 512 + 300, 0);
        image[5 * 512..5 * 512 + 6].fill(0); // no XZ stream anywhere
        image.extend_from_slice(&stream);
        image.extend_from_slice(&[0u8; 32]);
        image[PAYLOAD_LENGTH..PAYLOAD_LENGTH + 4]
            .copy_from_slice(&(stream.len() as u32).to_le_bytes());
        let found = payload(&image).unwrap();
        assert_eq!(found.compression, Compression::Zstd);
        assert_eq!(found.offset, 5 * 512 + 300);
        assert_eq!(found.length, Some(stream.len() - 4));
        let bzimage = dir.path().join("vmlinuz");
        std::fs::write(&bzimage, &image).unwrap();
        let out = dir.path().join("vmlinux");
        extract_vmlinux(&bzimage, &out).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), elf);
    }
}
