//! Many hosts at once: choose the hosts ([`hosts`]), run one job per host
//! in a sliding window with a deadline each ([`runner`]), show their output
//! as `host: line` or keep it ([`output`]), and report per host
//! ([`report`]). docs/FANOUT.md describes the user's view.

pub mod hosts;
pub mod output;
pub mod report;
pub mod runner;
