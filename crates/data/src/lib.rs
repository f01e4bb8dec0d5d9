//! The data service.
pub mod ingest;
