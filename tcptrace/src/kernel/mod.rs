//! Kernel access: load and attach the embedded program with the running
//! kernel's facts (BTF offsets, tracepoint layouts from tracefs), read what
//! it sends (ring-buffer records) and what it counts (maps).

pub mod btf;
pub mod decode;
pub mod layout;
pub mod loader;
pub mod maps;
mod refusals;
pub mod tracefs;
