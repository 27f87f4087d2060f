//! End-to-end tests of the emulator over real HTTP, one test binary (one link)
//! with a module per area.

mod admin;
mod binary;
mod common;
mod conditional;
mod counters;
mod entities;
mod faults;
mod oauth;
mod post_routes;
mod ratelimit;
