//! polytun-core
