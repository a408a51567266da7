//! Classification metrics of the linear heads.
