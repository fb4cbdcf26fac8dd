//! The integration tests, one binary (candle links once, not once per file): each module is one
//! area, run as a user runs edco, on tiny models made by edco's own `init-model` code, the
//! fixtures in `tests/fixtures` and the small real assets `scripts/fetch_assets.sh` caches.

mod common;

mod cli;
mod compare;
mod configs;
mod entropy;
mod errors;
mod eval;
mod hub;
mod model;
mod parity;
mod perplexity;
mod readme;
mod reliability;
mod smollm2;
mod train;
