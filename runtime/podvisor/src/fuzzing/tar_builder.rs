//! Writes tar streams from a fuzz input: headers with valid checksums but
//! hostile contents (names with `..` or absolute, links out, sizes that do
//! not match the data, device nodes, PAX and GNU long-name overrides), so
//! that the unpacker, not the tar parser's checksum, sees them.

use std::path::Path;

use super::Input;

/// Names and link targets; `{abs}` is a path outside the layer directory
/// (its sibling `outside`), so absolute escapes can be caught too.
const NAMES: &[&str] = &[
    "a",
    "a/b",
    "a/b/c",
    "b",
    "./",
    "link",
    "link/x",
    "../outside/x",
    "a/../../outside/y",
    "{abs}/z",
    ".wh.a",
    "a/.wh.b",
    ".wh..wh..opq",
    "a/.wh..wh..opq",
    "..",
    "",
];

const TARGETS: &[&str] = &["a", "a/b", "../outside", "{abs}", "/", "link", "b", ".."];

/// Entry types: file, dir, symlink, hard link, char, block, fifo,
/// contiguous, GNU sparse, PAX global, PAX, GNU long name, GNU long link.
const KINDS: &[u8] = b"05213467SgxLK";

const PAX_KEYS: &[&str] = &[
    "path",
    "linkpath",
    "mtime",
    "size",
    "uid",
    "SCHILY.xattr.user.fuzz",
    "SCHILY.xattr.trusted.overlay.redirect",
    "SCHILY.xattr.security.capability",
    "SCHILY.xattr.trusted.fuzz",
];

fn pick<'a>(input: &mut Input<'a>, list: &[&str], outside: &Path) -> Vec<u8> {
    let i = usize::from(input.u8());
    if i >= list.len() * 8 {
        // Any bytes at all.
        let n = usize::from(input.u8() % 120);
        return input.bytes(n).to_vec();
    }
    list[i % list.len()]
        .replace("{abs}", &outside.to_string_lossy())
        .into_bytes()
}

fn block(out: &mut Vec<u8>, header: &tar::Header, data: &[u8]) {
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    let pad = (512 - data.len() % 512) % 512;
    out.resize(out.len() + pad, 0);
}

fn pax_records(input: &mut Input, outside: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..1 + input.u8() % 3 {
        let key = PAX_KEYS[usize::from(input.u8()) % PAX_KEYS.len()];
        let value = if key.ends_with("path") {
            pick(input, NAMES, outside)
        } else {
            let n = usize::from(input.u8() % 32);
            input.bytes(n).to_vec()
        };
        // "<len> <key>=<value>\n", where len counts itself.
        let body = 3 + key.len() + value.len();
        let mut len = body + 1;
        while len != body + len.to_string().len() {
            len = body + len.to_string().len();
        }
        out.extend_from_slice(format!("{len} {key}=").as_bytes());
        out.extend_from_slice(&value);
        out.push(b'\n');
    }
    out
}

/// A tar stream of up to 24 entries described by `input`.
pub fn build(input: &mut Input, outside: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..24 {
        if input.is_empty() {
            break;
        }
        let kind = KINDS[usize::from(input.u8()) % KINDS.len()];
        let mut h = tar::Header::new_gnu();
        let name = pick(input, NAMES, outside);
        let link = pick(input, TARGETS, outside);
        {
            let old = h.as_old_mut();
            let n = name.len().min(old.name.len());
            old.name[..n].copy_from_slice(&name[..n]);
            let n = link.len().min(old.linkname.len());
            old.linkname[..n].copy_from_slice(&link[..n]);
        }
        h.set_entry_type(tar::EntryType::new(kind));
        let mode = u32::from(input.u16()) & 0o7777;
        h.set_mode(mode);
        h.set_uid(u64::from(input.u16()));
        h.set_gid(u64::from(input.u16()));
        h.set_mtime(input.u64() >> (input.u8() % 64));
        let _ = h.set_device_major(u32::from(input.u8()));
        let _ = h.set_device_minor(u32::from(input.u8()));
        let data = match kind {
            b'x' | b'g' => pax_records(input, outside),
            b'L' | b'K' => {
                let mut n = pick(input, NAMES, outside);
                n.push(0);
                n
            }
            _ => {
                let n = usize::from(input.u16() % 2048);
                input.bytes(n).to_vec()
            }
        };
        // Mostly the true size; sometimes a lie, up to the largest a tar
        // header can say.
        let ctl = input.u8();
        let size = if ctl & 0xf0 == 0xf0 {
            input.u64() >> (ctl & 0xf)
        } else {
            data.len() as u64
        };
        h.set_size(size);
        h.set_cksum();
        block(&mut out, &h, &data);
    }
    out.resize(out.len() + 1024, 0);
    out
}
