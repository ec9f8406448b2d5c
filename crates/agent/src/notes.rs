//! The running kernel's GNU build-id, parsed from the raw ELF notes the kernel exposes in
//! `/sys/kernel/notes`. The parser is pure and bounds-checked: garbage yields an error, never a
//! panic.

use patchbay_core::{BuildId, IdError};

/// `n_type` of the GNU build-id note.
const NT_GNU_BUILD_ID: u32 = 3;
/// Owner name of GNU notes, including the terminating NUL that `namesz` counts.
const GNU_OWNER: &[u8] = b"GNU\0";
/// Size of one note header: `namesz`, `descsz`, `type`, each a native-endian u32.
const NOTE_HEADER_BYTES: usize = 12;

/// Why no build-id could be taken from the kernel notes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotesError {
    /// The notes parse, but none of them is a GNU build-id note.
    #[error(
        "the kernel notes hold no GNU build-id note (NT_GNU_BUILD_ID); this kernel was built \
         without a build-id and cannot be identified exactly, so Patchbay cannot patch it"
    )]
    Missing,
    /// A note's header, name or descriptor runs past the end of the data (or overflows).
    #[error(
        "the kernel notes are malformed at byte {offset}: {reason}; is the notes path really \
         /sys/kernel/notes?"
    )]
    Malformed {
        /// Byte offset of the note that could not be read.
        offset: usize,
        /// What is wrong with it, e.g. `truncated header`.
        reason: &'static str,
    },
    /// The build-id note is there but its descriptor is not a valid build-id (wrong length).
    #[error("the kernel's GNU build-id note does not hold a usable build-id: {0}")]
    BadId(IdError),
}

/// Finds the GNU build-id note in a sequence of ELF notes and returns its descriptor as a
/// [`BuildId`].
pub fn parse_build_id(notes: &[u8]) -> Result<BuildId, NotesError> {
    let mut offset = 0usize;
    while offset < notes.len() {
        let malformed = |reason| NotesError::Malformed { offset, reason };
        let name_size = read_u32(notes, offset).ok_or_else(|| malformed("truncated header"))?;
        let desc_size = read_u32(notes, offset.saturating_add(4))
            .ok_or_else(|| malformed("truncated header"))?;
        let note_type = read_u32(notes, offset.saturating_add(8))
            .ok_or_else(|| malformed("truncated header"))?;
        let name_start = offset
            .checked_add(NOTE_HEADER_BYTES)
            .ok_or_else(|| malformed("offset overflow"))?;
        let name_len = usize::try_from(name_size).map_err(|_| malformed("name too large"))?;
        let desc_len = usize::try_from(desc_size).map_err(|_| malformed("descriptor too large"))?;
        let desc_start = align4(name_start, name_len).ok_or_else(|| malformed("name too large"))?;
        let next = align4(desc_start, desc_len).ok_or_else(|| malformed("descriptor too large"))?;
        let name = name_start
            .checked_add(name_len)
            .and_then(|end| notes.get(name_start..end))
            .ok_or_else(|| malformed("name runs past the end"))?;
        let desc = desc_start
            .checked_add(desc_len)
            .and_then(|end| notes.get(desc_start..end))
            .ok_or_else(|| malformed("descriptor runs past the end"))?;
        if note_type == NT_GNU_BUILD_ID && name == GNU_OWNER {
            return BuildId::from_bytes(desc).map_err(NotesError::BadId);
        }
        offset = next;
    }
    Err(NotesError::Missing)
}

/// `start + len` rounded up to a multiple of 4 (ELF note fields are 4-byte aligned).
fn align4(start: usize, len: usize) -> Option<usize> {
    let end = start.checked_add(len)?;
    end.checked_add(3).map(|v| v & !3)
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let raw = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_ne_bytes(raw.try_into().ok()?))
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;

    pub(crate) fn note(name: &[u8], note_type: u32, desc: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(name.len() as u32).to_ne_bytes());
        out.extend_from_slice(&(desc.len() as u32).to_ne_bytes());
        out.extend_from_slice(&note_type.to_ne_bytes());
        out.extend_from_slice(name);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out.extend_from_slice(desc);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out
    }

    /// Notes like a real x86 kernel's: a Linux note, a Xen note, then the build-id.
    pub(crate) fn kernel_notes(build_id: &[u8]) -> Vec<u8> {
        let mut notes = note(b"Linux\0", 6, b"6.1.0\0");
        notes.extend(note(b"Xen\0", 18, &0xffff_ffff_8100_0000u64.to_ne_bytes()));
        notes.extend(note(b"GNU\0", NT_GNU_BUILD_ID, build_id));
        notes
    }

    #[test]
    fn finds_build_id_after_other_notes() {
        let id: Vec<u8> = (0u8..20).collect();
        let parsed = parse_build_id(&kernel_notes(&id)).unwrap();
        assert_eq!(parsed.as_str(), "000102030405060708090a0b0c0d0e0f10111213");
    }

    #[test]
    fn ignores_gnu_notes_of_other_types_and_other_owners_with_type_3() {
        let mut notes = note(b"GNU\0", 1, &[0; 16]); // NT_GNU_ABI_TAG
        notes.extend(note(b"Xen\0", NT_GNU_BUILD_ID, &[0xee; 20]));
        notes.extend(note(b"GNU\0", NT_GNU_BUILD_ID, &[0xab; 20]));
        assert_eq!(parse_build_id(&notes).unwrap().as_str(), "ab".repeat(20));
    }

    #[test]
    fn unaligned_sizes_are_padded() {
        // A 5-byte name and a 3-byte descriptor force padding on both fields.
        let mut notes = note(b"Linux", 99, b"abc");
        notes.extend(note(b"GNU\0", NT_GNU_BUILD_ID, &[0x11; 20]));
        assert_eq!(parse_build_id(&notes).unwrap().as_str(), "11".repeat(20));
    }

    #[test]
    fn missing_build_id() {
        assert_eq!(parse_build_id(&[]), Err(NotesError::Missing));
        assert_eq!(
            parse_build_id(&note(b"Linux\0", 6, b"x")),
            Err(NotesError::Missing)
        );
    }

    #[test]
    fn too_short_build_id_is_rejected() {
        let notes = note(b"GNU\0", NT_GNU_BUILD_ID, &[1, 2, 3]);
        assert!(matches!(parse_build_id(&notes), Err(NotesError::BadId(_))));
    }

    #[test]
    fn garbage_never_panics() {
        let good = kernel_notes(&[0x42; 20]);
        // Every truncation of a valid blob.
        for len in 0..good.len() {
            let _ = parse_build_id(&good[..len]);
        }
        // Huge sizes that would overflow offsets.
        let mut huge = Vec::new();
        huge.extend_from_slice(&u32::MAX.to_ne_bytes());
        huge.extend_from_slice(&u32::MAX.to_ne_bytes());
        huge.extend_from_slice(&3u32.to_ne_bytes());
        huge.extend_from_slice(b"GNU\0");
        assert!(matches!(
            parse_build_id(&huge),
            Err(NotesError::Malformed { .. })
        ));
        // Pseudo-random bytes.
        let mut x: u32 = 0x1234_5678;
        for round in 0..2000 {
            let len = round % 97;
            let blob: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    (x & 0xff) as u8
                })
                .collect();
            let _ = parse_build_id(&blob);
        }
        // Trailing garbage after a complete build-id note does not matter.
        let mut trailing = kernel_notes(&[0x42; 20]);
        trailing.extend_from_slice(&[1, 2, 3]);
        assert!(parse_build_id(&trailing).is_ok());
    }
}
