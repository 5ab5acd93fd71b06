//! The one integration-test binary. Each module tests one boundary of the service against a
//! real counterpart (an independent JOSE implementation, the D1 simulator).

mod d1_client;
mod jwe_interop;
