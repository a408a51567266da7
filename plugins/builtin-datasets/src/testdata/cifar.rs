//! Writers of cifar test data in the real on-disk formats (being written).
