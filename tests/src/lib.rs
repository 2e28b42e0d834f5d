//! End-to-end test harness: network namespaces, real peers.
