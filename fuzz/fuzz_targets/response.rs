#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| vivgate_parse::invariants::response(data));
