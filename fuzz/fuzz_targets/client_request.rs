//! A KV request as the client port decodes it, converted and validated: never a
//! panic, and what validation accepts is within `raftset::limits`.
//! The checks are in `raftset::fuzzing::client_request`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| raftset::fuzzing::client_request(data));
