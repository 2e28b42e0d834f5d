//! polytun daemon library
