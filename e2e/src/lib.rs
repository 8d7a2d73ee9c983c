//! Test harnesses and scenarios.
