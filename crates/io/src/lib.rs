//! polytun-io
