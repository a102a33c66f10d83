//! A small reader of BTF, the kernel's type information, for the member
//! offsets `kernel::layout` needs.
//!
//! aya-obj parses BTF but does not expose type lookup, hence this small,
//! read-only parser. It only keeps what member lookup needs, and it treats its
//! input as untrusted: every read is bounds-checked and every walk is bounded.

use std::fmt;

use anyhow::{Context, Result, anyhow, bail, ensure};
#[cfg(test)]
use tcptrace_common::KernelLayout;

#[cfg(test)]
use crate::kernel::layout::{VMLINUX_BTF, kernel_layout, layout_from};

const MAGIC: u16 = 0xEB9F;
const HEADER_LEN: usize = 24;
const TYPE_LEN: usize = 12;

const KIND_INT: u8 = 1;
const KIND_PTR: u8 = 2;
const KIND_ARRAY: u8 = 3;
const KIND_STRUCT: u8 = 4;
const KIND_UNION: u8 = 5;
const KIND_ENUM: u8 = 6;
const KIND_FWD: u8 = 7;
const KIND_TYPEDEF: u8 = 8;
const KIND_VOLATILE: u8 = 9;
const KIND_CONST: u8 = 10;
const KIND_RESTRICT: u8 = 11;
const KIND_FUNC: u8 = 12;
const KIND_FUNC_PROTO: u8 = 13;
const KIND_VAR: u8 = 14;
const KIND_DATASEC: u8 = 15;
const KIND_FLOAT: u8 = 16;
const KIND_DECL_TAG: u8 = 17;
const KIND_TYPE_TAG: u8 = 18;
const KIND_ENUM64: u8 = 19;

/// Real C nests anonymous members a handful of levels at most; the limit only
/// exists so that crafted self-referencing types cannot recurse forever.
const MAX_NESTING: usize = 32;

#[derive(Clone, Copy)]
struct Type {
    name_off: u32,
    kind: u8,
    kind_flag: bool,
    size_or_type: u32,
    /// Index into `Btf::members`; only meaningful for STRUCT and UNION.
    members_start: u32,
    vlen: u16,
}

#[derive(Clone, Copy)]
struct Member {
    name_off: u32,
    type_id: u32,
    offset: u32,
}

/// Parsed view of a BTF blob: the types (with struct/union members) and the
/// string section. Owns its data so it can outlive the input buffer.
pub struct Btf {
    /// `types[i]` has type id `i + 1`; id 0 is void.
    types: Vec<Type>,
    members: Vec<Member>,
    strings: Vec<u8>,
    /// Where the bytes came from, so lookup errors can say which BTF lacked what.
    origin: String,
}

impl fmt::Debug for Btf {
    // The derived form would print megabytes for vmlinux.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Btf")
            .field("origin", &self.origin)
            .field("types", &self.types.len())
            .field("members", &self.members.len())
            .field("string_bytes", &self.strings.len())
            .finish()
    }
}

fn read_u32(data: &[u8], at: usize) -> Option<u32> {
    let bytes = data.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

fn kind_name(kind: u8) -> &'static str {
    match kind {
        KIND_INT => "INT",
        KIND_PTR => "PTR",
        KIND_ARRAY => "ARRAY",
        KIND_STRUCT => "STRUCT",
        KIND_UNION => "UNION",
        KIND_ENUM => "ENUM",
        KIND_FWD => "FWD",
        KIND_TYPEDEF => "TYPEDEF",
        KIND_VOLATILE => "VOLATILE",
        KIND_CONST => "CONST",
        KIND_RESTRICT => "RESTRICT",
        KIND_FUNC => "FUNC",
        KIND_FUNC_PROTO => "FUNC_PROTO",
        KIND_VAR => "VAR",
        KIND_DATASEC => "DATASEC",
        KIND_FLOAT => "FLOAT",
        KIND_DECL_TAG => "DECL_TAG",
        KIND_TYPE_TAG => "TYPE_TAG",
        KIND_ENUM64 => "ENUM64",
        _ => "unknown",
    }
}

