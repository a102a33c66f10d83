//! The vocabulary the layers share: events, sockets and their owners, the
//! one selection, histograms. It depends on nothing but the kernel contract
//! (`tcptrace_common`, whose `TcpState` is the one state type).

pub mod event;
pub mod log2;
pub mod owner;
pub mod selection;
pub mod socket_table;
pub mod stack;
