//! QMP wire types.
