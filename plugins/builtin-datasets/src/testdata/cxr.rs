//! Writers of cxr test data in the real on-disk formats (being written).
