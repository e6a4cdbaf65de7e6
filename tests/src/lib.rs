//! Shared fixtures for Podvisor's integration tests.
