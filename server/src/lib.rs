//! realtime-server: a Socket.IO gateway (socketioxide on axum) whose events reach clients on
//! every node through Redis. The binary is a thin wrapper around [`app::run`]; the modules are
//! public so in-process tests can drive a real server.

pub mod adapter;
pub mod app;
pub mod auth;
pub mod config;
pub mod handlers;
pub mod health;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod order;
pub mod protocol;
pub mod recovery;
pub mod route;
pub mod shed;
pub mod shutdown;
