//! Reads a module's `.modinfo` section (`key=value` strings separated by NUL bytes).

use object::{Object, ObjectSection};

/// Why the module's metadata could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ModinfoError {
    #[error("not a readable ELF module: {0}")]
    Elf(#[from] object::Error),
    #[error("the module has no .modinfo section")]
    Missing,
}

/// All `key=value` entries of the module's `.modinfo`, in order.
pub fn read(ko: &[u8]) -> Result<Vec<(String, String)>, ModinfoError> {
    let file = object::File::parse(ko)?;
    let section = file
        .section_by_name(".modinfo")
        .ok_or(ModinfoError::Missing)?;
    let data = section.data()?;
    Ok(data
        .split(|&b| b == 0)
        .filter(|entry| !entry.is_empty())
        .filter_map(|entry| {
            let text = String::from_utf8_lossy(entry);
            text.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect())
}

/// The first value of `key`, if any.
pub fn value<'a>(info: &'a [(String, String)], key: &str) -> Option<&'a str> {
    info.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}
