//! Writers of test data in the real on-disk formats of each dataset, for this crate's tests
//! and the end-to-end tests (feature `testdata`; not part of the plugin).

pub mod cifar;
pub mod cxr;
pub mod dicom;
