//! fleetwise-core: the discrete-event engine of fleetwise, in pure Rust.
//!
//! Time is integer nanoseconds ([`time`]); events run in (time, sequence) order ([`event`]).
//! Each instance has a roofline cost model ([`cost`]), a paged KV cache ([`kv`], [`memory`]) and a
//! batch scheduler ([`scheduler`]); a [`router`] spreads arrivals; [`sim::simulate`] runs it all.

#![deny(missing_docs)]
pub mod calibration;
pub mod cost;
pub mod error;
pub mod event;
pub mod hardware;
pub mod hash_list;
pub mod instance;
pub mod kv;
pub mod load_index;
pub mod memory;
pub mod model;
pub mod moe;
pub mod network;
pub mod offload;
pub mod prefix;
pub mod request;
pub mod request_columns;
pub mod rng;
pub mod router;
pub mod scheduler;
pub mod sim;
pub mod sketch;
pub mod time;

pub use error::{Error, Result};