/// Returns the byte range `[start, start + len)` of a section, or an error if
/// it does not fit in `data`.
fn section(data: &[u8], hdr_len: u32, off: u32, len: u32, what: &str) -> Result<(usize, usize)> {
    // u64 cannot overflow for sums of three u32s.
    let start = u64::from(hdr_len) + u64::from(off);
    let end = start + u64::from(len);
    ensure!(
        end <= data.len() as u64,
        "{what} section (bytes {start}..{end}) runs past the end of the data ({} bytes)",
        data.len()
    );
    Ok((start as usize, end as usize))
}

impl Btf {
    #[cfg(test)]
    pub fn parse(data: &[u8]) -> Result<Btf> {
        Self::parse_from(data, "BTF data")
    }

    pub(crate) fn parse_from(data: &[u8], origin: &str) -> Result<Btf> {
        Self::parse_inner(data, origin).with_context(|| format!("parsing {origin}"))
    }

    fn parse_inner(data: &[u8], origin: &str) -> Result<Btf> {
        ensure!(
            data.len() >= HEADER_LEN,
            "only {} bytes, shorter than the {HEADER_LEN}-byte header",
            data.len()
        );
        let magic = u16::from_le_bytes([data[0], data[1]]);
        if magic == MAGIC.swap_bytes() {
            bail!("big-endian BTF not supported");
        }
        ensure!(
            magic == MAGIC,
            "bad magic {magic:#06x} (expected {MAGIC:#06x}); not BTF"
        );
        let version = data[2];
        ensure!(version == 1, "unsupported BTF version {version}");

        let field = |at| read_u32(data, at).ok_or_else(|| anyhow!("header truncated"));
        let hdr_len = field(4)?;
        let (type_off, type_len) = (field(8)?, field(12)?);
        let (str_off, str_len) = (field(16)?, field(20)?);
        ensure!(
            hdr_len as usize >= HEADER_LEN,
            "header length {hdr_len} is shorter than the {HEADER_LEN}-byte header"
        );
        ensure!(
            hdr_len as usize <= data.len(),
            "header length {hdr_len} exceeds the data ({} bytes)",
            data.len()
        );
        let (ts, te) = section(data, hdr_len, type_off, type_len, "type")?;
        let (ss, se) = section(data, hdr_len, str_off, str_len, "string")?;
        let type_sec = &data[ts..te];
        let strings = &data[ss..se];
        // A NUL at the end means every in-bounds name offset has a terminator,
        // so name lookups never need to fail later.
        ensure!(
            strings.last() == Some(&0),
            "string section is empty or not NUL-terminated"
        );

        let mut types = Vec::with_capacity(type_sec.len() / 16);
        let mut members = Vec::new();
        let mut pos = 0usize;
        while pos < type_sec.len() {
            let id = types.len() + 1;
            let word = |at: usize| {
                read_u32(type_sec, at).ok_or_else(|| {
                    anyhow!(
                        "type id {id} truncated at type section offset {pos} ({} bytes)",
                        type_sec.len()
                    )
                })
            };
            let name_off = word(pos)?;
            let info = word(pos + 4)?;
            let size_or_type = word(pos + 8)?;
            let vlen = (info & 0xffff) as u16;
            let kind = ((info >> 24) & 0x1f) as u8;
            let kind_flag = info >> 31 != 0;
            ensure!(
                (name_off as usize) < strings.len(),
                "type id {id} has name offset {name_off} outside the string section ({} bytes)",
                strings.len()
            );

            let n = usize::from(vlen);
            let trailing = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => n * 12,
                KIND_ENUM | KIND_FUNC_PROTO => n * 8,
                _ => bail!("type id {id} has unknown kind {kind}"),
            };
            let body_start = pos + TYPE_LEN;
            let body_end = body_start + trailing;
            let body = type_sec.get(body_start..body_end).ok_or_else(|| {
                anyhow!(
                    "type id {id} ({} with vlen {vlen}) needs {trailing} more bytes at type \
                     section offset {body_start}, but the section has {} bytes",
                    kind_name(kind),
                    type_sec.len()
                )
            })?;

            let members_start = members.len() as u32;
            if kind == KIND_STRUCT || kind == KIND_UNION {
                for chunk in body.chunks_exact(12) {
                    let m = Member {
                        name_off: u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]),
                        type_id: u32::from_le_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]),
                        offset: u32::from_le_bytes([chunk[8], chunk[9], chunk[10], chunk[11]]),
                    };
                    ensure!(
                        (m.name_off as usize) < strings.len(),
                        "a member of type id {id} has name offset {} outside the string \
                         section ({} bytes)",
                        m.name_off,
                        strings.len()
                    );
                    members.push(m);
                }
            }
            types.push(Type {
                name_off,
                kind,
                kind_flag,
                size_or_type,
                members_start,
                vlen,
            });
            pos = body_end;
        }

        Ok(Btf {
            types,
            members,
            strings: strings.to_vec(),
            origin: origin.to_owned(),
        })
    }

    /// Byte offset of `member` in the struct named `struct_name` (kind STRUCT, not a FWD),
    /// searching through anonymous struct/union members recursively and adding their offsets.
    pub fn member_offset(&self, struct_name: &str, member: &str) -> Result<u32> {
        let origin = &self.origin;
        // Anonymous structs have empty names; matching them would be nonsense.
        ensure!(!struct_name.is_empty(), "empty struct name");
        let mut found: Option<u32> = None;
        let mut any_struct = false;
        for (idx, ty) in self.types.iter().enumerate() {
            if ty.kind != KIND_STRUCT || self.name(ty.name_off) != struct_name.as_bytes() {
                continue;
            }
            any_struct = true;
            // Duplicate names happen in vmlinux when two compilation units
            // define different structs with one name; accept them only if
            // they agree, since a wrong offset would silently read garbage.
            let Some(off) = self
                .find_member(ty, member.as_bytes(), 0)
                .with_context(|| {
                    format!("struct {struct_name} (type id {}) in {origin}", idx + 1)
                })?
            else {
                continue;
            };
            match found {
                Some(prev) if prev != off => bail!(
                    "struct {struct_name} is defined more than once in {origin}, with member \
                     {member} at offsets {prev} and {off}"
                ),
                _ => found = Some(off),
            }
        }
        if let Some(off) = found {
            return Ok(off);
        }
        if any_struct {
            bail!("struct {struct_name} has no member {member} in {origin}");
        }
        let fwd_only = self
            .types
            .iter()
            .any(|t| t.kind == KIND_FWD && self.name(t.name_off) == struct_name.as_bytes());
        if fwd_only {
            bail!(
                "struct {struct_name} is only forward-declared in {origin}, so its layout is unknown"
            );
        }
        bail!("no struct named {struct_name} in {origin}")
    }

    /// Offset of `member` within the struct/union `ty`, in bytes, or `None`.
    fn find_member(&self, ty: &Type, member: &[u8], depth: usize) -> Result<Option<u32>> {
        ensure!(
            depth <= MAX_NESTING,
            "anonymous members nested more than {MAX_NESTING} deep (a type cycle?)"
        );
        for m in self.members_of(ty) {
            let name = self.name(m.name_off);
            let inner = if name.is_empty() {
                match self.anonymous_aggregate(m.type_id)? {
                    Some(inner_ty) => match self.find_member(inner_ty, member, depth + 1)? {
                        Some(inner) => inner,
                        None => continue,
                    },
                    None => continue,
                }
            } else if name == member {
                0
            } else {
                continue;
            };
            let base = self.member_byte_offset(ty, m)?;
            let total = base.checked_add(inner).ok_or_else(|| {
                anyhow!(
                    "offset of {} overflows u32",
                    String::from_utf8_lossy(member)
                )
            })?;
            return Ok(Some(total));
        }
        Ok(None)
    }

    fn member_byte_offset(&self, parent: &Type, m: &Member) -> Result<u32> {
        let label = || {
            let name = self.name(m.name_off);
            if name.is_empty() {
                "anonymous member".to_owned()
            } else {
                format!("member {}", String::from_utf8_lossy(name))
            }
        };
        let (bits, bitfield_size) = if parent.kind_flag {
            (m.offset & 0x00ff_ffff, m.offset >> 24)
        } else {
            (m.offset, 0)
        };
        // A bitfield cannot be read with a plain probe read of its type.
        ensure!(
            bitfield_size == 0,
            "{} is a {bitfield_size}-bit bitfield",
            label()
        );
        ensure!(
            bits % 8 == 0,
            "{} is at bit offset {bits}, not on a byte boundary",
            label()
        );
        Ok(bits / 8)
    }

    /// The struct/union an anonymous member embeds, looking through modifiers
    /// and typedefs; `None` for anything else (e.g. an unnamed bitfield pad).
    fn anonymous_aggregate(&self, mut id: u32) -> Result<Option<&Type>> {
        // Bounded because crafted input can make typedefs refer to each other.
        for _ in 0..MAX_NESTING {
            if id == 0 {
                return Ok(None);
            }
            let ty = self.type_by_id(id)?;
            match ty.kind {
                KIND_STRUCT | KIND_UNION => return Ok(Some(ty)),
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = ty.size_or_type;
                }
                _ => return Ok(None),
            }
        }
        bail!("type id {id} is behind more than {MAX_NESTING} typedefs/modifiers (a type cycle?)")
    }

    fn type_by_id(&self, id: u32) -> Result<&Type> {
        id.checked_sub(1)
            .and_then(|i| self.types.get(i as usize))
            .ok_or_else(|| {
                anyhow!(
                    "reference to type id {id}, but there are only {} types",
                    self.types.len()
                )
            })
    }

    fn members_of(&self, ty: &Type) -> &[Member] {
        let start = ty.members_start as usize;
        // Parsing pushed exactly `vlen` members for every STRUCT/UNION, so
        // this range is in bounds; `get` keeps it panic-free regardless.
        self.members
            .get(start..start + usize::from(ty.vlen))
            .unwrap_or(&[])
    }

    /// Name bytes without the NUL; empty for anonymous entries.
    fn name(&self, off: u32) -> &[u8] {
        let rest = self.strings.get(off as usize..).unwrap_or(&[]);
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        &rest[..end]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::process::Command;

    /// Assembles a little-endian BTF blob: header, type section, strings.
    struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    impl Builder {
        fn new() -> Self {
            Builder {
                types: Vec::new(),
                strings: vec![0],
                next_id: 1,
            }
        }

        fn str(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }

        fn raw(
            &mut self,
            name: &str,
            kind: u8,
            kind_flag: bool,
            vlen: u16,
            size_or_type: u32,
            tail: &[u8],
        ) -> u32 {
            let name_off = self.str(name);
            let info = (u32::from(kind_flag) << 31) | (u32::from(kind) << 24) | u32::from(vlen);
            for w in [name_off, info, size_or_type] {
                self.types.extend_from_slice(&w.to_le_bytes());
            }
            self.types.extend_from_slice(tail);
            let id = self.next_id;
            self.next_id += 1;
            id
        }

        fn int(&mut self, name: &str, size: u32) -> u32 {
            self.raw(name, KIND_INT, false, 0, size, &(size * 8).to_le_bytes())
        }

        fn ptr(&mut self, to: u32) -> u32 {
            self.raw("", KIND_PTR, false, 0, to, &[])
        }

        fn fwd(&mut self, name: &str) -> u32 {
            self.raw(name, KIND_FWD, false, 0, 0, &[])
        }

        fn typedef(&mut self, name: &str, to: u32) -> u32 {
            self.raw(name, KIND_TYPEDEF, false, 0, to, &[])
        }

        /// `members`: (name, type id, offset field as stored, i.e. bits).
        fn aggregate(
            &mut self,
            kind: u8,
            kind_flag: bool,
            name: &str,
            size: u32,
            members: &[(&str, u32, u32)],
        ) -> u32 {
            let mut tail = Vec::new();
            for &(mname, ty, off) in members {
                let name_off = self.str(mname);
                for w in [name_off, ty, off] {
                    tail.extend_from_slice(&w.to_le_bytes());
                }
            }
            self.raw(name, kind, kind_flag, members.len() as u16, size, &tail)
        }

        fn structure(&mut self, name: &str, size: u32, members: &[(&str, u32, u32)]) -> u32 {
            self.aggregate(KIND_STRUCT, false, name, size, members)
        }

        fn union(&mut self, name: &str, size: u32, members: &[(&str, u32, u32)]) -> u32 {
            self.aggregate(KIND_UNION, false, name, size, members)
        }

        fn build(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&MAGIC.to_le_bytes());
            out.push(1); // version
            out.push(0); // flags
            let type_len = self.types.len() as u32;
            for w in [
                HEADER_LEN as u32,
                0,
                type_len,
                type_len,
                self.strings.len() as u32,
            ] {
                out.extend_from_slice(&w.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    /// struct outer {
    ///     int a;                          // byte 0
    ///     union {                         // byte 8
    ///         long z;
    ///         struct { long x; long y; }; // y: byte 8 + 8
    ///     };
    ///     struct inner *p;                // byte 24, inner only a FWD
    /// };
    fn sample() -> Vec<u8> {
        let mut b = Builder::new();
        let int = b.int("int", 4);
        let long = b.int("long", 8);
        let anon_struct = b.structure("", 16, &[("x", long, 0), ("y", long, 64)]);
        let anon_union = b.union("", 16, &[("z", long, 0), ("", anon_struct, 0)]);
        let inner = b.fwd("inner");
        let p = b.ptr(inner);
        b.structure(
            "outer",
            32,
            &[("a", int, 0), ("", anon_union, 64), ("p", p, 192)],
        );
        b.build()
    }

    fn err_text<T: fmt::Debug>(r: Result<T>) -> String {
        format!("{:#}", r.unwrap_err())
    }

    #[test]
    fn plain_member_offset() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.member_offset("outer", "a").unwrap(), 0);
        assert_eq!(btf.member_offset("outer", "p").unwrap(), 24);
    }

    #[test]
    fn anonymous_union_and_struct_offsets_add_up() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.member_offset("outer", "z").unwrap(), 8);
        assert_eq!(btf.member_offset("outer", "x").unwrap(), 8);
        assert_eq!(btf.member_offset("outer", "y").unwrap(), 16);
    }

    #[test]
    fn missing_member_is_error() {
        let btf = Btf::parse(&sample()).unwrap();
        let e = err_text(btf.member_offset("outer", "nope"));
        assert_eq!(e, "struct outer has no member nope in BTF data");
    }

    #[test]
    fn fwd_only_struct_is_error() {
        let btf = Btf::parse(&sample()).unwrap();
        let e = err_text(btf.member_offset("inner", "anything"));
        assert!(e.contains("struct inner is only forward-declared"), "{e}");
    }

    #[test]
    fn unknown_struct_is_error() {
        let btf = Btf::parse(&sample()).unwrap();
        let e = err_text(btf.member_offset("nosuch", "a"));
        assert_eq!(e, "no struct named nosuch in BTF data");
        let e = err_text(btf.member_offset("", "x"));
        assert!(e.contains("empty struct name"), "{e}");
    }

    #[test]
    fn truncated_data_is_error_at_every_length() {
        let blob = sample();
        for len in 0..blob.len() {
            assert!(
                Btf::parse(&blob[..len]).is_err(),
                "parsed {len} of {} bytes",
                blob.len()
            );
        }
        assert!(Btf::parse(&blob).is_ok());
    }

    #[test]
    fn truncated_type_section_is_error() {
        let mut b = Builder::new();
        let int = b.int("int", 4);
        b.structure("s", 8, &[("a", int, 0), ("b", int, 32)]);
        let full = b.types.len();
        // Keep the header consistent and cut inside the types: the parser
        // must notice from the type records themselves.
        for cut in [1, 4, 12, 15, 20, full - 12, full - 1] {
            let mut short = Builder::new();
            short.types = b.types[..cut].to_vec();
            short.strings = b.strings.clone();
            let e = err_text(Btf::parse(&short.build()));
            assert!(
                e.contains("truncated") || e.contains("needs"),
                "cut {cut}: {e}"
            );
        }
    }

    #[test]
    fn bad_magic_is_rejected() {
        let mut blob = sample();
        blob[0] = 0x7f;
        blob[1] = 0x45;
        let e = err_text(Btf::parse(&blob));
        assert!(e.contains("bad magic 0x457f"), "{e}");
    }

    #[test]
    fn big_endian_magic_is_reported() {
        let mut blob = sample();
        blob[..2].copy_from_slice(&MAGIC.to_be_bytes());
        let e = err_text(Btf::parse(&blob));
        assert!(e.contains("big-endian BTF not supported"), "{e}");
    }

    #[test]
    fn unknown_kind_names_kind_and_id() {
        let mut b = Builder::new();
        b.int("int", 4);
        b.raw("x", 20, false, 0, 0, &[]);
        let e = err_text(Btf::parse(&b.build()));
        assert!(e.contains("type id 2 has unknown kind 20"), "{e}");
    }

    #[test]
    fn unaligned_and_bitfield_members_are_errors() {
        let mut b = Builder::new();
        let int = b.int("int", 4);
        b.structure("s", 8, &[("odd", int, 3), ("ok", int, 32)]);
        b.aggregate(
            KIND_STRUCT,
            true,
            "bf",
            8,
            &[("flag", int, (1 << 24) | 8), ("whole", int, 32)],
        );
        let btf = Btf::parse(&b.build()).unwrap();
        let e = err_text(btf.member_offset("s", "odd"));
        assert!(e.contains("bit offset 3"), "{e}");
        assert_eq!(btf.member_offset("s", "ok").unwrap(), 4);
        let e = err_text(btf.member_offset("bf", "flag"));
        assert!(e.contains("1-bit bitfield"), "{e}");
        // With kind_flag set, only the low 24 bits are the offset.
        assert_eq!(btf.member_offset("bf", "whole").unwrap(), 4);
    }

    #[test]
    fn duplicate_struct_names_must_agree() {
        let mut b = Builder::new();
        let int = b.int("int", 4);
        b.structure("d", 8, &[("a", int, 0), ("b", int, 32)]);
        b.structure("d", 4, &[("a", int, 0)]);
        b.structure("d", 8, &[("b", int, 0)]);
        let btf = Btf::parse(&b.build()).unwrap();
        assert_eq!(btf.member_offset("d", "a").unwrap(), 0);
        let e = err_text(btf.member_offset("d", "b"));
        assert!(e.contains("defined more than once"), "{e}");
    }

    #[test]
    fn cyclic_types_terminate() {
        let mut b = Builder::new();
        // id 1: struct loop { struct loop; }  (anonymous member of itself)
        b.structure("loop", 4, &[("", 1, 0)]);
        // ids 2, 3: typedefs pointing at each other, embedded anonymously.
        b.typedef("t2", 3);
        b.typedef("t3", 2);
        b.structure("viatypedef", 4, &[("", 2, 0)]);
        // A member pointing past the last type.
        b.structure("dangling", 4, &[("", 999, 0)]);
        let btf = Btf::parse(&b.build()).unwrap();
        let e = err_text(btf.member_offset("loop", "x"));
        assert!(e.contains("nested more than"), "{e}");
        let e = err_text(btf.member_offset("viatypedef", "x"));
        assert!(e.contains("typedefs/modifiers"), "{e}");
        let e = err_text(btf.member_offset("dangling", "x"));
        assert!(e.contains("type id 999"), "{e}");
    }

    #[test]
    fn mutated_blobs_never_panic() {
        let blob = sample();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let mut m = blob.clone();
            for _ in 0..(next() % 4 + 1) {
                let i = (next() % m.len() as u64) as usize;
                m[i] = next() as u8;
            }
            if let Ok(btf) = Btf::parse(&m) {
                for (s, f) in [("outer", "y"), ("outer", "p"), ("inner", "x"), ("", "")] {
                    let _ = btf.member_offset(s, f);
                }
            }
        }
    }

    #[test]
    fn layout_from_synthetic_btf() {
        let mut b = Builder::new();
        let long = b.int("long unsigned int", 8);
        let void_ptr = b.ptr(0);
        b.structure(
            "sock",
            400,
            &[("__sk_common", long, 0), ("sk_socket", void_ptr, 288 * 8)],
        );
        let socket = b.structure("socket", 128, &[("state", long, 0)]);
        let inode = b.structure("inode", 128, &[("i_ino", long, 64 * 8)]);
        // Anonymous members are walked into: the offset is the sum.
        let anon = b.union("", 128, &[("vfs_inode", inode, 0)]);
        b.structure(
            "socket_alloc",
            256,
            &[("socket", socket, 0), ("", anon, 128 * 8)],
        );
        let (got, missing) = layout_from(&b.build(), "the given BTF").unwrap();
        assert_eq!(
            (
                got.sock_sk_socket,
                got.socket_alloc_vfs_inode,
                got.inode_i_ino
            ),
            (288, 128, 64)
        );
        // The other groups are missing whole, each said in one line.
        assert_eq!(missing.len(), 4, "{missing:?}");
        assert_eq!(got.sock_net, KernelLayout::UNKNOWN);

        let mut b = Builder::new();
        let long = b.int("long", 8);
        b.structure("sock", 8, &[("sk_common", long, 0)]);
        let (got, missing) = layout_from(&b.build(), "the given BTF").unwrap();
        assert_eq!(got.sock_sk_socket, KernelLayout::UNKNOWN);
        assert!(
            missing[0]
                .ends_with("sock.sk_socket: struct sock has no member sk_socket in the given BTF"),
            "{missing:?}"
        );
    }

    /// An independent reading of the same BTF: bpftool's raw dump, with its
    /// own walk through anonymous members.
    fn bpftool_offset(dump: &str, struct_name: &str, member: &str) -> Option<u32> {
        type Members = Vec<(String, u32, u32)>;
        let mut aggregates: HashMap<u32, (String, String, Members)> = HashMap::new();
        let mut current: Option<u32> = None;
        for line in dump.lines() {
            if let Some(rest) = line.strip_prefix('[') {
                current = None;
                let (id, rest) = rest.split_once("] ")?;
                let mut words = rest.split(' ');
                let kind = words.next()?;
                if kind == "STRUCT" || kind == "UNION" {
                    let name = rest.split('\'').nth(1)?.to_owned();
                    let id: u32 = id.parse().ok()?;
                    aggregates.insert(id, (kind.to_owned(), name, Vec::new()));
                    current = Some(id);
                }
            } else if let (Some(id), Some(rest)) = (current, line.strip_prefix('\t')) {
                let name = rest.split('\'').nth(1)?.to_owned();
                let field = |key: &str| -> Option<u32> {
                    rest.split(' ')
                        .find_map(|w| w.strip_prefix(key))?
                        .parse()
                        .ok()
                };
                let entry = (name, field("type_id=")?, field("bits_offset=")?);
                aggregates.get_mut(&id)?.2.push(entry);
            }
        }
        fn walk(
            aggs: &HashMap<u32, (String, String, Members)>,
            id: u32,
            member: &str,
        ) -> Option<u32> {
            for (name, ty, bits) in &aggs.get(&id)?.2 {
                if name == member {
                    return Some(bits / 8);
                }
                if name == "(anon)"
                    && let Some(inner) = walk(aggs, *ty, member)
                {
                    return Some(bits / 8 + inner);
                }
            }
            None
        }
        aggregates
            .iter()
            .filter(|(_, (kind, name, _))| kind == "STRUCT" && name == struct_name)
            .find_map(|(&id, _)| walk(&aggregates, id, member))
    }

    #[test]
    fn vmlinux_offsets_match_bpftool() {
        // Deliberately not skipped when the file is missing: tcptrace cannot
        // work on such a kernel, and a silent pass would hide that.
        assert!(
            std::path::Path::new(VMLINUX_BTF).exists(),
            "{VMLINUX_BTF} is missing; this kernel lacks CONFIG_DEBUG_INFO_BTF"
        );
        let (got, missing) = kernel_layout().unwrap_or_else(|e| panic!("{e:#}"));
        assert!(missing.is_empty(), "{missing:?}");
        let bpftool = [
            "/usr/sbin/bpftool",
            "/usr/bin/bpftool",
            "/usr/local/sbin/bpftool",
        ]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
        let bpftool = bpftool.expect("bpftool (cargo xtask setup installs it)");
        let out = Command::new(bpftool)
            .args(["btf", "dump", "file", VMLINUX_BTF, "format", "raw"])
            .output()
            .expect("running bpftool");
        assert!(
            out.status.success(),
            "bpftool failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dump = String::from_utf8_lossy(&out.stdout);
        let want = |s: &str, m: &str| -> u32 {
            bpftool_offset(&dump, s, m).unwrap_or_else(|| panic!("bpftool dump lacks {s}.{m}"))
        };
        let sum = |path: &[(&str, &str)]| path.iter().map(|(st, m)| want(st, m)).sum::<u32>();
        let expected = KernelLayout {
            sock_sk_socket: want("sock", "sk_socket"),
            socket_alloc_vfs_inode: want("socket_alloc", "vfs_inode"),
            inode_i_ino: want("inode", "i_ino"),
            sock_net: sum(&[("sock", "__sk_common"), ("sock_common", "skc_net")]),
            net_inum: sum(&[("net", "ns"), ("ns_common", "inum")]),
            sock_family: sum(&[("sock", "__sk_common"), ("sock_common", "skc_family")]),
            task_group_leader: want("task_struct", "group_leader"),
            task_comm: want("task_struct", "comm"),
            task_files: want("task_struct", "files"),
            files_fdt: want("files_struct", "fdt"),
            fdtable_fd: want("fdtable", "fd"),
            fdtable_max_fds: want("fdtable", "max_fds"),
            file_private_data: want("file", "private_data"),
            socket_sk: want("socket", "sk"),
            pt_regs_sp: want("pt_regs", "sp"),
            _pad: 0,
        };
        assert_eq!(got, expected);
    }
}

#[cfg(test)]
mod properties {
    //! Property tests over untrusted input: it must give a value or an
    //! error, never panic.
    use proptest::prelude::*;

    use super::Btf;

    proptest::proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..Default::default() })]

    #[test]
    fn btf_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(btf) = Btf::parse(&bytes) {
            let _ = btf.member_offset("sock", "sk_socket");
        }
    }
    }
}
