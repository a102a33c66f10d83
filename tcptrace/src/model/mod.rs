//! The vocabulary the layers share: TCP states, sockets and their owners,
//! time, histograms.

pub mod clock;
pub mod log2;
pub mod owner;
pub mod socket_table;
pub mod state;
