//! Prometheus metrics, served by the agent at `[metrics] listen` (or `up --metrics`).
