//! Typed zero-copy views over protocol headers, one module per protocol.
