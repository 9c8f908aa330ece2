//! The simulated NIC. (Being written.)
