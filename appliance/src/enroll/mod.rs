//! The box's identity with the region: applying a provisioning bundle, enrolling at first contact, renewing
//! certificates at half-life.
