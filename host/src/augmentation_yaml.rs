//! (being written) The chest X-ray augmentation YAML of the original, turned into transform
//! specs.
