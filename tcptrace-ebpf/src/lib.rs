//! Empty library target: it lets `tcptrace` list this crate as a build
//! dependency, so cargo rebuilds the embedded program when it changes.
#![no_std]
