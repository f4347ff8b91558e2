//! Unit tests of the QMP entry points and the engine with an in-memory guest.
