//! The `genzoo` runner: glue between the command line and the models. The models live in their
//! family crates and the shared pieces in `layers`; here are the run file ([`config`]), the
//! models by name ([`registry`]), the one training loop ([`run`]), the data ([`data`]), what
//! measures and draws ([`report`]), weights from a hub ([`hub`]) and one file per command
//! ([`commands`]).

pub mod commands;
pub mod config;
pub mod convert;
pub mod data;
pub mod hub;
pub mod registry;
pub mod report;
pub mod run;
