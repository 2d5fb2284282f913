//! The lab's own work on measurements: sweeps of engines × rates into a results folder, that
//! folder's format and the knee rule, the report, the demo, and the HTTP corpus.
//!
//! May import: every layer below (the generator, the engines' names and options, `os`,
//! `sansio`). `report` reads files only: it imports `results` and `sansio::stats`, never a
//! process-running module.

pub mod agents;
pub mod corpus;
pub mod demo;
pub mod profile;
pub mod report;
pub mod results;
pub mod sweep;
