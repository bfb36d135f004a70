//! A delivery to `POST /v1/webhooks/azure`: verify, parse and name it (see `tether_fuzz::webhook`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tether_hub::webhook::Provider;

fuzz_target!(|data: &[u8]| tether_fuzz::webhook(Provider::Azure, data));
