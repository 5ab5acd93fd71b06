//! Integration tests of the simulator through real HTTP, in-process via the library.

mod binary;
mod faults;
mod helpers;
mod keys;
mod oauth;
mod register;
mod tls;
