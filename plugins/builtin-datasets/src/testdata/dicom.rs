//! Writers of dicom test data in the real on-disk formats (being written).
